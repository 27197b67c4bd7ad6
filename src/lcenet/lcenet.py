"""LCENet: the Label Correlation Enhancement Network.

A stack of residual blocks over label logits z (shape [B, L]):

    h  = input_activation(z)
    u  = hidden_activation(W1 h + b1)          W1: R x L   (or L x L, bottleneck=False)
    z' = z + (W2 u + b2)                       W2: L x R

With R << L the block learns label correlations with 2RL + R + L parameters instead of L^2.
CorNet's published setting is R = 1000 capped at L, 2 blocks, sigmoid in, ELU hidden, residual, xavier-uniform
weights; the defaults here keep it but start each block as the identity map (``init="identity"``) and add an
auxiliary loss on the base logits (``aux_loss_weight``), both chosen on converged dev runs (README).

``init="cooccurrence"`` starts the first block from the labels' co-occurrence (:func:`cooccurrence_init_`,
called by the pipeline with the train label matrix Y [N, L] once the network is built; until then, and in
every later block, the correction starts at zero as with ``init="identity"``). With D = diag(label counts)
and Ŷ = Y D^(-1/2), C = ŶᵀŶ is the labels' cosine co-occurrence. Its top-k eigenpairs (λ_1 >= ... >= λ_k,
vectors V_k: L x k) come from randomized subspace iteration that applies C as Ŷᵀ(Ŷ ·) in row chunks, so C
is never formed and memory stays O(R·L + nnz(Y)). The first block gets

    W1 = V_kᵀ (each vector's sign chosen so its entries sum >= 0),   b1 = 0
    W2 = scale · V_k · diag(λ_i / λ_1),                               b2 = 0

so, were the hidden activation linear, the correction would be scale · C_k σ(z) / λ_1 (C_k: C's best rank-k
approximation): every label's logit is raised by the probabilities of the labels that go with it.
‖W1‖ = 1 and ‖W2‖ = scale, so for any 1-Lipschitz hidden activation with act(0) = 0 (ELU, ReLU)
‖correction‖ <= scale · ‖input_activation(z)‖ per document: the block starts within ``scale`` (default 0.1)
of the identity map. k <= min(R, N, L) and eigenvalues under 1e-10 · λ_1 (past rank(Y)) are dropped; the
other R - k rows of W1 are xavier-uniform and the matching columns of W2 are zero, which keeps the bound.

Shortlist mode (``LCENet.forward(logits, label_ids)``, for L too large to score every label): each document
brings K candidate label ids and their logits z_K; the blocks run on the candidates only,

    h = input_activation(z_K),   u = hidden_activation(Σ_k W1[:, id_k] h_k + b1),   z'_K = z_K + W2[id_K] u + b2[id_K]

which is the dense block restricted to the candidates (with K = L, in label order, it is the dense block),
at O(K·R) per document. A label's parameters are one row of each table: W2 is stored [L, R] as always, and
W1 is stored transposed (``down.weight`` is W1ᵀ, [L, R]; ``state_dict`` still holds nn.Linear's [R, L] under
``blocks.N.down.weight``, so model files keep their layout). The rows of the labels in the batch are gathered
once per step, and with ``sparse_gradients=True`` the tables get row-sparse gradients that
:class:`lcenet.row_adam.RowAdam` applies touching only those rows (dense Adam would read and write all L·R).
A shortlist model's candidates are whole label clusters; given their ids (``clusters``), the blocks compute a
cluster at a time on the CPU (:mod:`lcenet.cluster_products`), the same sums. After a shortlist the tables are
stored in the clusters' order (:meth:`LCENet.arrange_rows`), so that a cluster's rows are a slice; the
``state_dict`` (model files, checkpoints) keeps label order either way.

Dense memory (no chunking: it fits at the sizes the peers run): training n blocks at batch B holds the
parameters, gradients and two Adam moments, 16·n·(2·L·R + L + R) bytes, plus about 5·n + 2 [B, L] fp32
activations, 4·(5n + 2)·B·L bytes: 4.4 GiB at L = 501,070, R = 100, n = 2, B = 64 (4.6 GiB peak RSS measured by
benchmarks/shortlist_step.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from lcenet.cluster_products import ClusterSegments, correction_of_clusters, hidden_of_clusters
from lcenet.errors import UserError
from lcenet.output import PADDING_LOGIT, ModelOutput
from lcenet.row_adam import gather_rows

INPUT_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "none": nn.Identity}
HIDDEN_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "gelu": nn.GELU, "none": nn.Identity}
INITS = ("xavier", "identity", "cooccurrence")

# A full-rank block holds an L x L weight; refuse it past this size (fp32 weights + Adam's two moments).
FULL_RANK_MEMORY_LIMIT_BYTES = 8 * 2**30



class LabelRowsLinear(nn.Module):
    """nn.Linear(num_labels, rank) with its weight stored transposed, ``weight``: [num_labels, rank], so that a
    label's column of W1 is one contiguous row (gathered by shortlist mode, and the unit of a row-sparse
    gradient). ``state_dict`` and ``load_state_dict`` use nn.Linear's [rank, num_labels], so model files written
    before and after this storage change load either way."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().t().contiguous())
        self.bias = nn.Parameter(linear.bias.detach().clone())
        self.register_state_dict_post_hook(_weight_as_linear)
        self.register_load_state_dict_pre_hook(_weight_from_linear)

    @property
    def out_features(self) -> int:
        return self.weight.shape[1]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, inputs, self.weight)


