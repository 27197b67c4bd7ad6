"""Tests for lcenet.candidates: label features, balanced label clustering, candidates from clusters, recall."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.preprocessing import normalize

from lcenet.candidates import (
    LabelClusters,
    candidate_recall,
    candidates,
    cluster_labels,
    label_features,
    padded_label_ids,
)
from lcenet.errors import UserError


def planted(topics: int = 8, per_topic: int = 25, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Label features with a planted hierarchy: a label draws words from its topic's vocabulary and from the
    vocabularies of its topic's groups (topic // 2, topic // 4, ...), plus a few noise words."""
    rng = np.random.default_rng(seed)
    vocabulary, noise_features, depth = 12, 500, int(np.log2(topics))
    topic = np.repeat(np.arange(topics), per_topic)
    rng.shuffle(topic)
    rows, cols = [], []
    for label, t in enumerate(topic):
        words = [level * topics * vocabulary + (t >> level) * vocabulary + rng.choice(vocabulary, 6, replace=False)
                 for level in range(depth)]
        noise = depth * topics * vocabulary + rng.choice(noise_features, 3, replace=False)
        cols += [*np.concatenate(words), *noise]
        rows += [label] * (6 * depth + 3)
    matrix = sp.csr_matrix((rng.random(len(rows)) + 0.5, (rows, cols)),
                           shape=(len(topic), depth * topics * vocabulary + noise_features))
    return normalize(matrix.astype(np.float32)), topic


def random_features(num_labels: int, seed: int = 0) -> sp.csr_matrix:
    return normalize(sp.random(num_labels, 2000, density=0.02, random_state=seed, format="csr", dtype=np.float32))


def test_label_features_are_normalised_centroids_of_the_label_documents():
    truth = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32))  # label 2: no documents
    docs = sp.csr_matrix(np.array([[3, 0, 4, 0], [0, 0, 0, 2], [0, 5, 0, 0]], dtype=np.float32))
    result = label_features(truth, docs)
    assert sp.issparse(result) and result.shape == (3, 4) and result.dtype == np.float32
    expected = np.array([[3, 0, 4, 2], [0, 5, 0, 2], [0, 0, 0, 0]], dtype=np.float32)
    expected[:2] /= np.linalg.norm(expected[:2], axis=1, keepdims=True)
    np.testing.assert_allclose(result.toarray(), expected, rtol=1e-6)
    dense = label_features(truth, docs.toarray())
    assert isinstance(dense, np.ndarray) and dense.dtype == np.float32
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    with pytest.raises(UserError, match="3 label rows but 2 feature rows"):
        label_features(truth, docs[:2])


@pytest.mark.parametrize("num_labels", [1, 100, 201, 1000, 1037])
def test_clusters_are_balanced_and_cover_every_label_once(num_labels):
    clusters = cluster_labels(random_features(num_labels), max_cluster_size=100, seed=3)
    sizes = clusters.sizes
    assert sizes.max() <= 100 and sizes.max() <= 2 * sizes.min()
    assert sorted(clusters.labels.tolist()) == list(range(num_labels))
    for cluster in range(clusters.num_clusters):
        assert (clusters.cluster_of_label[clusters.members(cluster)] == cluster).all()
    if num_labels == 1037:  # 1037 → 519/518 → ... → 16 clusters of 64 or 65
        assert clusters.num_clusters == 16 and set(sizes.tolist()) == {64, 65}
    if num_labels == 201:  # 101 splits again, 100 does not: the one case where sizes differ by ~2×
        assert sorted(sizes.tolist()) == [50, 51, 100]


@pytest.mark.parametrize("features", [sp.csr_matrix((500, 10), dtype=np.float32), np.zeros((500, 4))])
def test_labels_without_features_still_split_evenly(features):  # labels whose documents have no known term
    assert sorted(set(cluster_labels(features, 64).sizes.tolist())) == [62, 63]


def test_clustering_is_deterministic_for_a_seed():
    features = random_features(800)
    first, again = cluster_labels(features, 50, seed=7), cluster_labels(features, 50, seed=7)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.indptr, again.indptr)
    assert not np.array_equal(first.labels, cluster_labels(features, 50, seed=8).labels)


@pytest.mark.parametrize("dense", [False, True])
def test_labels_with_similar_features_share_a_cluster(dense):
    features, topic = planted()
    clusters = cluster_labels(features.toarray() if dense else features, max_cluster_size=25, seed=0)
    assert clusters.num_clusters == 8
    purity = [np.bincount(topic[clusters.members(c)]).max() / 25 for c in range(8)]
    assert min(purity) == 1.0, purity


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="max_cluster_size must be an integer >= 1"):
        cluster_labels(random_features(10), max_cluster_size=0)
    with pytest.raises(UserError, match="indptr must rise strictly"):
        LabelClusters(np.array([0, 2, 2]), np.array([0, 1]))
    with pytest.raises(UserError, match="exactly one cluster"):
        LabelClusters(np.array([0, 1, 2]), np.array([1, 1]))


