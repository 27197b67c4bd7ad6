"""Pick the best single model or ensemble of trained models on dev, then score that one choice on test.

    python benchmarks/best_ensemble.py --data ../shared/data/EURLEX57K --max-size 3 \
        --models runs/a/model runs/b/model runs/c/model --output benchmarks/results/best_ensemble_cpu.json

Every non-empty subset of ``--models`` with at most ``--max-size`` members is scored on the dev split as
``lcenet evaluate`` scores it (an ensemble averages sigmoid scores over the union of the members' top labels;
lcenet.ensemble), all of them in one pass: each batch of dev documents is encoded and scored once by every model,
and every subset's ensemble is formed from those outputs (a test checks that a subset scores as ``lcenet
evaluate`` scores it). The subset with the best dev nDCG@5 (ties: P@1, then fewer members) is the only one
scored on test, by ``lcenet evaluate``'s own path. The record keeps every dev score, the choice, its test
metrics, and the command that reproduces the test number (``lcenet evaluate ... --split test``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lcenet import metrics
from lcenet.ensemble import average_over_union
from lcenet.inference import autocast
from lcenet.io import atomic_write_json
from lcenet.pipeline import evaluate_directory, labelled_split, load_models
from lcenet.provenance import provenance


def run_record(model_dir: Path) -> dict:
    """The experiment's record of the run that wrote ``model_dir`` (it keeps the command), else its metrics.json."""
    run = model_dir.parent
    record = run.parent.parent / "records" / f"{run.name}.json"
    return json.loads((record if record.is_file() else run / "metrics.json").read_text())


@torch.no_grad()
def subset_scores(model_dirs: list[Path], subsets: list[tuple[int, ...]], data_dir: Path, split: str, device: str
                  ) -> list[dict]:
    """The metrics of every subset's ensemble (members: positions in ``model_dirs``) on ``split``, as ``lcenet
    evaluate`` computes them, from one pass of every model over the split."""
    models = load_models(model_dirs, device)
    first = models[0]
    texts, truth, inv_propensity = labelled_split(first, data_dir, split)
    inputs = [m.encoder.encode(texts) for m in models]
    batch_size, k = first.trained["eval_batch_size"], max(metrics.DEFAULT_KS)
    tops: list[list[np.ndarray]] = [[] for _ in subsets]
    for start in range(0, len(texts), batch_size):
        rows = np.arange(start, min(start + batch_size, len(texts)))
        with autocast(first.device, first.trained["bf16"]):
            outputs = [m.model.score(*store.batch(rows, first.device)) for m, store in zip(models, inputs)]
        for found, members in zip(tops, subsets):
            found.append(average_over_union([outputs[i] for i in members], k)[0].cpu().numpy())
    return [metrics.evaluate(np.concatenate(found), truth, inv_propensity=inv_propensity) for found in tops]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="saved model directories")
    parser.add_argument("--max-size", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    subsets = [members for size in range(1, min(args.max_size, len(args.models)) + 1)
               for members in itertools.combinations(range(len(args.models)), size)]
    candidates = []
    for members, dev in zip(subsets, subset_scores(args.models, subsets, args.data, "dev", args.device)):
        candidates.append({"members": [str(args.models[i]) for i in members], "dev": dev})
        print(f"dev nDCG@5 {100 * dev['nDCG@5']:.2f} P@1 {100 * dev['P@1']:.2f}: "
              f"{' + '.join(candidates[-1]['members'])}", flush=True)
    best = max(candidates, key=lambda c: (c["dev"]["nDCG@5"], c["dev"]["P@1"], -len(c["members"])))
    test = evaluate_directory(best["members"], args.data, "test", args.device)
    members = {m: run_record(Path(m)) for m in best["members"]}
    record = {"benchmark": "best_ensemble", "command": " ".join(["python", *sys.argv]), **provenance(),
              "data": str(args.data), "selected_on": "dev nDCG@5", "candidates": candidates,
              "best": {"members": best["members"], "dev": best["dev"], "test": test,
                       "reproduce": f"lcenet evaluate {' '.join(best['members'])} --data {args.data} --split test"},
              "member_runs": {m: {"command": r.get("command"), "test_P@1": r["test"]["P@1"],
                                  "test_nDCG@5": r["test"]["nDCG@5"], "converged": r.get("converged"),
                                  "git_commit": r.get("git_commit")} for m, r in members.items()},
              "wall_seconds": time.perf_counter() - started}
    atomic_write_json(args.output, record)
    print(f"best on dev: {' + '.join(best['members'])}; test P@1 {100 * test['P@1']:.2f} "
          f"nDCG@5 {100 * test['nDCG@5']:.2f}\nwrote {args.output}")


if __name__ == "__main__":
    main()
