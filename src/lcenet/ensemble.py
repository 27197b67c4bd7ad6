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
from lcenet.output import ModelOutput, top_k

__all__ = ["DEFAULT_CANDIDATES", "average_over_union", "check_same_labels", "sigmoid_at"]

DEFAULT_CANDIDATES = 50


def check_same_labels(label_lists: Sequence[Sequence[str]], names: Sequence[str],
                      need: str = "an ensemble needs models trained on the same labels") -> None:
    """UserError unless every model has the first model's labels in the same order (names: model directories;
    ``need``: why they must match, the end of the message)."""
    first = list(label_lists[0])
    for labels, name in zip(label_lists[1:], names[1:]):
        labels = list(labels)
        if labels == first:
            continue
        index = next((i for i, (a, b) in enumerate(zip(first, labels)) if a != b), min(len(first), len(labels)))
        here = repr(first[index]) if index < len(first) else "no label"
        there = repr(labels[index]) if index < len(labels) else "no label"
        raise UserError(f"{names[0]} and {name} have different label vocabularies ({len(first)} vs {len(labels)} "
                        f"labels; first difference at index {index}: {here} vs {there}); {need}")


def average_over_union(outputs: Sequence[ModelOutput], k: int, candidates: int = DEFAULT_CANDIDATES
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k labels of the models' mean sigmoid score over the union of their top-``candidates`` labels:
    ``(indices [B, k], scores [B, k])`` from each model's output for the batch (dense ``[B, L]`` logits, or a
    shortlist's candidate logits: a label a shortlist did not score counts 0 for it). Ties go to the lower index.
    """
    if not outputs:
        raise UserError("an ensemble needs at least one model")
    batch_sizes = {item.logits.shape[0] for item in outputs}
    if len(batch_sizes) != 1 or len({item.logits.shape[1] for item in outputs if item.label_ids is None}) > 1:
        raise UserError(f"ensemble members disagree on the batch's shape: "
                        f"{sorted({tuple(item.logits.shape) for item in outputs})}")
    width = max(candidates, k)  # at least k per model, so the union holds k labels where the models score k
    pool = torch.cat([top_k(item, width)[0] for item in outputs], dim=1)
    pool, _ = torch.sort(pool, dim=1)  # duplicates (labels several models ranked) become neighbours
    mean = torch.stack([sigmoid_at(item, pool) for item in outputs]).mean(dim=0)
    unusable = pool < 0  # a shortlist's padding
    unusable[:, 1:] |= pool[:, 1:] == pool[:, :-1]
    mean = mean.masked_fill(unusable, -1.0)  # below every sigmoid score: never picked while a label is left
    # stable descending sort on the label-sorted pool: equal scores keep the lower label first
    order = torch.sort(mean, dim=1, descending=True, stable=True).indices[:, :min(k, pool.shape[1])]
    return pool.gather(1, order), mean.gather(1, order)


def sigmoid_at(output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
    """Each document's sigmoid score of ``labels`` ``[B, P]`` (-1 allowed): 0 where the model scored no such label."""
    scores = torch.sigmoid(output.logits.float())
    if output.label_ids is None:
        return scores.gather(1, labels.clamp(min=0))
    match = (labels.unsqueeze(2) == output.label_ids.unsqueeze(1)) & (output.label_ids >= 0).unsqueeze(1)
    return (match * scores.unsqueeze(1)).amax(dim=2)  # [B, P, K] -> [B, P]; a label is once among the candidates
