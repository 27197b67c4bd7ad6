"""Starting a run from a trained model (``train.init_from``): what it loads, and what it refuses."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from conftest import tiny_config
from lcenet.config import LCENetSettings, RunConfig, ShortlistSettings
from lcenet.errors import UserError
from lcenet.pipeline import LoadedModel, build, load_model, run_training, shortlist_of, warm_start
from lcenet.predict import Predictor

TEXTS = ["milk cheese cow", "fishing quota sea tax", "wine grape import duty", "nothing known here"]


@pytest.fixture
def trained_base(tiny_data, tmp_path):
    run_training(tiny_config(epochs=4, lr=2e-2), tiny_data, tmp_path / "base", cache_dir=tmp_path / "cache",
                 progress=False)
    return tmp_path / "base" / "model"


def events(run_dir, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if e["event"] == kind]


def first_loss(run_dir) -> float:
    return events(run_dir, "train")[0]["loss"]


@pytest.mark.parametrize("shortlist", [False, True])
def test_lcenet_started_from_a_trained_base_predicts_what_the_base_does(tiny_data, tmp_path, shortlist):
    config = tiny_config(epochs=3, lr=2e-2)
    config.shortlist = ShortlistSettings(cluster_size=2, top_clusters=4) if shortlist else None
    run_training(config, tiny_data, tmp_path / "base", cache_dir=tmp_path / "cache", progress=False)
    trained_base = tmp_path / "base" / "model"
    base = load_model(trained_base, device="cpu")
    model = build(config.model, base.config["model_args"], LCENetSettings(rank=4).kwargs(),
                  base.config["num_labels"], base.config["vocab_size"], base.config["shortlist"])
    parts = ["family model", "shortlist"] if shortlist else ["family model"]
    assert warm_start(model, base.model, str(trained_base)) == {"loaded": parts, "fresh": ["LCENet"]}
    if shortlist:  # LCENet's tables follow the clusters the shortlist brought
        members = shortlist_of(model).members
        assert torch.equal(model.lcenet.row_labels, members[members >= 0])
    warm = LoadedModel(model.eval(), base.encoder, base.label_names, base.label_frequency, base.config, base.device)
    # identity init: the new head's correction starts at exactly zero
    assert Predictor([warm]).predict(TEXTS, k=3) == Predictor([base]).predict(TEXTS, k=3)


def test_a_run_from_a_trained_base_trains_on_from_it_with_its_encoder(tiny_data, tmp_path, trained_base):
    cache = tmp_path / "cache"
    fresh = tmp_path / "fresh"
    run_training(tiny_config(lcenet=True, epochs=1), tiny_data, fresh, cache_dir=cache, progress=False)
    warm = tmp_path / "warm"
    summary = run_training(tiny_config(lcenet=True, epochs=1, init_from=str(trained_base)), tiny_data, warm,
                           cache_dir=cache, progress=False)
    assert summary["init_from"] == {"model_dir": str(trained_base), "loaded": ["family model"], "fresh": ["LCENet"]}
    # it starts where the trained base ended (without the warm start the two runs would be the same run)
    assert first_loss(warm) < 0.9 * first_loss(fresh)
    assert (warm / "model" / "tokenizer.json").read_bytes() == (trained_base / "tokenizer.json").read_bytes()
    # its starting weights are evaluated on dev first: the base's selected weights, with the head adding zero
    base = json.loads((trained_base.parent / "metrics.json").read_text())
    start = events(warm, "eval")[0]
    assert start["step"] == 0 and start["metrics"]["nDCG@5"] == base["dev"]["nDCG@5"]


def test_a_run_that_cannot_beat_its_starting_weights_keeps_them(tiny_data, tmp_path, trained_base):
    base = json.loads((trained_base.parent / "metrics.json").read_text())
    summary = run_training(tiny_config(epochs=4, lr=50.0, patience=1, init_from=str(trained_base)), tiny_data,
                           tmp_path / "ruined", cache_dir=tmp_path / "cache", progress=False)
    improved = [e["improved"] for e in events(tmp_path / "ruined", "eval")]
    assert improved[0] and not any(improved[1:])
    assert summary["best_step"] == 0 and summary["test"] == base["test"]
    # patience counts from the first evaluation after the start, not from the start (a new head and a fresh
    # optimizer state first fall below it): with patience 1 the run evaluates at least twice after the start
    assert len(improved) >= 3 and summary["stop_reason"] == "patience"


def test_a_capacity_control_trains_on_from_its_own_trained_model_not_from_the_base(tiny_data, tmp_path,
                                                                                    trained_base):
    """The control for LCENet's second stage: the widened base trained on alike from its own converged weights."""
    capacity = replace(tiny_config(epochs=2, lr=2e-2), capacity_control=LCENetSettings(rank=4))
    run_training(capacity, tiny_data, tmp_path / "wide", cache_dir=tmp_path / "cache", progress=False)

    def trained_on_from(model_dir) -> RunConfig:
        return replace(capacity, train=replace(capacity.train, epochs=1, init_from=str(model_dir)))

    summary = run_training(trained_on_from(tmp_path / "wide" / "model"), tiny_data, tmp_path / "wide_on",
                           cache_dir=tmp_path / "cache", progress=False)
    assert summary["init_from"]["loaded"] == ["family model"] and summary["init_from"]["fresh"] == []
    wide = json.loads((tmp_path / "wide" / "metrics.json").read_text())
    assert events(tmp_path / "wide_on", "eval")[0]["metrics"]["nDCG@5"] == wide["dev"]["nDCG@5"]
    with pytest.raises(UserError, match="its family model does not fit this run's"):
        run_training(trained_on_from(trained_base), tiny_data, tmp_path / "from_base", cache_dir=tmp_path / "cache",
                     progress=False)


