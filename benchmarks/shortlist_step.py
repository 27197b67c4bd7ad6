"""Training-step time and peak memory of shortlist LCENet against dense LCENet, from 4K to 500K labels.

    OMP_NUM_THREADS=1 python benchmarks/shortlist_step.py                 # CPU, the default cases
    python benchmarks/shortlist_step.py --labels 4271 501070 --modes shortlist dense --repeats 3
    OMP_NUM_THREADS=1 python benchmarks/shortlist_step.py --cluster-size 100 --modes shortlist shortlist-clusters
    ... --reuse-freed-memory      # glibc keeps freed memory, as a Trainer has it (train.reuse_freed_memory)
    ... --cluster-size 100 --row-orders clusters labels   # LCENet's tables in cluster order, and in label order

One step: forward of LCENet (2 blocks; R = 1000 up to 13K labels, 100 beyond, as CorNet) over random base
logits, mean BCE (over the valid candidates in shortlist mode, over all L labels in dense mode), backward, and
the optimizer step. Each document has K candidates (a random 90-100% of --candidates, distinct labels, padded
with -1 to the longest) holding its 5 positive labels; or, with ``--cluster-size S``, K / S whole clusters
(distinct random ones per document, from a random partition of the labels into clusters of S), as a shortlist
model's candidates come. Modes:

- ``shortlist``: ``sparse_gradients=True``; RowAdam on the [L, R] tables, fused Adam on the rest (biases). When
  the batch's candidates cover most labels (lcenet.lcenet.FULL_TABLES_MIN_FRACTION), LCENet computes over the
  whole tables and their gradients are dense.
- ``shortlist-gathered`` / ``shortlist-full-tables``: as ``shortlist``, but always through the batch's gathered
  rows and row-sparse gradients / always over the whole tables, however many labels the candidates cover (the
  two sides of the threshold).
- ``shortlist-dense-grad``: dense gradients (zero outside the batch's labels) and fused Adam on everything (the
  trainer's gradients under torchrun): the backward fills and Adam reads and writes all L·R of every table.
- ``shortlist-sparseadam``: sparse gradients with torch.optim.SparseAdam on the tables (always gathered rows:
  SparseAdam takes no dense gradient).
- ``shortlist-clusters``: as ``shortlist``, but LCENet is given the candidates' cluster ids (as a shortlist
  model gives them), so on the CPU it computes a cluster at a time (lcenet.cluster_products); needs
  ``--cluster-size``. Without the ids (the other modes) the same candidates take the per-label paths.
- ``shortlist-clusters-always``: as ``shortlist-clusters``, but a cluster at a time however few documents share
  each cluster (lcenet.lcenet.CLUSTER_GEMM_MIN_SHARING: the other side of that threshold).
- ``dense``: dense LCENet over all L logits, fused Adam.

With ``--cluster-size``, LCENet's tables are stored in the clusters' order, as after a shortlist model
(``LCENet.arrange_rows``: each cluster's rows a slice); ``--row-orders labels`` keeps them in label order (as
before that), ``--row-orders clusters labels`` runs both.

Every (L, mode) runs in its own process, so its peak RSS (ru_maxrss: the whole process, Python and torch
included) is its own. Writes benchmarks/results/shortlist_lcenet_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lcenet import lcenet as lcenet_module
from lcenet.allocator import reuse_freed_memory
from lcenet.io import atomic_write_json
from lcenet.lcenet import LCENet
from lcenet.pipeline import device_name
from lcenet.provenance import provenance
from lcenet.row_adam import RowAdam

MODES = ("shortlist", "shortlist-gathered", "shortlist-full-tables", "shortlist-dense-grad", "shortlist-sparseadam",
         "shortlist-clusters", "shortlist-clusters-always", "dense")
# sparse gradients, RowAdam tables
ROW_ADAM_MODES = ("shortlist", "shortlist-gathered", "shortlist-full-tables", "shortlist-clusters",
                  "shortlist-clusters-always")
CLUSTER_MODES = ("shortlist-clusters", "shortlist-clusters-always")  # LCENet is given the cluster ids
POSITIVES = 5


def rank_for(num_labels: int) -> int:
    return 1000 if num_labels <= 13_330 else 100


def batches(count: int, batch: int, candidates: int, num_labels: int, generator: torch.Generator):
    """(label_ids [B, K], targets [B, K], None) with each document's positives among its distinct candidates."""
    out = []
    for _ in range(count):
        lengths = torch.randint(int(0.9 * candidates), candidates + 1, (batch,), generator=generator)
        ids = torch.full((batch, candidates), -1, dtype=torch.long)
        targets = torch.zeros(batch, candidates)
        for doc, length in enumerate(lengths.tolist()):
            ids[doc, :length] = torch.randperm(num_labels, generator=generator)[:length]
            targets[doc, :POSITIVES] = 1
        out.append((ids, targets, None))
    return out


