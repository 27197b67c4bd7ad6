"""Shortlist LCENet's two table products grouped by label cluster: the CPU path when candidates come in clusters.

A shortlist model's candidates are whole clusters (:mod:`lcenet.shortlist`): document d's K = c·S candidates
are the members of its c chosen clusters, S slots each, and every document that chose a cluster holds the same
labels in that cluster's slots. Each cluster in the batch therefore does one small GEMM over the n documents
that chose it, with its own S rows of the tables:

    hidden[d]      = Σ_j h[d, block j] · W1ᵀ[members(c_dj)]      ([n, S] x [S, R] per cluster)
    correction[d, block j] = u[d] · W2[members(c_dj)]ᵀ           ([n, R] x [R, S] per cluster)

That is B·K·R multiply-adds per product, as in gathering each document's K rows, but each cluster's S rows are
read once, not once per document that chose it (B·K·R of memory traffic); and against GEMMs over all L labels
(B·L·R multiply-adds) it saves the labels no document in the batch chose as a candidate of its own: at 13,330
labels and K = 1,500 nearly every label is some document's candidate, yet each document has only 11% of them.
One Python-level GEMM per cluster is cheap on a CPU and costly in kernel launches on an accelerator, so LCENet
takes this path on the CPU only (see lcenet.lcenet).

A cluster whose rows are consecutive and in its block's order (LCENet stores its tables in cluster order when it
follows a shortlist: :meth:`lcenet.lcenet.LCENet.arrange_rows`) multiplies a slice of the table, and its
gradient rows are written straight into a slice of the table's gradient: no copies. Any other cluster's rows
are gathered once and kept for the backward (U·S·R values per table, U the batch's distinct clusters: 53 MB at
13,330 labels and R = 1,000), and its gradient rows copied into place.

The tables' gradients are written a cluster at a time: dense (zero outside the touched rows, which fused AdamW
updates), or with ``sparse=True`` row-sparse over the touched rows (sorted, as :class:`lcenet.row_adam.RowAdam`
reads them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lcenet.errors import UserError

__all__ = ["ClusterSegments", "hidden_of_clusters", "correction_of_clusters"]


@dataclass
class ClusterSegments:
    """A batch's (document, block) pairs sorted by cluster, set up once per forward for every block."""

    order: torch.Tensor  # [P] positions of the pairs (P = B·c, pair p = document p // c, block p % c) by cluster
    document: torch.Tensor  # [P] the document of each sorted pair
    bounds: list[int]  # sorted pairs bounds[i]:bounds[i + 1] chose the batch's i-th distinct cluster
    members: list[torch.Tensor]  # each distinct cluster's table rows (its block before the padding)
    starts: list[int | None]  # the first of a cluster's rows when they are consecutive and ascending, else None
    width: int  # S, the slots of a block
    touched_rows: torch.Tensor  # the rows of the batch's clusters, sorted: a row-sparse gradient's rows
    destinations: list[torch.Tensor]  # where each distinct cluster's members sit in touched_rows
    num_labels: int

    @classmethod
    def of(cls, rows: torch.Tensor, clusters: torch.Tensor, num_labels: int) -> ClusterSegments:
        """``rows`` ``[B, c·S]``, the candidates' table rows (-1 pads a cluster smaller than S, after its rows),
        ``clusters`` ``[B, c]``: block j of a document's candidates holds the rows of its cluster
        ``clusters[:, j]``."""
        batch, count = clusters.shape
        flat = clusters.flatten()
        order = torch.argsort(flat, stable=True)
        _, per_cluster = torch.unique_consecutive(flat[order], return_counts=True)
        first = torch.cumsum(per_cluster, 0) - per_cluster  # the first pair that chose each cluster
        pair_blocks = rows.reshape(batch * count, -1).index_select(0, order)  # [P, S] in cluster order
        blocks = pair_blocks.index_select(0, first)  # [U, S]
        # Each sorted pair's cluster, as a position among the batch's distinct ones.
        which = torch.repeat_interleave(torch.arange(len(per_cluster), device=order.device), per_cluster)
        if not torch.equal(pair_blocks, blocks.index_select(0, which)):
            raise UserError("LCENet shortlist: documents that chose the same cluster must hold the same labels in "
                            "its block")
        real = blocks >= 0
        if bool((real[:, 1:] & ~real[:, :-1]).any()):
            raise UserError("LCENet shortlist: a cluster's block must hold its labels first, then its -1 padding")
        sizes = real.sum(1).tolist()
        touched_rows, position = blocks[real].sort()
        if bool((touched_rows[1:] == touched_rows[:-1]).any()):
            raise UserError("LCENet shortlist: a label is in two clusters; clusters must not share labels")
        destination = torch.empty_like(position).index_copy_(0, position, torch.arange(len(position),
                                                                                        device=order.device))
        consecutive = ((blocks[:, 1:] - blocks[:, :-1] == 1) | ~real[:, 1:]).all(1).tolist()
        starts = [first if ascending and size else None
                  for first, ascending, size in zip(blocks[:, 0].tolist(), consecutive, sizes)]
        return cls(order, order // count, [0, *torch.cumsum(per_cluster, 0).tolist()],
                   [block[:size] for block, size in zip(blocks.unbind(0), sizes)],
                   starts, rows.shape[1] // count, touched_rows, list(destination.split(sizes)), num_labels)

    @property
    def touched(self) -> int:
        """The number of distinct labels in the batch's clusters."""
        return len(self.touched_rows)

    @property
    def padded(self) -> bool:
        """Whether some cluster of the batch fills fewer than S slots."""
        return any(len(members) < self.width for members in self.members)

    def __iter__(self):
        """(the sorted pairs of a cluster, its number of rows)."""
        for i, members in enumerate(self.members):
            yield slice(self.bounds[i], self.bounds[i + 1]), len(members)

    def weights(self, table: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """Each distinct cluster's ``[size, R]`` rows of ``table`` in ``dtype``: a slice where they are
        consecutive (no copy unless the dtype differs), else gathered."""
        return [(table.narrow(0, start, len(members)) if start is not None else table.index_select(0, members)
                 ).to(dtype) for members, start in zip(self.members, self.starts)]

    def pairs(self, per_slot: torch.Tensor) -> torch.Tensor:
        """``[B, c·S]`` -> ``[P, S]`` in cluster order."""
        return per_slot.reshape(len(self.order), -1).index_select(0, self.order)

    def slots(self, pairs: torch.Tensor, batch: int) -> torch.Tensor:
        """``[P, S]`` in cluster order -> ``[B, c·S]``."""
        return torch.empty_like(pairs).index_copy_(0, self.order, pairs).view(batch, -1)

    def table_gradient(self, table: torch.Tensor, sparse: bool,
                       product: Callable[[slice, int], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The gradient of an [L, R] table, row-sparse over the touched rows or dense and zero elsewhere, with
        ``product(span, size)`` giving the two factors ``a`` ``[size, n]`` and ``b`` ``[n, R]`` of a cluster's
        gradient rows (its pairs ``span``, its ``size`` real labels), multiplied straight into place."""
        if sparse:
            grad = table.new_empty(self.touched, table.shape[1])
        else:
            # Each entry written once: the GEMMs write the touched rows and only the rest are zeroed (at 13K labels
            # a batch touches about 96% of them, so zeroing the whole table first would write it twice).
            untouched = torch.ones(self.num_labels, dtype=torch.bool, device=table.device).index_fill_(
                0, self.touched_rows, False).nonzero().squeeze(1)
            grad = table.new_empty(table.shape).index_fill_(0, untouched, 0)
        for i, (span, size) in enumerate(self):
            a, b = product(span, size)
            if self.starts[i] is None:
                grad.index_copy_(0, self.destinations[i] if sparse else self.members[i], (a @ b).to(grad.dtype))
            else:  # consecutive rows, so consecutive places among the sorted touched rows too: a slice
                _mm_into(a, b, grad.narrow(0, int(self.destinations[i][0]) if sparse else self.starts[i], size))
        if not sparse:
            return grad
        return torch.sparse_coo_tensor(self.touched_rows.unsqueeze(0), grad, table.shape, is_coalesced=True,
                                       check_invariants=False)


def _mm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    else:  # bf16 factors under autocast, fp32 gradient
        out.copy_(a @ b)


def _compute_dtype(inputs: torch.Tensor, table: torch.Tensor) -> torch.dtype:
    """bf16 under CPU autocast (as its GEMMs would be), else the inputs' and table's common type."""
    if torch.is_autocast_enabled(inputs.device.type):
        return torch.get_autocast_dtype(inputs.device.type)
    return torch.promote_types(inputs.dtype, table.dtype)


class _Hidden(torch.autograd.Function):
    """``[B, c·S]`` activations of the candidates -> ``[B, R]``: Σ over each document's blocks of h · W1ᵀ[rows]."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, segments: ClusterSegments, sparse: bool) -> torch.Tensor:
        dtype = _compute_dtype(h, table)
        with torch.autocast(h.device.type, enabled=False):
            pairs = segments.pairs(h.to(dtype))
            products = pairs.new_empty(len(pairs), table.shape[1])
            weights = segments.weights(table, dtype)  # [size, R] each, kept for the backward
            for (span, size), weight in zip(segments, weights):
                torch.mm(pairs[span, :size], weight, out=products[span])
            ctx.save_for_backward(pairs, table)
            ctx.weights = weights
            ctx.segments, ctx.sparse, ctx.input_dtype = segments, sparse, h.dtype
            return products.new_zeros(len(h), table.shape[1]).index_add_(0, segments.document, products)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pairs, table = ctx.saved_tensors
        segments = ctx.segments
        grad_pairs = grad.to(pairs.dtype).index_select(0, segments.document)  # [P, R]
        grad_h = table_grad = None
        if ctx.needs_input_grad[0]:
            # Padding slots (past a smaller cluster's rows) get no gradient.
            grad_h = torch.zeros_like(pairs) if segments.padded else torch.empty_like(pairs)
            for (span, size), weight in zip(segments, ctx.weights):
                torch.mm(grad_pairs[span], weight.t(), out=grad_h[span, :size])
            grad_h = segments.slots(grad_h, len(grad)).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            table_grad = segments.table_gradient(
                table, ctx.sparse, lambda span, size: (pairs[span, :size].t(), grad_pairs[span]))
        return grad_h, table_grad, None, None


class _Correction(torch.autograd.Function):
    """``[B, R]`` hidden -> ``[B, c·S]``: each candidate's W2 row times its document's hidden vector."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, table: torch.Tensor, segments: ClusterSegments, sparse: bool
                ) -> torch.Tensor:
        dtype = _compute_dtype(hidden, table)
        with torch.autocast(hidden.device.type, enabled=False):
            per_pair = hidden.to(dtype).index_select(0, segments.document)  # [P, R]
            # Padding slots come out as 0 (masked by LCENet.forward).
            products = (per_pair.new_zeros if segments.padded else per_pair.new_empty)(len(per_pair), segments.width)
            weights = segments.weights(table, dtype)  # [size, R] each, kept for the backward
            for (span, size), weight in zip(segments, weights):
                torch.mm(per_pair[span], weight.t(), out=products[span, :size])
            ctx.save_for_backward(per_pair, table)
            ctx.weights = weights
            ctx.segments, ctx.sparse, ctx.input_dtype, ctx.batch = segments, sparse, hidden.dtype, len(hidden)
            return segments.slots(products, len(hidden))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        per_pair, table = ctx.saved_tensors
        segments = ctx.segments
        grad_pairs = segments.pairs(grad.to(per_pair.dtype))  # [P, S]
        grad_hidden = table_grad = None
        if ctx.needs_input_grad[0]:
            grad_per_pair = torch.empty_like(per_pair)
            for (span, size), weight in zip(segments, ctx.weights):
                torch.mm(grad_pairs[span, :size], weight, out=grad_per_pair[span])
            grad_hidden = grad_per_pair.new_zeros(ctx.batch, per_pair.shape[1]).index_add_(
                0, segments.document, grad_per_pair).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            table_grad = segments.table_gradient(
                table, ctx.sparse, lambda span, size: (grad_pairs[span, :size].t(), per_pair[span]))
        return grad_hidden, table_grad, None, None


def hidden_of_clusters(h: torch.Tensor, table: torch.Tensor, segments: ClusterSegments, sparse: bool
                       ) -> torch.Tensor:
    """``[B, R]``: Σ_k h[:, k] · table[label of k], where ``table`` is W1ᵀ ``[L, R]`` (bias not added);
    ``sparse``: the table's gradient is row-sparse."""
    return _Hidden.apply(h, table, segments, sparse)


def correction_of_clusters(hidden: torch.Tensor, table: torch.Tensor, segments: ClusterSegments, sparse: bool
                           ) -> torch.Tensor:
    """``[B, c·S]``: each candidate's row of ``table`` (W2, ``[L, R]``) times its document's ``hidden`` (no
    bias); ``sparse``: the table's gradient is row-sparse."""
    return _Correction.apply(hidden, table, segments, sparse)