def toy_clusters() -> LabelClusters:
    # cluster 0: labels 4, 0; cluster 1: 1, 5, 2; cluster 2: 3
    return LabelClusters(np.array([0, 2, 5, 6]), np.array([4, 0, 1, 5, 2, 3]))


def test_member_table_pads_with_minus_one():
    np.testing.assert_array_equal(toy_clusters().member_table(), [[4, 0, -1], [1, 5, 2], [3, -1, -1]])
    np.testing.assert_array_equal(toy_clusters().cluster_of_label, [0, 1, 1, 2, 0, 1])


def test_candidates_are_the_top_clusters_labels():
    tables = toy_clusters().tables()
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.0, 0.3]])
    result = candidates(scores, tables, top_c=2)
    assert result.clusters.tolist() == [[1, 2], [0, 2]]
    assert result.labels.tolist() == [[1, 5, 2, 3, -1, -1], [4, 0, -1, 3, -1, -1]]


def test_training_candidates_always_hold_the_true_labels_clusters():
    tables = toy_clusters().tables()
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.0, 0.3]])
    truth = torch.tensor([[0, -1], [5, -1]])  # row 0: label 0 (cluster 0, lowest score); row 1: label 5 (cluster 1)
    result = candidates(scores, tables, top_c=1, true_labels=truth)
    assert result.clusters.tolist() == [[0], [1]]
    assert result.labels.tolist() == [[4, 0, -1], [1, 5, 2]]
    # a document with more true clusters than top_c widens c for the batch
    result = candidates(scores, tables, top_c=1, true_labels=torch.tensor([[0, 3], [5, -1]]))
    assert sorted(result.clusters[0].tolist()) == [0, 2] and result.clusters.shape == (2, 2)
    assert result.clusters[1, 0].item() == 1  # the true cluster first, then the best other
    with pytest.raises(UserError, match="top_c must be an integer in 1..3"):
        candidates(scores, tables, top_c=4)


def test_candidates_on_a_planted_problem_reach_every_true_label_in_training():
    features, _ = planted()
    clusters = cluster_labels(features, 25)
    rng = np.random.default_rng(0)
    truth = sp.csr_matrix((np.ones(64), (np.repeat(np.arange(32), 2), rng.integers(0, 200, 64))), shape=(32, 200))
    scores = torch.randn(32, clusters.num_clusters, generator=torch.Generator().manual_seed(0))
    result = candidates(scores, clusters.tables(), top_c=1, true_labels=padded_label_ids(truth))
    assert candidate_recall(result.labels, truth) == 1.0
    assert candidate_recall(candidates(scores, clusters.tables(), top_c=1).labels, truth) < 1.0


def test_padded_label_ids():
    truth = sp.csr_matrix(np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=np.float32))
    assert padded_label_ids(truth).tolist() == [[1, 2], [-1, -1], [0, -1]]


def test_candidate_recall_on_a_hand_example():
    truth = sp.csr_matrix(np.array([[1, 1, 0, 0, 0],  # both true labels among the candidates: 1
                                    [0, 0, 1, 1, 1],  # one of three: 1/3
                                    [0, 0, 0, 0, 0],  # no true labels: not averaged
                                    [0, 0, 0, 0, 1]],  # an unseen label (column 4 ≥ L = 4): a miss, 0
                                   dtype=np.float32))
    ids = np.array([[0, 1, -1], [2, -1, 2], [0, 1, 2], [3, -1, -1]])
    assert candidate_recall(ids, truth) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert candidate_recall(torch.from_numpy(ids), truth) == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_save_load_round_trip(tmp_path):
    clusters = cluster_labels(random_features(300), 40, seed=1)
    clusters.save(tmp_path / "clusters.safetensors")
    loaded = LabelClusters.load(tmp_path / "clusters.safetensors")
    np.testing.assert_array_equal(loaded.labels, clusters.labels)
    np.testing.assert_array_equal(loaded.indptr, clusters.indptr)
    np.testing.assert_array_equal(loaded.cluster_of_label, clusters.cluster_of_label)
    assert loaded.settings == clusters.settings and loaded.settings["max_cluster_size"] == 40
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="bad.safetensors"):
        LabelClusters.load(tmp_path / "bad.safetensors")
