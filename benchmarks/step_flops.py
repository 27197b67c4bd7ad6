"""Floating-point operations of one training step, base vs +LCENet, dense vs shortlist, from 4K to 500K labels.

    python benchmarks/step_flops.py                            # the cases of benchmarks/scale_step.py
    python benchmarks/step_flops.py --labels 13330 --ranks 1000 500 250 100

Where a step's time goes when it is compute-bound: on CPU the step is matrix products (MKL GEMMs), so the ratio
of +LCENet's FLOPs to the base's is about the lowest step-time ratio (``lcenet_step_ratio`` in
benchmarks/scale_step.py) that any implementation of the same products can reach. Each case counts the Trainer's
own ``optimizer_step`` (the models, batches and shortlist of benchmarks/scale_step.py: XML-CNN at its published
shape, batch 64) under ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix products and
convolutions, forward and backward (element-wise work, gathers and the optimizer's update count 0), and splits
them into LCENet's (what runs inside the LCENet module) and the base's (the rest of the same step). LCENet's own
FLOPs grow linearly with its rank R (every product it adds has R as one side), so ``max_rank_within_10_percent``
is the largest R at which LCENet adds at most 10% of the base's FLOPs: 0.1 · base / (added / R).
Writes benchmarks/results/step_flops.json (FLOPs do not depend on the device).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from scale_step import BATCH, LABELS, LENGTH, MODES, SHORTLIST, VOCAB, model_for, rank_for  # noqa: E402
from step_time import Timed, synthetic_split  # noqa: E402

from lcenet.config import TrainSettings  # noqa: E402
from lcenet.io import atomic_write_json  # noqa: E402
from lcenet.provenance import provenance  # noqa: E402


def step_flops(num_labels: int, mode: str, rank: int) -> tuple[int, int]:
    """FLOPs of one Trainer step of the +LCENet model: (all of it, LCENet's part), counted on the second step so
    that nothing built lazily on the first is counted. LCENet's part is what runs inside the LCENet module; the
    rest is the base's own step (counting a separate base model instead would compare two different shortlists:
    its candidates follow its weights, which LCENet's gradients have moved)."""
    model = model_for(num_labels, mode, "lcenet", rank)
    split = synthetic_split(BATCH * 3, LENGTH, VOCAB, num_labels)
    with tempfile.TemporaryDirectory() as run_dir:
        timed = Timed(model, split, num_labels, TrainSettings(batch_size=BATCH, device="cpu"), Path(run_dir))
        timed.step()
        with FlopCounterMode(display=False) as counter:
            timed.step()
    counts = counter.get_flop_counts()
    lcenet = min((name for name in counts if name.split(".")[-1] == "lcenet"), key=len)
    return counter.get_total_flops(), sum(counts[lcenet].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", nargs="+", type=int, default=list(LABELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--ranks", nargs="+", type=int, default=None,
                        help="LCENet ranks to count (default: CorNet's, benchmarks/scale_step.py rank_for)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "step_flops.json")
    args = parser.parse_args()
    record = {"benchmark": "step_flops", "command": " ".join(["python", *sys.argv]), "batch": BATCH,
              "max_length": LENGTH, "family": "xmlcnn", "shortlist": vars(SHORTLIST), "lcenet_blocks": 2,
              "torch_version": torch.__version__, **provenance(), "cases": []}
    started = time.perf_counter()
    for num_labels in args.labels:
        for mode in args.modes:
            for rank in args.ranks or [rank_for(num_labels)]:
                total, added = step_flops(num_labels, mode, rank)
                base = total - added
                case = {"num_labels": num_labels, "mode": mode, "rank": rank, "base_gflop": base / 1e9,
                        "lcenet_added_gflop": added / 1e9, "lcenet_flop_ratio": (base + added) / base,
                        "max_rank_within_10_percent": math.floor(0.1 * base / (added / rank)) if added > 0 else None}
                record["cases"].append(case)
                print(f"L={num_labels:>7,} {mode:9s} R={rank:>5} base {base / 1e9:7.1f} GFLOP, LCENet adds "
                      f"{added / 1e9:6.1f} (x{case['lcenet_flop_ratio']:.3f}); within 10%: "
                      f"R <= {case['max_rank_within_10_percent']}", flush=True)
                record["wall_seconds"] = time.perf_counter() - started
                atomic_write_json(args.output, record)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
