"""Every model family through the whole CLI: train -> saved directory -> predict, and save/load identity."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import write_tiny_dataset
from lcenet.cli import app
from lcenet.io import load_tensors
from lcenet.predict import Predictor

runner = CliRunner()
TEXTS = ["milk cheese cow", "fishing quota sea", "", "wine grape vineyard tax"]


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("LCENET_CACHE", str(tmp_path / "cache"))
    return write_tiny_dataset(tmp_path / "data")


FAMILIES = {
    "xmlcnn": ["--set", "model_args.embedding_dim=16", "--set", "model_args.num_filters=8",
               "--set", "model_args.hidden_dim=16"],
    "attentionxml": ["--set", "model_args.embedding_dim=16", "--set", "model_args.hidden_size=8",
                     "--set", "model_args.linear_sizes=[8]"],
    "bert": ["--set", "train.encoder_lr=0.001"],  # num_cls_layers unset: LightXML's 5 would not fit 2 layers
    "sparse": ["--set", "model_args.hidden_dims=[16]", "--set", "data.tfidf_min_df=1"],
}
ENCODER_FILES = {"xmlcnn": {"tokenizer.json"}, "attentionxml": {"tokenizer.json"}, "bert": {"tokenizer.json"},
                 "sparse": {"features.json", "features_idf.safetensors"}}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("lcenet", ["--lcenet", "--no-lcenet"])
def test_train_then_predict(family, lcenet, data, tmp_path, request):
    extra = list(FAMILIES[family])
    if family == "bert":
        extra += ["--pretrained", str(request.getfixturevalue("tiny_bert"))]
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--model", family, lcenet, "--output", str(run),
                                 "--epochs", "2", "--max-length", "24", "--device", "cpu", "--no-progress",
                                 "--set", "data.min_frequency=1", "--set", "train.batch_size=8",
                                 "--set", "train.keep_checkpoints=true", *extra])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model"] == family and (config["lcenet"] is not None) == (lcenet == "--lcenet")
    assert "pretrained" not in config["model_args"]  # the saved directory never needs the original checkpoint
    if family == "bert":
        assert config["model_args"]["num_cls_layers"] == 2  # the default adapted to the 2-layer encoder
    assert {p.name for p in (run / "model").iterdir()} == {"model.safetensors", "config.json", "labels.tsv",
                                                           *ENCODER_FILES[family]}
    assert set(config["files"]) == {"model.safetensors", "labels.tsv", *ENCODER_FILES[family]}  # all checksummed

    result = runner.invoke(app, ["predict", str(run / "model"), "-k", "3", "--device", "cpu"],
                           input="\n".join(TEXTS) + "\n")
    assert result.exit_code == 0, result.output
    predictions = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(predictions) == len(TEXTS) and all(len(p["labels"]) == 3 for p in predictions)
    assert Predictor.load(run / "model", device="cpu").predict(TEXTS, k=3) == predictions

    # the model directory's weights are exactly the ones the trainer selected on dev
    best, _ = load_tensors(run / "best.safetensors")
    saved, _ = load_tensors(run / "model" / "model.safetensors")
    assert best.keys() == saved.keys() and all(torch.equal(best[k], saved[k]) for k in best)


def test_word_vectors_from_a_file(data, tmp_path):
    vectors = tmp_path / "vectors.txt"
    rng = np.random.default_rng(0)
    known = {"milk": rng.normal(size=16), "cheese": rng.normal(size=16)}
    vectors.write_text("".join(f"{w} {' '.join(f'{x:.6f}' for x in v)}\n" for w, v in known.items()))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--model", "xmlcnn", "--output", str(run),
                                 "--epochs", "1", "--device", "cpu", "--no-progress", "--embeddings", str(vectors),
                                 "--set", "model_args.freeze_embeddings=true", *FAMILIES["xmlcnn"],
                                 "--set", "data.min_frequency=1"])
    assert result.exit_code == 0, result.output
    stats = json.loads((run / "metrics.json").read_text())["word_vectors"]  # found / OOV accounting
    assert stats["found"] == 2 and stats["oov"] > 0 and stats["dim"] == 16
    weights, _ = load_tensors(run / "model" / "model.safetensors")
    vocab = json.loads((run / "model" / "tokenizer.json").read_text())["model"]["vocab"]
    for word, vector in known.items():  # frozen: still the file's vectors after training
        assert torch.allclose(weights["embedding.weight"][vocab[word]], torch.tensor(vector, dtype=torch.float32),
                              atol=1e-5)

    bad = tmp_path / "bad.txt"
    bad.write_text("milk 0.1 0.2\ncheese 0.1 oops\n")
    result = runner.invoke(app, ["train", "--data", str(data), "--output", str(tmp_path / "r2"), "--epochs", "1",
                                 "--no-progress", "--embeddings", str(bad), *FAMILIES["xmlcnn"]])
    assert result.exit_code == 2 and "bad.txt:2" in result.stderr and "Traceback" not in result.output


def test_cooccurrence_initialised_lcenet_trains_and_reloads(data, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--model", "sparse", "--lcenet", "--output", str(run),
                                 "--epochs", "2", "--device", "cpu", "--no-progress", *FAMILIES["sparse"],
                                 "--set", "lcenet.init=cooccurrence", "--set", "lcenet.rank=4"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text())["lcenet_settings"]["init"] == "cooccurrence"
    assert len(Predictor.load(run / "model", device="cpu").predict(TEXTS, k=2)) == len(TEXTS)


def kept_documents(store):
    return sum(len(load_tensors(shard)[0]["keys"]) for shard in store.glob("*.safetensors"))


def test_a_frozen_encoder_keeps_its_pretrained_weights_through_training_and_predicts(data, tmp_path, tiny_bert):
    run = tmp_path / "run"
    frozen = ["--model", "bert", "--lcenet", "--pretrained", str(tiny_bert), "--epochs", "2", "--max-length", "24",
              "--device", "cpu", "--no-progress", "--set", "train.batch_size=8",
              "--set", "model_args.freeze_encoder=true", "--set", "model_args.pooling=mean",
              "--set", "model_args.frozen_dtype=bfloat16", "--set", "train.ema_decay=0.9"]
    result = runner.invoke(app, ["train", "--data", str(data), "--output", str(run), *frozen])
    assert result.exit_code == 0, result.output
    # Every document's vector was kept on disk, so another run over the same data (another seed) encodes nothing
    # and keeps nothing new; an evaluation keeps its split's.
    (store,) = (tmp_path / "cache" / "frozen_features").iterdir()
    shards = set(store.glob("*.safetensors"))
    documents = {split: len((data / f"{split}_texts.txt").read_text().splitlines())
                 for split in ("train", "dev", "test")}
    assert 0 < kept_documents(store) <= sum(documents.values())
    result = runner.invoke(app, ["train", "--data", str(data), "--output", str(tmp_path / "run2"), *frozen,
                                 "--set", "train.seed=1"])
    assert result.exit_code == 0, result.output
    assert set(store.glob("*.safetensors")) == shards
    shutil.rmtree(store)
    result = runner.invoke(app, ["evaluate", str(run / "model"), "--data", str(data), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert 0 < kept_documents(store) <= documents["test"]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_args"]["freeze_encoder"] and config["model_args"]["pooling"] == "mean"
    loaded, _ = load_tensors(tiny_bert / "model.safetensors")
    pretrained = {f"base.encoder.{name}": tensor for name, tensor in loaded.items()}
    saved, _ = load_tensors(run / "model" / "model.safetensors")
    encoder = {name: saved[name] for name in saved if name.startswith("base.encoder.")}
    assert encoder and all(torch.equal(tensor, pretrained[name]) for name, tensor in encoder.items())
    predictions = Predictor.load(run / "model", device="cpu").predict(TEXTS, k=3)
    assert len(predictions) == len(TEXTS) and all(len(p["labels"]) == 3 for p in predictions)
