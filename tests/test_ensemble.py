"""Tests for lcenet.ensemble: combining over the union of top-k' candidates (mean logit or mean sigmoid score),
and the vocabulary check."""

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


def test_mean_sigmoid_of_two_toy_models_is_the_hand_computed_one():
    a = logit([[0.9, 0.6, 0.2, 0.01, 0.02], [0.1, 0.2, 0.5, 0.8, 0.05]])
    b = logit([[0.4, 0.8, 0.01, 0.3, 0.02], [0.2, 0.01, 0.9, 0.03, 0.7]])
    top, scores = average_over_union(dense(a, b), k=3, candidates=2, combine="sigmoid")
    # k' is raised to k = 3. doc 0: union {0, 1, 2} (a) | {1, 0, 3} (b): 0 -> (0.9+0.4)/2 = 0.65, 1 -> 0.7,
    # 2 -> 0.105, 3 -> (0.01+0.3)/2 = 0.155. doc 1: union {3, 2, 1} | {2, 4, 0}: 2 -> 0.7, 3 -> 0.415, 4 -> 0.375
    assert top.tolist() == [[1, 0, 3], [2, 3, 4]]
    torch.testing.assert_close(scores, torch.tensor([[0.7, 0.65, 0.155], [0.7, 0.415, 0.375]],
                                                    dtype=torch.float32))


def test_mean_logit_of_two_toy_models_is_the_hand_computed_one_and_ranks_unlike_the_mean_sigmoid():
    a = logit([[0.99, 0.6, 0.1]])
    b = logit([[0.05, 0.6, 0.2]])
    top, scores = average_over_union(dense(a, b), k=3, candidates=3, combine="logit")
    # label 0: sigmoid((ln 99 + ln 1/19) / 2) = r / (1 + r), r = sqrt(99 / 19); label 1: 0.6; label 2:
    # sigmoid((ln 1/9 + ln 1/4) / 2) = 1/7. The mean sigmoid puts label 1 (0.6) above label 0 (0.52).
    r = (99 / 19) ** 0.5
    assert top.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(scores, torch.tensor([[r / (1 + r), 0.6, 1 / 7]]))
    assert average_over_union(dense(a, b), k=3, candidates=3, combine="sigmoid")[0].tolist() == [[1, 0, 2]]


@pytest.mark.parametrize("combine", ["logit", "sigmoid"])
def test_one_model_is_its_own_top_k_and_ties_go_to_the_lower_label(combine):
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    top, scores = average_over_union(dense(logits), k=5, candidates=10, combine=combine)
    assert torch.equal(top, torch.topk(logits, 5).indices)
    torch.testing.assert_close(scores, torch.sigmoid(torch.topk(logits, 5).values))
    tied = torch.zeros(1, 6)
    assert average_over_union(dense(tied, tied), k=3, candidates=6, combine=combine)[0].tolist() == [[0, 1, 2]]


def shortlist_of(probabilities, label_ids):
    """A shortlist output with these candidates' probabilities, then one padded slot."""
    padding = torch.tensor([[PADDING_LOGIT]], dtype=torch.float64)
    return ModelOutput(torch.cat([logit(probabilities), padding], 1), label_ids=torch.tensor(label_ids))


def test_under_the_mean_sigmoid_a_shortlist_member_scores_zero_where_it_has_no_candidate():
    """A dense model and a shortlist model (candidates 1 and 3, one padded slot) average as if the shortlist had
    sigmoid 0 everywhere else; its padding never becomes a label."""
    full = ModelOutput(logit([[0.9, 0.6, 0.2, 0.01, 0.02]]))
    shortlist = shortlist_of([[0.8, 0.4]], [[1, 3, -1]])
    top, scores = average_over_union([full, shortlist], k=2, candidates=2, combine="sigmoid")
    # pool {0, 1} | {1, 3}: 0 -> (0.9 + 0) / 2, 1 -> (0.6 + 0.8) / 2, 3 -> (0.01 + 0.4) / 2
    assert top.tolist() == [[1, 0]]
    torch.testing.assert_close(scores, torch.tensor([[0.7, 0.45]]))
    top, _ = average_over_union([shortlist], k=3, candidates=3, combine="sigmoid")
    assert top.tolist() == [[1, 3, -1]]  # fewer candidates than k: the rest is -1, never a label


def test_under_the_mean_logit_a_shortlist_member_counts_its_lowest_candidate_where_it_has_none():
    """The shortlist's lowest real candidate (label 3 at 0.4, not its padded slot) stands in for labels 0 and 2,
    which it did not score; the mean sigmoid would rank label 1 first and label 3 above label 2."""
    full = ModelOutput(logit([[0.9, 0.6, 0.2, 0.01, 0.02]]))
    shortlist = shortlist_of([[0.7, 0.4]], [[1, 3, -1]])
    top, scores = average_over_union([full, shortlist], k=3, candidates=2, combine="logit")
    # k' is raised to k = 3: pool {0, 1, 2} (full) | {1, 3, -1} (shortlist)
    expected = torch.sigmoid((logit([[0.9, 0.6, 0.2]]) + logit([[0.4, 0.7, 0.4]])) / 2)  # labels 0, 1, 2
    assert top.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(scores, expected.float())
    assert average_over_union([full, shortlist], k=3, candidates=2, combine="sigmoid")[0].tolist() == [[1, 0, 3]]
    top, _ = average_over_union([shortlist], k=3, candidates=3, combine="logit")
    assert top.tolist() == [[1, 3, -1]]


def test_bad_members_and_rules_are_refused():
    with pytest.raises(UserError):
        average_over_union([], k=5)
    with pytest.raises(UserError, match="logit or sigmoid .*'median'"):
        average_over_union(dense(torch.zeros(2, 3)), k=2, combine="median")
    with pytest.raises(UserError, match="shape"):
        average_over_union(dense(torch.zeros(2, 3), torch.zeros(2, 4)), k=2)


def test_mismatched_vocabularies_are_refused_with_both_directories_and_the_label():
    check_same_labels([["a", "b"], ["a", "b"]], ["m1", "m2"])
    with pytest.raises(UserError, match=r"runs/m1 and runs/m3 .* index 1: 'b' vs 'c'"):
        check_same_labels([["a", "b"], ["a", "b"], ["a", "c"]], ["runs/m1", "runs/m2", "runs/m3"])
    with pytest.raises(UserError, match=r"2 vs 3 labels; first difference at index 2: no label vs 'x'"):
        check_same_labels([["a", "b"], ["a", "b", "x"]], ["m1", "m2"])
