"""XML-CNN training throughput, lcenet vs LibMultiLabel, in one run on the same machine.

    make bench-env        # .venv-bench: lcenet + LibMultiLabel (not one of lcenet's dependencies)
    OMP_NUM_THREADS=2 .venv-bench/bin/python benchmarks/vs_libmultilabel.py
    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/vs_libmultilabel.py --libmultilabel-apart

Both networks get the published XML-CNN shape (T = 500 tokens, batch 64, L = 4,271 labels, 300-d embeddings,
widths 2/4/8 with 128 filters each, 8 pooled chunks, a 512-unit hidden layer) and the same random batches.
lcenet's step is the Trainer's own ``optimizer_step`` (host batches from a token-id array, BCE, gradient
clipping, fused Adam), in fp32 (the default) and with ``train.bf16_cpu`` (bf16 autocast on the CPU, opt-in);
LibMultiLabel's is its network's forward, BCE and the Adam step its trainer uses, in fp32. Steps rotate
between the three so machine noise hits all alike; docs/s is batch / median step time.

The process's memory allocator is shared by all three: lcenet's Trainer keeps freed memory for reuse
(``train.reuse_freed_memory``, lcenet.allocator), so in one process LibMultiLabel's steps get that too. With
``--libmultilabel-apart`` LibMultiLabel's steps run first in a process of their own, with glibc's allocator as
LibMultiLabel's users have it, on the same batches; then lcenet's two rotate. Run it on a quiet machine: the two
halves no longer share the machine's noise.
Writes benchmarks/results/vs_libmultilabel_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lcenet.config import TrainSettings
from lcenet.inference import EpochBatches
from lcenet.io import atomic_write_json
from lcenet.models import build_model
from lcenet.pipeline import device_name
from lcenet.provenance import provenance
from lcenet.train import Trainer, resolve_device

sys.path.insert(0, str(Path(__file__).parent))
from step_time import synthetic_split  # noqa: E402

LABELS, BATCH, LENGTH, VOCAB, EMBEDDING = 4271, 64, 500, 50_000, 300


def libmultilabel_step(network, optimizer, ids: torch.Tensor, targets: torch.Tensor) -> float:
    started = time.perf_counter()
    optimizer.zero_grad()
    logits = network({"text": ids})["logits"]
    F.binary_cross_entropy_with_logits(logits, targets).backward()
    optimizer.step()
    return time.perf_counter() - started


def libmultilabel_network():
    """LibMultiLabel's XMLCNN at the published shape, with the Adam its trainer uses."""
    from libmultilabel.nn.networks.xml_cnn import XMLCNN as LibMultiLabelXMLCNN

    network = LibMultiLabelXMLCNN(torch.randn(VOCAB, EMBEDDING), LABELS, filter_sizes=[2, 4, 8], hidden_dim=512,
                                  num_filter_per_size=128, num_pool=8, embed_dropout=0.2, post_encoder_dropout=0.5)
    return network, torch.optim.Adam(network.parameters(), lr=1e-3)


