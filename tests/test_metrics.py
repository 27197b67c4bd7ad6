"""Tests for lcenet.metrics: hand-computed cases, edge cases and agreement with napkinxc."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from lcenet.metrics import (
    DEFAULT_KS,
    evaluate,
    inverse_propensity,
    per_document,
    propensity_normaliser,
    top_k,
    top_k_hits,
)

LOG2_3 = math.log2(3)  # discount of rank 2 is 1/log2(3); rank 1 -> 1/log2(2) = 1; rank 3 -> 1/log2(4) = 1/2


def _csr(label_sets: list[list[int]], num_labels: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(s) for s in label_sets])
    indices = np.array([label for s in label_sets for label in s], dtype=np.int64)
    return sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(label_sets), num_labels))


# A tiny fixture used by the hand-computed tests (L = 6):
#   doc0: y = {0, 2}     top-3 = [2, 1, 0]  hits = [1, 0, 1]
#   doc1: y = {1}        top-3 = [0, 1, 2]  hits = [0, 1, 0]
#   doc2: y = {}         top-3 = [0, 1, 2]  hits = [0, 0, 0]
#   doc3: y = {3, 4, 5}  top-3 = [5, 0, 4]  hits = [1, 0, 1]
TRUTH = _csr([[0, 2], [1], [], [3, 4, 5]], 6)
TOP = np.array([[2, 1, 0], [0, 1, 2], [0, 1, 2], [5, 0, 4]])
Q = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # inverse propensity q_l = l + 1


def test_default_ks():
    assert DEFAULT_KS == (1, 3, 5)


def test_top_k_hits_small():
    expected = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(top_k_hits(TOP, TRUTH), expected)


def test_precision_hand_computed():
    res = evaluate(TOP, TRUTH, ks=(1, 3))
    # P@1: hits at rank 1 = 1, 0, 0, 1 -> (1 + 0 + 0 + 1) / 4 = 0.5 (the empty doc2 counts in the mean)
    assert res["P@1"] == pytest.approx(0.5)
    # P@3: 2/3, 1/3, 0, 2/3 -> (5/3) / 4 = 5/12
    assert res["P@3"] == pytest.approx(5 / 12)
    np.testing.assert_allclose(per_document("P", 3, TOP, TRUTH), [2 / 3, 1 / 3, 0, 2 / 3])


def test_recall_hand_computed():
    res = evaluate(TOP, TRUTH, ks=(1, 3))
    # R@1: 1/2, 0/1, 0 (|y| = 0), 1/3 -> (1/2 + 1/3) / 4 = 5/24
    assert res["R@1"] == pytest.approx(5 / 24)
    # R@3: 2/2, 1/1, 0, 2/3 -> (1 + 1 + 2/3) / 4 = 2/3
    assert res["R@3"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(per_document("R", 3, TOP, TRUTH), [1, 1, 0, 2 / 3])


def test_ndcg_hand_computed():
    # doc0: DCG = 1 + 1/2 (hits at ranks 1, 3); IDCG over min(3, 2) = 2 labels = 1 + 1/log2(3)
    # doc1: DCG = 1/log2(3) (hit at rank 2);    IDCG over 1 label = 1
    # doc2: no relevant label -> 0
    # doc3: DCG = 1 + 1/2;                       IDCG over 3 labels = 1 + 1/log2(3) + 1/2
    expected = [1.5 / (1 + 1 / LOG2_3), 1 / LOG2_3, 0.0, 1.5 / (1.5 + 1 / LOG2_3)]
    np.testing.assert_allclose(per_document("nDCG", 3, TOP, TRUTH), expected)
    res = evaluate(TOP, TRUTH, ks=(1, 3))
    assert res["nDCG@3"] == pytest.approx(sum(expected) / 4)
    # nDCG@1: rank-1 hits 1, 0, 0, 1 each over IDCG@1 = 1 -> 0.5 (= P@1)
    assert res["nDCG@1"] == pytest.approx(0.5)


def test_psp_hand_computed():
    res = evaluate(TOP, TRUTH, ks=(1, 3), inv_propensity=Q)
    # PSP@1 numerators (q of a rank-1 hit): doc0 q2 = 3, doc1 0, doc2 0, doc3 q5 = 6 -> sum 9
    # best@1 (largest q among true labels): doc0 max(q0, q2) = 3, doc1 q1 = 2, doc2 0, doc3 q5 = 6 -> sum 11
    assert res["PSP@1"] == pytest.approx(9 / 11)
    # PSP@3 numerators: doc0 (q2 + q0)/3 = 4/3, doc1 q1/3 = 2/3, doc2 0, doc3 (q5 + q4)/3 = 11/3 -> 17/3
    # best@3: doc0 (3 + 1)/3 = 4/3, doc1 2/3, doc2 0, doc3 (6 + 5 + 4)/3 = 5 -> 7
    assert res["PSP@3"] == pytest.approx((17 / 3) / 7)
    np.testing.assert_allclose(per_document("PSP", 3, TOP, TRUTH, Q), [4 / 3, 2 / 3, 0, 11 / 3])
    # The per-document values are un-normalised numerators; their mean / normaliser is the metric.
    assert propensity_normaliser("PSP", 3, TRUTH, Q) == pytest.approx(7 / 4)


def test_psndcg_hand_computed():
    idcg0, idcg1, idcg3 = 1 + 1 / LOG2_3, 1.0, 1.5 + 1 / LOG2_3  # unweighted IDCG@3 per document
    # numerators: weighted DCG / unweighted IDCG
    #   doc0: (q2 * 1 + q0 * 1/2) = 3.5;  doc1: q1 / log2(3);  doc3: (q5 * 1 + q4 * 1/2) = 8.5
    num = [3.5 / idcg0, (2 / LOG2_3) / idcg1, 0.0, 8.5 / idcg3]
    # best: true labels' q sorted descending at the top
    #   doc0: 3 + 1/log2(3);  doc1: 2;  doc3: 6 + 5/log2(3) + 4/2
    best = [(3 + 1 / LOG2_3) / idcg0, 2 / idcg1, 0.0, (8 + 5 / LOG2_3) / idcg3]
    np.testing.assert_allclose(per_document("PSnDCG", 3, TOP, TRUTH, Q), num)
    res = evaluate(TOP, TRUTH, ks=(3,), inv_propensity=Q)
    assert res["PSnDCG@3"] == pytest.approx(sum(num) / sum(best))
    assert propensity_normaliser("PSnDCG", 3, TRUTH, Q) == pytest.approx(sum(best) / 4)


def test_evaluate_keys_and_types():
    top = np.array([[2, 1, 0, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [5, 0, 4, 1, 2]])
    res = evaluate(top, TRUTH)
    assert list(res) == ["P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5", "R@1", "R@3", "R@5"]
    res = evaluate(top, TRUTH, inv_propensity=Q)
    assert [key for key in res if key.startswith("PS")] == [
        "PSP@1", "PSP@3", "PSP@5", "PSnDCG@1", "PSnDCG@3", "PSnDCG@5",
    ]  # fmt: skip
    for value in res.values():
        assert type(value) is float
        assert 0.0 <= value <= 1.0


def test_ndcg1_equals_p1():
    rng = np.random.default_rng(0)
    truth, top = _random_case(rng, num_docs=100, num_labels=30, k=5)
    res = evaluate(top, truth, ks=(1,))
    assert res["nDCG@1"] == pytest.approx(res["P@1"])
    np.testing.assert_allclose(per_document("nDCG", 1, top, truth), per_document("P", 1, top, truth))


def test_ndcg5_exceeds_p5_with_few_labels():
    # Every document has 1..4 labels, all ranked first (an oracle): P@5 = |y|/5 < 1, but nDCG@5 = 1.
    rng = np.random.default_rng(1)
    num_labels = 20
    sets = [list(rng.choice(num_labels, size=rng.integers(1, 5), replace=False)) for _ in range(50)]
    top = np.array([s + [label for label in range(num_labels) if label not in s][: 5 - len(s)] for s in sets])
    res = evaluate(top, _csr(sets, num_labels), ks=(5,))
    assert res["nDCG@5"] == pytest.approx(1.0)
    assert res["P@5"] == pytest.approx(np.mean([len(s) for s in sets]) / 5)
    assert res["nDCG@5"] > res["P@5"]


def test_document_without_labels_scores_zero_and_counts():
    truth = _csr([[0], []], 3)
    top = np.array([[0, 1], [0, 1]])
    res = evaluate(top, truth, ks=(1, 2), inv_propensity=np.ones(3))
    # doc0 is perfect, doc1 has no labels -> every plain metric is (1 + 0) / 2 ...
    assert res["P@1"] == pytest.approx(0.5)
    assert res["nDCG@1"] == res["nDCG@2"] == pytest.approx(0.5)
    assert res["R@2"] == pytest.approx(0.5)
    # ... while PS metrics are a ratio of sums, to which doc1 adds 0 / 0: PSP@1 = 1 / 1
    assert res["PSP@1"] == pytest.approx(1.0)
    assert res["PSnDCG@2"] == pytest.approx(1.0)
    for metric in ("P", "nDCG", "R", "PSP", "PSnDCG"):
        assert per_document(metric, 2, top, truth, np.ones(3))[1] == 0.0


def test_all_documents_without_labels():
    truth = sp.csr_matrix((3, 4))
    top = np.array([[0, 1], [2, 3], [1, 0]])
    res = evaluate(top, truth, ks=(1, 2), inv_propensity=np.ones(4))
    assert all(value == 0.0 for value in res.values())


def test_unseen_truth_columns_count_as_misses():
    # The model knows labels 0..4; labels 5..7 were unseen in training and can never be predicted.
    truth = _csr([[1, 7], [6]], 8)
    top = np.array([[1, 0, 2], [0, 1, 2]])
    res = evaluate(top, truth, ks=(1, 3))
    assert res["P@1"] == pytest.approx((1 + 0) / 2)
    # R@3: doc0 1/|{1, 7}| = 1/2, doc1 0/1 -> 1/4
    assert res["R@3"] == pytest.approx(0.25)
    # nDCG@3: doc0 DCG = 1, IDCG over 2 labels = 1 + 1/log2(3); doc1 0
    assert res["nDCG@3"] == pytest.approx(1 / (1 + 1 / LOG2_3) / 2)
    # PS metrics need a propensity for every truth column (unseen labels: frequency 0).
    q = inverse_propensity(np.array([5, 3, 2, 1, 1, 0, 0, 0]), num_docs=10)
    res = evaluate(top, truth, ks=(1,), inv_propensity=q)
    # PSP@1: numerator doc0 q1; best doc0 max(q1, q7) = q7 (rarer), doc1 q6 -> q1 / (q7 + q6)
    assert res["PSP@1"] == pytest.approx(q[1] / (q[7] + q[6]))
    with pytest.raises(ValueError, match="inv_propensity"):
        evaluate(top, truth, ks=(1,), inv_propensity=q[:5])


def test_duplicates_explicit_zeros_and_non_unit_values():
    # Row 0 stores label 2 twice (values 1 and 2.5), label 3 as an explicit zero and label 0 as 0.5;
    # indices unsorted. Relevant set: {0, 2} (label 3 is not relevant, duplicates count once).
    data = np.array([1.0, 0.0, 2.5, 0.5])
    indices = np.array([2, 3, 2, 0])
    truth = sp.csr_matrix((data, indices, np.array([0, 4])), shape=(1, 5))
    top = np.array([[3, 2, 0]])
    np.testing.assert_array_equal(top_k_hits(top, truth), [[False, True, True]])
    res = evaluate(top, truth, ks=(1, 3))
    assert res["P@1"] == 0.0
    assert res["P@3"] == pytest.approx(2 / 3)
    assert res["R@3"] == pytest.approx(1.0)  # |y| = 2, not 3 or 4
    # nDCG@3 = (1/log2(3) + 1/2) / (1 + 1/log2(3))
    assert res["nDCG@3"] == pytest.approx((1 / LOG2_3 + 0.5) / (1 + 1 / LOG2_3))
    assert truth.nnz == 4  # the caller's matrix is left untouched


def test_accepts_sparse_arrays_and_other_formats():
    truth, top = _random_case(np.random.default_rng(2), num_docs=40, num_labels=15, k=5)
    ref = evaluate(top, truth)
    assert evaluate(top, sp.csr_array(truth)) == ref
    assert evaluate(top, truth.tocoo()) == ref


def test_top_k_hits_matches_loop():
    rng = np.random.default_rng(3)
    truth, top = _random_case(rng, num_docs=150, num_labels=40, k=7)
    # reverse the column order within each row so the CSR indices are unsorted
    indices = np.concatenate(
        [truth.indices[a:b][::-1] for a, b in zip(truth.indptr[:-1], truth.indptr[1:], strict=True)]
    )
    truth = sp.csr_matrix((truth.data, indices, truth.indptr), shape=truth.shape)
    assert not truth.has_sorted_indices
    expected = np.array([[label in set(truth[d].indices) for label in row] for d, row in enumerate(top)])
    np.testing.assert_array_equal(top_k_hits(top, truth), expected)


def test_too_few_columns_raises():
    with pytest.raises(ValueError, match="fewer than k"):
        evaluate(TOP, TRUTH)  # 3 columns, max(DEFAULT_KS) = 5
    with pytest.raises(ValueError, match="fewer than k"):
        per_document("P", 4, TOP, TRUTH)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="rows"):
        evaluate(TOP[:3], TRUTH, ks=(1,))
    with pytest.raises(ValueError, match="label indices"):
        evaluate(np.array([[6], [0], [0], [0]]), TRUTH, ks=(1,))
    with pytest.raises(ValueError, match="unknown metric"):
        per_document("F1", 1, TOP, TRUTH)
    with pytest.raises(ValueError, match="inv_propensity"):
        per_document("PSP", 1, TOP, TRUTH)
    with pytest.raises(ValueError, match="k must be"):
        evaluate(TOP, TRUTH, ks=(0,))


def test_inverse_propensity_formula():
    freq = np.array([0, 1, 10, 100])
    n, a, b = 1000, 0.55, 1.5
    c = (math.log(n) - 1) * (b + 1) ** a
    expected = [1 + c * (f + b) ** -a for f in freq]
    np.testing.assert_allclose(inverse_propensity(freq, n), expected)
    # rarer labels get larger inverse propensities
    assert np.all(np.diff(inverse_propensity(freq, n, a=0.6, b=2.6)) < 0)


def test_top_k_sorted_descending():
    rng = np.random.default_rng(4)
    scores = rng.random((30, 25))
    for k in (1, 5, 25):
        np.testing.assert_array_equal(top_k(scores, k), np.argsort(-scores, axis=1)[:, :k])
    with pytest.raises(ValueError):
        top_k(scores, 26)


def test_large_vocabulary_is_not_densified():
    # 20,000 x 500,000 dense would be 10^10 cells; the sparse path must stay small and fast.
    rng = np.random.default_rng(5)
    num_docs, num_labels, per_doc = 20_000, 500_000, 4
    cols = rng.integers(0, num_labels, size=num_docs * per_doc)
    truth = sp.csr_matrix(
        (np.ones(cols.size), cols, np.arange(0, cols.size + 1, per_doc)), shape=(num_docs, num_labels)
    )
    top = rng.integers(0, num_labels, size=(num_docs, 5))
    top[:, 0] = cols[::per_doc]  # first prediction always relevant
    q = inverse_propensity(np.asarray(truth.sum(axis=0)).ravel(), num_docs)
    res = evaluate(top, truth, inv_propensity=q)
    assert res["P@1"] == pytest.approx(1.0)


# --- agreement with napkinxc ---------------------------------------------------------------------


def _random_case(rng, num_docs: int, num_labels: int, k: int, extra_columns: int = 0):
    """Random truth (0..6 labels per doc, some docs empty, popular labels more frequent) and a top-k
    ranking from scores correlated with the truth, over the first `num_labels` columns only."""
    popularity = rng.dirichlet(np.full(num_labels + extra_columns, 0.3))
    sets = [
        sorted(rng.choice(num_labels + extra_columns, size=rng.integers(0, 7), replace=False, p=popularity))
        for _ in range(num_docs)
    ]
    truth = _csr(sets, num_labels + extra_columns)
    scores = rng.random((num_docs, num_labels)) + 0.6 * truth[:, :num_labels].toarray()
    return truth, top_k(scores, k)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agrees_with_napkinxc(seed):
    nxc = pytest.importorskip("napkinxc.metrics")
    rng = np.random.default_rng(seed)
    k = 5
    truth, top = _random_case(rng, num_docs=200, num_labels=50, k=k, extra_columns=5 * (seed % 2))
    train = _random_case(rng, num_docs=300, num_labels=50, k=1, extra_columns=truth.shape[1] - 50)[0]
    inv_ps_nxc = nxc.Jain_et_al_inverse_propensity(train)
    inv_ps = inverse_propensity(np.asarray(train.sum(axis=0)).ravel(), train.shape[0])
    np.testing.assert_allclose(inv_ps, inv_ps_nxc, rtol=1e-12)

    # napkinxc treats a numpy/CSR Y_pred as a *score* matrix; rankings must be lists of label lists.
    pred = top.tolist()
    expected = {
        "P": nxc.precision_at_k(truth, pred, k=k),
        "nDCG": nxc.ndcg_at_k(truth, pred, k=k),
        "R": nxc.recall_at_k(truth, pred, k=k),
        "PSP": nxc.psprecision_at_k(truth, pred, inv_ps_nxc, k=k),
        "PSnDCG": nxc.psndcg_at_k(truth, pred, inv_ps_nxc, k=k),
    }
    ours = evaluate(top, truth, ks=range(1, k + 1), inv_propensity=inv_ps)
    for metric, values in expected.items():
        assert len(values) == k  # napkinxc returns the metric at every k = 1..K
        for j in range(k):
            assert ours[f"{metric}@{j + 1}"] == pytest.approx(values[j], abs=1e-6), (metric, j + 1)
