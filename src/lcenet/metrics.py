"""Vectorised ranking metrics for extreme multi-label text classification (XMTC).

All metrics are computed from the model's top-k predicted label indices (an ``[N, K]`` integer array,
best label first) and a scipy.sparse CSR ground truth of shape ``(N, L_truth)``. The ground truth is
never densified, so the functions work for label vocabularies of 500,000+ labels and 100,000s of
documents. ``L_truth`` may exceed the model's label count: labels unseen in training are represented
by the caller as extra columns that can never be predicted but count as misses (and count in ``|y|``).

Any stored nonzero value in the ground truth marks a relevant label; explicit zeros are ignored and
duplicated (row, column) entries count once.

Definitions (``y`` is a document's set of relevant labels, ``top-k`` its k best predictions):

* ``P@k = (1/k) * |top-k ∩ y|``
* ``R@k = |top-k ∩ y| / |y|`` (0 when ``|y| = 0``)
* ``nDCG@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{i=1..k} [label_i in y] / log2(i + 1)`` and ``IDCG@k``
  the DCG of ``min(k, |y|)`` hits at the top (0 when ``|y| = 0``)
* ``PSP@k`` and ``PSnDCG@k`` (Jain et al., 2016): the same with each hit weighted by the label's inverse
  propensity ``q_l = 1/p_l``, normalised as napkinxc does -- the mean over documents of the weighted
  value divided by the mean over documents of the best achievable weighted value (the ``k`` largest
  ``q_l`` among the document's relevant labels, placed at the top). For PSnDCG each document's
  weighted DCG (and its best achievable one) is first divided by the document's *unweighted*
  ``IDCG@k``, exactly as ``napkinxc.metrics.psndcg_at_k``.

Every document counts in every mean, including documents without relevant labels (they score 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

DEFAULT_KS: tuple[int, ...] = (1, 3, 5)

METRICS: tuple[str, ...] = ("P", "nDCG", "R", "PSP", "PSnDCG")
PROPENSITY_METRICS: tuple[str, ...] = ("PSP", "PSnDCG")


def inverse_propensity(
    label_frequency: np.ndarray, num_docs: int, a: float = 0.55, b: float = 1.5
) -> np.ndarray:
    """Inverse propensities ``1/p_l = 1 + C * (N_l + B)^(-A)`` with ``C = (ln N - 1) * (B + 1)^A``.

    ``label_frequency[l]`` is ``N_l``, the number of training documents labelled ``l`` (0 for labels
    unseen in training); ``num_docs`` is ``N``, the number of training documents. Returns a float64
    vector of the same length (Jain et al., 2016; identical to napkinxc's
    ``Jain_et_al_inverse_propensity``).
    """
    freq = np.asarray(label_frequency, dtype=np.float64)
    if freq.ndim != 1:
        raise ValueError(f"label_frequency must be 1-D, got shape {freq.shape}")
    if freq.size and freq.min() < 0:
        raise ValueError("label_frequency must be non-negative")
    if num_docs < 1:
        raise ValueError(f"num_docs must be at least 1, got {num_docs}")
    c = (np.log(num_docs) - 1.0) * (b + 1.0) ** a
    return 1.0 + c * (freq + b) ** (-a)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores of each row, sorted by descending score: ``[N, k]`` int64.

    Uses ``argpartition`` followed by a sort of the ``k`` selected columns only.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [docs, labels], got shape {scores.shape}")
    num_labels = scores.shape[1]
    if not 1 <= k <= num_labels:
        raise ValueError(f"k must be between 1 and the number of labels ({num_labels}), got {k}")
    if k < num_labels:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(num_labels), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64, copy=False)


@dataclass(frozen=True)
class _Relevance:
    """Canonical relevance pattern of a ground truth: sorted, unique ``row * width + col`` keys."""

    keys: np.ndarray  # int64 [nnz], strictly increasing
    rows: np.ndarray  # int64 [nnz]
    cols: np.ndarray  # int64 [nnz]
    num_relevant: np.ndarray  # int64 [N], |y| per document
    width: int  # number of truth columns


def _relevance(truth) -> _Relevance:
    if not sp.issparse(truth):
        raise TypeError(f"truth must be a scipy.sparse matrix (CSR), got {type(truth).__name__}")
    truth = truth.tocsr()
    num_docs, width = truth.shape
    indptr = np.asarray(truth.indptr, dtype=np.int64)
    rows = np.repeat(np.arange(num_docs, dtype=np.int64), np.diff(indptr))
    cols = np.asarray(truth.indices, dtype=np.int64)
    nonzero = np.asarray(truth.data) != 0
    if not nonzero.all():
        rows, cols = rows[nonzero], cols[nonzero]
    keys = rows * max(width, 1) + cols
    if keys.size > 1:
        step = np.diff(keys)
        if (step < 0).any():  # unsorted column indices within some row
            keys = np.sort(keys)
            step = np.diff(keys)
        if (step == 0).any():  # duplicated entries
            keys = keys[np.concatenate(([True], step != 0))]
        rows, cols = np.divmod(keys, max(width, 1))
    num_relevant = np.bincount(rows, minlength=num_docs).astype(np.int64)
    return _Relevance(keys=keys, rows=rows, cols=cols, num_relevant=num_relevant, width=width)


def _check_top(top_indices, num_docs: int, width: int, k_needed: int) -> np.ndarray:
    top = np.asarray(top_indices)
    if top.ndim != 2:
        raise ValueError(f"top_indices must be 2-D [docs, K], got shape {top.shape}")
    if top.size and not np.issubdtype(top.dtype, np.integer):
        raise ValueError(f"top_indices must hold integer label indices, got dtype {top.dtype}")
    top = top.astype(np.int64, copy=False)
    if top.shape[0] != num_docs:
        raise ValueError(f"top_indices has {top.shape[0]} rows but the ground truth has {num_docs} documents")
    if top.shape[1] < k_needed:
        raise ValueError(f"top_indices has {top.shape[1]} columns, fewer than k = {k_needed}")
    if top.size and (top.min() < 0 or top.max() >= width):
        raise ValueError(f"predicted label indices must lie in [0, {width}), the ground truth's columns")
    return top


def _hits(top: np.ndarray, rel: _Relevance) -> np.ndarray:
    if top.size == 0 or rel.keys.size == 0:
        return np.zeros(top.shape, dtype=bool)
    query = np.arange(top.shape[0], dtype=np.int64)[:, None] * max(rel.width, 1) + top
    pos = np.searchsorted(rel.keys, query)
    np.minimum(pos, rel.keys.size - 1, out=pos)
    return rel.keys[pos] == query


def top_k_hits(top_indices: np.ndarray, truth) -> np.ndarray:
    """``hits[d, j]`` is True when the ``j``-th predicted label of document ``d`` is relevant.

    ``top_indices`` is ``[N, K]`` integer; ``truth`` a sparse ``(N, L_truth)`` matrix whose stored
    nonzeros mark relevant labels. Vectorised: one ``searchsorted`` of ``row * L_truth + label`` keys.
    """
    rel = _relevance(truth)
    top = _check_top(top_indices, truth.shape[0], rel.width, 0)
    return _hits(top, rel)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _idcg(num_relevant: np.ndarray, k: int) -> np.ndarray:
    """Unweighted ideal DCG@k per document (0 for documents without relevant labels)."""
    cum = np.concatenate(([0.0], np.cumsum(_discounts(k))))
    return cum[np.minimum(num_relevant, k)]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _check_inv_propensity(inv_propensity, width: int) -> np.ndarray:
    if inv_propensity is None:
        raise ValueError("PSP / PSnDCG need inv_propensity (see inverse_propensity())")
    q = np.asarray(inv_propensity, dtype=np.float64)
    if q.ndim != 1 or q.shape[0] < width:
        raise ValueError(
            f"inv_propensity must be a vector over all {width} ground-truth columns "
            f"(frequency 0 for labels unseen in training), got shape {q.shape}"
        )
    return q


def _top_true_propensities(rel: _Relevance, q: np.ndarray, k: int) -> np.ndarray:
    """``[N, k]``: each document's k largest inverse propensities among its relevant labels, descending,
    zero-padded."""
    num_docs = rel.num_relevant.shape[0]
    out = np.zeros((num_docs, k), dtype=np.float64)
    if rel.rows.size == 0 or k == 0:
        return out
    vals = q[rel.cols]
    order = np.lexsort((-vals, rel.rows))
    rows = rel.rows[order]
    starts = np.concatenate(([0], np.cumsum(rel.num_relevant)[:-1]))
    rank = np.arange(rows.size, dtype=np.int64) - starts[rows]
    keep = rank < k
    out[rows[keep], rank[keep]] = vals[order][keep]
    return out


class _Context:
    """Everything per-document metrics need, computed once per (predictions, truth) pair."""

    def __init__(self, top_indices, truth, k_needed: int, inv_propensity=None):
        self.rel = _relevance(truth)
        self.top = _check_top(top_indices, truth.shape[0], self.rel.width, k_needed)
        self.hits = _hits(self.top, self.rel)
        self.q = None if inv_propensity is None else _check_inv_propensity(inv_propensity, self.rel.width)
        self._best: np.ndarray | None = None

    def weighted_hits(self, k: int) -> np.ndarray:
        q = self._need_q()
        return np.where(self.hits[:, :k], q[self.top[:, :k]], 0.0)

    def best(self, k: int) -> np.ndarray:
        if self._best is None or self._best.shape[1] < k:
            self._best = _top_true_propensities(self.rel, self._need_q(), max(k, self.top.shape[1]))
        return self._best[:, :k]

    def _need_q(self) -> np.ndarray:
        if self.q is None:
            raise ValueError("PSP / PSnDCG need inv_propensity (see inverse_propensity())")
        return self.q

    def per_document(self, metric: str, k: int) -> np.ndarray:
        hits = self.hits[:, :k]
        n = self.rel.num_relevant
        if metric == "P":
            return hits.sum(axis=1) / k
        if metric == "R":
            return _safe_div(hits.sum(axis=1).astype(np.float64), n.astype(np.float64))
        if metric == "nDCG":
            return _safe_div(hits @ _discounts(k), _idcg(n, k))
        if metric == "PSP":
            return self.weighted_hits(k).sum(axis=1) / k
        if metric == "PSnDCG":
            return _safe_div(self.weighted_hits(k) @ _discounts(k), _idcg(n, k))
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")

    def per_document_best(self, metric: str, k: int) -> np.ndarray:
        if metric == "PSP":
            return self.best(k).sum(axis=1) / k
        if metric == "PSnDCG":
            return _safe_div(self.best(k) @ _discounts(k), _idcg(self.rel.num_relevant, k))
        raise ValueError(
            f"only {', '.join(PROPENSITY_METRICS)} have a best-achievable normaliser, got {metric!r}"
        )


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def per_document(metric: str, k: int, top_indices: np.ndarray, truth, inv_propensity=None) -> np.ndarray:
    """Per-document values ``[N]`` (float64) of ``metric@k``, for paired significance tests.

    ``metric`` is one of ``"P"``, ``"nDCG"``, ``"R"``, ``"PSP"``, ``"PSnDCG"``. For P, nDCG and R the
    mean of the returned vector is the reported metric. For PSP and PSnDCG (which need
    ``inv_propensity``, a vector over all ground-truth columns) the values are the *un-normalised*
    numerators -- ``(1/k) sum_{top-k} y_l q_l`` and ``PSDCG@k / IDCG@k`` -- and the reported metric is
    their mean divided by :func:`propensity_normaliser` (a constant for a given truth and k, so
    paired tests are unaffected by it).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    k = _check_k(k)
    if metric in PROPENSITY_METRICS and inv_propensity is None:
        raise ValueError(f"{metric} needs inv_propensity (see inverse_propensity())")
    ctx = _Context(top_indices, truth, k, inv_propensity)
    return ctx.per_document(metric, k)


