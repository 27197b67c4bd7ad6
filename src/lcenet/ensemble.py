"""Ensembles of models that share a label vocabulary (of any families): the mean of their sigmoid scores,
taken over the union of each model's top-k' labels per document.

For a batch, every model gives its logits; each model's top k' (``candidates``, default 50) labels per
document are pooled, and every pooled label is scored by every model with its actual sigmoid score (the
logits are there), so the averaged scores are exact. Restricting the ranking to the union loses nothing a
model ranks highly: a label outside every model's top k' has, in each model, a score at most that model's
k'-th, so with k' well above the k reported it could only enter the ensemble's top k in a near tie. Memory is
the batch's logits, as for one model; nothing of size [N, L] is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lcenet.errors import UserError

__all__ = ["DEFAULT_CANDIDATES", "average_over_union", "check_same_labels"]

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


def average_over_union(logits: Sequence[torch.Tensor], k: int, candidates: int = DEFAULT_CANDIDATES
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k labels of the models' mean sigmoid score over the union of their top-``candidates`` labels:
    ``(indices [B, k], scores [B, k])`` from one ``[B, L]`` logits tensor per model. Ties go to the lower index."""
    if not logits:
        raise UserError("an ensemble needs at least one model")
    shapes = {tuple(item.shape) for item in logits}
    if len(shapes) != 1:
        raise UserError(f"ensemble members disagree on the batch's shape: {sorted(shapes)}")
    labels = logits[0].shape[1]
    width = min(max(candidates, k), labels)  # at least k per model, so the union always holds k labels
    pool = torch.cat([torch.topk(item, width, dim=1).indices for item in logits], dim=1)
    pool, _ = torch.sort(pool, dim=1)  # duplicates (labels several models ranked) become neighbours
    mean = torch.stack([torch.sigmoid(item.float()).gather(1, pool) for item in logits]).mean(dim=0)
    duplicate = torch.zeros_like(pool, dtype=torch.bool)
    duplicate[:, 1:] = pool[:, 1:] == pool[:, :-1]
    mean = mean.masked_fill(duplicate, -1.0)  # below every sigmoid score: never picked while a label is left
    # stable descending sort on the label-sorted pool: equal scores keep the lower label first
    order = torch.sort(mean, dim=1, descending=True, stable=True).indices[:, :min(k, width)]
    return pool.gather(1, order), mean.gather(1, order)
