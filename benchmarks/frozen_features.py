"""What keeping a frozen encoder's document vectors on disk saves: ``lcenet evaluate`` of a frozen-encoder model
on one split, first with an empty cache directory (every document is encoded and its vector kept), then again
with the cache the first run filled (the vectors are read), each in its own process.

    OMP_NUM_THREADS=1 python benchmarks/frozen_features.py --data ../shared/data/EURLEX57K \
        --model RUN_DIR/model --split dev --output benchmarks/results/frozen_features_cpu.json

The model is any saved ``bert`` or ``bert_sparse`` model trained with ``model_args.freeze_encoder: true``. Both
runs must print the same metrics (the kept vectors are the encoder's); the record keeps both runs' wall times and
their ratio. The second run still tokenizes the split and runs the head, so the ratio is what a grid's later cell
saves per evaluation, not the encoder's share alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lcenet.io import atomic_write_json, read_model_config
from lcenet.provenance import provenance


def evaluate(model: Path, data: Path, split: str, cache: Path) -> tuple[dict, float]:
    command = [sys.executable, "-m", "lcenet", "evaluate", str(model), "--data", str(data), "--split", split,
               "--device", "cpu", "--cache-dir", str(cache)]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"`lcenet evaluate` failed (exit {finished.returncode}):\n{finished.stderr}")
    return json.loads(finished.stdout), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="a saved frozen-encoder model directory")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    model_args = read_model_config(args.model)["model_args"]
    if not model_args.get("freeze_encoder"):
        sys.exit(f"{args.model}: not trained with model_args.freeze_encoder: true")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        first, empty_seconds = evaluate(args.model, args.data, args.split, Path(cache))
        second, filled_seconds = evaluate(args.model, args.data, args.split, Path(cache))
    atomic_write_json(args.output, {
        "benchmark": "frozen_features", "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "model": str(args.model), "model_args": model_args, "split": args.split,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None, "load_average_1min": os.getloadavg()[0],
        "evaluate_seconds": {"empty_cache": empty_seconds, "filled_cache": filled_seconds},
        "speedup": empty_seconds / filled_seconds, "same_metrics": first == second, "metrics": second,
        "wall_seconds": time.perf_counter() - started, **provenance()})
    print(f"{args.split}: {empty_seconds:.1f} s with an empty cache, {filled_seconds:.1f} s with the kept vectors "
          f"(x{empty_seconds / filled_seconds:.2f}); same metrics: {first == second}")


if __name__ == "__main__":
    main()
