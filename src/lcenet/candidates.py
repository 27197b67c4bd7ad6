"""The label shortlist's clustering: label features, balanced label clusters, candidate labels from clusters.

At 500K labels a dense output layer is the cost the peers avoid with a shortlist (see shared/REFERENCE.md):
labels are grouped into clusters of at most ~100 similar labels, a cheap scorer ranks the clusters, and only the
labels of the top clusters are scored. This module holds the parts that do not depend on the model:

* :func:`label_features` — each label's l2-normalised centroid of its training documents' feature rows,
  ``normalize(Yᵀ X)``, computed as one sparse product (never a dense ``L × F`` matrix for sparse ``X``).
* :func:`cluster_labels` — recursive balanced 2-means (spherical k-means whose every split halves the label set,
  as in Parabel, AttentionXML and LightXML) until every cluster has at most ``max_cluster_size`` labels.
* :class:`LabelClusters` — the result (cluster → labels as ``indptr`` + ``labels``, and ``cluster_of_label``),
  saved as one safetensors file (no pickle).
* :func:`candidates` — on the device, the labels of each document's top-``c`` clusters (in training the true
  labels' clusters are always among them), and :func:`candidate_recall`, the share of true labels they keep.

How the clustering stays at minutes and O(nnz + L) memory at 500K labels (LightXML's asked one user for 2.38 TiB):

* The tree is built level by level, not node by node: all nodes of one depth are split together with whole-array
  numpy operations, so there is no Python work per node and the depth is only ``ceil(log2(L / max_size))``
  (13 at 500K labels and 100 per cluster).
* Each label keeps its position in one permutation, and every node is a contiguous range of it; a split reorders
  labels within their node, so the leaves come out in tree order (neighbouring clusters are similar).
* Centroids are never dense. Per level the active labels' features are put in column-major order (one
  ``tocsc``, a counting sort), where the nonzeros of one (feature, node) pair are adjacent; a centroid is the sum
  over such runs (``np.bincount``), stored only for the pairs that occur — at most nnz of them. A label's
  balanced-split score ``x · (c0 − c1)`` is again one ``bincount`` over its nonzeros. Each k-means iteration is
  therefore O(nnz) time, the whole tree O(nnz · depth · iterations); memory is the features plus, per level, one
  column-major copy and a few nnz-sized arrays (about 3× the feature matrix), processed in column chunks so the
  temporaries stay small. Measured in benchmarks/results/cluster_labels_cpu.json (501,070 labels, 95M nonzeros:
  3.5 minutes on one shared core, 3.15 GiB peak RSS of which 1.05 GiB held the features before clustering).
* The split is balanced by ranking the labels of each node by ``x · (c0 − c1)`` and giving the top half to
  ``c0``: given the centroids this is the best assignment with equal halves, and given an assignment the
  normalised sums are the best centroids, so the objective (the mean cosine of a label to its centroid, which is
  ``Σ |sum of a half| / n`` — free once the sums exist) never decreases. Iterations stop when it rises by less
  than ``tol`` (AttentionXML's rule and default, 1e-4) or no label moves, at most ``max_iter`` per level.
* Seeds: a random label of each node and the node's label least similar to it (farthest-first; one more O(nnz)
  pass). Two random labels, as in Parabel/AttentionXML, often both come from one topic; every other label then
  scores 0 against both, the first split is arbitrary, and 2-means stays in that mixed split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.preprocessing import normalize

from lcenet.errors import UserError
from lcenet.io import load_tensors, save_tensors

__all__ = ["Candidates", "ClusterTables", "LabelClusters", "candidate_recall", "candidates", "cluster_labels",
           "label_features", "padded_label_ids"]

FORMAT = "lcenet.label_clusters"
FORMAT_VERSION = 1
CHUNK_NONZEROS = 1 << 20  # nonzeros per chunk of a pass: temporaries of ~8 MB stay in the heap (no page faults)


def label_features(labels: sp.spmatrix, features: sp.spmatrix | np.ndarray) -> sp.csr_matrix | np.ndarray:
    """``normalize(Yᵀ X)``: row l is the l2-normalised sum of the feature rows of label l's documents.

    ``labels`` is the train truth CSR ``[N, L]``; ``features`` a CSR ``[N, F]`` (TF-IDF) or dense embeddings
    ``[N, D]``. Sparse input gives a float32 CSR ``[L, F]`` (one sparse product: its nnz is the number of
    (label, feature) pairs that occur), dense input a float32 array ``[L, D]``. A label without documents, or
    whose documents have no features, gets a zero row.
    """
    if labels.shape[0] != features.shape[0]:
        raise UserError(f"label features: {labels.shape[0]} label rows but {features.shape[0]} feature rows")
    transposed = sp.csr_matrix(labels.T, dtype=np.float32)
    if sp.issparse(features):
        result = transposed @ sp.csr_matrix(features, dtype=np.float32)
        result.sum_duplicates()
    else:
        result = np.asarray(transposed @ np.asarray(features, dtype=np.float32), dtype=np.float32)
    return normalize(result, copy=False)


class LabelClusters:
    """Clusters of labels: cluster ``c`` holds ``labels[indptr[c]:indptr[c + 1]]``.

    ``cluster_of_label[l]`` is the cluster of label ``l``; clusters are numbered in tree order, so clusters with
    close numbers share more ancestors. ``settings`` records how they were built (saved with them).
    """

    def __init__(self, indptr: np.ndarray, labels: np.ndarray, settings: dict | None = None):
        indptr = np.asarray(indptr, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if (indptr.ndim != 1 or labels.ndim != 1 or len(indptr) < 2 or indptr[0] != 0
                or indptr[-1] != len(labels) or np.any(np.diff(indptr) <= 0)):
            raise UserError("label clusters: indptr must rise strictly from 0 to the number of labels")
        cluster_of_label = np.full(len(labels), -1, dtype=np.int64)
        if labels.min() < 0 or labels.max() >= len(labels):
            raise UserError(f"label clusters: label ids must lie in 0..{len(labels) - 1}")
        cluster_of_label[labels] = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        if np.bincount(labels, minlength=len(labels)).max() != 1:
            raise UserError("label clusters: every label must be in exactly one cluster")
        self.indptr, self.labels, self.cluster_of_label = indptr, labels, cluster_of_label
        self.settings = dict(settings or {})

    @property
    def num_clusters(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def members(self, cluster: int) -> np.ndarray:
        return self.labels[self.indptr[cluster]:self.indptr[cluster + 1]]

    def member_table(self) -> np.ndarray:
        """``[C, S]`` int64, row c = cluster c's labels padded with -1 (S = the largest cluster's size)."""
        sizes = self.sizes
        table = np.full((self.num_clusters, int(sizes.max())), -1, dtype=np.int64)
        slot = np.arange(self.num_labels) - np.repeat(self.indptr[:-1], sizes)
        table[np.repeat(np.arange(self.num_clusters), sizes), slot] = self.labels
        return table

    def tables(self, device: torch.device | str = "cpu") -> ClusterTables:
        """The lookup tables :func:`candidates` needs, on ``device`` (build once, reuse every step)."""
        return ClusterTables(torch.from_numpy(self.member_table()).to(device),
                             torch.from_numpy(self.cluster_of_label).to(device))

    def save(self, path: str | Path) -> None:
        """One safetensors file: ``indptr`` and ``labels`` (int64); format and settings in its JSON metadata."""
        save_tensors(path, {"indptr": torch.from_numpy(self.indptr), "labels": torch.from_numpy(self.labels)},
                     metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                               "settings": json.dumps(self.settings, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path) -> LabelClusters:
        tensors, metadata = load_tensors(path)
        if metadata.get("format") != FORMAT or set(tensors) != {"indptr", "labels"}:
            raise UserError(f"{path}: not an lcenet label-clusters file")
        if metadata.get("format_version") != str(FORMAT_VERSION):
            raise UserError(f"{path}: label-clusters format version {metadata.get('format_version')} is not "
                            f"supported (supports {FORMAT_VERSION})")
        try:
            settings = json.loads(metadata.get("settings", "{}"))
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: malformed settings metadata ({error})") from None
        try:
            return cls(tensors["indptr"].numpy(), tensors["labels"].numpy(), settings)
        except UserError as error:
            raise UserError(f"{path}: {error}") from None


def cluster_labels(features: sp.spmatrix | np.ndarray, max_cluster_size: int = 100, seed: int = 0,
                   max_iter: int = 10, tol: float = 1e-4) -> LabelClusters:
    """Balanced hierarchical 2-means over the rows of ``features`` (``[L, F]`` CSR or dense ``[L, D]``, rows
    l2-normalised, as :func:`label_features` gives them).

    Every node with more than ``max_cluster_size`` labels is split into halves of sizes ``ceil(n/2)`` and
    ``floor(n/2)``; so all clusters of a tree have sizes within one of each other (in the rare case that one
    level holds nodes of ``max_cluster_size`` and ``max_cluster_size + 1`` labels, only the latter split, and the
    sizes then lie within a factor ~2). The result depends only on the features and ``seed``.
    """
    for name, value, low in (("max_cluster_size", max_cluster_size, 1), ("max_iter", max_iter, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"clustering: {name} must be an integer >= {low} (got {value!r})")
    num_labels = features.shape[0]
    if num_labels < 1 or features.ndim != 2:
        raise UserError(f"clustering: need a 2-d label-feature matrix with at least one row (got {features.shape})")
    sparse = sp.issparse(features)
    features = sp.csr_matrix(features, dtype=np.float32) if sparse else np.asarray(features, dtype=np.float32)
    rng = np.random.default_rng(seed)
    order = np.arange(num_labels)  # position -> label; every node is a contiguous range of positions
    indptr = np.array([0, num_labels], dtype=np.int64)  # node boundaries in position space (leaves included)
    iterations = []
    while True:
        sizes = np.diff(indptr)
        active = sizes > max_cluster_size
        if not active.any():
            break
        starts, lengths = indptr[:-1][active], sizes[active]
        node = np.repeat(np.arange(len(lengths)), lengths)  # local node of each active position
        local_start = np.cumsum(lengths) - lengths
        positions = np.repeat(starts - local_start, lengths) + np.arange(len(node))
        rows = order[positions]
        level = (_SparseLevel if sparse else _DenseLevel)(features, rows, node, len(lengths))
        side, used = _balanced_two_means(level, node, lengths, local_start, rng, max_iter, tol)
        del level
        iterations.append(used)
        order[positions] = rows[np.lexsort((side, node))]  # each node: its first half, then its second half
        indptr = np.sort(np.concatenate([indptr, starts + lengths - lengths // 2]))
    return LabelClusters(indptr, order, {"max_cluster_size": int(max_cluster_size), "seed": int(seed),
                                         "max_iter": int(max_iter), "tol": float(tol),
                                         "iterations_per_level": iterations})


def _balanced_two_means(level, node: np.ndarray, lengths: np.ndarray, local_start: np.ndarray,
                        rng: np.random.Generator, max_iter: int, tol: float) -> tuple[np.ndarray, int]:
    """Split every node of a level in two halves; returns (side of each position (0/1), iterations run)."""
    first = local_start + rng.integers(0, lengths)  # seeds: a random label of each node and the node's label
    seeds = np.zeros(len(node))  # least similar to it (farthest-first)
    seeds[first] = 1.0
    similarity = level.seed_scores(seeds)
    similarity[first] = np.inf
    second = np.lexsort((similarity, node))[local_start]
    seeds[second] = -1.0
    side = _halves(level.seed_scores(seeds), node, lengths, local_start)
    previous, iterations = -np.inf, 0
    while iterations < max_iter:
        scores, objective = level.scores(side)
        new_side = _halves(scores, node, lengths, local_start)
        iterations += 1
        done = (objective - previous) / len(node) < tol or np.array_equal(new_side, side)
        side, previous = new_side, objective
        if done:
            break
    return side, iterations


def _halves(scores: np.ndarray, node: np.ndarray, lengths: np.ndarray, local_start: np.ndarray) -> np.ndarray:
    """Side 0 for the ``ceil(n/2)`` labels of each node with the highest ``x · (c0 − c1)``, side 1 for the rest
    (ties go by position, so the split is deterministic)."""
    ranked = np.lexsort((-scores, node))
    rank = np.arange(len(node)) - local_start[node[ranked]]
    side = np.empty(len(node), dtype=np.int8)
    side[ranked] = rank >= (lengths - lengths // 2)[node[ranked]]
    return side


class _SparseLevel:
    """One level's active labels (CSR rows in position order) set up for O(nnz) centroid passes.

    A run is the nonzeros of one (feature, node) pair; per-run sums are a node's centroid sums stored sparsely.
    Sides enter as signs: with ``T`` the run sums of all rows (fixed for the level) and ``D`` those of the rows
    signed +1 on side 0 and -1 on side 1, the side sums are ``(T ± D) / 2`` — one ``bincount`` per iteration.
    Passes go over chunks of whole columns (no run crosses a chunk), so every temporary is chunk-sized (small
    enough to be reused by the allocator instead of being page-faulted in again); per nonzero the level keeps its
    row, value and chunk-local run (12 bytes), per run ``T``, ``D`` and the node (12 bytes).
    """

    def __init__(self, features: sp.csr_matrix, rows: np.ndarray, node: np.ndarray, num_nodes: int):
        # nonzeros sorted by (feature, position), where a node's positions are contiguous; the row copy is freed
        # as soon as tocsc returns
        by_feature = features[rows].tocsc()
        self.position, self.value = by_feature.indices, by_feature.data
        self.num_nodes, self.length = num_nodes, len(node)
        nnz = len(self.value)
        entry_node = node.astype(np.int32)[self.position]
        starts_run = np.ones(nnz, dtype=bool)
        starts_run[1:] = entry_node[1:] != entry_node[:-1]
        column_starts = by_feature.indptr[:-1]
        starts_run[column_starts[column_starts < nnz]] = True
        self.run_node = entry_node[starts_run]
        del entry_node
        cuts = np.searchsorted(by_feature.indptr, np.arange(0, nnz, CHUNK_NONZEROS), side="right") - 1
        bounds = np.unique(np.concatenate([by_feature.indptr[cuts], [nnz]]))
        del by_feature
        self.run = np.empty(nnz, dtype=np.int32)  # run id within its chunk
        self.chunks = []  # (first nonzero, end, first run, number of runs)
        first_run = 0
        for start, stop in zip(bounds[:-1], bounds[1:]):
            local = np.cumsum(starts_run[start:stop], dtype=np.int32)
            local -= 1
            self.run[start:stop] = local
            self.chunks.append((start, stop, first_run, int(local[-1]) + 1))
            first_run += int(local[-1]) + 1
        self.total = np.empty(first_run, dtype=np.float32)
        self.difference = np.empty(first_run, dtype=np.float32)
        for start, stop, first, count in self.chunks:
            self.total[first:first + count] = np.bincount(self.run[start:stop], self.value[start:stop],
                                                          minlength=count)

    def _project(self, direction_of_chunk) -> np.ndarray:
        """Per row, the dot product of its features with its node's direction (``direction_of_chunk(i)`` gives
        chunk i's, per run)."""
        scores = np.zeros(self.length, dtype=np.float64)
        for i, (start, stop, _, _) in enumerate(self.chunks):
            scores += np.bincount(self.position[start:stop],
                                  self.value[start:stop] * direction_of_chunk(i)[self.run[start:stop]],
                                  minlength=self.length)
        return scores

    def _signed_sums(self, weight: np.ndarray) -> None:
        """``D`` (into ``self.difference``): per run, the sum of its nonzeros each times its row's ``weight``."""
        for start, stop, first, count in self.chunks:
            self.difference[first:first + count] = np.bincount(
                self.run[start:stop], self.value[start:stop] * weight[self.position[start:stop]], minlength=count)

    def _chunk(self, array: np.ndarray, i: int) -> np.ndarray:
        _, _, first, count = self.chunks[i]
        return array[first:first + count]

    def seed_scores(self, weight: np.ndarray) -> np.ndarray:
        """``x · Σ weight_p x_p`` over the rows ``p`` of each row's node."""
        self._signed_sums(weight.astype(np.float32))
        return self._project(lambda i: self._chunk(self.difference, i))

    def scores(self, side: np.ndarray) -> tuple[np.ndarray, float]:
        """``x · (c0 − c1)`` for every row, with ``c0``/``c1`` the normalised sums of each node's side-0/1 rows;
        and ``Σ |side sums|``, the objective."""
        self._signed_sums(1.0 - 2.0 * side.astype(np.float32))
        squares = np.zeros((2, self.num_nodes))
        for i in range(len(self.chunks)):
            total, difference, nodes = (self._chunk(a, i) for a in (self.total, self.difference, self.run_node))
            for k, half in enumerate((total + difference, total - difference)):
                squares[k] += np.bincount(nodes, half.astype(np.float64) ** 2, minlength=self.num_nodes)
        norms = np.sqrt(squares) / 2  # the halves' sums are (T ± D) / 2
        scale = (0.5 / np.maximum(norms, 1e-30)).astype(np.float32)

        def direction(i: int) -> np.ndarray:
            total, difference, nodes = (self._chunk(a, i) for a in (self.total, self.difference, self.run_node))
            return (total + difference) * scale[0][nodes] - (total - difference) * scale[1][nodes]

        return self._project(direction), float(norms.sum())


