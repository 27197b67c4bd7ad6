import math

import numpy as np
import pytest
import scipy.sparse as sp

from lcenet import metrics
from lcenet.pipeline import document_hits
from lcenet.stats import (
    bootstrap_means,
    early_stagnation,
    mean_std,
    paired_test,
    parse_metric,
    per_document_from_hits,
    stagnation_window,
    step_ratio,
    steps_to_target,
)


def random_truth(rng, num_docs=300, num_labels=40):
    rows = []
    for _ in range(num_docs):
        size = rng.integers(0, 8)  # some documents have no true labels
        rows.append(np.sort(rng.choice(num_labels, size=size, replace=False)))
    indptr = np.concatenate(([0], np.cumsum([len(r) for r in rows])))
    indices = np.concatenate(rows).astype(np.int64)
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(num_docs, num_labels))


@pytest.mark.parametrize("seed", [0, 1])
def test_per_document_from_hits_matches_metrics(seed):
    rng = np.random.default_rng(seed)
    truth = random_truth(rng)
    scores = rng.random((truth.shape[0], truth.shape[1]))
    top = metrics.top_k(scores, 5)
    encoded = document_hits(top, truth)
    for metric in ("P", "nDCG", "R"):
        for k in (1, 2, 3, 5):
            expected = metrics.per_document(metric, k, top, truth)
            np.testing.assert_allclose(per_document_from_hits(encoded, metric, k), expected, atol=1e-12)
    assert per_document_from_hits(encoded, "nDCG", 5).mean() == pytest.approx(metrics.evaluate(top, truth)["nDCG@5"])


def test_per_document_hand_made():
    # doc 0: hits at ranks 1 and 3, 2 true labels; doc 1: no hits; doc 2: no true labels
    docs = {"k": 3, "hits": [0b101, 0, 0], "num_true": [2, 4, 0]}
    np.testing.assert_allclose(per_document_from_hits(docs, "P", 3), [2 / 3, 0, 0])
    np.testing.assert_allclose(per_document_from_hits(docs, "R", 3), [1.0, 0, 0])
    np.testing.assert_allclose(per_document_from_hits(docs, "nDCG", 3), [(1 + 0.5) / (1 + 1 / math.log2(3)), 0, 0])
    np.testing.assert_allclose(per_document_from_hits(docs, "P", 1), [1.0, 0, 0])
    with pytest.raises(ValueError):
        per_document_from_hits(docs, "P", 4)
    with pytest.raises(ValueError):
        per_document_from_hits(docs, "PSP", 1)
    assert parse_metric("nDCG@5") == ("nDCG", 5)


def test_paired_test_large_difference_is_significant():
    rng = np.random.default_rng(0)
    a = rng.random(400)
    b = a + 0.2 + rng.normal(0, 0.05, 400)
    result = paired_test(a, b, n_resamples=2000)
    assert result["mean_diff"] == pytest.approx(float((b - a).mean()))
    assert result["p_bootstrap"] < 0.01 and result["p_wilcoxon"] < 0.01 and result["significant"]
    assert result["ci_low"] < result["mean_diff"] < result["ci_high"] and result["ci_low"] > 0
    assert paired_test(b, a, n_resamples=2000)["mean_diff"] == pytest.approx(-result["mean_diff"])


def test_paired_test_identical_arrays():
    a = np.array([0.0, 1.0, 0.5, 0.5])
    result = paired_test(a, a.copy())
    assert result["p_bootstrap"] == 1.0 and result["p_wilcoxon"] == 1.0 and not result["significant"]
    assert result["mean_diff"] == 0.0 and result["ci_low"] == result["ci_high"] == 0.0


def test_paired_test_symmetric_noise_is_not_significant():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.3, 200)
    a = rng.random(400)
    b = a + np.concatenate((noise, -noise))  # differences symmetric about zero, mean exactly 0
    result = paired_test(a, b, n_resamples=2000)
    assert abs(result["mean_diff"]) < 1e-12
    assert result["p_bootstrap"] > 0.5 and result["p_wilcoxon"] > 0.5 and not result["significant"]
    assert result["ci_low"] < 0 < result["ci_high"]


def test_paired_test_discrete_differences_and_errors():
    # P@1-like 0/1 values: the multinomial bootstrap must match the plain mean
    a = np.array([1, 0, 1, 0, 1, 1, 0, 0] * 25, dtype=float)
    b = np.array([1, 1, 1, 0, 1, 1, 1, 0] * 25, dtype=float)
    result = paired_test(a, b, n_resamples=3000, seed=3)
    assert result["mean_diff"] == pytest.approx(0.25) and result["significant"]
    means = bootstrap_means(b - a, 5000, seed=0)
    assert means.mean() == pytest.approx(0.25, abs=0.01)
    assert means.std() == pytest.approx((b - a).std() / math.sqrt(len(a)), rel=0.1)
    # continuous differences take the document-resampling path; same distribution of the mean
    continuous = np.random.default_rng(2).normal(0.1, 1.0, 500)
    means = bootstrap_means(continuous, 4000, seed=0)
    assert means.mean() == pytest.approx(continuous.mean(), abs=0.01)
    assert means.std() == pytest.approx(continuous.std() / math.sqrt(500), rel=0.1)
    with pytest.raises(ValueError):
        paired_test(a, b[:-1])
    with pytest.raises(ValueError):
        paired_test([], [])


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.4]) == (0.4, 0.0)
    mean, std = mean_std([])
    assert math.isnan(mean) and math.isnan(std)


