"""Training-step time and peak memory of a whole model, dense vs shortlist, base vs +LCENet, from 4K to 500K labels.

    OMP_NUM_THREADS=1 python benchmarks/scale_step.py                      # CPU, the default cases
    python benchmarks/scale_step.py --device cuda --labels 4271 501070 --repeats 5
    OMP_NUM_THREADS=1 python benchmarks/scale_step.py --labels 13330 --bf16-cpu   # train.bf16_cpu's steps
    OMP_NUM_THREADS=1 python benchmarks/scale_step.py --glibc-malloc-defaults       # train.reuse_freed_memory off

Each step is the Trainer's own ``optimizer_step`` (as in benchmarks/step_time.py) of XML-CNN at its published
shape (T = 500, 300-d embeddings, 128 filters × widths 2/4/8, hidden 512), batch 64, on synthetic documents with
5 random labels each. Modes:

- ``dense``: every label scored ([B, L] logits and targets), fused Adam; LCENet dense.
- ``shortlist``: the trainer's shortlist mode (lcenet.shortlist): a cluster scorer over balanced clusters of 100
  labels (random ones: step time does not depend on which labels share a cluster), the top 10 clusters plus the
  true labels' clusters as candidates (K ≈ 1,000-1,500), label-id targets, row-sparse gradients for the output
  layer and LCENet's tables, RowAdam; LCENet in its shortlist mode (a cluster at a time on the CPU, from the
  candidates' cluster ids the shortlist passes on).

LCENet: 2 blocks, R = 1000 up to 13,330 labels and 100 beyond (CorNet's choice at 500K labels). Every (L, mode,
variant) runs in its own process, one after another, so its peak RSS (ru_maxrss: the whole process, Python and
torch included; on CUDA torch.cuda.max_memory_allocated) is its own. ``lcenet_step_ratio`` comes from a third
process that holds both models (the same initial weights and batches) and alternates their steps, base then
+LCENet, ``repeats`` pairs: the median of the per-pair ratios, which load that comes and goes on a shared
machine moves far less than a ratio of medians from two processes measured minutes apart
(``lcenet_step_ratio_separate``, kept beside it). Each process also times single-document prediction
(``predict_latency_ms``, p50 / p99 of 50 documents, batch 1, as ``lcenet predict`` runs; target at 500K labels
with the shortlist on one CPU thread: p50 ≤ 20 ms). Writes benchmarks/results/scale_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from step_time import Timed, sync, synthetic_split  # noqa: E402 -- the same timed Trainer step

from lcenet.candidates import LabelClusters  # noqa: E402
from lcenet.config import ShortlistSettings, TrainSettings  # noqa: E402
from lcenet.inference import TokenInputs, ensemble_top_k  # noqa: E402
from lcenet.io import atomic_write_json  # noqa: E402
from lcenet.pipeline import build, device_name  # noqa: E402
from lcenet.provenance import provenance  # noqa: E402
from lcenet.shortlist import shortlist_args  # noqa: E402
from lcenet.train import resolve_device  # noqa: E402

LABELS = (4271, 13_330, 100_000, 501_070)
MODES = ("dense", "shortlist")
VOCAB = 50_000
BATCH, LENGTH = 64, 500
SHORTLIST = ShortlistSettings(cluster_size=100, top_clusters=10)


def rank_for(num_labels: int) -> int:
    """CorNet's rank: 1000 up to AmazonCat-13K's 13,330 labels, 100 beyond (its choice at 500K)."""
    return 1000 if num_labels <= 13_330 else 100


def random_clusters(num_labels: int, size: int) -> LabelClusters:
    labels = np.random.default_rng(0).permutation(num_labels)
    return LabelClusters(np.r_[np.arange(0, num_labels, size), num_labels], labels)


def single_document_latency(model: torch.nn.Module, split, device: torch.device, repeats: int = 50,
                            warmup: int = 5) -> dict:
    """p50 / p99 milliseconds of predicting one document's top 5 as ``lcenet predict`` does (ensemble_top_k of
    one model, batch 1: host batch, forward, top-k, copy back), over distinct documents."""
    times = []
    for i in range(warmup + repeats):
        document = TokenInputs(split.inputs.ids[i % len(split): i % len(split) + 1], split.inputs.pad_id)
        sync(device)
        started = time.perf_counter()
        ensemble_top_k([model], [document], 5, device, batch_size=1)
        sync(device)
        times.append(time.perf_counter() - started)
    times = np.array(times[warmup:]) * 1000
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)), "repeats": repeats}


def model_for(num_labels: int, mode: str, variant: str, rank: int | None = None) -> torch.nn.Module:
    """The benchmark's XML-CNN, base or +LCENet (rank: CorNet's unless given), dense or with the shortlist."""
    lcenet = {"rank": rank or rank_for(num_labels), "blocks": 2} if variant == "lcenet" else None
    shortlist = mode == "shortlist"
    clusters = random_clusters(num_labels, SHORTLIST.cluster_size) if shortlist else None
    if lcenet is not None and shortlist:
        lcenet["sparse_gradients"] = True
    torch.manual_seed(0)
    return build("xmlcnn", {}, lcenet, num_labels, VOCAB,
                 shortlist_args(clusters, SHORTLIST, sparse_gradients=True) if shortlist else None, clusters)


def measure_pairs(num_labels: int, mode: str, device_arg: str, repeats: int, warmup: int, train: dict) -> dict:
    """Base and +LCENet in one process, steps alternating: the per-pair ratios' median. ``train``: the
    TrainSettings the command line sets."""
    device = resolve_device(device_arg)
    split = synthetic_split(BATCH * (warmup + repeats + 1), LENGTH, VOCAB, num_labels)
    settings = TrainSettings(batch_size=BATCH, device=str(device), **train)
    with tempfile.TemporaryDirectory() as run_dir:
        timed = [Timed(model_for(num_labels, mode, variant), split, num_labels, settings, Path(run_dir) / variant)
                 for variant in ("base", "lcenet")]
        for _ in range(warmup):
            for one in timed:
                one.step()
        pairs = [[one.step() for one in timed] for _ in range(repeats)]
    ratios = [head / base for base, head in pairs]
    return {"num_labels": num_labels, "mode": mode, "pairs_s": pairs, "lcenet_step_ratio": statistics.median(ratios),
            "device_name": device_name(device)}


def measure(num_labels: int, mode: str, variant: str, device_arg: str, repeats: int, warmup: int,
            train: dict) -> dict:
    device = resolve_device(device_arg)
    model = model_for(num_labels, mode, variant)
    lcenet = model.lcenet.config if variant == "lcenet" else None
    split = synthetic_split(BATCH * (warmup + repeats + 1), LENGTH, VOCAB, num_labels)
    settings = TrainSettings(batch_size=BATCH, device=str(device), **train)
    with tempfile.TemporaryDirectory() as run_dir:
        timed = Timed(model, split, num_labels, settings, Path(run_dir))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            timed.step()
        steps = [timed.step() for _ in range(repeats)]
        sync(device)
    latency = single_document_latency(model, split, device)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"num_labels": num_labels, "mode": mode, "variant": variant, "median_step_s": statistics.median(steps),
            "steps_s": steps, "peak_memory_gib": peak / 2**30, "lcenet_settings": lcenet,
            "predict_latency_ms": latency,
            "parameters": sum(p.numel() for p in model.parameters()), "device_name": device_name(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--labels", nargs="+", type=int, default=list(LABELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--one", nargs=3, metavar=("L", "MODE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--bf16-cpu", action="store_true", help="train.bf16_cpu: bf16 autocast on the CPU too")
    parser.add_argument("--glibc-malloc-defaults", action="store_true",
                        help="train.reuse_freed_memory off: glibc unmaps and trims freed memory as by default")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    train = {"bf16_cpu": args.bf16_cpu, "reuse_freed_memory": not args.glibc_malloc_defaults}
    if args.one:  # a child process: one measurement, as JSON on stdout
        labels, mode, variant = args.one
        result = (measure_pairs(int(labels), mode, args.device, args.repeats, args.warmup, train)
                  if variant == "pairs" else measure(int(labels), mode, variant, args.device, args.repeats,
                                                     args.warmup, train))
        print(json.dumps(result))
        return
    device = resolve_device(args.device)
    record = {"benchmark": "scale_step", "device": str(device), "device_name": device_name(device),
              "torch": torch.__version__, "command": " ".join(["python", *sys.argv]), "batch": BATCH,
              "max_length": LENGTH, "family": "xmlcnn", "shortlist": vars(SHORTLIST), **train,
              **provenance(),
              "load_average_at_start": os.getloadavg(), "cases": []}
    started = time.perf_counter()
    output = args.output or Path(__file__).parent / "results" / f"scale_{device.type}.json"
    for num_labels in args.labels:
        for mode in args.modes:
            case = {"num_labels": num_labels, "mode": mode}
            for variant in ("base", "lcenet", "pairs"):
                child = subprocess.run([sys.executable, __file__, "--one", str(num_labels), mode, variant,
                                        "--device", args.device, "--repeats", str(args.repeats),
                                        "--warmup", str(args.warmup), *(["--bf16-cpu"] if args.bf16_cpu else []),
                                        *(["--glibc-malloc-defaults"] if args.glibc_malloc_defaults else [])],
                                       capture_output=True, text=True)
                if child.returncode != 0:
                    case[variant] = {"error": child.stderr.strip().splitlines()[-1:]}
                    continue
                case[variant] = json.loads(child.stdout.strip().splitlines()[-1])
            if "median_step_s" in case.get("base", {}) and "median_step_s" in case.get("lcenet", {}):
                case["median_step_s"] = case["base"]["median_step_s"]
                case["peak_memory_gib"] = max(case["base"]["peak_memory_gib"], case["lcenet"]["peak_memory_gib"])
                case["lcenet_step_ratio_separate"] = case["lcenet"]["median_step_s"] / case["base"]["median_step_s"]
            if "lcenet_step_ratio" in case.get("pairs", {}):
                case["lcenet_step_ratio"] = case["pairs"]["lcenet_step_ratio"]
            record["cases"].append(case)
            base, head = case.get("base", {}), case.get("lcenet", {})
            latency = [item.get("predict_latency_ms", {}).get("p50", float("nan")) for item in (base, head)]
            print(f"L={num_labels:>7,} {mode:9s} base {base.get('median_step_s', float('nan')):7.3f} s "
                  f"({base.get('peak_memory_gib', float('nan')):5.2f} GiB) | +LCENet "
                  f"{head.get('median_step_s', float('nan')):7.3f} s ({head.get('peak_memory_gib', float('nan')):5.2f}"
                  f" GiB) | ratio {case.get('lcenet_step_ratio', float('nan')):.3f} paired, "
                  f"{case.get('lcenet_step_ratio_separate', float('nan')):.3f} separate | predict p50 "
                  f"{latency[0]:.1f} / {latency[1]:.1f} ms", flush=True)
            # After every case, so a run stopped by a time limit keeps the cases it finished.
            record["wall_seconds"] = time.perf_counter() - started
            record["finished"] = len(record["cases"]) == len(args.labels) * len(args.modes)
            atomic_write_json(output, record)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
