"""Base architectures, by name. Every family subclasses ``XMTCModel``: it maps the tensors its input store
yields (``input_kind``; see :mod:`lcenet.inference`) to logits ``[B, L]``, and declares its hooks there once.

A model class takes ``num_labels`` and ``vocab_size`` plus its own keyword hyper-parameters (saved in the
model directory's config.json through ``saved_args``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lcenet.errors import UserError
from lcenet.output import ModelOutput
from lcenet.row_adam import gather_rows


class XMTCModel(nn.Module):
    """What the pipeline asks of a model family; every hook has a default a family may override."""

    registry_name: ClassVar[str]
    # "tokens": model(input_ids [B, T], attention_mask [B, T]);
    # "tfidf": model(indices [nnz], offsets [B], weights [nnz]), nn.EmbeddingBag's arguments.
    input_kind: ClassVar[str] = "tokens"
    # True: the tokenizer is the pretrained checkpoint's (``tokenizer_file``), not one trained on the data.
    uses_pretrained_tokenizer: ClassVar[bool] = False
    scores_candidates: ClassVar[bool] = False  # a family scores every label; lcenet.shortlist adds candidates

    def score(self, *inputs: torch.Tensor, true_labels: torch.Tensor | None = None) -> ModelOutput:
        """The :class:`lcenet.output.Scorer` hook: dense logits ``[B, L]``."""
        return ModelOutput(self(*inputs))

    # Shortlist mode (lcenet.shortlist) asks four things of a family: ``encode`` the inputs once, a
    # ``document_vector`` [B, document_size] for the cluster scorer, and ``candidate_logits`` for the batch's
    # candidates only. The defaults serve families whose labels are the rows of one output layer ``self.output``
    # (nn.Linear H -> L) over a shared representation ``features`` (forward = output(features)).

    def features(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The document representation ``[B, H]`` that the output layer scores."""
        raise UserError(f"model {self.registry_name!r} has no shortlist mode")

    def encode(self, *inputs: torch.Tensor):
        """What the candidates' scores are computed from (any structure ``candidate_logits`` reads)."""
        return self.features(*inputs)

    def document_vector(self, encoded) -> torch.Tensor:
        return encoded

    @property
    def document_size(self) -> int:
        return self.output.in_features

    def candidate_logits(self, encoded, unique: torch.Tensor, inverse: torch.Tensor, sparse: bool) -> torch.Tensor:
        """``[B, K]`` logits of the candidates ``unique[inverse]`` (``unique`` [U]: the batch's distinct candidate
        labels, sorted; ``inverse`` [B, K] positions in it); ``sparse``: row-sparse gradients for label tables."""
        rows = gather_rows(self.output.weight, unique, sparse)
        scores = encoded @ rows.to(encoded.dtype).T + self.output.bias.index_select(0, unique)  # [B, U]: one GEMM
        return scores.gather(1, inverse)

    def feature_cache(self, directory: Path) -> contextlib.AbstractContextManager[None]:
        """While the context lasts, keep on disk under ``directory`` what the family computes once per document
        (a frozen encoder's vectors), and start from what is kept there. A family that computes nothing once per
        document keeps nothing."""
        return contextlib.nullcontext()

    def saved_args(self) -> dict:
        """Keyword arguments that rebuild this model without any outside file (config.json's model_args)."""
        return dict(self.init_args)

    def word_embedding(self) -> nn.Embedding | None:
        """The word-embedding layer that ``train.embeddings`` (GloVe, word2vec) fills; None if the family has none."""
        return None

    def widened_args(self, extra_parameters: int) -> dict:
        """Model arguments that add ``extra_parameters`` where the family's design holds capacity (the
        equal-parameter capacity control for LCENet)."""
        raise UserError(f"model {self.registry_name!r} has no capacity control")


MODELS: dict[str, type[XMTCModel]] = {}


def register(name: str):
    def decorator(cls: type[XMTCModel]) -> type[XMTCModel]:
        if not issubclass(cls, XMTCModel):
            raise TypeError(f"{cls.__name__} must subclass lcenet.models.XMTCModel")
        MODELS[name] = cls
        cls.registry_name = name
        return cls
    return decorator


def model_class(name: str) -> type[XMTCModel]:
    _import_builtin_models()
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(name: str, num_labels: int, vocab_size: int, **model_args) -> XMTCModel:
    cls = model_class(name)
    try:
        model = cls(num_labels=num_labels, vocab_size=vocab_size, **model_args)
    except (TypeError, ValueError, RuntimeError) as error:  # a setting the family's layers refuse
        raise UserError(f"model {name!r}: {error}") from None
    model.init_args = dict(model_args)
    return model


def _import_builtin_models() -> None:
    from lcenet.models import sparse, xmlcnn  # noqa: F401  (register themselves)
    for optional in ("attentionxml", "bert", "hybrid"):
        try:
            __import__(f"lcenet.models.{optional}")
        except ModuleNotFoundError as error:
            if error.name != f"lcenet.models.{optional}":
                raise