def _weight_as_linear(module, state_dict, prefix, local_metadata) -> None:
    # contiguous: a copy, so that any serializer (safetensors refuses strided views) can save the state dict
    state_dict[prefix + "weight"] = state_dict[prefix + "weight"].t().contiguous()


def _weight_from_linear(module, state_dict, prefix, *args) -> None:
    if prefix + "weight" in state_dict:
        state_dict[prefix + "weight"] = state_dict[prefix + "weight"].t()


# Shortlist mode computes a block one of four ways, the same sums in each:
# - on the CPU, when the candidates come as whole label clusters (a shortlist model's, which pass their cluster
#   ids) and the batch's documents share them (on average at least CLUSTER_GEMM_MIN_SHARING documents per
#   distinct cluster), one small GEMM per cluster over the documents that chose it (lcenet.cluster_products:
#   O(B·K·R), each cluster's rows read once for all of them, a slice of the tables once they are stored in
#   cluster order, as after a shortlist: LCENet.arrange_rows). LCENet's 2-block step at B = 64, K = 1,500 in 15
#   random clusters of 100, one core, freed memory kept as a Trainer keeps it, tables in cluster order
#   (benchmarks/results/shortlist_lcenet_rows_always_cpu.json), against the same candidates through the three
#   ways below: 76 / 116 ms at L = 4,271 (22 documents per cluster), 152 / 352 ms at 13,330 (7), 213 / 245 ms
#   at 100,000 (about 1.5) and 299 / 318 ms at 501,070 (1.1; 303 / 288 in shortlist_lcenet_rows_cpu.json: level).
#   With the tables in label order each cluster's rows are gathered instead, and at 501,070 that loses (475 /
#   431 ms): hence the threshold, between 1.1 and 1.5;
# - while the batch's distinct labels U are at least FULL_TABLES_MIN_FRACTION of L (at 13K labels 94-100% are),
#   as dense LCENet over all L labels with each document's non-candidates at h = 0: no gathers, and the tables'
#   gradients are dense, so RowAdam updates them in AdamW's fused pass. On one CPU core (B = 64, K = 1,500
#   random candidates; benchmarks/results/shortlist_lcenet_paths_cpu.json) LCENet's step then takes 0.60x the
#   time through the U gathered rows and their row-sparse updates at L = 4,271 and 0.37x at 13,330 (R = 1,000,
#   U/L 1.0) and 0.67x at 100,000 (R = 100, U/L 0.6), where the same run's two modes that both gather differ
#   by 20% (shortlist and shortlist-gathered): the threshold stays where the whole tables clearly win;
# - while U is at most UNION_GEMM_MAX_RATIO times K, as dense LCENet over those U labels (GEMMs, O(B·U·R): 85 ms
#   against 1.3 s per block at L = 4,271, R = 1,000, K = 1,500);
# - past it, gathering each document's K rows (O(B·K·R): 108 ms against 323 ms at L = 501,070, R = 100,
#   U = 87K).
FULL_TABLES_MIN_FRACTION = 0.75
CLUSTER_GEMM_DEVICE_TYPES = ("cpu",)  # where a per-cluster GEMM is cheap (a kernel launch each elsewhere)
CLUSTER_GEMM_MIN_SHARING = 1.3  # documents per distinct cluster in the batch, on average, for CLUSTER_GEMM
UNION_GEMM_MAX_RATIO = 16
FULL_TABLES, UNION_GEMM, CANDIDATE_ROWS, CLUSTER_GEMM = "full_tables", "union_gemm", "candidate_rows", "cluster_gemm"


