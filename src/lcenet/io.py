"""Files that must never be half-written or unsafe: atomic writes, the pickle-free model directory.

A model directory holds exactly:
  model.safetensors   weights (safetensors; no pickle anywhere)
  config.json         architecture, LCENet settings, training settings, data settings, versions
  tokenizer.json      the HF `tokenizers` tokenizer that produced the ids
  labels.tsv          one label per line (index order) with its training frequency: ``name<TAB>count``
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from lcenet.errors import UserError

MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "labels.tsv")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
FORMAT_VERSION = 1


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            return {name: handle.get_tensor(name) for name in handle.keys()}, metadata
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path}: not a valid safetensors file ({error})") from None


def versions() -> dict[str, str]:
    import lcenet
    return {"lcenet": lcenet.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "format": str(FORMAT_VERSION)}


def write_model_dir(directory: str | Path, model: torch.nn.Module, config: dict[str, Any], tokenizer_json: str,
                    label_names: list[str], label_frequency: np.ndarray) -> None:
    """Write all files into a temp dir beside ``directory``, then swap it into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        atomic_write_json(tmp / "config.json", {**config, "versions": versions()})
        atomic_write_text(tmp / "tokenizer.json", tokenizer_json)
        atomic_write_text(tmp / "labels.tsv", "".join(
            f"{name}\t{int(count)}\n" for name, count in zip(label_names, label_frequency)))
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_model_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str, list[str], np.ndarray]:
    """Return (config, state_dict, tokenizer_json, label_names, label_frequency); refuse anything unsafe."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: model directory not found")
    for file in directory.iterdir():
        if file.suffix.lower() in PICKLE_SUFFIXES:
            raise UserError(f"{file}: refusing to load a pickle-based file; lcenet model directories hold only "
                            "safetensors, JSON and text")
    for name in MODEL_FILES:
        if not (directory / name).is_file():
            raise UserError(f"{directory / name}: missing (a model directory needs {', '.join(MODEL_FILES)})")
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{config_path}: malformed JSON ({error})") from None
    if not isinstance(config, dict) or "model" not in config or "num_labels" not in config:
        raise UserError(f"{config_path}: not an lcenet model config (needs 'model' and 'num_labels')")
    state, _ = load_tensors(directory / "model.safetensors")
    tokenizer_json = (directory / "tokenizer.json").read_text(encoding="utf-8")
    names, counts = [], []
    labels_path = directory / "labels.tsv"
    for number, line in enumerate(labels_path.read_text(encoding="utf-8").splitlines(), start=1):
        name, tab, count = line.rpartition("\t")
        if not tab or not count.isdigit():
            raise UserError(f"{labels_path}:{number}: expected 'label<TAB>count'")
        names.append(name)
        counts.append(int(count))
    if len(names) != config["num_labels"]:
        raise UserError(f"{labels_path}: {len(names)} labels, but config.json says {config['num_labels']}")
    return config, state, tokenizer_json, names, np.asarray(counts, dtype=np.int64)