def other_labels(tiny_data, tmp_path):
    data = tmp_path / "renamed"
    shutil.copytree(tiny_data, data)
    for split in ("train", "dev", "test"):
        path = data / f"{split}_labels.txt"
        path.write_text(path.read_text().replace("milk", "dairy"))
    return data


@pytest.mark.parametrize("change, message", [
    (lambda config: replace(config, model="attentionxml", model_args={}),
     "a xmlcnn model, but this run trains attentionxml"),
    (lambda config: replace(config, model_args={**config.model_args, "hidden_dim": 32}),
     "its family model does not fit this run's"),
    ("labels", "different label vocabularies .* train.init_from needs a model trained on the same labels"),
])
def test_a_source_that_does_not_fit_is_refused_and_nothing_is_written(tiny_data, tmp_path, trained_base, change,
                                                                       message):
    config = tiny_config(lcenet=True, epochs=1, init_from=str(trained_base))
    data = other_labels(tiny_data, tmp_path) if change == "labels" else tiny_data
    if change != "labels":
        config = change(config)
    with pytest.raises(UserError, match=message):
        run_training(config, data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_killed_warm_start_resumes_to_the_same_run(tiny_data, tmp_path, trained_base, monkeypatch):
    import lcenet.train as train_module
    from lcenet.io import load_tensors
    from lcenet.train import CHECKPOINT_FILE

    def config(**train):
        return tiny_config(lcenet=True, epochs=2, patience=2, keep_checkpoints=True, init_from=str(trained_base),
                           **train)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_training(config(), tiny_data, straight, cache_dir=tmp_path / "cache", progress=False)
    original = train_module.Trainer.fit

    def fit_then_die(self, resume=False, on_step=None):
        def die(step):
            if step == 3:  # inside epoch 1, after the step-0 evaluation and a checkpoint
                raise KeyboardInterrupt
        return original(self, resume=resume, on_step=die)

    monkeypatch.setattr(train_module.Trainer, "fit", fit_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_training(config(checkpoint_every_steps=1), tiny_data, killed, cache_dir=tmp_path / "cache", progress=False)
    monkeypatch.setattr(train_module.Trainer, "fit", original)
    summary = run_training(config(checkpoint_every_steps=1), tiny_data, killed, resume=True,
                           cache_dir=tmp_path / "cache", progress=False)

    a, b = (load_tensors(run / CHECKPOINT_FILE)[0] for run in (straight, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    expected = json.loads((straight / "metrics.json").read_text())
    assert (summary["best_step"], summary["dev"], summary["test"]) == (expected["best_step"], expected["dev"],
                                                                       expected["test"])
    assert [e["step"] for e in events(killed, "eval")] == [e["step"] for e in events(straight, "eval")]
