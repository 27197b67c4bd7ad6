"""Shortlist mode: candidate logits, training targets, batches of label ids, and the whole path through
training, the model directory and evaluation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import tiny_config
from lcenet.candidates import LabelClusters
from lcenet.config import ShortlistSettings, apply_override, validate
from lcenet.errors import UserError
from lcenet.inference import EpochBatches, SplitTensors, TokenInputs
from lcenet.output import candidate_targets
from lcenet.pipeline import build, evaluate_directory, load_model, run_training, shortlist_of
from lcenet.predict import Predictor
from lcenet.records import run_record
from lcenet.shortlist import shortlist_args

XMLCNN = {"embedding_dim": 8, "num_filters": 4, "hidden_dim": 8, "filter_sizes": [2], "pool_chunks": 2,
          "dropout": 0.0, "embedding_dropout": 0.0}


def clusters_of(num_labels: int, size: int) -> LabelClusters:
    """Labels 0..L-1 in consecutive clusters of ``size``, in a shuffled order (so cluster != label // size)."""
    labels = np.random.default_rng(0).permutation(num_labels)
    return LabelClusters(np.arange(0, num_labels + size, size).clip(max=num_labels), labels)


def shortlisted(num_labels: int, size: int, top_clusters: int, lcenet: dict | None = None):
    clusters = clusters_of(num_labels, size)
    torch.manual_seed(0)
    model = build("xmlcnn", XMLCNN, lcenet, num_labels, 30,
                  shortlist_args(clusters, ShortlistSettings(cluster_size=size, top_clusters=top_clusters)), clusters)
    return model.eval()


def inputs(batch: int, seed: int = 0):
    ids = torch.from_numpy(np.random.default_rng(seed).integers(1, 30, size=(batch, 12)))
    return ids, ids != 0


@pytest.mark.parametrize("lcenet", [None, {"rank": 4}])
def test_with_every_cluster_chosen_the_candidate_logits_are_the_dense_ones(lcenet):
    model = shortlisted(12, 3, top_clusters=4, lcenet=lcenet)
    batch = inputs(5)
    output = model.score(*batch)
    assert sorted(output.label_ids[0].tolist()) == list(range(12))
    dense = model.lcenet(shortlist_of(model).base(*batch)) if lcenet else model.base(*batch)
    torch.testing.assert_close(output.logits, dense.gather(1, output.label_ids), rtol=1e-5, atol=1e-5)


def test_in_training_every_true_label_is_a_candidate_with_target_one():
    model = shortlisted(40, 4, top_clusters=2)  # 8 of 40 labels scored at inference
    true = torch.tensor([[0, 13, 27, 39], [5, -1, -1, -1]])  # up to 4 clusters: more than top_clusters
    output = model.score(*inputs(2), true_labels=true)
    targets = candidate_targets(output.label_ids, true)
    assert targets.sum(dim=1).tolist() == [4, 1]
    assert output.extra_loss is not None and output.extra_loss > 0  # the cluster scorer's BCE
    assert model.score(*inputs(2)).label_ids.shape[1] == 8


def test_row_sparse_gradients_train_exactly_as_dense_ones(tmp_path):
    """One RowAdam step of a shortlist + LCENet model with row-sparse label-table gradients equals the step with
    dense gradients (from zero moments, rows no candidate touched stay put either way)."""
    from lcenet.train import Trainer

    labels = sp.random(16, 40, density=0.08, format="csr", random_state=0, dtype=np.float32)
    labels.data[:] = 1
    split = SplitTensors(TokenInputs(np.random.default_rng(0).integers(1, 30, size=(16, 12)), 0), labels)
    results = []
    for sparse in (False, True):
        clusters = clusters_of(40, 4)
        torch.manual_seed(0)
        model = build("xmlcnn", XMLCNN, {"rank": 4, "sparse_gradients": sparse}, 40, 30,
                      shortlist_args(clusters, ShortlistSettings(cluster_size=4, top_clusters=2), sparse), clusters)
        trainer = Trainer(model, tiny_config(grad_clip=0.5).train, split, split, 40, tmp_path / str(sparse),
                          progress=False)
        trainer.start_epoch(np.arange(16))
        trainer.optimizer_step(0, 8)
        assert any(p.grad is not None and p.grad.is_sparse for p in model.parameters()) == sparse
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("switch", [{"bottleneck": False}, {"residual": False}, {"input_activation": "tanh"},
                                    {"hidden_activation": "relu"}, {"init": "identity"}, {"aux_loss_weight": 0.5},
                                    {"blocks": 1}])
def test_every_lcenet_switch_trains_in_shortlist_mode(tmp_path, switch):
    """Each ablation switch trains through the pipeline in shortlist mode (a full-rank block without row-sparse
    gradients: it has no label rows to gather)."""
    data = write_many_labels(tmp_path / "data", docs=(48, 16, 16))
    config = tiny_config(lcenet=True, epochs=1)
    config.lcenet = dataclasses.replace(config.lcenet, **switch)
    config.model_args = dict(XMLCNN)
    config.data.min_frequency = 1
    config.shortlist = ShortlistSettings(cluster_size=4, top_clusters=3)
    summary = run_training(config, data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert summary["steps"] == 6 and 0 <= summary["test"]["P@1"] <= 1


def test_label_id_targets_are_the_same_on_the_host_and_the_resident_path():
    rng = np.random.default_rng(0)
    labels = sp.random(50, 20, density=0.15, format="csr", random_state=1, dtype=np.float32)
    labels.data[:] = 1
    split = SplitTensors(TokenInputs(rng.integers(1, 30, size=(50, 6)), 0), labels)
    order = rng.permutation(50)
    batches = [EpochBatches(split, 20, 8, torch.device("cpu"), resident, label_ids=True) for resident in (False, True)]
    for item in batches:
        item.start_epoch(order)
    for start in range(0, 50, 8):
        (_, host), (_, resident) = (item.get(start) for item in batches)
        assert torch.equal(host, resident)
        rows = order[start:start + 8]
        assert [sorted(x for x in row if x >= 0) for row in host.tolist()] == [
            sorted(labels[r].indices.tolist()) for r in rows]


def write_many_labels(directory, num_labels: int = 40, docs=(400, 80, 80), seed: int = 0):
    """Labels in groups of 4 that co-occur; each label has its own words, so a model can learn them."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "dev", "test"), docs):
        texts, label_lines = [], []
        for _ in range(count):
            group = rng.integers(0, num_labels // 4)
            chosen = sorted(set((4 * group + rng.choice(4, size=rng.integers(1, 3), replace=False)).tolist()))
            words = [f"w{label}x{j}" for label in chosen for j in range(3)] + ["the", "act"]
            rng.shuffle(words)
            texts.append(" ".join(words))
            label_lines.append(" ".join(f"L{label}" for label in chosen))
        (directory / f"{split}_texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        (directory / f"{split}_labels.txt").write_text("\n".join(label_lines) + "\n", encoding="utf-8")
    return directory


def test_shortlist_training_learns_and_the_model_directory_remembers_it(tmp_path):
    data = write_many_labels(tmp_path / "data")
    config = tiny_config(lcenet=True, epochs=10, lr=2e-2)
    config.model_args = {**XMLCNN, "embedding_dim": 16, "num_filters": 16, "hidden_dim": 32}
    config.data.min_frequency = 1
    config.shortlist = ShortlistSettings(cluster_size=4, top_clusters=3)
    summary = run_training(config, data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    shortlist = summary["shortlist"]
    assert shortlist["candidates_per_document"] == 3 * shortlist["cluster_width"] <= 12  # of 40 labels
    assert summary["shortlist"]["test_recall"] > 0.8
    assert summary["test"]["P@1"] > 0.8  # the dense model: 0.95
    record = run_record(tmp_path / "run", "many_labels", "test", "lcenet train ...")
    assert record["shortlist"]["test_recall"] == shortlist["test_recall"]  # what RESULTS.md reports
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["shortlist"]["top_clusters"] == 3
    loaded = load_model(tmp_path / "run" / "model", "cpu").model
    assert loaded.scores_candidates
    members = shortlist_of(loaded).members  # LCENet's tables are stored in cluster order again once loaded
    assert torch.equal(loaded.lcenet.row_labels, members[members >= 0])
    # No flag needed after training: evaluation from the directory reproduces the run's test metrics.
    again = evaluate_directory(tmp_path / "run" / "model", data, "test", device="cpu")
    assert again["P@1"] == pytest.approx(summary["test"]["P@1"])
    assert again["nDCG@5"] == pytest.approx(summary["test"]["nDCG@5"])
    texts = (data / "test_texts.txt").read_text().splitlines()
    truth = [set(line.split()) for line in (data / "test_labels.txt").read_text().splitlines()]
    predicted = Predictor.load(tmp_path / "run" / "model", device="cpu").predict(texts, k=1)
    assert np.mean([p["labels"][0] in t for p, t in zip(predicted, truth)]) == pytest.approx(summary["test"]["P@1"])


@pytest.mark.parametrize("sparse", [False, True])
def test_attentionxml_attends_with_the_candidates_queries_only(sparse):
    """With every cluster chosen, AttentionXML's candidate logits are its dense logits at those labels, and the
    label queries' gradient reaches only the candidates' rows."""
    clusters = clusters_of(12, 3)
    torch.manual_seed(0)
    model = build("attentionxml", {"embedding_dim": 8, "hidden_size": 4, "linear_sizes": [4]}, None, 12, 30,
                  shortlist_args(clusters, ShortlistSettings(cluster_size=3, top_clusters=4), sparse))
    model.use_clusters(clusters)
    model.eval()
    batch = inputs(3)
    output = model.score(*batch)
    torch.testing.assert_close(output.logits, model.base(*batch).gather(1, output.label_ids), rtol=1e-5, atol=1e-6)
    model.members[2:] = -1  # two clusters left: labels of clusters 0 and 1 only
    model.score(*batch).logits.sum().backward()
    grad = model.base.attention.grad
    touched = (grad.coalesce().indices()[0] if sparse else grad.abs().sum(1).nonzero().flatten()).tolist()
    assert sorted(touched) == sorted(clusters.labels[:6].tolist())


def test_too_few_candidates_and_bad_settings_stop_with_one_line():
    with pytest.raises(UserError, match="4 candidate labels, fewer than 5"):
        shortlist_args(clusters_of(40, 2), ShortlistSettings(cluster_size=2, top_clusters=2))
    config = tiny_config()
    apply_override(config, "shortlist.top_clusters=0")
    with pytest.raises(UserError, match="shortlist.top_clusters must be >= 1"):
        validate(config)


def test_the_sparse_family_clusters_labels_from_its_own_train_features(tmp_path):
    """Shortlist mode on the TF-IDF family: label clusters come from the train features it trains on."""
    data = write_many_labels(tmp_path / "data")
    config = tiny_config(lcenet=True, epochs=3, lr=2e-2)
    config.model, config.model_args = "sparse", {"hidden_dims": [16]}
    config.data.tfidf_min_df = 1
    config.shortlist = ShortlistSettings(cluster_size=4, top_clusters=3)
    summary = run_training(config, data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert summary["shortlist"]["test_recall"] > 0.5 and 0 < summary["test"]["P@1"] <= 1


def test_the_paired_family_scores_candidates_from_its_joint_features(tmp_path, tiny_bert):
    """bert_sparse in shortlist mode: its [CLS] + TF-IDF features feed the cluster scorer and the candidate
    logits through the family defaults, and a reloaded directory predicts what the run evaluated."""
    data = write_many_labels(tmp_path / "data")
    config = tiny_config(lcenet=True, epochs=2, lr=2e-2)
    config.model = "bert_sparse"
    config.model_args = {"pretrained": str(tiny_bert), "sparse_hidden": 8}
    config.data.tfidf_min_df = 1
    config.shortlist = ShortlistSettings(cluster_size=4, top_clusters=3)
    summary = run_training(config, data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert summary["shortlist"]["test_recall"] > 0 and 0 <= summary["test"]["P@1"] <= 1
    reloaded = evaluate_directory(tmp_path / "run" / "model", data, split="test", device="cpu")
    assert reloaded["P@1"] == pytest.approx(summary["test"]["P@1"])
