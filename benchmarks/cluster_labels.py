"""Label clustering at scale: wall time and peak memory of :func:`lcenet.candidates.cluster_labels`.

    python benchmarks/cluster_labels.py                              # L = 13,330 / 100,000 / 501,070
    python benchmarks/cluster_labels.py --labels 13330 100000 --note "CPU shared with other jobs"

Label features are synthetic (clustering time depends on the nonzeros, not on where they came from): each label
has 100-300 nonzeros over 200K features (uniform), half drawn from its topic's 500-word vocabulary (a topic per
50 labels) and half from a power-law global vocabulary, weighted by an idf-like factor and l2-normalised — the
shape of TF-IDF label centroids. Each L runs in a fresh subprocess, so its memory is its own: the peak RSS of the
clustering alone is read from the kernel's high-water mark (VmHWM) after resetting it once the features exist,
and ``process_peak_rss_gib`` includes generating the features. ``cpu_seconds`` (user + system of the clustering)
is less disturbed than wall time when other jobs share the CPU. Writes
benchmarks/results/cluster_labels_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.preprocessing import normalize

from lcenet.candidates import cluster_labels
from lcenet.io import atomic_write_json
from lcenet.provenance import provenance

NUM_FEATURES = 200_000
NNZ_RANGE = (100, 300)
LABELS_PER_TOPIC, TOPIC_WORDS = 50, 500
CHUNK_LABELS = 50_000


def synthetic_label_features(num_labels: int, seed: int = 0) -> sp.csr_matrix:
    """TF-IDF-like label centroids ``[L, 200K]`` (see the module docstring), generated in chunks of labels."""
    rng = np.random.default_rng(seed)
    num_topics = max(1, num_labels // LABELS_PER_TOPIC)
    topic_words = rng.integers(0, NUM_FEATURES, (num_topics, TOPIC_WORDS), dtype=np.int32)
    topic = rng.integers(0, num_topics, num_labels)
    chunks = []
    for start in range(0, num_labels, CHUNK_LABELS):
        labels = np.arange(start, min(start + CHUNK_LABELS, num_labels))
        counts = rng.integers(NNZ_RANGE[0], NNZ_RANGE[1] + 1, len(labels))
        rows = np.repeat(np.arange(len(labels), dtype=np.int32), counts)
        from_topic = rng.random(len(rows)) < 0.5
        columns = np.where(from_topic, topic_words[topic[labels][rows], rng.integers(0, TOPIC_WORDS, len(rows))],
                           (NUM_FEATURES * rng.random(len(rows)) ** 2).astype(np.int32))
        values = rng.random(len(rows)) * np.log1p(NUM_FEATURES / (columns + 1.0)) / np.log1p(NUM_FEATURES)
        chunk = sp.csr_matrix((values.astype(np.float32), (rows, columns)), shape=(len(labels), NUM_FEATURES))
        chunk.sum_duplicates()
        chunks.append(chunk)
    return normalize(sp.vstack(chunks, format="csr"), copy=False)


def _rss_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB
    return float("nan")


def run_case(num_labels: int, max_cluster_size: int, seed: int) -> dict:
    """One L in this process: generate, reset the RSS high-water mark, cluster, measure."""
    started = time.perf_counter()
    features = synthetic_label_features(num_labels, seed)
    generate_seconds = time.perf_counter() - started
    process_peak = _rss_gib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    rss_before = _rss_gib("VmRSS")
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    clusters = cluster_labels(features, max_cluster_size=max_cluster_size, seed=seed)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    sizes = clusters.sizes
    return {"labels": num_labels, "features": NUM_FEATURES, "nnz": int(features.nnz),
            "feature_matrix_gib": (features.data.nbytes + features.indices.nbytes + features.indptr.nbytes) / 2**30,
            "generate_seconds": generate_seconds, "seconds": seconds,
            "cpu_seconds": (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime),
            "rss_before_gib": rss_before, "peak_rss_gib": _rss_gib("VmHWM"),
            "process_peak_rss_gib": max(process_peak, _rss_gib("VmHWM")),
            "clusters": clusters.num_clusters, "max_cluster_size": int(sizes.max()),
            "min_cluster_size": int(sizes.min()), "depth": len(clusters.settings["iterations_per_level"]),
            "iterations_per_level": clusters.settings["iterations_per_level"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=[13_330, 100_000, 501_070])
    parser.add_argument("--max-cluster-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "cluster_labels_cpu.json")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: run one L, print its JSON
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.max_cluster_size, args.seed)))
        return
    record = {"benchmark": "cluster_labels", "command": " ".join(["python", *sys.argv]), **provenance(),
              "device": f"CPU, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
              "load_average_at_start": os.getloadavg(), "note": args.note, "max_cluster_size": args.max_cluster_size,
              "seed": args.seed, "cases": []}
    print(f"{'labels':>8} {'nnz':>11} {'seconds':>8} {'cpu s':>7} {'peak GiB':>9} {'clusters':>8} {'sizes':>9}")
    for num_labels in args.labels:
        child = subprocess.run([sys.executable, __file__, "--case", str(num_labels), "--seed", str(args.seed),
                                "--max-cluster-size", str(args.max_cluster_size)],
                               capture_output=True, text=True, check=True)
        case = json.loads(child.stdout.splitlines()[-1])
        record["cases"].append(case)
        print(f"{num_labels:>8} {case['nnz']:>11,} {case['seconds']:>8.1f} {case['cpu_seconds']:>7.1f} "
              f"{case['peak_rss_gib']:>9.2f} {case['clusters']:>8} "
              f"{case['min_cluster_size']:>4}-{case['max_cluster_size']:<4}", flush=True)
    record["load_average_at_end"] = os.getloadavg()
    atomic_write_json(args.output, record)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
