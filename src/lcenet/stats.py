"""Statistics for experiment reports: per-document metrics from run records, paired significance tests,
mean ± std over seeds, and convergence measures on dev curves.

Per-document values come from a record's ``test_documents`` (written by ``lcenet train`` as
``test_documents.json``): for each test document a bitmask of which top-k ranks hit a true label (bit
``i`` set = the rank-``i+1`` prediction is relevant) and its number of true labels. That is enough to
recompute P@k, nDCG@k and R@k per document exactly as :mod:`lcenet.metrics` defines them, so two runs on
the same test set can be compared document by document.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

HIT_METRICS: tuple[str, ...] = ("P", "nDCG", "R")


# ---- per-document metrics ------------------------------------------------------------------------------------
def hit_matrix(test_documents: dict, k: int | None = None) -> np.ndarray:
    """``[N, k]`` boolean: ``hits[d, i]`` is True when document ``d``'s rank-``i+1`` prediction is relevant."""
    stored_k = int(test_documents["k"])
    k = stored_k if k is None else int(k)
    if not 1 <= k <= stored_k:
        raise ValueError(f"k must be between 1 and {stored_k} (the ranks recorded in test_documents), got {k}")
    masks = np.asarray(test_documents["hits"], dtype=np.int64).reshape(-1)
    return ((masks[:, None] >> np.arange(k, dtype=np.int64)) & 1).astype(bool)


def per_document_from_hits(test_documents: dict, metric: str, k: int) -> np.ndarray:
    """Per-document ``metric@k`` (float64 ``[N]``) recomputed from a record's ``test_documents``.

    ``metric`` is ``"P"``, ``"nDCG"`` or ``"R"`` (propensity-scored metrics need the label propensities,
    which records do not keep). Definitions as in :mod:`lcenet.metrics`: ``P@k = hits/k``;
    ``DCG@k = sum_i hit_i / log2(i + 1)`` over ranks ``i = 1..k`` and ``nDCG@k = DCG@k / IDCG@k`` with
    ``IDCG@k`` the DCG of ``min(k, num_true)`` hits at the top; ``R@k = hits / num_true``. nDCG and R are 0
    for documents without true labels.
    """
    if metric not in HIT_METRICS:
        raise ValueError(f"unknown metric {metric!r}; per-document values exist for {', '.join(HIT_METRICS)}")
    hits = hit_matrix(test_documents, k)
    num_true = np.asarray(test_documents["num_true"], dtype=np.int64).reshape(-1)
    if num_true.shape[0] != hits.shape[0]:
        raise ValueError(f"test_documents has {hits.shape[0]} hit masks but {num_true.shape[0]} num_true values")
    count = hits.sum(axis=1).astype(np.float64)
    if metric == "P":
        return count / k
    if metric == "R":
        return _safe_div(count, num_true.astype(np.float64))
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    ideal = np.concatenate(([0.0], np.cumsum(discounts)))[np.minimum(num_true, k)]
    return _safe_div(hits @ discounts, ideal)


def parse_metric(name: str) -> tuple[str, int]:
    """``"nDCG@5" -> ("nDCG", 5)``."""
    metric, sep, k = name.partition("@")
    if not sep or not k.isdigit():
        raise ValueError(f"expected a metric name such as P@5, got {name!r}")
    return metric, int(k)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


