"""Adam that touches only the rows a row-sparse gradient names, for LCENet's label tables in shortlist mode.

With dense gradients every Adam step reads and writes all L·R entries of each table (parameter, gradient, two
moments) although a batch's shortlist touches a few thousand labels, and the backward pass first fills an L·R
gradient with zeros. With ``LCENet(sparse_gradients=True)`` the tables' gradients are coalesced sparse tensors
over the batch's distinct labels, and :class:`RowAdam` gathers those rows of the parameter and moments, updates
them, and writes them back: O(touched rows · R) per step whatever L is.

It is torch.optim.SparseAdam's update ("lazy" Adam: an untouched row's moments neither decay nor move it; bias
correction by the step count), with the same results; SparseAdam reaches them through sparse_mask and sparse
additions, several times slower on CPU. No weight decay, as SparseAdam: the tables train without it.
"""

from __future__ import annotations

import torch

from lcenet.errors import UserError


class RowAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr <= 0 or eps <= 0 or not all(0 <= beta < 1 for beta in betas):
            raise UserError(f"RowAdam needs lr > 0, eps > 0 and betas in [0, 1) (got {lr}, {eps}, {betas})")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise UserError("RowAdam takes row-sparse gradients (LCENet sparse_gradients=True); "
                                    "use Adam for dense ones")
                rows, values = param.grad._indices()[0], param.grad._values()
                # LCENet's rows come sorted and distinct (the accumulated gradient forgets it was coalesced, and
                # coalescing again would copy it); others, e.g. F.embedding's, may repeat rows, to be summed.
                if not bool((rows[1:] > rows[:-1]).all()):
                    grad = param.grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2)
                exp_avg_sq.addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                step_size = group["lr"] * (1 - beta2 ** state["step"]) ** 0.5 / (1 - beta1 ** state["step"])
                param.index_add_(0, rows, exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"])), alpha=-step_size)
        return loss