def cluster_batches(count: int, batch: int, candidates: int, num_labels: int, size: int,
                    generator: torch.Generator):
    """The labels in cluster order, and ``count`` batches (label_ids [B, K], targets [B, K], clusters
    [B, K / size]): each document's candidates are K / size distinct clusters of a random partition of the labels
    into clusters of ``size`` (the last one smaller, its block padded with -1), its positives among its first
    cluster's labels."""
    num_clusters = -(-num_labels // size)
    members = torch.full((num_clusters * size,), -1, dtype=torch.long)
    members[:num_labels] = torch.randperm(num_labels, generator=generator)
    members = members.view(num_clusters, size)
    out = []
    for _ in range(count):
        clusters = torch.stack([torch.randperm(num_clusters, generator=generator)[:candidates // size]
                                for _ in range(batch)])
        ids = members[clusters].view(batch, -1)
        targets = torch.zeros(ids.shape)
        targets[:, :POSITIVES] = 1
        out.append((ids, targets, clusters))
    return members[members >= 0], out


def run_case(num_labels: int, mode: str, batch: int, candidates: int, repeats: int, warmup: int,
             cluster_size: int | None, reuse_memory: bool, row_order: str) -> dict:
    if reuse_memory:
        reuse_freed_memory()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    rank = rank_for(num_labels)
    # This process runs this case only. SparseAdam needs row-sparse gradients, so it always gathers too.
    if mode in ("shortlist-gathered", "shortlist-sparseadam"):
        lcenet_module.FULL_TABLES_MIN_FRACTION = float("inf")
    elif mode == "shortlist-full-tables":
        lcenet_module.FULL_TABLES_MIN_FRACTION = 0.0
    elif mode == "shortlist-clusters-always":
        lcenet_module.CLUSTER_GEMM_MIN_SHARING = 0.0
    sparse = mode in ROW_ADAM_MODES or mode == "shortlist-sparseadam"
    net = LCENet(num_labels, rank=rank, blocks=2, sparse_gradients=sparse)
    tables = {id(table) for table in net.label_tables()}
    rest = [p for p in net.parameters() if id(p) not in tables]
    if mode in ROW_ADAM_MODES:
        optimizers = [RowAdam(net.label_tables(), lr=1e-3), torch.optim.Adam(rest, lr=1e-3, fused=True)]
    elif mode == "shortlist-sparseadam":
        optimizers = [torch.optim.SparseAdam(net.label_tables(), lr=1e-3), torch.optim.Adam(rest, lr=1e-3, fused=True)]
    else:
        optimizers = [torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)]
    if cluster_size:
        order, data = cluster_batches(warmup + repeats, batch, candidates, num_labels, cluster_size, generator)
        if row_order == "clusters":
            net.arrange_rows(order)
    else:
        data = batches(warmup + repeats, batch, candidates, num_labels, generator)
    if mode == "dense":  # the same positives, as a [B, L] target matrix
        data = [(None, torch.zeros(batch, num_labels).scatter_(1, ids[:, :POSITIVES], 1.0), None)
                for ids, _, _ in data]
    times = []
    for index, (ids, targets, clusters) in enumerate(data):
        logits = torch.randn(targets.shape, generator=generator).requires_grad_()
        started = time.perf_counter()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        out = net(logits, ids, clusters if mode in CLUSTER_MODES else None)
        if ids is None:
            loss = F.binary_cross_entropy_with_logits(out, targets)
        else:
            valid = ids >= 0
            loss = F.binary_cross_entropy_with_logits(out[valid], targets[valid])
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return {"num_labels": num_labels, "mode": mode, "rank": rank, "blocks": 2, "batch": batch,
            "candidates": None if mode == "dense" else candidates, "cluster_size": cluster_size,
            "reuse_freed_memory": reuse_memory, "row_order": row_order,
            "repeats": repeats, "warmup": warmup,
            "median_step_s": statistics.median(times), "step_s": times,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "parameters": net.num_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[4271, 100_000, 501_070])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=1500, help="K, the longest candidate list")
    parser.add_argument("--cluster-size", type=int, default=None,
                        help="candidates as K / S whole clusters of S labels (needed by shortlist-clusters)")
    parser.add_argument("--reuse-freed-memory", action="store_true",
                        help="keep freed memory for reuse, as a Trainer does (lcenet.allocator)")
    parser.add_argument("--row-orders", nargs="+", choices=("clusters", "labels"), default=None,
                        help="LCENet's table rows in cluster order (the default with --cluster-size) and/or in "
                             "label order")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--note", default="", help="recorded with the results (e.g. how busy the machine was)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--case", nargs=3, metavar=("LABELS", "MODE", "ROW_ORDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if set(CLUSTER_MODES) & set(args.modes) and not args.cluster_size:
        parser.error("--modes shortlist-clusters and shortlist-clusters-always need --cluster-size")
    row_orders = args.row_orders or ["clusters" if args.cluster_size else "labels"]
    if "clusters" in row_orders and not args.cluster_size:
        parser.error("--row-orders clusters needs --cluster-size")
    if args.case:  # one case, in this fresh process: print its result
        print(json.dumps(run_case(int(args.case[0]), args.case[1], args.batch, args.candidates, args.repeats,
                                  args.warmup, args.cluster_size, args.reuse_freed_memory, args.case[2])))
        return
    device = torch.device("cpu")
    record = {"benchmark": "shortlist_step", "device": str(device), "device_name": device_name(device),
              "torch_num_threads": torch.get_num_threads(), "command": " ".join(["python", *sys.argv]),
              "note": args.note, **provenance(), "cases": []}
    started = time.perf_counter()
    for num_labels, mode, row_order in itertools.product(args.labels, args.modes, row_orders):
        command = [sys.executable, __file__, "--case", str(num_labels), mode, row_order, "--batch", str(args.batch),
                   "--candidates", str(args.candidates), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                   *(["--cluster-size", str(args.cluster_size)] if args.cluster_size else []),
                   *(["--reuse-freed-memory"] if args.reuse_freed_memory else [])]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        record["cases"].append(result)
        print(f"L={num_labels:>7d} R={result['rank']:>4d} {mode:21s} rows in {row_order:8s} "
              f"{result['median_step_s'] * 1000:9.1f} ms/step  peak RSS {result['peak_rss_bytes'] / 2**30:6.2f} GiB",
              flush=True)
    record["wall_seconds"] = time.perf_counter() - started
    output = args.output or Path(__file__).parent / "results" / f"shortlist_lcenet_{device.type}.json"
    atomic_write_json(output, record)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
