"""Row-sparse gradients for label tables, and the Adam that touches only the rows they name.

At large L the label tables — LCENet's [L, R] tables in shortlist mode and a shortlist model's output layer
[L, H] — are the model's largest parameters, and a step's candidates touch a few thousand of their rows. With
dense gradients every step still fills an L-row gradient with zeros and Adam reads and writes all L rows of the
parameter and both moments. :func:`gather_rows` gives a table's gradient as a coalesced sparse tensor over the
gathered rows, and :class:`RowAdam` gathers those rows of the parameter and moments, updates them, and writes
them back: O(touched rows) per step whatever L is.

RowAdam's update of a sparse gradient is torch.optim.SparseAdam's ("lazy" Adam: an untouched row's moments
neither decay nor move it; bias correction by the step count), except that eps is added where AdamW adds it (to
the bias-corrected root), so that a row-sparse and a dense gradient of one table give the same update;
SparseAdam reaches its results through sparse_mask and sparse additions, several times slower on CPU. Dense
gradients (every other parameter of the model, and a table whose step touched most of its rows: see
lcenet.lcenet.FULL_TABLES_MIN_FRACTION) get AdamW's fused update of every entry, and ``weight_decay`` is
decoupled (AdamW), applied to the rows a step updates. :func:`clip_grad_norm_` clips both kinds together.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam

from lcenet.errors import UserError

__all__ = ["RowAdam", "clip_grad_norm_", "gather_rows"]


class _GatherRows(torch.autograd.Function):
    """``table[rows[repeat]]`` for sorted, distinct ``rows`` (``repeat``: positions in ``rows``, or None for
    ``table[rows]``), whose gradient is a coalesced sparse COO tensor holding just ``rows``: the gradients of
    repeated lookups are summed into their row here, so the optimizer never sorts (F.embedding(sparse=True)
    would give one entry per lookup)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, lookup: torch.Tensor, rows: torch.Tensor, repeat: torch.Tensor | None
                ) -> torch.Tensor:
        ctx.save_for_backward(rows, repeat)
        ctx.table_shape = table.shape
        return table.index_select(0, lookup)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, repeat = ctx.saved_tensors
        if repeat is not None:
            grad = grad.new_zeros(len(rows), grad.shape[1]).index_add_(0, repeat, grad)
        return torch.sparse_coo_tensor(rows.unsqueeze(0), grad, ctx.table_shape, is_coalesced=True,
                                       check_invariants=False), None, None, None


def gather_rows(table: torch.Tensor, rows: torch.Tensor, sparse: bool, repeat: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Rows ``rows`` (sorted, distinct) of ``table``, or with ``repeat`` (positions in ``rows``) the rows
    ``rows[repeat]`` in one gather; the gradient reaches only ``rows``, as a sparse tensor or (``sparse=False``)
    as a dense one that is zero elsewhere."""
    lookup = rows if repeat is None else rows.index_select(0, repeat)
    return _GatherRows.apply(table, lookup, rows, repeat) if sparse else table.index_select(0, lookup)


def _rows_and_values(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A row-sparse gradient's distinct rows and their values (gather_rows' come sorted and distinct; the sum of
    several micro-batches' forgets it was coalesced, and others, e.g. F.embedding's, may repeat rows)."""
    rows, values = grad._indices()[0], grad._values()
    if not bool((rows[1:] > rows[:-1]).all()):
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
    return rows, values


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm over all gradients together) for dense and row-sparse gradients."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = [(_rows_and_values(g)[1] if g.is_sparse else g).float().norm() for g in grads]
    total = torch.stack(norms).norm()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for grad in grads:
        (grad._values() if grad.is_sparse else grad).mul_(scale.to(grad.dtype))
    return total


class RowAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0 <= beta < 1 for beta in betas):
            raise UserError(f"RowAdam needs lr > 0, eps > 0, weight_decay >= 0 and betas in [0, 1) (got {lr}, {eps}, "
                            f"{weight_decay}, {betas})")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            dense: list[torch.Tensor] = []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0.0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                # On the parameter's device, as the fused kernel requires; checkpoints before the fused update
                # kept an int, and load_state_dict leaves the step on the host (a no-op when it is in place).
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32, device=param.device)
                if param.grad.is_sparse:
                    self._row_update(param, state, group)
                else:
                    dense.append(param)
            if dense:
                # AdamW's fused kernel: one pass over parameter and moments, which counts the steps itself.
                states = [self.state[param] for param in dense]
                beta1, beta2 = group["betas"]
                adam(
                    dense, [param.grad for param in dense], [state["exp_avg"] for state in states],
                    [state["exp_avg_sq"] for state in states], [], [state["step"] for state in states], fused=True,
                    decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                    weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
        return loss

    @staticmethod
    def _row_update(param: torch.Tensor, state: dict, group: dict) -> None:
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = state["step"]  # a tensor on the parameter's device: the corrections need no host sync
        step_size = -group["lr"] / (1 - beta1 ** step)
        # eps where AdamW's fused kernel (the dense update) adds it: to the bias-corrected root.
        root_correction = (1 - beta2 ** step).sqrt()
        decay = 1 - group["lr"] * group["weight_decay"]
        rows, values = _rows_and_values(param.grad)
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2)
        exp_avg_sq.addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        update = exp_avg.div_(exp_avg_sq.sqrt_().div_(root_correction).add_(group["eps"])).mul_(step_size)
        if decay != 1:
            update.add_(param.index_select(0, rows), alpha=decay - 1)
        param.index_add_(0, rows, update)
