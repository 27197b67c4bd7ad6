"""Shared fixtures: tiny data sets written in the test's temp dir (no external data needed)."""

from __future__ import annotations

import importlib.util
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from lcenet.config import DataSettings, LCENetSettings, RunConfig, TrainSettings
from lcenet.models.feature_store import VectorMemo

TOPICS = {
    "fish": "fishing vessel catch quota sea",
    "milk": "milk dairy cheese cow",
    "tax": "tax customs duty tariff import",
    "car": "vehicle motor emission engine",
    "aid": "aid grant fund budget",
    "wine": "wine grape vineyard alcohol",
}


def write_tiny_dataset(directory: Path, docs=(60, 20, 20), seed: int = 0, with_dev: bool = True) -> Path:
    """Documents mixing 1-3 topics; each topic's words predict its label, and label pairs co-occur."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    directory.mkdir(parents=True, exist_ok=True)
    splits = ("train", "dev", "test") if with_dev else ("train", "test")
    for split, count in zip(splits, docs if with_dev else (docs[0], docs[2])):
        texts, labels = [], []
        for _ in range(count):
            chosen = list(rng.choice(names, size=rng.integers(1, 4), replace=False))
            if "fish" in chosen and "tax" not in chosen:
                chosen.append("tax")  # a correlation for LCENet to pick up
            words = [w for topic in chosen for w in TOPICS[topic].split()]
            words += ["regulation", "article", "council"]
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(" ".join(chosen))
        (directory / f"{split}_texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        (directory / f"{split}_labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(autouse=True)
def memos_of_this_test_only(monkeypatch):
    """A test's frozen readouts share their remembered vectors with each other, never with an earlier test's."""
    monkeypatch.setattr(VectorMemo, "_shared", weakref.WeakValueDictionary())
    monkeypatch.setattr(VectorMemo, "documents", VectorMemo.documents)  # undoes a test's VectorMemo.bound


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


def tiny_config(model: str = "xmlcnn", lcenet: bool = False, epochs: int = 2, **train) -> RunConfig:
    model_args = {
        "xmlcnn": {"embedding_dim": 16, "num_filters": 8, "hidden_dim": 16, "filter_sizes": [2, 3], "pool_chunks": 2},
        "attentionxml": {"embedding_dim": 16, "hidden_size": 8, "linear_sizes": [8]},
    }.get(model, {})
    return RunConfig(
        model=model, model_args=model_args, lcenet=LCENetSettings(rank=4) if lcenet else None,
        data=DataSettings(max_length=24, vocab_size=200, min_frequency=1),
        train=TrainSettings(**{"epochs": epochs, "batch_size": 8, "eval_batch_size": 16, "lr": 5e-3,
                               "log_every_steps": 2, "patience": None, "device": "cpu", **train}),
    )


@pytest.fixture
def tiny_bert(tmp_path):
    """A tiny random BERT checkpoint with a WordPiece tokenizer.json that adds [CLS] ... [SEP]."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    directory = tmp_path / "tiny-bert"
    words = sorted({w for topic in TOPICS.values() for w in topic.split()} | {"regulation", "article", "council"})
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=40)
    transformers.BertModel(config).save_pretrained(directory)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