@dataclass
class Shortlist:
    """A batch's candidates [B, K], set up once per forward for every block."""

    valid: torch.Tensor  # [B, K] bool: not padding
    rows: torch.Tensor  # [B, K] the candidates' table rows, padding replaced by 0 (masked wherever it matters)
    unique: torch.Tensor  # [U] the batch's distinct candidate rows, sorted: the table rows gathered and updated
    inverse: torch.Tensor | None  # [B, K] position of each candidate's row in ``unique`` (padding: 0); None on
    # the CLUSTER_GEMM path, which finds the rows by cluster
    path: str  # CLUSTER_GEMM, FULL_TABLES, UNION_GEMM or CANDIDATE_ROWS (see FULL_TABLES_MIN_FRACTION)
    segments: ClusterSegments | None = None  # the pairs of documents and clusters, on the CLUSTER_GEMM path

    @classmethod
    def of(cls, label_ids: torch.Tensor, num_labels: int, clusters: torch.Tensor | None = None,
           label_rows: torch.Tensor | None = None) -> Shortlist:
        """``clusters`` ``[B, c]``: the candidates are whole clusters, block j of ``label_ids`` holding the labels
        of cluster ``clusters[:, j]`` (:class:`lcenet.output.ModelOutput`). ``label_rows`` ``[L]``: the table row
        of each label (:meth:`LCENet.arrange_rows`; the label itself if None)."""
        valid = label_ids >= 0
        rows = label_ids.clamp(min=0)
        if label_rows is not None:
            rows = label_rows[rows]
        if (clusters is not None and label_ids.device.type in CLUSTER_GEMM_DEVICE_TYPES
                and clusters.numel() >= CLUSTER_GEMM_MIN_SHARING * len(torch.unique(clusters))):
            segments = ClusterSegments.of(torch.where(valid, rows, -1), clusters, num_labels)
            return cls(valid, rows, segments.touched_rows, None, CLUSTER_GEMM, segments)
        unique, inverse = torch.unique(rows[valid], return_inverse=True)
        inverse = torch.zeros_like(rows).masked_scatter(valid, inverse)
        if len(unique) >= FULL_TABLES_MIN_FRACTION * num_labels:
            path = FULL_TABLES
        elif len(unique) <= UNION_GEMM_MAX_RATIO * label_ids.shape[1]:
            path = UNION_GEMM
        else:
            path = CANDIDATE_ROWS
        return cls(valid, rows, unique, inverse, path)