def libmultilabel_alone(split, warmup: int, repeats: int) -> list[float]:
    """LibMultiLabel's step times in this process (no lcenet Trainer in it), on the batches lcenet's get."""
    theirs, their_optimizer = libmultilabel_network()
    batches = EpochBatches(split, LABELS, BATCH, torch.device("cpu"), resident=False)
    batches.start_epoch(np.arange(len(split)))
    times = []
    for repeat in range(warmup + repeats):
        inputs, targets = batches.get(repeat * BATCH)
        seconds = libmultilabel_step(theirs, their_optimizer, inputs[0], targets)
        if repeat >= warmup:
            times.append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--libmultilabel-apart", action="store_true",
                        help="LibMultiLabel's steps first, in a process of its own (glibc's allocator as it comes)")
    parser.add_argument("--libmultilabel-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    split = synthetic_split(BATCH * (args.warmup + args.repeats + 1), LENGTH, VOCAB, LABELS)
    if args.libmultilabel_only:  # the child of --libmultilabel-apart: its times as JSON on stdout
        print(json.dumps(libmultilabel_alone(split, args.warmup, args.repeats)))
        return

    device = resolve_device("cpu")
    load_before = os.getloadavg()
    apart = None
    if args.libmultilabel_apart:
        child = subprocess.run([sys.executable, __file__, "--libmultilabel-only", "--repeats", str(args.repeats),
                                "--warmup", str(args.warmup)], check=True, capture_output=True, text=True)
        apart = json.loads(child.stdout.strip().splitlines()[-1])

    def ours():
        torch.manual_seed(0)
        return build_model("xmlcnn", LABELS, VOCAB, embedding_dim=EMBEDDING, filter_sizes=[2, 4, 8], num_filters=128,
                           pool_chunks=8, hidden_dim=512)

    theirs, their_optimizer = libmultilabel_network() if apart is None else (None, None)
    with tempfile.TemporaryDirectory() as run_dir:
        trainers = {name: Trainer(ours(), TrainSettings(batch_size=BATCH, device="cpu", bf16_cpu=bf16), split, split,
                                  LABELS, Path(run_dir) / name, progress=False)
                    for name, bf16 in (("lcenet", False), ("lcenet_bf16_cpu", True))}
        order = np.arange(len(split))
        for trainer in trainers.values():
            trainer.start_epoch(order)
        times = {"lcenet": [], "lcenet_bf16_cpu": [], "libmultilabel": []}
        for repeat in range(args.warmup + args.repeats):
            start = repeat * BATCH
            inputs, targets = trainers["lcenet"].batches.get(start)
            seconds = {}
            for name, trainer in trainers.items():
                started = time.perf_counter()
                trainer.optimizer_step(start, start + BATCH)
                seconds[name] = time.perf_counter() - started
            if apart is None:
                seconds["libmultilabel"] = libmultilabel_step(theirs, their_optimizer, inputs[0], targets)
            if repeat >= args.warmup:
                for name, value in seconds.items():
                    times[name].append(value)
    if apart is not None:
        times["libmultilabel"] = apart
    docs_per_s = {name: BATCH / statistics.median(values) for name, values in times.items()}
    import libmultilabel

    record = {"benchmark": "vs_libmultilabel", "device": str(device), "device_name": device_name(device),
              "command": " ".join(["python", *sys.argv]), **provenance(),
              "libmultilabel_version": getattr(libmultilabel, "__version__", None) or _version("libmultilabel"),
              "shape": {"labels": LABELS, "batch": BATCH, "max_length": LENGTH, "embedding_dim": EMBEDDING,
                        "filter_sizes": [2, 4, 8], "num_filters": 128, "pool_chunks": 8, "hidden_dim": 512},
              "repeats": args.repeats, "threads": torch.get_num_threads(),
              "libmultilabel_process": "own, glibc malloc defaults" if apart is not None else "shared with lcenet's",
              # other processes' load skews both sides alike but not fully: rerun on a quiet machine to claim speed
              "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
              "median_step_s": {k: statistics.median(v) for k, v in times.items()},
              "train_docs_per_s": docs_per_s,
              "speedup_vs_libmultilabel": docs_per_s["lcenet"] / docs_per_s["libmultilabel"],
              "speedup_vs_libmultilabel_bf16_cpu": docs_per_s["lcenet_bf16_cpu"] / docs_per_s["libmultilabel"]}
    output = args.output or Path(__file__).parent / "results" / f"vs_libmultilabel_{device.type}.json"
    atomic_write_json(output, record)
    print(f"lcenet {docs_per_s['lcenet']:.1f} docs/s (bf16_cpu {docs_per_s['lcenet_bf16_cpu']:.1f}), LibMultiLabel "
          f"{docs_per_s['libmultilabel']:.1f} docs/s: x{record['speedup_vs_libmultilabel']:.2f} "
          f"(x{record['speedup_vs_libmultilabel_bf16_cpu']:.2f}) ({device_name(device)}); wrote {output}")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