def propensity_normaliser(metric: str, k: int, truth, inv_propensity: np.ndarray) -> float:
    """Mean over documents of the best achievable un-normalised PSP@k / PSnDCG@k (see :func:`per_document`).

    ``PSP@k == per_document("PSP", k, ...).mean() / propensity_normaliser("PSP", k, ...)`` (0 when the
    normaliser is 0, i.e. no document has a relevant label); likewise for PSnDCG.
    """
    if metric not in PROPENSITY_METRICS:
        raise ValueError(f"only {', '.join(PROPENSITY_METRICS)} have a normaliser, got {metric!r}")
    k = _check_k(k)
    num_docs = truth.shape[0]
    ctx = _Context(np.zeros((num_docs, 0), dtype=np.int64), truth, 0, inv_propensity)
    return float(ctx.per_document_best(metric, k).mean()) if num_docs else 0.0


def evaluate(
    top_indices: np.ndarray,
    truth,
    ks: Sequence[int] = DEFAULT_KS,
    inv_propensity: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics at every ``k`` in ``ks`` as Python floats in [0, 1].

    Keys are ``"P@k"``, ``"nDCG@k"``, ``"R@k"`` and, when ``inv_propensity`` (a vector over all
    ground-truth columns) is given, ``"PSP@k"`` and ``"PSnDCG@k"``, grouped by metric in that order.
    ``top_indices`` (``[N, K]``, best first) needs ``K >= max(ks)``; otherwise ValueError.
    """
    ks = tuple(_check_k(k) for k in ks)
    if not ks:
        raise ValueError("ks must not be empty")
    if truth.shape[0] == 0:
        raise ValueError("cannot evaluate on zero documents")
    ctx = _Context(top_indices, truth, max(ks), inv_propensity)
    metrics = METRICS if inv_propensity is not None else METRICS[:3]
    results: dict[str, float] = {}
    for metric in metrics:
        for k in ks:
            value = float(ctx.per_document(metric, k).mean())
            if metric in PROPENSITY_METRICS:
                best = float(ctx.per_document_best(metric, k).mean())
                value = value / best if best > 0 else 0.0
            results[f"{metric}@{k}"] = value
    return results
