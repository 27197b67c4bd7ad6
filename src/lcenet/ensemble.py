"""Ensembles of models that share a label vocabulary (of any families): their mean logit (or mean sigmoid score),
taken over the union of each model's top-k' labels per document.

For a batch, every model gives its logits; each model's top k' (``candidates``, default 50) labels per
document are pooled, and every pooled label is scored by every model with its actual logit (the logits are
there), so the averages are exact. Restricting the ranking to the union loses nothing a model ranks highly: a
label outside every model's top k' has, in each model, a score at most that model's k'-th, so with k' well above
the k reported it could only enter the ensemble's top k in a near tie. Memory is the batch's logits, as for one
model; nothing of size [N, L] is kept.

Two rules combine the members' scores of a label (``combine``):

    logit    s = sigmoid(mean_m z_m)      the default: the mean in log-odds (the geometric mean of the members'
                                          odds), where a member's confidence near 0 or 1 counts in full
    sigmoid  s = mean_m sigmoid(z_m)      the arithmetic mean of the members' probabilities, where the sigmoid
                                          has squashed it

On EURLEX57K's dev split the logit rule ranked better for every ensemble compared (benchmarks/best_ensemble.py
searches both; RESULTS.md). A shortlist member (:mod:`lcenet.shortlist`) scores only its candidates: for a label
it did not score it counts sigmoid 0 under ``sigmoid``, and under ``logit`` its lowest candidate logit for that
document (the most that label could have scored in it, as a label outside the shortlist ranks below every
candidate; a fixed floor would veto every label one shortlist missed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lcenet.errors import UserError
from lcenet.output import PADDING_LOGIT, ModelOutput, top_k

__all__ = ["COMBINE_RULES", "DEFAULT_CANDIDATES", "DEFAULT_COMBINE", "average_over_union", "check_combine",
           "check_same_labels", "logits_at"]

DEFAULT_CANDIDATES = 50
COMBINE_RULES = ("logit", "sigmoid")
DEFAULT_COMBINE = "logit"


def check_combine(rule: str) -> str:
    """``rule`` if it names a combining rule, else a UserError naming the choices."""
    if rule not in COMBINE_RULES:
        raise UserError(f"an ensemble combines by {' or '.join(COMBINE_RULES)} (got {rule!r})")
    return rule


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


def average_over_union(outputs: Sequence[ModelOutput], k: int, candidates: int = DEFAULT_CANDIDATES,
                       combine: str = DEFAULT_COMBINE) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k labels of the models' combined score (``combine``: the sigmoid of their mean logit, or their mean
    sigmoid score) over the union of their top-``candidates`` labels: ``(indices [B, k], scores [B, k])`` from
    each model's output for the batch (dense ``[B, L]`` logits, or a shortlist's candidate logits). Ties go to the
    lower index. One model gives its own top k and sigmoid scores under either rule.
    """
    check_combine(combine)
    if not outputs:
        raise UserError("an ensemble needs at least one model")
    batch_sizes = {item.logits.shape[0] for item in outputs}
    if len(batch_sizes) != 1 or len({item.logits.shape[1] for item in outputs if item.label_ids is None}) > 1:
        raise UserError(f"ensemble members disagree on the batch's shape: "
                        f"{sorted({tuple(item.logits.shape) for item in outputs})}")
    width = max(candidates, k)  # at least k per model, so the union holds k labels where the models score k
    pool = torch.cat([top_k(item, width)[0] for item in outputs], dim=1)
    pool, _ = torch.sort(pool, dim=1)  # duplicates (labels several models ranked) become neighbours
    logits = torch.stack([logits_at(item, pool, unscored=combine) for item in outputs])
    mean = torch.sigmoid(logits.mean(dim=0)) if combine == "logit" else torch.sigmoid(logits).mean(dim=0)
    unusable = pool < 0  # a shortlist's padding
    unusable[:, 1:] |= pool[:, 1:] == pool[:, :-1]
    mean = mean.masked_fill(unusable, -1.0)  # below every sigmoid score: never picked while a label is left
    # stable descending sort on the label-sorted pool: equal scores keep the lower label first
    order = torch.sort(mean, dim=1, descending=True, stable=True).indices[:, :min(k, pool.shape[1])]
    return pool.gather(1, order), mean.gather(1, order)


def logits_at(output: ModelOutput, labels: torch.Tensor, unscored: str = DEFAULT_COMBINE) -> torch.Tensor:
    """Each document's logits of ``labels`` ``[B, P]`` (-1 allowed), in float32. A label the model did not score
    (not among a shortlist's candidates) gets, with ``unscored="logit"``, the document's lowest candidate logit,
    and with ``unscored="sigmoid"`` -inf (sigmoid 0)."""
    logits = output.logits.float()
    if output.label_ids is None:
        return logits.gather(1, labels.clamp(min=0))
    real = output.label_ids >= 0
    match = (labels.unsqueeze(2) == output.label_ids.unsqueeze(1)) & real.unsqueeze(1)  # [B, P, K]
    # a label is once among the candidates, so at most one match per row of the last dimension
    found = torch.where(match, logits.unsqueeze(1), -torch.inf).amax(dim=2)
    if unscored == "logit":
        floor = torch.where(real, logits, torch.inf).amin(dim=1, keepdim=True)  # +inf: no candidate at all
        floor = torch.where(torch.isinf(floor), torch.full_like(floor, PADDING_LOGIT), floor)
        return torch.where(match.any(dim=2), found, floor)
    return found
