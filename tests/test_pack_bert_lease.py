"""benchmarks/pack_bert_lease.py: pack -> unpack gives the same token ids, labels and (bf16-rounded) weights."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_dataset
from lcenet import data, text

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pack_bert_lease.py"
MAX_WORDS = 6  # the tiny documents have 8-18 words, so every one is cut


@pytest.fixture(scope="module")
def pack_script():
    spec = importlib.util.spec_from_file_location("pack_bert_lease", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(module, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["pack_bert_lease.py", *argv])
    module.main()


def test_pack_then_unpack_keeps_ids_labels_and_weights(pack_script, tiny_bert, tmp_path, monkeypatch):
    source = write_tiny_dataset(tmp_path / "data")
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    run(pack_script, monkeypatch, "pack", "--data", str(source), "--pretrained", str(tiny_bert),
        "--output", str(packed), "--max-words", str(MAX_WORDS))
    assert (packed / "encoder" / "model.safetensors.xz").is_file()
    run(pack_script, monkeypatch, "unpack", str(packed), str(unpacked))

    tokenizer = text.load_tokenizer(unpacked / "encoder" / "tokenizer.json")
    for split in ("train", "dev", "test"):
        texts, labels = zip(*data.iter_split(source, split))
        cut_texts, cut_labels = zip(*data.iter_split(unpacked, split))
        assert cut_labels == labels
        assert all(len(t.split()) == MAX_WORDS for t in cut_texts)
        np.testing.assert_array_equal(text.encode(tokenizer, cut_texts, MAX_WORDS),
                                      text.encode(tokenizer, texts, MAX_WORDS))
    weights = load_file(tiny_bert / "model.safetensors")
    restored_weights = load_file(unpacked / "encoder" / "model.safetensors")
    assert restored_weights.keys() == weights.keys()
    for name, tensor in weights.items():
        expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert torch.equal(restored_weights[name], expected), name


def test_pack_refuses_a_cut_that_changes_ids(pack_script, tiny_bert, tmp_path, monkeypatch):
    texts = [t for t, _ in data.iter_split(write_tiny_dataset(tmp_path / "data"), "train")]
    cut = [pack_script.first_words(t, 2) for t in texts]  # too few words to fill 12 tokens
    with pytest.raises(SystemExit, match="not lossless"):
        pack_script.check_lossless(texts, cut, tiny_bert / "tokenizer.json", 12)


def test_pack_without_a_dev_split(pack_script, tiny_bert, tmp_path, monkeypatch):
    source = write_tiny_dataset(tmp_path / "data", with_dev=False)
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    run(pack_script, monkeypatch, "pack", "--data", str(source), "--pretrained", str(tiny_bert),
        "--output", str(packed), "--max-words", str(MAX_WORDS))
    run(pack_script, monkeypatch, "unpack", str(packed), str(unpacked))
    assert not list(unpacked.glob("dev_*")) and not (tmp_path / "packed.partial").exists()
    assert len(data.load_dataset(unpacked).train) == len(data.load_dataset(source).train)
