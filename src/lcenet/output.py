"""What a model gives the trainer and inference: one typed output for dense and shortlist models alike.

A dense model scores every label: ``logits`` ``[B, L]``, ``label_ids`` None. A shortlist model
(:mod:`lcenet.shortlist`) scores a per-document candidate set: ``logits`` ``[B, K]`` with ``label_ids`` ``[B, K]``
naming each logit's label (-1 pads a shorter list), and in training the loss of the scorer that chose them.
Everything
downstream — LCENet, the loss, top-k, ensembles — reads this one structure, so no caller asks which kind of
model it holds.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

__all__ = ["PADDING_LOGIT", "ModelOutput", "Scorer", "candidate_targets", "top_k"]

# The logit of a padded candidate slot: below any real logit, so top-k never picks one while a label is left.
PADDING_LOGIT = -1e4


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # [B, L] dense, or [B, K] at label_ids
    label_ids: torch.Tensor | None = None  # [B, K] the label of each logit, -1 = padding; None = dense
    # [B, c] when the candidates are whole label clusters (a shortlist's): block j of label_ids (K / c slots: the
    # cluster's labels, then -1s) is cluster candidate_clusters[:, j], the same labels for every document that
    # chose it, so shortlist LCENet can compute a cluster at a time (lcenet.cluster_products).
    candidate_clusters: torch.Tensor | None = None
    # A loss term the model adds in training, already weighted (the shortlist's cluster-scorer BCE).
    extra_loss: torch.Tensor | None = None
    base_logits: torch.Tensor | None = None  # the logits before LCENet, when its auxiliary loss is on
    aux_loss_weight: float = 0.0  # the weight of the BCE on base_logits


class Scorer(Protocol):
    """The one hook the trainer and inference call: every family (:class:`lcenet.models.XMTCModel`), LCENet
    around it, and a shortlist around either provide it."""

    # True: ``score`` returns candidate logits with label_ids, and training passes the true labels.
    scores_candidates: bool

    def score(self, *inputs: torch.Tensor, true_labels: torch.Tensor | None = None) -> ModelOutput:
        """``true_labels``: ``[B, T]`` label ids, -1 padded, in training only (a shortlist adds their clusters)."""
        ...


def candidate_targets(label_ids: torch.Tensor, true_labels: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` BCE targets: 1 where a candidate is one of its document's true labels (``[B, T]``, -1 padded).
    O(B·K·T) on the device, never O(L) per document."""
    hits = (label_ids.unsqueeze(2) == true_labels.unsqueeze(1)) & (true_labels >= 0).unsqueeze(1)
    return hits.any(dim=2).float()


def top_k(output: ModelOutput, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest logits of each document as (label ids ``[B, k']``, logits ``[B, k']``), k' = min(k,
    scored labels); padded candidates sort last and come out as label -1."""
    width = min(k, output.logits.shape[1])
    logits, position = torch.topk(output.logits, width, dim=1)
    if output.label_ids is None:
        return position, logits
    return output.label_ids.gather(1, position), logits
