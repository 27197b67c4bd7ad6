"""A pretrained Transformer and the sparse family side by side, as XR-Transformer joins TF-IDF features with a
fine-tuned encoder: the [CLS] vectors of the encoder's last layers (as :mod:`lcenet.models.bert`) and a hidden
layer over the document's TF-IDF row (as :mod:`lcenet.models.sparse`), concatenated, to L logits.

    c = [CLS] of the last num_cls_layers layers, concatenated      [B, num_cls_layers * hidden_size]
        (or their token means, and the encoder frozen: ``pooling``, ``freeze_encoder`` as in lcenet.models.bert)
    s = act(X W1 + b1)                                             [B, sparse_hidden]   X: the TF-IDF rows
    z = dropout([c; s]) Wo + bo                                    [B, L]

The TF-IDF side sees the whole document where the encoder stops at max_length tokens, and it adds exact words
and bigrams the encoder's subwords blur. Inputs come from :class:`lcenet.inference.PairedInputs`:
``(input_ids, attention_mask, indices, offsets, weights)``; ``vocab_size`` is the number of TF-IDF features.
Parameter groups (lcenet.train.parameter_groups): the encoder trains at ``train.encoder_lr``, the TF-IDF layer
and the output at ``train.lr``. W1 starts N(0, 1), as in the sparse family (unit-norm TF-IDF rows then give
unit-variance pre-activations).
"""

from __future__ import annotations

import torch
from torch import nn

from lcenet.errors import UserError
from lcenet.models import register
from lcenet.models.bert import (
    EncoderReadout,
    PretrainedEncoderModel,
    cls_layer_count,
    pretrained_encoder,
    saved_encoder_config,
)
from lcenet.models.sparse import ACTIVATIONS


@register("bert_sparse")
class BertSparseHybrid(PretrainedEncoderModel):
    input_kind = "tokens+tfidf"

    def __init__(self, num_labels: int, vocab_size: int, pretrained: str | None = None,
                 encoder_config: dict | None = None, num_cls_layers: int | None = None, sparse_hidden: int = 512,
                 activation: str = "relu", dropout: float = 0.5, pooling: str = "cls", freeze_encoder: bool = False,
                 frozen_dtype: str = "float32"):
        super().__init__()
        if sparse_hidden < 1:
            raise UserError(f"bert_sparse sparse_hidden must be >= 1 (got {sparse_hidden})")
        if activation not in ACTIVATIONS:
            raise UserError(f"bert_sparse activation must be one of {', '.join(ACTIVATIONS)} (got {activation!r})")
        if not 0 <= dropout < 1:
            raise UserError(f"bert_sparse dropout must be in [0, 1) (got {dropout})")
        self.encoder = pretrained_encoder(pretrained, encoder_config, self.registry_name)
        self.readout = EncoderReadout(self.encoder, cls_layer_count(self.encoder, num_cls_layers, self.registry_name),
                                      pooling, freeze_encoder, frozen_dtype, self.registry_name)
        self.args = {"sparse_hidden": int(sparse_hidden), "activation": activation, "dropout": dropout}
        self.sparse_input = nn.EmbeddingBag(vocab_size, sparse_hidden, mode="sum")
        self.sparse_bias = nn.Parameter(torch.zeros(sparse_hidden))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(self.readout.size + sparse_hidden, num_labels)

    def saved_args(self) -> dict:
        return {"encoder_config": saved_encoder_config(self.encoder), **self.args, **self.readout.saved_args()}

    def widened_args(self, extra_parameters: int) -> dict:
        """Model arguments that add ``extra_parameters`` (to within one unit) in the TF-IDF hidden layer: each of
        its units costs its F input weights, a bias and L output weights."""
        per_unit = self.sparse_input.num_embeddings + 1 + self.output.out_features
        return {"sparse_hidden": self.args["sparse_hidden"] + round(extra_parameters / per_unit)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, indices: torch.Tensor,
                offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(input_ids, attention_mask, indices, offsets, weights))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, indices: torch.Tensor,
                 offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        cls = self.readout(input_ids, attention_mask)
        tfidf = self.activation(self.sparse_input(indices, offsets, per_sample_weights=weights) + self.sparse_bias)
        return self.dropout(torch.cat([cls, tfidf.to(cls.dtype)], dim=-1))