class LCENetBlock(nn.Module):
    def __init__(self, num_labels: int, rank: int, input_activation: str, hidden_activation: str,
                 residual: bool, bottleneck: bool, init: str):
        super().__init__()
        self.residual = residual
        self.input_activation = INPUT_ACTIVATIONS[input_activation]()
        # Built and initialised as nn.Linear layers in the same order as ever, so a seed gives the same weights.
        down = nn.Linear(num_labels, rank) if bottleneck else None
        self.hidden_activation = HIDDEN_ACTIVATIONS[hidden_activation]() if bottleneck else nn.Identity()
        self.up = nn.Linear(rank, num_labels) if bottleneck else nn.Linear(num_labels, num_labels)
        for layer in (down, self.up):
            if layer is not None:
                nn.init.xavier_uniform_(layer.weight)
        self.down = None if down is None else LabelRowsLinear(down)
        if init in ("identity", "cooccurrence"):
            # Zero last layer: the correction starts at 0, so the block starts as the identity map
            # (needs residual=True to be the identity; otherwise it starts at zero output). With
            # "cooccurrence", cooccurrence_init_ then fills the first block.
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        h = self.input_activation(logits)
        if self.down is not None:
            h = self.hidden_activation(self.down(h))
        correction = self.up(h)
        return logits + correction if self.residual else correction

    def forward_shortlist(self, logits: torch.Tensor, shortlist: Shortlist, sparse: bool) -> torch.Tensor:
        """The block on the candidates' logits [B, K]. Padded slots get h = 0, so they reach no other slot; what
        they compute themselves is masked by LCENet.forward."""
        h = torch.where(shortlist.valid, self.input_activation(logits), 0.0)
        if self.down is None:
            correction = self._full_rank_shortlist(h, shortlist)
        else:
            batch, candidates = h.shape
            if shortlist.path == CLUSTER_GEMM:
                # Row-sparse gradients only while the batch leaves most rows untouched, as on the other paths.
                sparse = sparse and shortlist.segments.touched < FULL_TABLES_MIN_FRACTION * self.up.weight.shape[0]
                hidden = self.hidden_activation(
                    hidden_of_clusters(h, self.down.weight, shortlist.segments, sparse) + self.down.bias)
                correction = correction_of_clusters(hidden, self.up.weight, shortlist.segments, sparse)
            elif shortlist.path == FULL_TABLES:
                h_all = h.new_zeros(batch, self.up.weight.shape[0]).scatter_add_(1, shortlist.rows, h)
                hidden = self.hidden_activation(self.down(h_all))
                correction = (hidden @ self.up.weight.t()).gather(1, shortlist.rows)
            elif shortlist.path == UNION_GEMM:
                w1 = gather_rows(self.down.weight, shortlist.unique, sparse)  # [U, R]
                w2 = gather_rows(self.up.weight, shortlist.unique, sparse)
                h_union = h.new_zeros(batch, len(shortlist.unique)).scatter_add(1, shortlist.inverse, h)
                hidden = self.hidden_activation(torch.addmm(self.down.bias, h_union, w1))
                correction = (hidden @ w2.t()).gather(1, shortlist.inverse)
            else:
                # Each candidate's row in one gather from the table, [B, K, R]; gradients summed per label.
                slots = shortlist.inverse.flatten()
                w1 = gather_rows(self.down.weight, shortlist.unique, sparse, slots).view(batch, candidates, -1)
                hidden = self.hidden_activation(torch.bmm(h.unsqueeze(1), w1).squeeze(1) + self.down.bias)
                w2 = gather_rows(self.up.weight, shortlist.unique, sparse, slots).view(batch, candidates, -1)
                correction = torch.bmm(w2, hidden.unsqueeze(2)).squeeze(2)
            correction = correction + self.up.bias.index_select(0, shortlist.rows.flatten()).view(h.shape)
        return logits + correction if self.residual else correction

    def _full_rank_shortlist(self, h: torch.Tensor, shortlist: Shortlist) -> torch.Tensor:
        """Each document's K x K submatrix W[ids][:, ids] times its h: O(B·K²) memory, so for small L and K."""
        ids = shortlist.rows  # the labels themselves: a full-rank block's rows are never arranged
        weight = self.up.weight[ids.unsqueeze(2), ids.unsqueeze(1)]
        correction = torch.bmm(weight, h.unsqueeze(2)).squeeze(2)
        return correction + self.up.bias.index_select(0, ids.flatten()).view(h.shape)


