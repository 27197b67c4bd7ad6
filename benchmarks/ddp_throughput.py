"""Training throughput with 1 vs N torchrun processes (DistributedDataParallel), at the same global batch.

    python benchmarks/ddp_throughput.py --processes 1 2 --device cpu      # gloo, 1 thread per process
    python benchmarks/ddp_throughput.py --processes 1 2 4 8 --device cuda  # NCCL, one GPU per process

For every process count N it starts ``torchrun --nproc-per-node N`` on this script (``--worker``). Each rank
builds the same synthetic split (random token ids and labels) and model (XML-CNN + LCENet), takes its shard of
each global batch exactly as ``lcenet train`` does (:func:`lcenet.distributed.shard_epoch`), and times the
Trainer's own ``optimizer_step`` (forward, BCE, backward with DDP's gradient all-reduce, clipping, Adam) after
warm-up steps. Train docs/s = global batch x steps / seconds of the slowest rank (they wait for each other in
every all-reduce). N = 1 is the plain single-process trainer (no DDP wrapper). Writes a JSON record to
benchmarks/results/ddp_throughput_<device>.json and prints a table.

On CPU this shows that the machinery works, not a speed-up to expect: the processes share the machine's cores
(and, on a shared machine, with other jobs); each runs one thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lcenet import distributed, with_lcenet
from lcenet.config import TrainSettings
from lcenet.io import atomic_write_json
from lcenet.models import build_model
from lcenet.pipeline import device_name
from lcenet.provenance import provenance
from lcenet.train import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from step_time import synthetic_split  # noqa: E402

VOCAB = 20_000


def worker(args: argparse.Namespace) -> None:
    """One rank: time ``args.steps`` optimizer steps of the global batch; rank 0 writes the result."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    settings = TrainSettings(batch_size=args.batch, device=args.device, seed=0)
    steps = args.warmup + args.steps
    split = synthetic_split(args.batch * steps, args.length, VOCAB, args.labels)  # seeded: the same on every rank
    with distributed.process_group(args.device), tempfile.TemporaryDirectory() as run_dir:
        torch.manual_seed(0)
        model = with_lcenet(build_model("xmlcnn", args.labels, VOCAB), args.labels, rank=args.rank)
        trainer = Trainer(model, settings, split, split, args.labels, run_dir, progress=False)
        trainer.start_epoch(np.arange(len(split)))
        trainer.model.train()

        def run(first: int, count: int) -> float:
            distributed.barrier()
            started = time.perf_counter()
            for step in range(first, first + count):
                loss = trainer.optimizer_step(step * args.batch, (step + 1) * args.batch)
            float(loss)  # waits for the device
            distributed.barrier()  # the slowest rank's time
            return time.perf_counter() - started

        run(0, args.warmup)
        seconds = run(args.warmup, args.steps)
        if distributed.is_main():
            Path(args.result).write_text(json.dumps({
                "processes": trainer.world_size, "seconds": seconds,
                "train_docs_per_s": args.batch * args.steps / seconds,
                "local_batch": trainer.batches.batch_size, "device": str(trainer.device),
                "device_name": device_name(trainer.device)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (each rank on cuda:LOCAL_RANK)")
    parser.add_argument("--batch", type=int, default=64, help="global batch (every N must divide it)")
    parser.add_argument("--length", type=int, default=500, help="tokens per document")
    parser.add_argument("--labels", type=int, default=4271)
    parser.add_argument("--rank", type=int, default=1000, help="LCENet rank R")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--note", default=None, help="recorded as is, e.g. what else loaded the machine")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    shape = ["--device", args.device, "--batch", str(args.batch), "--length", str(args.length), "--labels",
             str(args.labels), "--rank", str(args.rank), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    runs = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for count in args.processes:
            result = Path(scratch) / f"{count}.json"
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                            str(count), __file__, "--worker", "--result", str(result), *shape], env=env, check=True)
            runs.append(json.loads(result.read_text()))
            print(f"{count} process{'es' if count > 1 else '  '}: {runs[-1]['train_docs_per_s']:9.1f} train docs/s "
                  f"(local batch {runs[-1]['local_batch']}, {runs[-1]['device_name']})", flush=True)
    baseline = runs[0]["train_docs_per_s"] if runs[0]["processes"] == 1 else None
    for run in runs:
        run["speedup_vs_1"] = run["train_docs_per_s"] / baseline if baseline else None
    device = runs[0]["device"].split(":")[0]
    record = {"benchmark": "ddp_throughput", "device": device, "device_name": runs[0]["device_name"],
              "command": shlex.join(["python", *sys.argv]), "omp_num_threads": env["OMP_NUM_THREADS"],
              "cpu_count": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
              "shape": {"model": "xmlcnn+lcenet", "global_batch": args.batch, "max_length": args.length,
                        "num_labels": args.labels, "lcenet_rank": args.rank, "timed_steps": args.steps,
                        "warmup_steps": args.warmup},
              "note": args.note, **provenance(), "runs": runs, "wall_seconds": time.perf_counter() - started}
    output = args.output or Path(__file__).parent / "results" / f"ddp_throughput_{device}.json"
    atomic_write_json(output, record)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
