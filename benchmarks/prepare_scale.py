"""Data preparation at scale: generate a synthetic data set, then read and encode it as `lcenet preprocess` does.

    python benchmarks/prepare_scale.py --shape amazoncat13k --scale 0.02
    python benchmarks/prepare_scale.py --shape wiki500k --scale 1 --workers 8 --model sparse

Stages, each timed (wall seconds) with its peak resident memory (a thread samples /proc/self/statm every
10 ms; ru_maxrss gives the whole run's peak):

1. ``generate``: ``lcenet synth`` (a child process; its peak is the children's ru_maxrss) writes the files;
2. ``load``: :func:`lcenet.data.load_dataset` reads every split (texts into a temporary file, labels into CSR);
3. ``fit_encoder``: the family's encoder fitted on train (word tokenizer, or TF-IDF for ``--model sparse``);
4. ``encode_<split>``: each split encoded into the cache (token ids N x max_length int32, or TF-IDF CSR).

Stages 2-4 are :func:`lcenet.pipeline.prepare` step by step. Each scale runs in a fresh process (so memory
freed by one stage or scale does not hide the next one's growth). The record extrapolates to full scale
(scale 1) linearly in documents from the slope between the two largest scales, which removes fixed costs
(imports, process start-up); a vocabulary grows more slowly than the documents, so its share is
over-estimated. Each stage's peak RSS is extrapolated on its own slope and the largest is the full-scale peak
(``peak_stage`` names it): a TF-IDF fit on a fixed sample peaks highest at small scales but stays flat, while
encoding every document grows. It also gives, per document, what stays resident after preparation (the
texts' byte ranges, label CSRs, encoded inputs) times the full-scale document count; the texts themselves stay
in a temporary file. Targets: 8 GiB peak RSS; AmazonCat-13K-shape preparation (stages 2-4) within 15 minutes
at full scale.
Writes benchmarks/results/prepare_<shape>_scale<F>[_<model>]_cpu.json (no suffix for xmlcnn).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from lcenet import synth
from lcenet.config import RunConfig
from lcenet.data import load_dataset
from lcenet.inference import TokenInputs
from lcenet.io import atomic_write_json
from lcenet.pipeline import device_name, make_encoder
from lcenet.provenance import provenance

GIB = 2**30
PAGE = os.sysconf("SC_PAGE_SIZE")
TARGETS = {"peak_rss_gib": 8, "amazoncat13k_prepare_minutes_full_scale": 15}


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class Sampler:
    """The highest RSS seen since the last ``reset``, sampled in a background thread."""

    def __init__(self, interval: float = 0.01):
        self.peak = rss()
        self.interval = interval
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = rss()

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def input_nbytes(inputs) -> tuple[int, int]:
    """Bytes of an encoded split held in memory, and memory-mapped from the cache (token ids are written to and
    mapped from the cache file; TF-IDF CSR arrays are in memory)."""
    if isinstance(inputs, TokenInputs):
        return (0, inputs.ids.nbytes) if isinstance(inputs.ids, np.memmap) else (inputs.ids.nbytes, 0)
    features = inputs.features
    return features.data.nbytes + features.indices.nbytes + features.indptr.nbytes, 0


def stage(sampler: Sampler, stages: dict, name: str, work):
    sampler.reset()
    before = rss()
    started = time.perf_counter()
    result = work()
    sampler.peak = max(sampler.peak, rss())
    stages[name] = {"seconds": time.perf_counter() - started, "peak_rss_bytes": sampler.peak,
                    "rss_before_bytes": before, "rss_after_bytes": rss()}
    print(f"{name}: {stages[name]['seconds']:.1f} s, peak RSS {sampler.peak / GIB:.2f} GiB", file=sys.stderr)
    return result


def generate(settings: synth.SynthSettings, data_dir: Path, workers: int, stages: dict) -> dict:
    """Run `lcenet synth` in a child process, so this process's memory before ``load`` holds no generator
    leftovers; its peak RSS is the children's ru_maxrss."""
    command = [sys.executable, "-m", "lcenet", "synth", "--shape", settings.shape, "--scale", repr(settings.scale),
               "--seed", str(settings.seed), "--workers", str(workers), "--output", str(data_dir)]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    stages["generate"] = {"seconds": time.perf_counter() - started, "peak_rss_bytes": peak,
                          "command": " ".join(command[1:])}
    print(f"generate: {stages['generate']['seconds']:.1f} s, peak RSS {peak / GIB:.2f} GiB", file=sys.stderr)
    return json.loads((data_dir / "stats.json").read_text())


