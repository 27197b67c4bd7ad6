"""Prediction from saved model directories: texts in, top-k labels and sigmoid scores out. Several directories
(of any families, with the same labels) predict as an ensemble: the sigmoid of their mean logit, or their mean
sigmoid score (:mod:`lcenet.ensemble`)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from lcenet.ensemble import DEFAULT_COMBINE, check_combine
from lcenet.errors import DataError
from lcenet.inference import ensemble_top_k
from lcenet.pipeline import LoadedModel, load_models


class Predictor:
    """``Predictor.load(model_dir).predict(["some text", ...], k=5)`` -> ``[{"labels": [...], "scores": [...]}]``;
    ``Predictor.load([dir_a, dir_b])`` predicts with the ensemble of both (``combine``: lcenet.ensemble's rule)."""

    def __init__(self, members: list[LoadedModel], label_names: dict[str, str] | None = None,
                 combine: str = DEFAULT_COMBINE):
        self.members = members
        self.label_names = label_names
        self.combine = check_combine(combine)

    @classmethod
    def load(cls, model_dirs: str | Path | list[str | Path], device: str = "auto",
             names_file: str | Path | None = None, combine: str = DEFAULT_COMBINE) -> Predictor:
        check_combine(combine)
        members = load_models([model_dirs] if isinstance(model_dirs, (str, Path)) else model_dirs, device)
        return cls(members, read_label_names(names_file) if names_file else None, combine)

    def predict(self, texts: list[str], k: int = 5, batch_size: int = 256) -> list[dict]:
        first = self.members[0]
        top, scores = ensemble_top_k([m.model for m in self.members], [m.encoder.encode(texts) for m in self.members],
                                     k, first.device, batch_size, first.bf16, combine=self.combine)
        results = []
        for row, row_scores in zip(top, scores):
            scored = row >= 0  # a shortlist model may score fewer than k labels for a document
            labels = [first.label_names[i] for i in row[scored]]
            result = {"labels": labels, "scores": [round(float(s), 6) for s in row_scores[scored]]}
            if self.label_names is not None:
                result["names"] = [self.label_names.get(label, label) for label in labels]
            results.append(result)
        return results


def read_label_names(path: str | Path) -> dict[str, str]:
    """An id -> name map from ``id<TAB>name`` lines, or a JSON object whose values are names or objects
    with a "label" or "name" field (e.g. EURLEX57K's eurovoc_concepts.json.gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            content = handle.read()
    except FileNotFoundError:
        raise DataError(path, "label-name file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read label names ({error})") from None
    if path.name.removesuffix(".gz").endswith(".json"):
        try:
            raw = json.loads(content)
        except json.JSONDecodeError as error:
            raise DataError(path, f"invalid JSON ({error.msg})", error.lineno) from None
        if not isinstance(raw, dict):
            raise DataError(path, "expected a JSON object mapping label id -> name")
        return {str(key): _name(value) for key, value in raw.items()}
    names = {}
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        key, tab, name = line.partition("\t")
        if not tab:
            raise DataError(path, "expected 'label<TAB>name'", number)
        names[key] = name
    return names


def _name(value) -> str:
    if isinstance(value, dict):
        return str(value.get("label") or value.get("name") or "")
    return str(value)