def test_steps_to_target_twice_as_fast_takes_half_the_steps():
    steps = np.arange(10, 1001, 10)
    slow = np.minimum(steps / 500, 1.0) * 0.6
    fast = np.minimum(steps / 250, 1.0) * 0.6
    target = 0.95 * slow.max()
    slow_steps, fast_steps = steps_to_target(steps, slow, target), steps_to_target(steps, fast, target)
    assert (slow_steps, fast_steps) == (480, 240)
    assert step_ratio(fast_steps, slow_steps) == 0.5
    assert steps_to_target(steps, slow, slow.max()) == 500  # 100% of its own best: the best step itself
    assert steps_to_target(steps, slow, 0.7) is None
    assert step_ratio(None, 10) is None and step_ratio(5, None) is None and step_ratio(5, 0) is None
    # unordered input is sorted by step
    assert steps_to_target([30, 10, 20], [0.9, 0.1, 0.5], 0.5) == 20


def test_stagnation_window():
    assert stagnation_window(np.arange(100, 1101, 100)) == (100.0, 300.0)
    assert stagnation_window([500, 100, 300], fraction=0.5) == (100.0, 300.0)
    assert stagnation_window([40]) == (40.0, 40.0)
    with pytest.raises(ValueError):
        stagnation_window([10, 20], fraction=0)
    with pytest.raises(ValueError):
        stagnation_window([])


def test_early_stagnation():
    steps = np.arange(0, 101)
    window = stagnation_window(steps, 0.2)
    assert window == (0.0, 20.0)
    # at the reference throughout the window: 1; flat at zero: 0
    assert early_stagnation(steps, np.full(101, 0.3), 0.3, window) == pytest.approx(1.0)
    assert early_stagnation(steps, np.zeros(101), 0.3, window) == 0.0
    ramp = steps / 100
    assert early_stagnation(steps, ramp, 1.0, (0, 100)) == pytest.approx(0.5)
    assert early_stagnation(steps, ramp, 1.0, window) == pytest.approx(0.1)
    assert early_stagnation(steps, ramp, 0.5, window) == pytest.approx(0.2)  # scales with 1 / reference
    # sparse evaluations are interpolated linearly: same answer from every 25th step
    assert early_stagnation(steps[::25], ramp[::25], 1.0, window) == pytest.approx(0.1)
    # a curve that rises faster scores higher
    slow, fast = 0.6 * (1 - np.exp(-steps / 40)), 0.6 * (1 - np.exp(-steps / 10))
    assert early_stagnation(steps, fast, 0.6, window) > early_stagnation(steps, slow, 0.6, window)
    # a curve that stays flat early and then jumps scores lower than one that rises at once
    late, early = np.where(steps < 15, 0.0, 1.0), np.where(steps < 5, 0.0, 1.0)
    assert early_stagnation(steps, late, 1.0, window) < early_stagnation(steps, early, 1.0, window)
    # zero-width window: the value at its start over the reference; outside its range a curve is held flat
    assert early_stagnation([5], [0.4], 0.8, (5, 5)) == pytest.approx(0.5)
    assert early_stagnation([10, 20], [0.2, 0.4], 0.4, (0, 40)) == pytest.approx((10 * 0.2 + 10 * 0.3 + 20 * 0.4)
                                                                                 / (40 * 0.4))
    with pytest.raises(ValueError):
        early_stagnation(steps, ramp, 0.0, window)
    with pytest.raises(ValueError):
        early_stagnation(steps, ramp, 1.0, (20, 10))
    with pytest.raises(ValueError):
        early_stagnation([], [], 1.0, window)


def test_early_stagnation_run_that_learns_nothing_cannot_beat_the_base():
    """Measured against the base's best over the base's window, a run stuck at a low value scores low -- it
    would score 1 if it were divided by its own best."""
    steps = np.arange(100, 1001, 100)
    base = 0.6 * (1 - np.exp(-steps / 300))
    stuck = np.full(steps.shape, 0.07)
    window = stagnation_window(steps, 0.2)
    reference = float(base.max())
    e_base, e_stuck = (early_stagnation(steps, c, reference, window) for c in (base, stuck))
    assert e_stuck < e_base
    assert e_stuck == pytest.approx(0.07 / reference)
    assert early_stagnation(steps, stuck, stuck.max(), window) == pytest.approx(1.0)  # the old, misleading score