# ---- paired tests --------------------------------------------------------------------------------------------
def paired_test(a: np.ndarray, b: np.ndarray, n_resamples: int = 10000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired comparison of two systems scored on the same items (e.g. per-document nDCG@5 of base ``a`` and
    LCENet ``b``).

    Returns ``{"n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_bootstrap", "p_wilcoxon",
    "significant"}``:

    * ``mean_diff`` is ``mean(b - a)``.
    * ``ci_low``/``ci_high``: the 95% percentile interval of the mean difference over ``n_resamples``
      paired bootstrap resamples (documents drawn with replacement, both systems together).
    * ``p_bootstrap``: two-sided bootstrap p-value of H0 "mean difference = 0", from the resampled means
      shifted to the null, ``(1 + #{|m* - mean_diff| >= |mean_diff|}) / (n_resamples + 1)``.
    * ``p_wilcoxon``: two-sided Wilcoxon signed-rank p-value (zero differences dropped); 1.0 when every
      difference is zero.
    * ``significant``: both p-values below ``alpha``.

    When the differences take few distinct values (P@k, nDCG@k) the bootstrap draws the counts of each value
    from a multinomial, which has exactly the distribution of resampling documents but costs O(distinct
    values) per resample, so test sets of 10^5+ documents stay fast; otherwise it resamples documents.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.shape[0]} and {b.shape[0]}")
    n = int(a.shape[0])
    if n == 0:
        raise ValueError("paired_test needs at least one pair")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired_test needs finite values")
    diff = b - a
    mean_diff = float(diff.mean())
    result = {"n": n, "mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_diff": mean_diff}
    if not diff.any():
        result.update(ci_low=0.0, ci_high=0.0, p_bootstrap=1.0, p_wilcoxon=1.0, significant=False)
        return result
    means = bootstrap_means(diff, n_resamples, seed)
    low, high = np.percentile(means, [2.5, 97.5])
    extreme = np.abs(means - mean_diff) >= abs(mean_diff) - 1e-12 * max(1.0, abs(mean_diff))
    p_boot = (1 + int(extreme.sum())) / (n_resamples + 1)
    p_wilcoxon = wilcoxon_p(diff)
    result.update(ci_low=float(low), ci_high=float(high), p_bootstrap=float(min(1.0, p_boot)),
                  p_wilcoxon=p_wilcoxon, significant=bool(max(p_boot, p_wilcoxon) < alpha))
    return result


def bootstrap_means(values: np.ndarray, n_resamples: int = 10000, seed: int = 0) -> np.ndarray:
    """Means of ``n_resamples`` bootstrap resamples (size ``len(values)``, with replacement) of ``values``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    unique, counts = np.unique(values, return_counts=True)
    if unique.shape[0] == 1:
        return np.full(n_resamples, unique[0])
    out = np.empty(n_resamples, dtype=np.float64)
    if unique.shape[0] * 10 > n:  # many distinct values: drawing documents is cheaper
        chunk = max(1, min(n_resamples, 4_000_000 // n))
        for start in range(0, n_resamples, chunk):
            size = min(chunk, n_resamples - start)
            out[start:start + size] = values[rng.integers(0, n, size=(size, n))].mean(axis=1)
        return out
    # A resample's mean is sum_v v * (copies of v drawn) / n, with the copies ~ Multinomial(n, counts / n).
    chunk = max(1, min(n_resamples, 2_000_000 // unique.shape[0]))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = rng.multinomial(n, counts / n, size=size)
        out[start:start + size] = draws @ unique / n
    return out


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; 1.0 when all differences are zero."""
    diff = np.asarray(diff, dtype=np.float64).reshape(-1)
    if not diff.any():
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p = float(scipy_stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
        except ValueError:
            return 1.0
    return 1.0 if math.isnan(p) else p


# ---- seeds ---------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of ``values``; std is 0 for one value, both NaN for none."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    if array.size == 1:
        return float(array[0]), 0.0
    return float(array.mean()), float(array.std(ddof=1))


# ---- convergence ---------------------------------------------------------------------------------------------
def steps_to_target(curve_steps: Sequence[int], curve_values: Sequence[float], target: float) -> int | None:
    """The first evaluated step whose value is ``>= target`` (curve in step order); None if it never is."""
    steps, values = _curve(curve_steps, curve_values)
    tolerance = 1e-12 * max(1.0, abs(target))
    reached = np.flatnonzero(values >= target - tolerance)
    return int(steps[reached[0]]) if reached.size else None


def step_ratio(steps: int | None, base_steps: int | None) -> float | None:
    """``steps / base_steps`` (e.g. LCENet's steps to a target over the base model's); None if either is
    missing or the base needed no steps."""
    if steps is None or base_steps is None or base_steps <= 0:
        return None
    return steps / base_steps


def stagnation_window(curve_steps: Sequence[int], fraction: float = 0.2) -> tuple[float, float]:
    """The early-training window of a reference run: the first ``fraction`` of its evaluated step range,
    ``(s0, s0 + fraction * (s_last - s0))`` with ``s0``/``s_last`` its first/last evaluated step.

    Pass the *base* run's steps (or the common step range of a group of runs) so that every variant compared
    with it is measured over the same window."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    steps = np.asarray(curve_steps, dtype=np.float64).reshape(-1)
    if steps.size == 0:
        raise ValueError("stagnation_window needs at least one step")
    first, last = float(steps.min()), float(steps.max())
    return first, first + fraction * (last - first)


def early_stagnation(curve_steps: Sequence[int], curve_values: Sequence[float], reference: float,
                     window: tuple[float, float]) -> float:
    """Normalised area under a dev curve over a fixed early ``window`` of steps, relative to a fixed
    ``reference`` value -- how much of the reference a run already reaches early in training.

    Use the same ``reference`` and ``window`` for every run being compared: the report takes the best dev value
    of the base run with the same seed as ``reference`` and the first 20% of that base run's evaluated steps
    (:func:`stagnation_window`) as ``window``. Dividing by a run's *own* best instead would let a run that learns
    nothing (flat at a low value) score close to 1, and per-run windows would compare different stretches of
    training.

    The curve is linearly interpolated between evaluations and held at its first/last value outside its
    evaluated range; its area over ``window = (start, end)`` (trapezoid rule) is divided by the window's width
    and by ``reference``::

        E = (1 / ((end - start) * reference)) * integral_{start}^{end} value(s) ds

    ``E = 1`` means the run stayed at the reference (e.g. the base's best) through the whole window, ``E = 0``
    that it stayed flat at zero; higher = faster. ``E`` can exceed 1 when the run is above the reference early
    on. With a zero-width window (a reference run evaluated once) ``E`` is the curve's value at ``start`` over
    ``reference``.
    """
    reference = float(reference)
    if not (math.isfinite(reference) and reference > 0):
        raise ValueError(f"early_stagnation needs a positive reference value, got {reference}")
    start, end = float(window[0]), float(window[1])
    if end < start:
        raise ValueError(f"window must be (start, end) with start <= end, got {window}")
    steps, values = _curve(curve_steps, curve_values)
    if steps.size == 0:
        raise ValueError("early_stagnation needs a non-empty curve")
    if end == start:
        return float(np.interp(start, steps, values) / reference)
    inside = (steps > start) & (steps < end)
    xs = np.concatenate(([start], steps[inside], [end]))
    ys = np.interp(xs, steps, values)
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))
    return area / ((end - start) * reference)


def _curve(curve_steps: Sequence[int], curve_values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    steps = np.asarray(curve_steps, dtype=np.float64).reshape(-1)
    values = np.asarray(curve_values, dtype=np.float64).reshape(-1)
    if steps.shape != values.shape:
        raise ValueError(f"curve has {steps.shape[0]} steps but {values.shape[0]} values")
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]