class LCENet(nn.Module):
    """Label-correlation enhancement of logits: ``[B, L] -> [B, L]``.

    ``aux_loss_weight`` (λ) is read by the trainer: when > 0 the base logits are supervised too,
    loss = BCE(enhanced) + λ·BCE(base). Its default, 1.0, departs from CorNet's published setting (λ = 0;
    ``lcenet.config.CORNET``): with it LCENet no longer overfits a converged AttentionXML (README). So does the
    default ``init``, "identity" (CorNet: "xavier"), which led on converged dev runs of XML-CNN and Cooking.

    ``sparse_gradients`` (shortlist mode, bottleneck only) gives :meth:`label_tables` row-sparse gradients, for
    :class:`lcenet.row_adam.RowAdam`, unless a batch's candidates cover most labels (then the block computes over
    the whole tables, see FULL_TABLES_MIN_FRACTION, and their gradients are dense); fused Adam needs the default
    dense ones (zero outside the batch's labels).
    It is a training choice, so it is not part of ``config``.
    """

    def __init__(self, num_labels: int, rank: int = 1000, blocks: int = 2, input_activation: str = "sigmoid",
                 hidden_activation: str = "elu", residual: bool = True, bottleneck: bool = True,
                 init: str = "identity", aux_loss_weight: float = 1.0, sparse_gradients: bool = False):
        super().__init__()
        if sparse_gradients and not bottleneck:
            raise UserError("LCENet sparse_gradients needs the bottleneck (bottleneck=True)")
        _check_choice("input_activation", input_activation, INPUT_ACTIVATIONS)
        _check_choice("hidden_activation", hidden_activation, HIDDEN_ACTIVATIONS)
        _check_choice("init", init, INITS)
        if num_labels < 1 or rank < 1 or blocks < 1:
            raise UserError(f"LCENet needs num_labels, rank and blocks >= 1 (got {num_labels}, {rank}, {blocks})")
        if aux_loss_weight < 0:
            raise UserError(f"LCENet aux_loss_weight must be >= 0 (got {aux_loss_weight})")
        rank = min(rank, num_labels)
        if not bottleneck:
            needed = 4 * 3 * blocks * (num_labels * num_labels + num_labels)
            if needed > FULL_RANK_MEMORY_LIMIT_BYTES:
                raise UserError(
                    f"full-rank LCENet (bottleneck=False) at L={num_labels} needs about {needed / 2**30:.1f} GiB for "
                    f"weights and Adam state, over the {FULL_RANK_MEMORY_LIMIT_BYTES / 2**30:.0f} GiB limit; "
                    "use the bottleneck")
        self.num_labels = num_labels
        # Keyword arguments that rebuild this module (saved in a model directory's config.json).
        self.config = dict(rank=rank, blocks=blocks, input_activation=input_activation,
                           hidden_activation=hidden_activation, residual=residual, bottleneck=bottleneck,
                           init=init, aux_loss_weight=aux_loss_weight)
        self.aux_loss_weight = aux_loss_weight
        self.sparse_gradients = sparse_gradients
        self.blocks = nn.ModuleList(
            LCENetBlock(num_labels, rank, input_activation, hidden_activation, residual, bottleneck, init)
            for _ in range(blocks))
        # The label tables' rows are in label order unless arrange_rows chose another order. Not saved: model files
        # hold the tables in label order (the state-dict hooks translate).
        self.register_buffer("row_labels", None, persistent=False)  # [L] the label of each table row
        self.register_buffer("label_rows", None, persistent=False)  # [L] the table row of each label
        self.register_state_dict_post_hook(_tables_in_label_order)
        self.register_load_state_dict_pre_hook(_tables_in_row_order)

    def arrange_rows(self, row_labels: torch.Tensor) -> None:
        """Store the label tables (W1ᵀ, W2 and b2 of every block) with row j holding label ``row_labels[j]`` (a
        permutation of the labels). After a shortlist, its labels in cluster order make each cluster's rows a
        slice, which the CPU path multiplies without copying (:mod:`lcenet.cluster_products`). Outputs, gradients
        and ``state_dict`` (label order) are unchanged; call it before an optimizer holds state for the tables."""
        row_labels = torch.as_tensor(row_labels, dtype=torch.long)
        if row_labels.shape != (self.num_labels,) or not torch.equal(
                row_labels.sort().values, torch.arange(self.num_labels, device=row_labels.device)):
            raise UserError(f"LCENet arrange_rows: needs a permutation of the {self.num_labels} labels "
                            f"(got shape {tuple(row_labels.shape)})")
        if any(block.down is None for block in self.blocks):
            raise UserError("LCENet arrange_rows needs the bottleneck (bottleneck=True)")
        row_labels = row_labels.to(self.blocks[0].up.weight.device)
        # Where each new row is now.
        source = row_labels if self.label_rows is None else self.label_rows[row_labels]
        with torch.no_grad():
            for block in self.blocks:
                for tensor in (block.down.weight, block.up.weight, block.up.bias):
                    tensor.copy_(tensor.index_select(0, source))
        self.row_labels = row_labels
        self.label_rows = torch.argsort(row_labels)

    def in_row_order(self, per_label: torch.Tensor) -> torch.Tensor:
        """``per_label`` [L, ...] in label order -> in the tables' row order."""
        return per_label if self.row_labels is None else per_label.index_select(0, self.row_labels.to(per_label.device))

    def forward(self, logits: torch.Tensor, label_ids: torch.Tensor | None = None,
                clusters: torch.Tensor | None = None) -> torch.Tensor:
        """Dense: ``logits`` [B, L] -> [B, L]. Shortlist: ``logits`` [B, K] are the logits of the candidate labels
        ``label_ids`` [B, K] (-1 pads a shorter list) -> [B, K], the dense output at those labels if every
        label were a candidate; padded slots take no part and come out as ``PADDING_LOGIT``, without gradient.
        ``clusters`` [B, c] (optional, as a shortlist model's ``candidate_clusters``): the candidates are whole
        label clusters, block j of ``label_ids`` (K / c slots, its cluster's labels then -1s) being cluster
        ``clusters[:, j]``, the same labels for every document that chose it; the result is the same, computed
        per cluster on the CPU."""
        if label_ids is None:
            if self.row_labels is not None:
                logits = logits.index_select(1, self.row_labels)  # into the tables' row order, and back after
            for block in self.blocks:
                logits = block(logits)
            return logits if self.label_rows is None else logits.index_select(1, self.label_rows)
        if label_ids.shape != logits.shape or label_ids.dtype not in (torch.int32, torch.int64):
            raise UserError(f"LCENet shortlist: label_ids must be integer ids shaped like the logits "
                            f"{tuple(logits.shape)} (got {label_ids.dtype} {tuple(label_ids.shape)})")
        if ((label_ids < -1) | (label_ids >= self.num_labels)).any():
            raise UserError(f"LCENet shortlist: label ids must be in [0, {self.num_labels}) or -1 for padding")
        if clusters is not None and (clusters.ndim != 2 or clusters.shape[0] != len(label_ids) or clusters.shape[1] == 0
                                     or label_ids.shape[1] % clusters.shape[1]
                                     or clusters.dtype not in (torch.int32, torch.int64)):
            raise UserError(f"LCENet shortlist: clusters must be integer ids [{len(label_ids)}, c] with c dividing "
                            f"the {label_ids.shape[1]} candidates (got {clusters.dtype} {tuple(clusters.shape)})")
        shortlist = Shortlist.of(label_ids.long(), self.num_labels, None if clusters is None else clusters.long(),
                                 self.label_rows)
        if len(shortlist.unique) == 0:
            return torch.full_like(logits, PADDING_LOGIT)
        for block in self.blocks:
            logits = block.forward_shortlist(logits, shortlist, self.sparse_gradients)
        return torch.where(shortlist.valid, logits, PADDING_LOGIT)

    def label_tables(self) -> list[nn.Parameter]:
        """The [L, R] tables, W1ᵀ and W2 of each block, whose gradients shortlist mode restricts to the batch's
        labels (row-sparse with ``sparse_gradients``); every other parameter's gradient is dense and small."""
        return [table for block in self.blocks if block.down is not None
                for table in (block.down.weight, block.up.weight)]

    @staticmethod
    def parameters_per_block(num_labels: int, rank: int, bottleneck: bool = True) -> int:
        """2·R·L + R + L with the bottleneck, L·L + L without (R capped at L, as in the constructor)."""
        rank = min(rank, num_labels)
        return 2 * rank * num_labels + rank + num_labels if bottleneck else num_labels * num_labels + num_labels

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LCENetWrapped(nn.Module):
    """Any logits-returning model followed by LCENet: ``forward(*a, **kw) = lcenet(base(*a, **kw))``.

    ``score`` (the :class:`lcenet.output.Scorer` hook) does the same on the base's typed output: dense logits,
    or a shortlist's candidate logits with their label ids (shortlist LCENet, O(K·R) per document)."""

    def __init__(self, base: nn.Module, lcenet: LCENet):
        super().__init__()
        self.base = base
        self.lcenet = lcenet

    @property
    def scores_candidates(self) -> bool:
        return self.base.scores_candidates

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.lcenet(self.base(*args, **kwargs))

    def score(self, *inputs: torch.Tensor, true_labels: torch.Tensor | None = None) -> ModelOutput:
        output = self.base.score(*inputs, true_labels=true_labels)
        weight = self.lcenet.aux_loss_weight
        return output._replace(logits=self.lcenet(output.logits, output.label_ids, output.candidate_clusters),
                               base_logits=output.logits if weight > 0 else None, aux_loss_weight=weight)


