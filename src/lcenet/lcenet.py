"""LCENet: the Label Correlation Enhancement Network.

A stack of residual blocks over label logits z (shape [B, L]):

    h  = input_activation(z)
    u  = hidden_activation(W1 h + b1)          W1: R x L   (or L x L, bottleneck=False)
    z' = z + (W2 u + b2)                       W2: L x R

With R << L the block learns label correlations with 2RL + R + L parameters instead of L^2.
Defaults follow CorNet's published setting (R = 1000 capped at L, 2 blocks, sigmoid in, ELU hidden,
residual, xavier-uniform weights).
"""

from __future__ import annotations

import torch
from torch import nn

from lcenet.errors import UserError

INPUT_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "none": nn.Identity}
HIDDEN_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "gelu": nn.GELU, "none": nn.Identity}
INITS = ("xavier", "identity")

# A full-rank block holds an L x L weight; refuse it past this size (fp32 weights + Adam's two moments).
FULL_RANK_MEMORY_LIMIT_BYTES = 8 * 2**30


class LCENetBlock(nn.Module):
    def __init__(self, num_labels: int, rank: int, input_activation: str, hidden_activation: str,
                 residual: bool, bottleneck: bool, init: str):
        super().__init__()
        self.residual = residual
        self.input_activation = INPUT_ACTIVATIONS[input_activation]()
        if bottleneck:
            self.down = nn.Linear(num_labels, rank)
            self.hidden_activation = HIDDEN_ACTIVATIONS[hidden_activation]()
            self.up = nn.Linear(rank, num_labels)
        else:
            self.down = None
            self.hidden_activation = nn.Identity()
            self.up = nn.Linear(num_labels, num_labels)
        for layer in (self.down, self.up):
            if layer is not None:
                nn.init.xavier_uniform_(layer.weight)
        if init == "identity":
            # Zero last layer: the correction starts at 0, so the block starts as the identity map
            # (needs residual=True to be the identity; otherwise it starts at zero output).
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        h = self.input_activation(logits)
        if self.down is not None:
            h = self.hidden_activation(self.down(h))
        correction = self.up(h)
        return logits + correction if self.residual else correction


class LCENet(nn.Module):
    """Label-correlation enhancement of logits: ``[B, L] -> [B, L]``.

    ``aux_loss_weight`` (λ) is read by the trainer: when > 0 the base logits are supervised too,
    loss = BCE(enhanced) + λ·BCE(base).
    """

    def __init__(self, num_labels: int, rank: int = 1000, blocks: int = 2, input_activation: str = "sigmoid",
                 hidden_activation: str = "elu", residual: bool = True, bottleneck: bool = True,
                 init: str = "xavier", aux_loss_weight: float = 0.0):
        super().__init__()
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
        self.blocks = nn.ModuleList(
            LCENetBlock(num_labels, rank, input_activation, hidden_activation, residual, bottleneck, init)
            for _ in range(blocks))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            logits = block(logits)
        return logits

    @staticmethod
    def parameters_per_block(num_labels: int, rank: int, bottleneck: bool = True) -> int:
        """2·R·L + R + L with the bottleneck, L·L + L without (R capped at L, as in the constructor)."""
        rank = min(rank, num_labels)
        return 2 * rank * num_labels + rank + num_labels if bottleneck else num_labels * num_labels + num_labels

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LCENetWrapped(nn.Module):
    """Any logits-returning model followed by LCENet: ``forward(*a, **kw) = lcenet(base(*a, **kw))``."""

    def __init__(self, base: nn.Module, lcenet: LCENet):
        super().__init__()
        self.base = base
        self.lcenet = lcenet

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.lcenet(self.base(*args, **kwargs))


def with_lcenet(model: nn.Module, num_labels: int, **lcenet_kwargs) -> LCENetWrapped:
    """Wrap ``model`` (anything returning ``[B, num_labels]`` logits) with an LCENet head."""
    return LCENetWrapped(model, LCENet(num_labels, **lcenet_kwargs))


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"LCENet {name} must be one of {', '.join(choices)} (got {value!r})")