def measure(shape: str, scale: float, seed: int, workers: int, model: str, workdir: Path | None) -> dict:
    """One scale: every stage's time and peak RSS, and the bytes per document of what stays in memory."""
    work = workdir or Path(tempfile.mkdtemp(prefix="prepare_scale."))
    config = RunConfig(model=model)
    settings = synth.settings_for(shape, scale, None, seed)
    sampler = Sampler()
    stages: dict = {}
    try:
        data_dir, cache_dir = work / "data", work / "cache"
        stats = generate(settings, data_dir, workers, stages)
        data_bytes = sum(path.stat().st_size for path in data_dir.iterdir())
        dataset = stage(sampler, stages, "load", lambda: load_dataset(
            data_dir, dev_fraction=config.data.dev_fraction, dev_seed=config.data.dev_seed))
        splits = (dataset.train, dataset.dev, dataset.test)
        text_bytes = sum(split.texts.resident_bytes for split in splits)
        text_disk_bytes = sum(split.texts.utf8_bytes for split in splits)
        label_bytes = sum(split.labels.data.nbytes + split.labels.indices.nbytes + split.labels.indptr.nbytes
                          for split in splits)
        encoder = stage(sampler, stages, "fit_encoder", lambda: make_encoder(
            config, dataset.train.texts, cache_dir, dataset.source_hash))
        input_bytes = mapped_bytes = 0
        for split in splits:
            inputs = stage(sampler, stages, f"encode_{split.name}", lambda split=split: encoder.encode_cached(
                split.texts, cache_dir, dataset.source_hash, split.name))
            in_memory, mapped = input_nbytes(inputs)
            input_bytes, mapped_bytes = input_bytes + in_memory, mapped_bytes + mapped
    finally:
        sampler.stop()
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)
    docs = {name: split["docs"] for name, split in stats["generated"].items()}
    n_docs = sum(docs.values())
    return {
        "scale": scale, "docs": docs, "labels": stats["labels"], "generated": stats["generated"],
        "stages": stages,
        "prepare_seconds": sum(value["seconds"] for key, value in stages.items() if key != "generate"),
        "rss_before_load_bytes": stages["load"]["rss_before_bytes"],
        "peak_rss_after_generate_bytes": max(value["peak_rss_bytes"] for key, value in stages.items()
                                             if key != "generate"),
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "bytes_per_doc": {
            # What prepare() keeps until training starts: the texts' byte ranges (the texts are in a temporary
            # file), label CSRs, encoded inputs in memory (TF-IDF), and token ids memory-mapped from the cache
            # file (pages the OS loads as they are read and may drop; not counted as resident).
            "texts_in_memory": text_bytes / n_docs, "texts_on_disk": text_disk_bytes / n_docs,
            "label_csr": label_bytes / n_docs,
            "encoded_inputs": input_bytes / n_docs, "encoded_memory_mapped": mapped_bytes / n_docs,
            "gzip_on_disk": data_bytes / n_docs},
    }


