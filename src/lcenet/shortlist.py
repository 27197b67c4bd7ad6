"""Shortlist mode: score each document's candidate labels only (LightXML's scheme), for every family.

    e = base.encode(inputs)
    cluster logits = cluster_scorer(base.document_vector(e))   [B, C]   (C ≈ L / cluster_size)
    candidates = labels of the top-c clusters                  [B, K]   (K = c · S; in training the true
                                                                         labels' clusters first)
    logits = base.candidate_logits(e, candidates)              [B, K]

For XML-CNN, BERT and the sparse family e is the representation their output layer scores, and a candidate's
logit is its output row · e + bias; AttentionXML attends over the text with the candidates' queries only.

Labels are grouped by :func:`lcenet.candidates.cluster_labels` (balanced 2-means over each label's TF-IDF
centroid of its train documents). The cluster tables are buffers, so the model directory and checkpoints hold
them with the weights, and ``config.json``'s ``shortlist`` section says how to rebuild the module around them.
The loss (:func:`lcenet.train.training_loss`) is the label loss (BCE unless ``train.loss`` says otherwise) over
the candidates plus ``cluster_loss_weight`` × BCE of the cluster scorer against the true labels' clusters. LCENet
after a shortlist runs in its shortlist mode, O(K·R) per document.

Cost: the candidate logits are one GEMM against the rows of the batch's distinct candidate labels U (at most
min(L, B·K)), so a step never costs more than the dense output layer. With ``sparse_gradients`` (on in
single-process training) the output layer's weight and LCENet's tables get row-sparse gradients over those U
labels and the trainer steps them with :class:`lcenet.row_adam.RowAdam`: nothing of size L is written per step
but the output bias and the cluster scorer (C ≈ L / cluster_size rows).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from lcenet.candidates import ClusterTables, LabelClusters, candidate_recall, candidates, cluster_labels, label_features
from lcenet.config import ShortlistSettings
from lcenet.errors import UserError
from lcenet.lcenet import Shortlist
from lcenet.models import XMTCModel
from lcenet.output import PADDING_LOGIT, ModelOutput

__all__ = ["ShortlistModel", "build_clusters", "shortlist_args", "shortlist_recall"]

# top-k needs at least this many real candidates per document (the largest k of the default metrics).
MIN_CANDIDATES = 5


class ShortlistModel(nn.Module):
    """A family model (with ``features`` and ``output``) that scores only candidate labels."""

    scores_candidates = True

    def __init__(self, base: XMTCModel, num_labels: int, num_clusters: int, cluster_width: int, top_clusters: int,
                 cluster_loss_weight: float = 1.0, sparse_gradients: bool = False):
        super().__init__()
        self.base = base
        self.top_clusters = min(top_clusters, num_clusters)
        self.cluster_loss_weight = cluster_loss_weight
        # The output layer's weight gets a row-sparse gradient over the batch's candidates (lcenet.row_adam).
        self.sparse_gradients = sparse_gradients
        self.cluster_scorer = nn.Linear(base.document_size, num_clusters)
        self.register_buffer("members", torch.full((num_clusters, cluster_width), -1, dtype=torch.int64))
        self.register_buffer("cluster_of_label", torch.zeros(num_labels, dtype=torch.int64))

    def use_clusters(self, clusters: LabelClusters) -> None:
        """Load the cluster tables (a saved model's come with its weights instead)."""
        tables = clusters.tables(self.members.device)
        if tables.members.shape != self.members.shape or len(tables.cluster_of_label) != len(self.cluster_of_label):
            raise UserError(f"shortlist: clusters of shape {tuple(tables.members.shape)} do not fit a module built "
                            f"for {tuple(self.members.shape)}")
        self.members.copy_(tables.members)
        self.cluster_of_label.copy_(tables.cluster_of_label)

    def describe(self) -> dict:
        """What config.json needs to rebuild this module before loading its weights and tables."""
        return {"num_clusters": self.members.shape[0], "cluster_width": self.members.shape[1],
                "top_clusters": self.top_clusters, "cluster_loss_weight": self.cluster_loss_weight,
                "sparse_gradients": self.sparse_gradients}

    def forward(self, *inputs: torch.Tensor, true_labels: torch.Tensor | None = None) -> ModelOutput:
        return self.score(*inputs, true_labels=true_labels)

    def score(self, *inputs: torch.Tensor, true_labels: torch.Tensor | None = None) -> ModelOutput:
        encoded = self.base.encode(*inputs)
        cluster_logits = self.cluster_scorer(self.base.document_vector(encoded))
        chosen, clusters = candidates(cluster_logits, ClusterTables(self.members, self.cluster_of_label),
                                      self.top_clusters, true_labels)
        # The batch's distinct candidates (padded slots point at the first of them and are masked below, so no
        # label row is touched for padding), as shortlist LCENet sets them up.
        batch = Shortlist.of(chosen, len(self.cluster_of_label))
        logits = self.base.candidate_logits(encoded, batch.unique, batch.inverse, self.sparse_gradients)
        logits = logits.masked_fill(~batch.valid, PADDING_LOGIT)
        if true_labels is None:
            return ModelOutput(logits, chosen, clusters)
        cluster_loss = F.binary_cross_entropy_with_logits(cluster_logits.float(), self.cluster_targets(true_labels))
        return ModelOutput(logits, chosen, clusters, extra_loss=self.cluster_loss_weight * cluster_loss)

    def cluster_targets(self, true_labels: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` 0/1: the clusters of each document's true labels (``[B, T]``, -1 padded)."""
        targets = torch.zeros(len(true_labels), self.members.shape[0], device=true_labels.device)
        return targets.scatter_reduce_(1, self.cluster_of_label[true_labels.clamp(min=0)],
                                       (true_labels >= 0).float(), reduce="amax")


def shortlist_args(clusters: LabelClusters, settings: ShortlistSettings, sparse_gradients: bool = False) -> dict:
    """ShortlistModel's arguments for these clusters (checked to leave every document enough candidates)."""
    fewest = int(np.sort(clusters.sizes)[:settings.top_clusters].sum())  # the top clusters, at their smallest
    if fewest < min(MIN_CANDIDATES, clusters.num_labels):
        raise UserError(f"shortlist.top_clusters {settings.top_clusters} can leave a document {fewest} candidate "
                        f"labels, fewer than {MIN_CANDIDATES}; raise shortlist.top_clusters")
    return {"num_clusters": clusters.num_clusters, "cluster_width": int(clusters.sizes.max()),
            "top_clusters": settings.top_clusters, "cluster_loss_weight": settings.cluster_loss_weight,
            "sparse_gradients": sparse_gradients}


def build_clusters(train_labels: sp.csr_matrix, train_features: sp.csr_matrix, settings: ShortlistSettings,
                   seed: int = 0) -> LabelClusters:
    """Balanced label clusters from each label's l2-normalised TF-IDF centroid of its train documents."""
    return cluster_labels(label_features(train_labels, train_features), settings.cluster_size, seed=seed)


@torch.no_grad()
def shortlist_recall(model: nn.Module, inputs, truth: sp.csr_matrix, device: torch.device, batch_size: int = 256,
                     ) -> float:
    """Share of the true labels among the candidates at inference (no true clusters forced), over ``inputs``."""
    model.eval()
    chosen = []
    for start in range(0, len(inputs), batch_size):
        rows = np.arange(start, min(start + batch_size, len(inputs)))
        chosen.append(model.score(*inputs.batch(rows, device)).label_ids.cpu().numpy())
    width = max(item.shape[1] for item in chosen)
    padded = [np.pad(item, ((0, 0), (0, width - item.shape[1])), constant_values=-1) for item in chosen]
    return candidate_recall(np.concatenate(padded), truth)
