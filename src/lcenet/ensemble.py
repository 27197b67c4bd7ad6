"""Averaging several models that share a label vocabulary, from each model's top-k' candidates only.

Each model contributes its top-k' labels per document with their sigmoid scores (what
``lcenet.train.predict_top_k(..., k=k')`` returns), so nothing of size [N, L] is ever formed. A label's
ensemble score is the mean over the M models of its score, where a model that did not rank the label in its
top-k' counts 0 for it. That is a lower bound: the model's true score for such a label is at most its own
k'-th score s_m, so every averaged score is exact to within (1/M) · Σ_{models missing the label} s_m. With
k' well above the k that is reported (default k' = 50 for k <= 10) the missing labels have small scores and
the top-k of the average rarely changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from lcenet.errors import UserError

__all__ = ["DEFAULT_CANDIDATES", "average_top_k", "check_same_labels"]

DEFAULT_CANDIDATES = 50


def check_same_labels(label_lists: Sequence[Sequence[str]], names: Sequence[str]) -> None:
    """UserError unless every model has the first model's labels in the same order (names: model directories)."""
    first = list(label_lists[0])
    for labels, name in zip(label_lists[1:], names[1:]):
        labels = list(labels)
        if labels == first:
            continue
        index = next((i for i, (a, b) in enumerate(zip(first, labels)) if a != b), min(len(first), len(labels)))
        here = repr(first[index]) if index < len(first) else "no label"
        there = repr(labels[index]) if index < len(labels) else "no label"
        raise UserError(f"{names[0]} and {name} have different label vocabularies ({len(first)} vs {len(labels)} "
                        f"labels; first difference at index {index}: {here} vs {there}); an ensemble needs "
                        "models trained on the same labels")


def average_top_k(candidates: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the models' mean score per document: ``(indices int64 [N, k], scores float32 [N, k])``.

    ``candidates`` holds one ``(indices [N, k'], sigmoid scores [N, k'])`` pair per model (k' may differ
    between models; a label appears at most once per row). Scores descend along each row; ties go to the
    lower label index. Rows with fewer than k distinct candidates are padded with index -1 and score 0.
    """
    if not candidates:
        raise UserError("an ensemble needs at least one model")
    if k < 1:
        raise UserError(f"ensemble k must be >= 1 (got {k})")
    num_docs = len(candidates[0][0])
    for indices, scores in candidates:
        if indices.shape != scores.shape or indices.ndim != 2 or len(indices) != num_docs:
            raise UserError(f"ensemble candidates must be [N, k'] index and score arrays for the same {num_docs} "
                            f"documents (got {indices.shape} and {scores.shape})")
    columns = np.concatenate([np.asarray(indices, dtype=np.int64) for indices, _ in candidates], axis=1)
    values = np.concatenate([np.asarray(scores, dtype=np.float64) for _, scores in candidates], axis=1)
    rows = np.repeat(np.arange(num_docs), columns.shape[1])
    # COO -> CSR sums the duplicates (one label from several models) and sorts each row by label index.
    summed = sp.csr_matrix((values.ravel() / len(candidates), (rows, columns.ravel())),
                           shape=(num_docs, int(columns.max(initial=-1)) + 1))
    summed.sum_duplicates()
    width = max(int(np.diff(summed.indptr).max(initial=0)), k)
    padded_index = np.full((num_docs, width), -1, dtype=np.int64)
    padded_score = np.full((num_docs, width), -np.inf)
    lengths = np.diff(summed.indptr)
    slot = np.arange(summed.nnz) - np.repeat(summed.indptr[:-1], lengths)
    padded_index[np.repeat(np.arange(num_docs), lengths), slot] = summed.indices
    padded_score[np.repeat(np.arange(num_docs), lengths), slot] = summed.data
    order = np.argsort(-padded_score, axis=1, kind="stable")[:, :k]  # stable: ties keep label order
    top_index = np.take_along_axis(padded_index, order, axis=1)
    top_score = np.take_along_axis(padded_score, order, axis=1)
    return top_index, np.where(np.isfinite(top_score), top_score, 0.0).astype(np.float32)
