"""Tests for lcenet.ensemble: averaging over the union of top-k' candidates, and the vocabulary check."""

from __future__ import annotations

import numpy as np
import pytest

from lcenet.ensemble import average_top_k, check_same_labels
from lcenet.errors import UserError


def test_average_of_two_toy_models_is_the_hand_computed_one():
    a = (np.array([[0, 1, 2], [3, 2, 1]]), np.array([[0.9, 0.6, 0.2], [0.8, 0.5, 0.1]]))
    b = (np.array([[1, 0, 3], [2, 4, 0]]), np.array([[0.8, 0.4, 0.3], [0.9, 0.7, 0.2]]))
    top, scores = average_top_k([a, b], k=3)
    # doc 0: label 0 (0.9+0.4)/2 = 0.65, 1 (0.6+0.8)/2 = 0.7, 2 0.2/2 = 0.1, 3 0.3/2 = 0.15
    # doc 1: label 3 0.4, 2 (0.5+0.9)/2 = 0.7, 1 0.05, 4 0.35, 0 0.1
    assert top.tolist() == [[1, 0, 3], [2, 3, 4]]
    np.testing.assert_allclose(scores, [[0.7, 0.65, 0.15], [0.7, 0.4, 0.35]], rtol=1e-6)
    assert top.dtype == np.int64 and scores.dtype == np.float32


def test_ties_go_to_the_lower_label_and_short_rows_are_padded():
    a = (np.array([[5, 2]]), np.array([[0.5, 0.5]]))
    top, scores = average_top_k([a], k=4)
    assert top.tolist() == [[2, 5, -1, -1]]
    np.testing.assert_allclose(scores, [[0.5, 0.5, 0.0, 0.0]])


def test_one_model_is_its_own_top_k_and_candidate_lists_may_differ_in_length():
    rng = np.random.default_rng(0)
    scores = np.sort(rng.random((4, 10)), axis=1)[:, ::-1]
    indices = np.stack([rng.permutation(100)[:10] for _ in range(4)])
    top, top_scores = average_top_k([(indices, scores)], k=5)
    assert np.array_equal(top, indices[:, :5])
    np.testing.assert_allclose(top_scores, scores[:, :5], rtol=1e-6)
    top, _ = average_top_k([(indices, scores), (indices[:, :3], scores[:, :3])], k=5)
    assert top.shape == (4, 5)


def test_bad_candidates_are_refused():
    with pytest.raises(UserError):
        average_top_k([], k=5)
    with pytest.raises(UserError):
        average_top_k([(np.zeros((2, 3), int), np.zeros((2, 3))), (np.zeros((3, 3), int), np.zeros((3, 3)))], k=2)


def test_mismatched_vocabularies_are_refused_with_both_directories_and_the_label():
    check_same_labels([["a", "b"], ["a", "b"]], ["m1", "m2"])
    with pytest.raises(UserError, match=r"runs/m1 and runs/m3 .* index 1: 'b' vs 'c'"):
        check_same_labels([["a", "b"], ["a", "b"], ["a", "c"]], ["runs/m1", "runs/m2", "runs/m3"])
    with pytest.raises(UserError, match=r"2 vs 3 labels; first difference at index 2: no label vs 'x'"):
        check_same_labels([["a", "b"], ["a", "b", "x"]], ["m1", "m2"])