class _DenseLevel:
    """One level's active labels as dense rows (embedding label features): centroids are ``[2 × nodes, D]``."""

    def __init__(self, features: np.ndarray, rows: np.ndarray, node: np.ndarray, num_nodes: int):
        self.rows, self.node, self.num_nodes = features[rows], node, num_nodes

    def _sums(self, group: np.ndarray, weight: np.ndarray, num_groups: int) -> np.ndarray:
        membership = sp.csr_matrix((weight, (group, np.arange(len(self.node)))),
                                   shape=(num_groups, len(self.node)), dtype=np.float32)
        return np.asarray(membership @ self.rows)

    def _project(self, direction: np.ndarray) -> np.ndarray:
        scores = np.empty(len(self.node), dtype=np.float64)
        step = max(1, CHUNK_NONZEROS // max(1, self.rows.shape[1]))
        for start in range(0, len(self.node), step):
            stop = start + step
            scores[start:stop] = np.einsum("ij,ij->i", self.rows[start:stop], direction[self.node[start:stop]])
        return scores

    def seed_scores(self, weight: np.ndarray) -> np.ndarray:
        return self._project(self._sums(self.node, weight, self.num_nodes))

    def scores(self, side: np.ndarray) -> tuple[np.ndarray, float]:
        sums = self._sums(2 * self.node + side, np.ones(len(self.node)), 2 * self.num_nodes)
        norms = np.linalg.norm(sums, axis=1)
        centroids = sums / np.maximum(norms, 1e-30)[:, None]
        return self._project(centroids[0::2] - centroids[1::2]), float(norms.sum())


class ClusterTables(NamedTuple):
    """Device-side lookups: ``members`` ``[C, S]`` (labels of each cluster, -1 padded), ``cluster_of_label`` ``[L]``."""

    members: torch.Tensor
    cluster_of_label: torch.Tensor


class Candidates(NamedTuple):
    """``labels`` ``[B, c·S]``: candidate label ids, -1 for padding (anywhere in a row); ``clusters`` ``[B, c]``:
    the chosen clusters, and ``labels[:, j]`` belongs to ``clusters[:, j // S]`` (S = ``members.shape[1]``), so
    ``cluster_scores.gather(1, clusters).repeat_interleave(S, 1)`` lines up each candidate with its cluster score."""

    labels: torch.Tensor
    clusters: torch.Tensor


def candidates(cluster_scores: torch.Tensor, tables: ClusterTables, top_c: int,
               true_labels: torch.Tensor | None = None) -> Candidates:
    """The labels of each document's ``top_c`` highest-scoring clusters, gathered on the scores' device.

    ``K = c · S`` candidates per document (S = the largest cluster's size, at most ``max_cluster_size``), with
    ``c = top_c``. In training, pass ``true_labels`` (``[B, T]`` train label ids < L, -1 padded; see
    :func:`padded_label_ids`): their clusters are ranked first, so every true label is a candidate and the other
    labels of its cluster are hard negatives (LightXML's scheme). If a document in the batch has more distinct
    true clusters than ``top_c``, ``c`` grows to that number for the batch (one device sync to read it), so a true
    label is never dropped.
    """
    if cluster_scores.ndim != 2 or cluster_scores.shape[1] != tables.members.shape[0]:
        raise UserError(f"candidates: cluster scores must be [batch, {tables.members.shape[0]}] "
                        f"(got {list(cluster_scores.shape)})")
    num_clusters = cluster_scores.shape[1]
    if isinstance(top_c, bool) or not isinstance(top_c, int) or not 1 <= top_c <= num_clusters:
        raise UserError(f"candidates: top_c must be an integer in 1..{num_clusters} (got {top_c!r})")
    scores, count = cluster_scores.detach(), top_c
    if true_labels is not None:
        if true_labels.ndim != 2 or true_labels.shape[0] != scores.shape[0]:
            raise UserError(f"candidates: true labels must be [{scores.shape[0]}, T] (got {list(true_labels.shape)})")
        true_clusters = tables.cluster_of_label[true_labels.clamp(min=0)]
        forced = torch.zeros_like(scores, dtype=torch.float32).scatter_reduce_(
            1, true_clusters, (true_labels >= 0).float(), reduce="amax")
        count = max(count, int(forced.sum(1).max()))
        scores = scores.masked_fill(forced > 0, float("inf"))
    clusters = scores.topk(count, dim=1).indices
    return Candidates(tables.members[clusters].reshape(len(clusters), -1), clusters)


def padded_label_ids(truth: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A truth CSR ``[B, L]`` as ``[B, T]`` label ids padded with -1 (T = the most labels of a row), the form
    :func:`candidates` takes for ``true_labels``."""
    truth = sp.csr_matrix(truth)
    truth.eliminate_zeros()
    counts = np.diff(truth.indptr)
    table = np.full((truth.shape[0], max(1, int(counts.max(initial=0)))), -1, dtype=np.int64)
    table[np.repeat(np.arange(truth.shape[0]), counts), np.arange(truth.nnz) - np.repeat(truth.indptr[:-1], counts)] \
        = truth.indices
    return torch.from_numpy(table).to(device)


def candidate_recall(candidate_labels: torch.Tensor | np.ndarray, truth: sp.spmatrix) -> float:
    """Recall of the shortlist: per document, the fraction of its true labels among its candidates, averaged
    over the documents that have true labels (NaN if none has). ``truth`` is the CSR ``[B, L(+unseen)]``; a label
    no candidate can reach (an unseen one) counts as a miss."""
    ids = candidate_labels.cpu().numpy() if isinstance(candidate_labels, torch.Tensor) else np.asarray(candidate_labels)
    truth = sp.csr_matrix(truth)
    if ids.ndim != 2 or ids.shape[0] != truth.shape[0]:
        raise UserError(f"candidate recall: {ids.shape[0] if ids.ndim else 0} candidate rows for "
                        f"{truth.shape[0]} documents")
    if ids.size and ids.max() >= truth.shape[1]:
        raise UserError(f"candidate recall: candidate label {ids.max()} outside the truth's {truth.shape[1]} columns")
    keep = ids >= 0
    chosen = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32),
                            (np.nonzero(keep)[0], ids[keep])), shape=truth.shape)  # duplicates sum; > 0 below
    positive = truth != 0
    relevant = np.asarray(positive.sum(axis=1)).ravel()
    hits = np.asarray((positive.multiply(chosen) > 0).sum(axis=1)).ravel()
    documents = relevant > 0
    return float(np.mean(hits[documents] / relevant[documents])) if documents.any() else float("nan")
