"""Step-time and throughput benchmark: each model family with and without LCENet, side by side.

    python benchmarks/step_time.py                          # CPU, the default cases
    python benchmarks/step_time.py --device cuda --repeats 20 --paths host resident
    python benchmarks/step_time.py --device cuda --cases xmlcnn-4k --paths resident --compile reduce-overhead
    OMP_NUM_THREADS=2 python benchmarks/step_time.py --cases sparse-4k --paths host --bf16-cpu

Every timed step is the Trainer's own ``optimizer_step`` (batch gathering, autocast, BCE, the auxiliary loss
when set, gradient clipping, gradient accumulation, fused Adam), on a synthetic split of random token ids and
labels. For every case (family, number of labels L) the base model and base+LCENet, on each batch path (``host``:
slice on the host and copy each batch; ``resident``: the split lives on the device and batches are gathered
there), eager and, with ``--compile``, compiled (``train.compile``; compiled during warm-up), and with
``--bf16-cpu`` eager under ``train.bf16_cpu`` (bf16 autocast on the CPU), get identical
batches; their steps are timed in interleaved repeats, so machine noise hits all alike, and the median ratios
are reported. Inference docs/s comes from the same models in eval mode (eager). Writes a JSON record to
benchmarks/results/step_time_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from lcenet import with_lcenet
from lcenet.config import TrainSettings
from lcenet.inference import CsrInputs, SplitTensors, TokenInputs, autocast
from lcenet.io import atomic_write_json
from lcenet.models import build_model
from lcenet.pipeline import device_name
from lcenet.provenance import provenance
from lcenet.train import Trainer, resolve_device

# (family, L, batch, T, model_args); vocab is synthetic. For the sparse family T is the TF-IDF non-zeros per
# document (EURLEX57K's train split: 514 of 200,000 features) and its published batch is 512.
CASES = {
    "xmlcnn-4k": ("xmlcnn", 4271, 64, 500, {}),
    "xmlcnn-100k": ("xmlcnn", 100_000, 64, 500, {}),
    "attentionxml-4k": ("attentionxml", 4271, 16, 500, {}),
    "attentionxml-4k-b128": ("attentionxml", 4271, 128, 500, {}),  # the converged GPU profile's batch
    "bert-4k": ("bert", 4271, 16, 256, {}),
    "bert-4k-t512": ("bert", 4271, 16, 512, {}),  # the converged GPU profile's length
    "sparse-4k": ("sparse", 4271, 512, 514, {}),
}
DEFAULT_CASES = ["xmlcnn-4k", "xmlcnn-100k", "attentionxml-4k", "bert-4k", "sparse-4k"]
VOCAB = 50_000
TFIDF_FEATURES = 200_000


def tiny_bert_args() -> dict:
    """A MiniLM-L6-sized BERT built from its config (random weights: step time does not depend on them)."""
    return {"encoder_config": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
                               "num_attention_heads": 12, "intermediate_size": 1536,
                               "max_position_embeddings": 512}}


def make_model(family: str, num_labels: int, args: dict, lcenet: dict | None) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "bert":
        args = {**tiny_bert_args(), **args}
    vocab = TFIDF_FEATURES if family == "sparse" else VOCAB
    model = build_model(family, num_labels, vocab, **args)
    return model if lcenet is None else with_lcenet(model, num_labels, **lcenet)


def synthetic_split(num_docs: int, length: int, vocab: int, num_labels: int, tfidf: bool = False) -> SplitTensors:
    """Full-length random documents (token ids, or ``length`` TF-IDF non-zeros each) with about 5 labels each."""
    rng = np.random.default_rng(0)
    labels = sp.csr_matrix((np.ones(num_docs * 5, dtype=np.float32),
                            (np.repeat(np.arange(num_docs), 5), rng.integers(0, num_labels, size=num_docs * 5))),
                           shape=(num_docs, num_labels))
    labels.data[:] = 1
    if tfidf:
        columns = rng.integers(0, vocab, size=num_docs * length)
        features = sp.csr_matrix((rng.random(num_docs * length, dtype=np.float32),
                                  (np.repeat(np.arange(num_docs), length), columns)), shape=(num_docs, vocab))
        return SplitTensors(CsrInputs(features), labels)
    return SplitTensors(TokenInputs(rng.integers(1, vocab, size=(num_docs, length), dtype=np.int32), 0), labels)


class Timed:
    """One model on one batch path, stepping through its epoch order batch by batch."""

    def __init__(self, model, split, num_labels, settings: TrainSettings, run_dir: Path):
        self.trainer = Trainer(model, settings, split, split, num_labels, run_dir, progress=False)
        self.order = np.random.default_rng(0).permutation(len(split))
        self.trainer.start_epoch(self.order)
        self.position = 0

    def step(self) -> float:
        per_step = self.trainer.settings.batch_size
        if self.position + per_step > len(self.order):
            self.position = 0
        device = self.trainer.device
        sync(device)
        started = time.perf_counter()
        self.trainer.optimizer_step(self.position, self.position + per_step)
        sync(device)
        self.position += per_step
        return time.perf_counter() - started

    @torch.no_grad()
    def infer(self) -> float:
        trainer = self.trainer
        inputs, _ = trainer.batches.get(0)
        trainer.model.eval()
        sync(trainer.device)
        started = time.perf_counter()
        with autocast(trainer.device, trainer.settings.bf16):
            trainer.model(*inputs)
        sync(trainer.device)
        trainer.model.train()
        return time.perf_counter() - started


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_keys(paths: list[str], compile_modes: list[str], bf16_cpu: bool = False
                ) -> list[tuple[str, str, str | None, bool]]:
    """(key, batch path, compile mode, bf16_cpu) for every setting timed: each path eager, then each path
    compiled, then (``bf16_cpu``) each path eager with train.bf16_cpu."""
    return ([(path, path, None, False) for path in paths]
            + [(f"{path}+{mode}", path, mode, False) for mode in compile_modes for path in paths]
            + [(f"{path}+bf16_cpu", path, None, True) for path in paths if bf16_cpu])


def run_case(name: str, repeats: int, warmup: int, device, lcenet: dict, paths: list[str],
             compile_modes: list[str], bf16_cpu: bool, run_dir: Path) -> dict:
    family, num_labels, batch, length, args = CASES[name]
    vocab = {"bert": 30522, "sparse": TFIDF_FEATURES}.get(family, VOCAB)
    split = synthetic_split(batch * (warmup + repeats + 1), length, vocab, num_labels, tfidf=family == "sparse")
    timed = {}
    keys = timing_keys(paths, compile_modes, bf16_cpu)
    for key, path, mode, bf16 in keys:
        settings = TrainSettings(batch_size=batch, device=str(device), resident_batches=path == "resident",
                                 compile=mode, bf16_cpu=bf16)
        for variant, head in (("base", None), ("lcenet", lcenet)):
            timed[f"{variant}/{key}"] = Timed(make_model(family, num_labels, args, head), split, num_labels,
                                              settings, run_dir / f"{variant}-{key}")
    for _ in range(warmup):
        for item in timed.values():
            item.step()
    step = {key: [] for key in timed}
    infer = {key: [] for key in timed}
    for _ in range(repeats):  # interleaved, so machine noise hits every variant alike
        for key, item in timed.items():
            step[key].append(item.step())
            infer[key].append(item.infer())
    first = paths[0]

    def speedup(slow: str, fast: str) -> dict:
        return {v: statistics.median(a / b for a, b in zip(step[f"{v}/{slow}"], step[f"{v}/{fast}"]))
                for v in ("base", "lcenet")}

    result = {"family": family, "num_labels": num_labels, "batch": batch, "max_length": length,
              "lcenet_settings": lcenet, "repeats": repeats, "paths": [key for key, *_ in keys],
              "parameters": {v: sum(p.numel() for p in timed[f"{v}/{first}"].trainer.model.parameters())
                             for v in ("base", "lcenet")},
              "median_ratio": {key: statistics.median(b / a for a, b in zip(step[f"base/{key}"],
                                                                             step[f"lcenet/{key}"]))
                               for key, *_ in keys}}
    if {"host", "resident"} <= set(paths):
        result["resident_speedup"] = speedup("host", "resident")
    if compile_modes:
        result["compile_speedup"] = {key: speedup(path, key) for key, path, mode, _ in keys if mode}
    if bf16_cpu:
        result["bf16_cpu_speedup"] = {key: speedup(path, key) for key, path, _, bf16 in keys if bf16}
    for key in timed:
        median_step = statistics.median(step[key])
        result[key] = {"median_step_s": median_step, "train_docs_per_s": batch / median_step,
                       "infer_docs_per_s": batch / statistics.median(infer[key])}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=1000, help="LCENet rank R (default: CorNet's 1000)")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--paths", nargs="+", default=["host", "resident"], choices=["host", "resident"],
                        help="batch paths to time side by side (the trainer's default: resident on CUDA only)")
    parser.add_argument("--compile", nargs="*", default=[], choices=["default", "reduce-overhead", "max-autotune"],
                        help="also time each path with train.compile set to these modes (compiled in warm-up)")
    parser.add_argument("--bf16-cpu", action="store_true",
                        help="also time each path with train.bf16_cpu (bf16 autocast on the CPU; no effect on CUDA)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    lcenet = {"rank": args.rank, "blocks": args.blocks}
    record = {"benchmark": "step_time", "device": str(device), "device_name": device_name(device),
              "torch": torch.__version__, "command": " ".join(["python", *sys.argv]), **provenance(), "cases": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        for name in args.cases:
            result = run_case(name, args.repeats, args.warmup, device, lcenet, args.paths, args.compile,
                              args.bf16_cpu, Path(run_dir) / name)
            record["cases"].append(result)
            for path in result["paths"]:
                base, head = result[f"base/{path}"], result[f"lcenet/{path}"]
                print(f"{name:16s} {path:24s} base {base['median_step_s'] * 1000:8.1f} ms/step "
                      f"({base['train_docs_per_s']:8.1f} train docs/s, {base['infer_docs_per_s']:9.1f} infer) | "
                      f"+LCENet {head['median_step_s'] * 1000:8.1f} ms/step ({head['train_docs_per_s']:8.1f} / "
                      f"{head['infer_docs_per_s']:9.1f}) | ratio {result['median_ratio'][path]:.3f}", flush=True)
    record["wall_seconds"] = time.perf_counter() - started
    output = args.output or Path(__file__).parent / "results" / f"step_time_{device.type}.json"
    atomic_write_json(output, record)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