def _tables_in_label_order(module: LCENet, state_dict, prefix, local_metadata) -> None:
    if module.label_rows is not None:
        _reorder_tables(module, state_dict, prefix, module.label_rows)


def _tables_in_row_order(module: LCENet, state_dict, prefix, *args) -> None:
    if module.row_labels is not None:
        _reorder_tables(module, state_dict, prefix, module.row_labels)


def _reorder_tables(module: LCENet, state_dict: dict, prefix: str, index: torch.Tensor) -> None:
    """Permute the label axis of every block's tables in ``state_dict`` (W1 as nn.Linear's [R, L], W2 [L, R],
    b2 [L]) by ``index``; a tensor of another size is left for load_state_dict to report."""
    for i in range(len(module.blocks)):
        for name, axis in (("down.weight", 1), ("up.weight", 0), ("up.bias", 0)):
            key = f"{prefix}blocks.{i}.{name}"
            tensor = state_dict.get(key)
            if tensor is not None and tensor.ndim > axis and tensor.shape[axis] == len(index):
                state_dict[key] = tensor.index_select(axis, index.to(tensor.device))


def with_lcenet(model: nn.Module, num_labels: int, **lcenet_kwargs) -> LCENetWrapped:
    """Wrap ``model`` (anything returning ``[B, num_labels]`` logits) with an LCENet head."""
    return LCENetWrapped(model, LCENet(num_labels, **lcenet_kwargs))


