"""Base architectures, by name. Every model maps its batch to logits [B, L]: token models take
``(input_ids [B, T], attention_mask [B, T])``; the sparse family (``uses_tfidf_features``) takes the
``nn.EmbeddingBag`` arguments ``(indices [nnz], offsets [B], weights [nnz])`` of TF-IDF rows.

A model class takes ``num_labels`` and ``vocab_size`` plus its own keyword hyper-parameters (saved in the
model directory's config.json), and may define ``param_groups(lr, weight_decay)`` for per-part learning rates.
"""

from __future__ import annotations

from torch import nn

from lcenet.errors import UserError

MODELS: dict[str, type[nn.Module]] = {}


def register(name: str):
    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[name] = cls
        cls.registry_name = name
        return cls
    return decorator


def model_class(name: str) -> type[nn.Module]:
    _import_builtin_models()
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(name: str, num_labels: int, vocab_size: int, **model_args) -> nn.Module:
    cls = model_class(name)
    try:
        return cls(num_labels=num_labels, vocab_size=vocab_size, **model_args)
    except TypeError as error:  # an unknown or missing hyper-parameter in the user's config
        raise UserError(f"model {name!r}: {error}") from None


def _import_builtin_models() -> None:
    from lcenet.models import sparse, xmlcnn  # noqa: F401  (register themselves)
    for optional in ("attentionxml", "bert"):
        try:
            __import__(f"lcenet.models.{optional}")
        except ModuleNotFoundError as error:
            if error.name != f"lcenet.models.{optional}":
                raise