def extrapolate(runs: list[dict], full_docs: int) -> dict:
    """Full scale from the slope between the two largest scales (fixed costs such as imports, process start
    and the tokenizer's vocabulary drop out), or in proportion when only one scale was run."""
    last = runs[-1]
    first = runs[-2] if len(runs) > 1 else {"docs": {}, "stages": {name: {"seconds": 0.0} for name in last["stages"]},
                                           "prepare_seconds": 0.0, "peak_rss_after_generate_bytes": 0}
    added = sum(last["docs"].values()) - sum(first["docs"].values())
    per_doc = {name: (last["stages"][name]["seconds"] - first["stages"][name]["seconds"]) / added
               for name in last["stages"]}
    # Each stage's peak on its own line: the largest peak at two small scales (e.g. a TF-IDF fit on a fixed
    # sample) need not be the one that grows fastest (encoding every document).
    stage_peaks = {name: last["stages"][name]["peak_rss_bytes"]
                   + (last["stages"][name]["peak_rss_bytes"] - first["stages"][name].get("peak_rss_bytes", 0))
                   / added * (full_docs - sum(last["docs"].values()))
                   for name in last["stages"] if name != "generate"}
    peak_stage = max(stage_peaks, key=stage_peaks.get)
    resident = sum(last["bytes_per_doc"][key] for key in ("texts_in_memory", "label_csr", "encoded_inputs"))
    return {
        "method": "slope between the two scales" if len(runs) > 1 else "proportional to documents",
        "docs": full_docs,
        "generate_minutes_one_worker": per_doc["generate"] * full_docs / 60,
        "prepare_minutes": sum(value for key, value in per_doc.items() if key != "generate") * full_docs / 60,
        "stage_minutes": {name: value * full_docs / 60 for name, value in per_doc.items()},
        "stage_peak_rss_gib": {name: value / GIB for name, value in stage_peaks.items()},
        "peak_rss_gib": stage_peaks[peak_stage] / GIB,
        "peak_stage": peak_stage,
        "resident_after_prepare_gib": {key: last["bytes_per_doc"][key] * full_docs / GIB
                                       for key in ("texts_in_memory", "label_csr", "encoded_inputs")}
        | {"total": resident * full_docs / GIB},
        "memory_mapped_gib": last["bytes_per_doc"].get("encoded_memory_mapped", 0) * full_docs / GIB,
        "gzip_on_disk_gib": last["bytes_per_doc"]["gzip_on_disk"] * full_docs / GIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(synth.SHAPES), default="amazoncat13k")
    parser.add_argument("--scale", type=float, nargs="+", default=[0.01, 0.02],
                        help="one or more scales, each measured in a fresh process (the largest names the record)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="generator processes")
    parser.add_argument("--model", default="xmlcnn", help="family whose encoder is fitted (xmlcnn: word ids; "
                        "sparse: TF-IDF)")
    parser.add_argument("--workdir", type=Path, help="where data and cache go (default: a temp dir, removed)")
    parser.add_argument("--output", type=Path, help="record path (default benchmarks/results/prepare_<shape>_"
                        "scale<F>[_MODEL]_cpu.json)")
    parser.add_argument("--measure-json", type=Path, help=argparse.SUPPRESS)  # a child process: one scale
    args = parser.parse_args()
    if args.measure_json:
        result = measure(args.shape, args.scale[0], args.seed, args.workers, args.model, args.workdir)
        args.measure_json.write_text(json.dumps(result))
        return
    started = time.perf_counter()
    runs = []
    scales = sorted(args.scale)
    with tempfile.TemporaryDirectory() as tmp:
        for scale in scales:
            child = [sys.executable, __file__, "--shape", args.shape, "--scale", repr(scale), "--seed", str(args.seed),
                     "--workers", str(args.workers), "--model", args.model, "--measure-json", f"{tmp}/run.json"]
            if args.workdir:
                child += ["--workdir", str(args.workdir / f"scale{scale:g}")]
            print(f"scale {scale:g}", file=sys.stderr)
            subprocess.run(child, check=True)
            runs.append(json.loads(Path(f"{tmp}/run.json").read_text()))
    suffix = "" if args.model == "xmlcnn" else f"_{args.model}"
    output = args.output or (Path(__file__).parent / "results"
                             / f"prepare_{args.shape}_scale{scales[-1]:g}{suffix}_cpu.json")
    full_docs = sum(synth.settings_for(args.shape, 1.0, None, args.seed).docs.values())
    config = RunConfig(model=args.model)
    record = {
        "benchmark": "prepare_scale",
        "command": " ".join(["python", *sys.argv]),
        **provenance(),
        "device": "cpu",
        "device_name": device_name(torch.device("cpu")),
        "cpu_count": os.cpu_count(),
        "threads": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS")},
        "shape": args.shape, "seed": args.seed, "model": args.model,
        "max_length": None if args.model == "sparse" else config.data.max_length,
        "runs": runs,
        "full_scale_extrapolation": extrapolate(runs, full_docs),
        "targets": TARGETS,
        "wall_seconds": time.perf_counter() - started,
    }
    atomic_write_json(output, record)
    print(json.dumps(record["full_scale_extrapolation"], indent=1), file=sys.stderr)
    print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