def cooccurrence_init_(lcenet: LCENet, labels: sp.spmatrix, scale: float = 0.1, seed: int = 0) -> int:
    """Start ``lcenet``'s first block from the train labels' co-occurrence (formula in the module docstring).

    ``labels`` is the train label matrix [N, L] (sparse, binary). Deterministic for a seed. Returns k, the
    number of rank slots filled from eigenvectors (the rest of R is xavier-uniform in W1, zero in W2).
    """
    block = lcenet.blocks[0]
    if block.down is None:
        raise UserError("LCENet init 'cooccurrence' needs the bottleneck (bottleneck=True)")
    num_labels, rank = lcenet.num_labels, block.down.out_features
    labels = sp.csr_matrix(labels, dtype=np.float64)
    if labels.shape[1] != num_labels:
        raise UserError(f"LCENet init 'cooccurrence': the label matrix has {labels.shape[1]} columns, "
                        f"the network {num_labels} labels")
    counts = np.asarray(labels.getnnz(axis=0), dtype=np.float64)
    normalised = labels @ sp.diags(np.divide(1.0, np.sqrt(counts), out=np.zeros_like(counts), where=counts > 0))
    eigenvalues, vectors = _top_eigenvectors(normalised.tocsr(), min(rank, *normalised.shape), seed)
    vectors *= np.where(vectors.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    k = len(vectors)
    generator = torch.Generator().manual_seed(seed)
    bound = (6.0 / (num_labels + rank)) ** 0.5  # xavier-uniform, as nn.init.xavier_uniform_
    with torch.no_grad():
        down = torch.empty(rank, num_labels).uniform_(-bound, bound, generator=generator)
        down[:k] = torch.from_numpy(vectors)
        up = torch.zeros(num_labels, rank)
        if k:
            up[:, :k] = torch.from_numpy(scale * vectors.T * (eigenvalues / eigenvalues[0]))
        block.down.weight.copy_(lcenet.in_row_order(down.t()))
        block.up.weight.copy_(lcenet.in_row_order(up))
        block.down.bias.zero_()
        block.up.bias.zero_()
    return k


def _top_eigenvectors(matrix: sp.csr_matrix, k: int, seed: int, iterations: int = 4,
                      oversample: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The top-k eigenpairs of ``matrixᵀ matrix`` (eigenvalues descending, vectors as rows [k, L]) by randomized
    subspace iteration, applying the Gram matrix in row chunks (memory O((k + oversample) · L)). Eigenvalues
    below 1e-10 of the largest (the null space past the matrix's rank) are dropped."""
    if k < 1 or matrix.nnz == 0:
        return np.zeros(0), np.zeros((0, matrix.shape[1]))
    basis = np.random.default_rng(seed).standard_normal((matrix.shape[1], min(k + oversample, matrix.shape[1])))
    for _ in range(iterations):
        basis, _ = np.linalg.qr(_gram_times(matrix, basis))
    values, small = np.linalg.eigh(basis.T @ _gram_times(matrix, basis))
    order = np.argsort(values)[::-1][:k]
    values, vectors = values[order], (basis @ small[:, order]).T
    keep = values > values[0] * 1e-10
    return values[keep], vectors[keep]


def _gram_times(matrix: sp.csr_matrix, block: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``matrixᵀ (matrix block)`` without forming the Gram matrix, nor more than ``chunk`` rows of
    ``matrix block`` at once."""
    out = np.zeros_like(block)
    for start in range(0, matrix.shape[0], chunk):
        rows = matrix[start:start + chunk]
        out += rows.T @ (rows @ block)
    return out


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"LCENet {name} must be one of {', '.join(choices)} (got {value!r})")
