"""Pick the best single model or ensemble of trained models on dev, then score that one choice on test.

    python benchmarks/best_ensemble.py --data ../shared/data/EURLEX57K --max-size 3 \
        --models runs/a/model runs/b/model runs/c/model --output benchmarks/results/best_ensemble_cpu.json

Every non-empty subset of ``--models`` with at most ``--max-size`` members is scored on the dev split as
``lcenet evaluate`` scores it (an ensemble averages sigmoid scores over the union of the members' top labels;
lcenet.ensemble). The subset with the best dev nDCG@5 (ties: P@1, then fewer members) is the only one scored on
test. The record keeps every dev score, the choice, its test metrics, and the command that reproduces the test
number (``lcenet evaluate ... --split test``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from lcenet.io import atomic_write_json
from lcenet.pipeline import evaluate_directory
from lcenet.provenance import provenance


def run_record(model_dir: Path) -> dict:
    """The experiment's record of the run that wrote ``model_dir`` (it keeps the command), else its metrics.json."""
    run = model_dir.parent
    record = run.parent.parent / "records" / f"{run.name}.json"
    return json.loads((record if record.is_file() else run / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="saved model directories")
    parser.add_argument("--max-size", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    candidates = []
    for size in range(1, min(args.max_size, len(args.models)) + 1):
        for members in itertools.combinations(args.models, size):
            dev = evaluate_directory(list(members), args.data, "dev", args.device)
            candidates.append({"members": [str(m) for m in members], "dev": dev})
            print(f"dev nDCG@5 {100 * dev['nDCG@5']:.2f} P@1 {100 * dev['P@1']:.2f}: "
                  f"{' + '.join(str(m) for m in members)}", flush=True)
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
