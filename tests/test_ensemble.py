"""Tests for lcenet.ensemble: averaging over the union of top-k' candidates, and the vocabulary check."""

from __future__ import annotations

import pytest
import torch

from lcenet.ensemble import average_over_union, check_same_labels
from lcenet.errors import UserError
from lcenet.output import PADDING_LOGIT, ModelOutput


def logit(p):
    return torch.logit(torch.tensor(p, dtype=torch.float64))


def dense(*logits):
    return [ModelOutput(item) for item in logits]


def test_average_of_two_toy_models_is_the_hand_computed_one():
    a = logit([[0.9, 0.6, 0.2, 0.01, 0.02], [0.1, 0.2, 0.5, 0.8, 0.05]])
    b = logit([[0.4, 0.8, 0.01, 0.3, 0.02], [0.2, 0.01, 0.9, 0.03, 0.7]])
    top, scores = average_over_union(dense(a, b), k=3, candidates=2)
    # k' is raised to k = 3. doc 0: union {0, 1, 2} (a) | {1, 0, 3} (b): 0 -> (0.9+0.4)/2 = 0.65, 1 -> 0.7,
    # 2 -> 0.105, 3 -> (0.01+0.3)/2 = 0.155. doc 1: union {3, 2, 1} | {2, 4, 0}: 2 -> 0.7, 3 -> 0.415, 4 -> 0.375
    assert top.tolist() == [[1, 0, 3], [2, 3, 4]]
    torch.testing.assert_close(scores, torch.tensor([[0.7, 0.65, 0.155], [0.7, 0.415, 0.375]],
                                                    dtype=torch.float32))


def test_one_model_is_its_own_top_k_and_ties_go_to_the_lower_label():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    top, scores = average_over_union(dense(logits), k=5, candidates=10)
    assert torch.equal(top, torch.topk(logits, 5).indices)
    torch.testing.assert_close(scores, torch.sigmoid(torch.topk(logits, 5).values))
    tied = torch.zeros(1, 6)
    assert average_over_union(dense(tied, tied), k=3, candidates=6)[0].tolist() == [[0, 1, 2]]


def test_a_shortlist_member_scores_zero_where_it_has_no_candidate():
    """A dense model and a shortlist model (candidates 1 and 3, one padded slot) average as if the shortlist had
    sigmoid 0 everywhere else; its padding never becomes a label."""
    full = ModelOutput(logit([[0.9, 0.6, 0.2, 0.01, 0.02]]))
    shortlist = ModelOutput(torch.cat([logit([[0.8, 0.4]]), torch.tensor([[PADDING_LOGIT]], dtype=torch.float64)], 1),
                            label_ids=torch.tensor([[1, 3, -1]]))
    top, scores = average_over_union([full, shortlist], k=2, candidates=2)
    # pool {0, 1} | {1, 3}: 0 -> (0.9 + 0) / 2, 1 -> (0.6 + 0.8) / 2, 3 -> (0.01 + 0.4) / 2
    assert top.tolist() == [[1, 0]]
    torch.testing.assert_close(scores, torch.tensor([[0.7, 0.45]]))
    top, _ = average_over_union([shortlist], k=3, candidates=3)
    assert top.tolist() == [[1, 3, -1]]  # fewer candidates than k: the rest is -1, never a label


def test_bad_members_are_refused():
    with pytest.raises(UserError):
        average_over_union([], k=5)
    with pytest.raises(UserError, match="shape"):
        average_over_union(dense(torch.zeros(2, 3), torch.zeros(2, 4)), k=2)


def test_mismatched_vocabularies_are_refused_with_both_directories_and_the_label():
    check_same_labels([["a", "b"], ["a", "b"]], ["m1", "m2"])
    with pytest.raises(UserError, match=r"runs/m1 and runs/m3 .* index 1: 'b' vs 'c'"):
        check_same_labels([["a", "b"], ["a", "b"], ["a", "c"]], ["runs/m1", "runs/m2", "runs/m3"])
    with pytest.raises(UserError, match=r"2 vs 3 labels; first difference at index 2: no label vs 'x'"):
        check_same_labels([["a", "b"], ["a", "b", "x"]], ["m1", "m2"])
