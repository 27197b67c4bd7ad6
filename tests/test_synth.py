"""lcenet.synth / `lcenet synth`: requested statistics, determinism, atomic output, a learnable signal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from lcenet import synth
from lcenet.cli import app
from lcenet.data import load_dataset
from lcenet.errors import UserError
from lcenet.pipeline import run_training

runner = CliRunner()
FILES = ("train_texts.txt.gz", "train_labels.txt.gz", "dev_texts.txt.gz", "dev_labels.txt.gz",
         "test_texts.txt.gz", "test_labels.txt.gz", "groups.txt.gz", "stats.json")


def make(tmp_path, name="data", shape="amazoncat13k", scale=0.0005, labels=500, seed=0, workers=1):
    output = tmp_path / name
    stats = synth.generate(synth.settings_for(shape, scale, labels, seed), output, workers)
    return output, stats


def test_sizes_and_statistics_match_the_shape(tmp_path):
    output, stats = make(tmp_path)
    assert sorted(p.name for p in output.iterdir()) == sorted(FILES)
    assert json.loads((output / "stats.json").read_text()) == json.loads(json.dumps(stats))
    train, dev, test = (stats["generated"][split] for split in ("train", "dev", "test"))
    assert (train["docs"], dev["docs"], test["docs"]) == (593, 30, 153)  # 0.0005 x 1,186,239 / 306,782; dev 5%
    assert stats["labels"] == 500 and stats["published"]["labels"] == 13_330 and stats["seed"] == 0
    assert stats["lcenet_version"] and stats["settings"]["generator"]["chunk_docs"] == synth.CHUNK_DOCS
    # 593 documents: the standard error of the mean labels/doc is about 2%, of the median length about 3%.
    assert train["labels_per_doc"] == pytest.approx(5.04, rel=0.06)
    assert train["words_per_doc_median"] == pytest.approx(130, rel=0.1)
    assert 100 <= train["words_per_doc_mean"] <= 250
    assert train["hidden_label_share"] == pytest.approx(0.2, abs=0.05)  # minus the always-shown label per document
    # Power law: the top 1% of labels (5) carry far more than 1% of the assignments, and there is a tail.
    assert train["top_1pct_labels_share"] > 0.2 and train["labels_under_5_docs"] > 0.3
    # Correlated groups: labels of one group make up a large share of a document's label pairs (groups of 2-6
    # out of 500 labels would give well under 1% by chance).
    assert train["label_pairs_within_groups"] > 0.2

    dataset = load_dataset(output)
    assert (len(dataset.train), len(dataset.dev), len(dataset.test)) == (593, 30, 153)
    assert not dataset.dev_from_train
    assert dataset.train.labels.nnz / len(dataset.train) == pytest.approx(train["labels_per_doc"])
    assert dataset.num_labels == train["labels_seen"] and dataset.label_frequency.max() == train["max_docs_of_a_label"]
    lengths = np.array([len(text.split()) for text in dataset.train.texts])
    assert lengths.mean() == pytest.approx(train["words_per_doc_mean"])
    assert np.median(lengths) == train["words_per_doc_median"]
    assert all(word.isalpha() and word.islower() and 3 <= len(word) <= 5 for word in dataset.train.texts[0].split())


def test_wiki_shape_has_long_documents_and_the_full_label_count_by_default(tmp_path):
    settings = synth.settings_for("wiki500k", 0.0002, None, 0)
    assert settings.num_labels == 501_070 and settings.docs == {"train": 356, "dev": 18, "test": 154}
    output, stats = make(tmp_path, shape="wiki500k", scale=0.0002, labels=2000)
    train = stats["generated"]["train"]
    assert train["labels_per_doc"] == pytest.approx(4.75, rel=0.08)
    assert train["words_per_doc_median"] == pytest.approx(350, rel=0.15)
    lengths = [len(text.split()) for text in load_dataset(output).test.texts]
    assert 20 <= min(lengths) and max(lengths) <= 5000


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    first, _ = make(tmp_path, "a", scale=0.002)  # 2,373 train documents: two chunks
    second, _ = make(tmp_path, "b", scale=0.002, workers=2)
    other, _ = make(tmp_path, "c", scale=0.002, seed=1)
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "train_texts.txt.gz").read_bytes() != (other / "train_texts.txt.gz").read_bytes()


def test_a_failed_run_leaves_nothing_and_output_is_never_overwritten(tmp_path, monkeypatch):
    calls = []

    def failing(self, split, index, n):
        calls.append(index)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(self, split, index, n)

    real = synth.Model.chunk
    monkeypatch.setattr(synth.Model, "chunk", failing)
    with pytest.raises(RuntimeError):
        make(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temp directory
    monkeypatch.setattr(synth.Model, "chunk", real)
    (tmp_path / "data").mkdir()
    make(tmp_path)  # an empty directory is fine
    with pytest.raises(UserError, match="already exists"):
        make(tmp_path)


def test_a_small_model_learns_from_it(tmp_path):
    output, _ = make(tmp_path, labels=100)
    dataset = load_dataset(output)
    most_frequent = int(np.argmax(dataset.label_frequency))
    baseline = float(dataset.test.labels[:, most_frequent].mean())  # P@1 of always predicting the top label
    config = tiny_config("sparse", epochs=4, lr=1e-2)
    config.model_args = {"hidden_dims": [64]}
    summary = run_training(config, output, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert summary["test"]["P@1"] > baseline + 0.2
    assert summary["test"]["P@1"] < 0.95  # hidden labels and distractors keep it from being trivial


def test_cli_writes_the_data_set(tmp_path):
    result = runner.invoke(app, ["synth", "--shape", "wiki500k", "--scale", "0.0001", "--labels", "300", "--seed",
                                 "3", "--output", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["train"]["docs"] == 178 and summary["labels"] == 300
    assert json.loads((tmp_path / "d" / "stats.json").read_text())["seed"] == 3


@pytest.mark.parametrize("arguments, message", [
    (["--shape", "eurlex"], "error: unknown shape 'eurlex' (expected one of: amazoncat13k, wiki500k)"),
    (["--shape", "wiki500k", "--scale", "0"], "error: --scale must be a positive number (got 0.0)"),
    (["--shape", "wiki500k", "--scale", "-0.5"], "error: --scale must be a positive number (got -0.5)"),
    (["--shape", "wiki500k", "--scale", "inf"], "error: --scale must be a positive number (got inf)"),
    (["--shape", "wiki500k", "--labels", "1"], "error: --labels must be at least 2 (got 1)"),
    (["--shape", "wiki500k", "--seed", "-1"], "error: --seed must be >= 0 (got -1)"),
    (["--shape", "wiki500k", "--workers", "0"], "error: --workers must be >= 1 (got 0)"),
])
def test_cli_bad_arguments_are_one_line_errors(tmp_path, arguments, message):
    result = runner.invoke(app, ["synth", *arguments, "--output", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert result.output.strip() == message
    assert not (tmp_path / "d").exists()
