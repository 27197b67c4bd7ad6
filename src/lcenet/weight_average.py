"""An exponential moving average (EMA) of a model's weights, the kind of weight averaging the published XMTC
systems train with (AttentionXML averages weights from its later epochs, CorNet on Wiki-500K from epoch 4): dev
is scored, and the model is saved, with the averaged weights, while the optimizer keeps stepping the raw ones.

After step t the average is ``a_t = decay · a_{t-1} + (1 - decay) · w_t``, starting from the weights training
starts with (``a_0 = w_0``), so it covers about the last ``1 / (1 - decay)`` steps. Only the parameters that
train are averaged (not a frozen encoder's or word vectors'); buffers (label orders, cluster assignments) are the
model's own. The update is one fused ``lerp`` over them a step and reads nothing back to the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["WeightAverage"]


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1) (got {decay})")
        self.decay = decay
        self.names, self.parameters = [], []
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                self.names.append(name)
                self.parameters.append(parameter)
        self.average = [parameter.detach().clone() for parameter in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (call after each optimizer step)."""
        torch._foreach_lerp_(self.average, self.parameters, 1 - self.decay)

    def copy_to_model(self) -> None:
        """Give the model the averaged weights."""
        self._set_parameters(self.average)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside, the model holds the averaged weights (to score or save them); on leaving, its own again."""
        kept = [parameter.detach().clone() for parameter in self.parameters]
        self.copy_to_model()
        try:
            yield
        finally:
            self._set_parameters(kept)

    @torch.no_grad()
    def _set_parameters(self, values: list[torch.Tensor]) -> None:
        torch._foreach_copy_(self.parameters, values)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages by parameter name, as the parameters hold them (``named_parameters``, not the model's
        ``state_dict``, which may reorder rows: :meth:`lcenet.lcenet.LCENet.arrange_rows`)."""
        return dict(zip(self.names, self.average))

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(tensors))
        if missing:
            raise KeyError(f"no average for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        with torch.no_grad():
            for name, average in zip(self.names, self.average):
                average.copy_(tensors[name])
