"""One real training epoch of the sparse TF-IDF family on EURLEX57K, base vs +LCENet, fp32 vs train.bf16_cpu.

    OMP_NUM_THREADS=2 python benchmarks/sparse_epoch.py --data ../shared/data/EURLEX57K

Each variant is ``lcenet train`` with configs/eurlex57k_sparse.yaml (all 45,000 train documents, batch 512) for
one epoch, in its own process, one after another; the TF-IDF features come from the preprocessing cache after
the first. ``epoch_train_seconds`` is the run's own ``train_seconds`` (the training steps, batch building
included, dev evaluation excluded); ``train_docs_per_s`` = train documents / that. The one-epoch dev and test
scores are recorded as a check that bf16 does not break training, not as results (one epoch is far from
converged). Target (issue #10): one epoch with LCENet in ≤ 60 s on 2 CPU cores. LCENet: the package defaults
(R = 1000, 2 blocks) unless ``--set`` changes them. Writes benchmarks/results/sparse_epoch_cpu.json.
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

from lcenet.io import atomic_write_json
from lcenet.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {  # name: extra `lcenet train` arguments
    "base": ["--no-lcenet"],
    "base+bf16_cpu": ["--no-lcenet", "--set", "train.bf16_cpu=true"],
    "lcenet": ["--lcenet"],
    "lcenet+bf16_cpu": ["--lcenet", "--set", "train.bf16_cpu=true"],
}


def run_variant(name: str, data: Path, extra: list[str], run_dir: Path, cache: Path) -> dict:
    command = [sys.executable, "-m", "lcenet", "train", "--data", str(data), "--config",
               str(ROOT / "configs/eurlex57k_sparse.yaml"), "--epochs", "1", "--output", str(run_dir),
               "--cache-dir", str(cache), "--no-progress", *extra]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"{name}: `lcenet train` failed (exit {finished.returncode}):\n{finished.stderr}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"epoch_train_seconds": metrics["train_seconds"],
            "train_docs_per_s": metrics["train_docs"] / metrics["train_seconds"],
            "train_docs": metrics["train_docs"], "wall_seconds": time.perf_counter() - started,
            "parameters": metrics["parameters"], "lcenet_settings": metrics["lcenet_settings"],
            "dev_after_one_epoch": {k: metrics["dev"][k] for k in ("P@1", "nDCG@5")},
            "test_after_one_epoch": {k: metrics["test"][k] for k in ("P@1", "nDCG@5")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the EURLEX57K directory")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cache-dir", type=Path, default=None, help="preprocessing cache (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/sparse_epoch_cpu.json")
    args = parser.parse_args()
    record = {"benchmark": "sparse_epoch", "device": "cpu", "threads": int(os.environ.get("OMP_NUM_THREADS", 0)),
              "load_average_before": os.getloadavg(), "command": " ".join(["python", *sys.argv]), **provenance(),
              "variants": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or Path(scratch) / "cache"
        for name in args.variants:
            result = run_variant(name, args.data, VARIANTS[name], Path(scratch) / name, cache)
            record["variants"][name] = result
            print(f"{name:18s} {result['epoch_train_seconds']:7.1f} s/epoch ({result['train_docs_per_s']:7.1f} "
                  f"train docs/s); after one epoch dev P@1 {result['dev_after_one_epoch']['P@1']:.4f}", flush=True)
    record["wall_seconds"] = time.perf_counter() - started
    atomic_write_json(args.output, record)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
