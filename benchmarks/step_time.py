"""Step-time and throughput benchmark: each model family with and without LCENet, side by side.

    python benchmarks/step_time.py                          # CPU, the default cases
    python benchmarks/step_time.py --device cuda --repeats 20

For every case (family, number of labels L) the base model and base+LCENet get identical synthetic
batches; their training steps (forward + backward + Adam) are timed in interleaved repeats, so machine
noise hits both alike, and the median ratio is reported. Inference docs/s comes from the same models in
eval mode. Writes a JSON record to benchmarks/results/step_time_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lcenet import with_lcenet
from lcenet.io import atomic_write_json
from lcenet.models import build_model
from lcenet.pipeline import device_name
from lcenet.train import autocast, resolve_device

# (family, L, batch, T, model_args); vocab is synthetic.
CASES = {
    "xmlcnn-4k": ("xmlcnn", 4271, 64, 500, {}),
    "xmlcnn-100k": ("xmlcnn", 100_000, 64, 500, {}),
    "attentionxml-4k": ("attentionxml", 4271, 16, 500, {}),
    "bert-4k": ("bert", 4271, 16, 256, {}),
}
VOCAB = 50_000


def tiny_bert_args() -> dict:
    """A MiniLM-L6-sized BERT built from its config (random weights: step time does not depend on them)."""
    return {"encoder_config": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
                               "num_attention_heads": 12, "intermediate_size": 1536,
                               "max_position_embeddings": 512}}


def make_model(family: str, num_labels: int, args: dict, lcenet: dict | None, device) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "bert":
        args = {**tiny_bert_args(), **args}
    model = build_model(family, num_labels, VOCAB, **args)
    if lcenet is not None:
        model = with_lcenet(model, num_labels, **lcenet)
    return model.to(device)


def time_step(model, optimizer, ids, mask, targets, device) -> float:
    sync(device)
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, True):
        logits = model(ids, mask)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
    loss.backward()
    optimizer.step()
    sync(device)
    return time.perf_counter() - started


@torch.no_grad()
def time_inference(model, ids, mask, device) -> float:
    model.eval()
    sync(device)
    started = time.perf_counter()
    with autocast(device, True):
        model(ids, mask)
    sync(device)
    model.train()
    return time.perf_counter() - started


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, repeats: int, warmup: int, device, lcenet: dict) -> dict:
    family, num_labels, batch, length, args = CASES[name]
    generator = torch.Generator().manual_seed(0)
    vocab = 30522 if family == "bert" else VOCAB
    ids = torch.randint(1, vocab, (batch, length), generator=generator).to(device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    targets = (torch.rand(batch, num_labels, generator=generator) < 5 / num_labels).float().to(device)
    models = {"base": make_model(family, num_labels, args, None, device),
              "lcenet": make_model(family, num_labels, args, lcenet, device)}
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for k, m in models.items()}  # as the trainer
    for _ in range(warmup):
        for key in models:
            time_step(models[key], optimizers[key], ids, mask, targets, device)
    step = {k: [] for k in models}
    infer = {k: [] for k in models}
    for _ in range(repeats):  # interleaved: base, lcenet, base, lcenet, ...
        for key in models:
            step[key].append(time_step(models[key], optimizers[key], ids, mask, targets, device))
            infer[key].append(time_inference(models[key], ids, mask, device))
    ratios = [b / a for a, b in zip(step["base"], step["lcenet"])]
    result = {"family": family, "num_labels": num_labels, "batch": batch, "max_length": length,
              "lcenet_settings": lcenet, "repeats": repeats,
              "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
              "median_ratio": statistics.median(ratios)}
    for key in models:
        median_step = statistics.median(step[key])
        median_infer = statistics.median(infer[key])
        result[key] = {"median_step_s": median_step, "train_docs_per_s": batch / median_step,
                       "infer_docs_per_s": batch / median_infer}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=1000, help="LCENet rank R (default: CorNet's 1000)")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    lcenet = {"rank": args.rank, "blocks": args.blocks}
    record = {"benchmark": "step_time", "device": str(device), "device_name": device_name(device),
              "torch": torch.__version__, "command": " ".join(["python", *sys.argv]), "cases": []}
    started = time.perf_counter()
    for name in args.cases:
        result = run_case(name, args.repeats, args.warmup, device, lcenet)
        record["cases"].append(result)
        print(f"{name:18s} base {result['base']['median_step_s'] * 1000:9.1f} ms/step "
              f"({result['base']['train_docs_per_s']:8.1f} train docs/s, {result['base']['infer_docs_per_s']:9.1f} "
              f"infer docs/s) | +LCENet {result['lcenet']['median_step_s'] * 1000:9.1f} ms/step "
              f"({result['lcenet']['train_docs_per_s']:8.1f} / {result['lcenet']['infer_docs_per_s']:9.1f}) | "
              f"median ratio {result['median_ratio']:.3f}", flush=True)
    record["wall_seconds"] = time.perf_counter() - started
    output = args.output or Path(__file__).parent / "results" / f"step_time_{device.type}.json"
    atomic_write_json(output, record)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
