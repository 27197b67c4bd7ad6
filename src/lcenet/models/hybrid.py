"""A pretrained Transformer and the sparse family side by side, as XR-Transformer joins TF-IDF features with a
fine-tuned encoder: the [CLS] vectors of the encoder's last layers (as :mod:`lcenet.models.bert`) and a hidden
layer over the document's TF-IDF row (as :mod:`lcenet.models.sparse`), concatenated, to L logits.

    c = [CLS] of the last num_cls_layers layers, concatenated      [B, num_cls_layers * hidden_size]
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
from lcenet.models import XMTCModel, register
from lcenet.models.bert import BertClassifier, cls_layer_count, cls_vectors, pretrained_encoder, saved_encoder_config
from lcenet.models.sparse import ACTIVATIONS


@register("bert_sparse")
class BertSparseHybrid(XMTCModel):
    input_kind = "tokens+tfidf"
    uses_pretrained_tokenizer = True

    def __init__(self, num_labels: int, vocab_size: int, pretrained: str | None = None,
                 encoder_config: dict | None = None, num_cls_layers: int | None = None, sparse_hidden: int = 512,
                 activation: str = "relu", dropout: float = 0.5):
        super().__init__()
        if sparse_hidden < 1:
            raise UserError(f"bert_sparse sparse_hidden must be >= 1 (got {sparse_hidden})")
        if activation not in ACTIVATIONS:
            raise UserError(f"bert_sparse activation must be one of {', '.join(ACTIVATIONS)} (got {activation!r})")
        if not 0 <= dropout < 1:
            raise UserError(f"bert_sparse dropout must be in [0, 1) (got {dropout})")
        self.encoder = pretrained_encoder(pretrained, encoder_config, self.registry_name)
        self.num_cls_layers = cls_layer_count(self.encoder, num_cls_layers, self.registry_name)
        self.args = {"num_cls_layers": self.num_cls_layers, "sparse_hidden": int(sparse_hidden),
                     "activation": activation, "dropout": dropout}
        self.sparse_input = nn.EmbeddingBag(vocab_size, sparse_hidden, mode="sum")
        self.sparse_bias = nn.Parameter(torch.zeros(sparse_hidden))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(self.num_cls_layers * self.encoder.config.hidden_size + sparse_hidden, num_labels)

    tokenizer_file = staticmethod(BertClassifier.tokenizer_file)

    def saved_args(self) -> dict:
        return {"encoder_config": saved_encoder_config(self.encoder), **self.args}

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
        cls = cls_vectors(self.encoder, input_ids, attention_mask, self.num_cls_layers)
        tfidf = self.activation(self.sparse_input(indices, offsets, per_sample_weights=weights) + self.sparse_bias)
        return self.dropout(torch.cat([cls, tfidf.to(cls.dtype)], dim=-1))

