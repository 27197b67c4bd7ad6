"""XML-CNN (Liu et al., SIGIR 2017): word embeddings -> 1-D convolutions of several widths -> dynamic
max-pooling into p chunks -> hidden bottleneck layer -> dropout -> one logit per label.

The chunks follow each document's true length (not the padded length), so padding never changes a
document's scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lcenet.errors import UserError
from lcenet.models import XMTCModel, register


@register("xmlcnn")
class XMLCNN(XMTCModel):
    def __init__(self, num_labels: int, vocab_size: int, embedding_dim: int = 300, filter_sizes=(2, 4, 8),
                 num_filters: int = 128, pool_chunks: int = 8, hidden_dim: int = 512, dropout: float = 0.5,
                 embedding_dropout: float = 0.2, freeze_embeddings: bool = False):
        super().__init__()
        sizes = {"embedding_dim": embedding_dim, "num_filters": num_filters, "pool_chunks": pool_chunks,
                 "hidden_dim": hidden_dim, **{f"filter_sizes[{i}]": width for i, width in enumerate(filter_sizes)}}
        for name, size in sizes.items():
            if not isinstance(size, int) or size < 1:
                raise UserError(f"model 'xmlcnn': {name} must be an integer >= 1 (got {size!r})")
        if not filter_sizes:
            raise UserError("model 'xmlcnn': filter_sizes must name at least one width")
        for name, rate in (("dropout", dropout), ("embedding_dropout", embedding_dropout)):
            if not 0 <= rate < 1:
                raise UserError(f"model 'xmlcnn': {name} must be in [0, 1) (got {rate})")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.filter_sizes = tuple(filter_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, num_filters, width) for width in self.filter_sizes)
        self.pool_chunks = pool_chunks
        self.hidden = nn.Linear(len(self.filter_sizes) * num_filters * pool_chunks, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(input_ids, attention_mask))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(dim=1).clamp(min=1)
        x = self.embedding_dropout(self.embedding(input_ids)).transpose(1, 2)  # [B, E, T]
        pooled = []
        for width, conv in zip(self.filter_sizes, self.convs):
            if x.shape[2] < width:
                x = F.pad(x, (0, width - x.shape[2]))
            features = F.relu(conv(x))  # [B, C, T - width + 1]
            pooled.append(self._dynamic_max_pool(features, (lengths - width + 1).clamp(min=1)))
        hidden = F.relu(self.hidden(torch.cat(pooled, dim=1)))
        return self.dropout(hidden)

    def word_embedding(self) -> nn.Embedding:
        return self.embedding

    def widened_args(self, extra_parameters: int) -> dict:
        """Model arguments that add ``extra_parameters`` (to within one hidden unit) in the hidden layer, the
        capacity this design holds: each hidden unit costs its input weights, a bias and L output weights."""
        per_unit = self.hidden.in_features + 1 + self.output.out_features
        return {"hidden_dim": self.hidden.out_features + round(extra_parameters / per_unit)}

    def _dynamic_max_pool(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Max over p equal chunks of each document's valid positions: [B, C, T'] -> [B, C * p]."""
        batch, channels, positions = features.shape
        p = self.pool_chunks
        t = torch.arange(positions, device=features.device)
        chunk = torch.div(t.unsqueeze(0) * p, valid.unsqueeze(1), rounding_mode="floor")  # [B, T']
        chunk = torch.where(t.unsqueeze(0) < valid.unsqueeze(1), chunk, p)  # padding -> a dropped chunk p
        chunk = chunk.unsqueeze(1).expand(batch, channels, positions)
        # Features are >= 0 after ReLU, so 0 is a neutral start and fills chunks of very short documents.
        # The max runs in fp32: exact under bf16 autocast and supported by scatter_reduce on every device.
        features = features.float()
        out = features.new_zeros(batch, channels, p + 1)
        out = out.scatter_reduce(2, chunk, features, reduce="amax", include_self=True)
        return out[:, :, :p].reshape(batch, channels * p)
