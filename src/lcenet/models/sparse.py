"""A feed-forward network over sparse TF-IDF features (see lcenet.features): the fast CPU family.

    h1 = dropout(act(X W1 + b1))        X: [B, F] TF-IDF rows, W1: F x H1 (an EmbeddingBag, mode="sum")
    hi = dropout(act(h(i-1) Wi + bi))   for further hidden_dims
    z  = h_last Wo + bo                 one logit per label

Inputs are the arguments of ``nn.EmbeddingBag(mode="sum")``: ``(indices [nnz], offsets [B],
per_sample_weights [nnz])``, cut from a CSR matrix by :func:`lcenet.features.csr_batch`; ``vocab_size`` is
the number of TF-IDF features F. The first layer is the product ``X W1`` without ever forming X densely.

Gradients of W1 are dense (the trainer's fused Adam takes no sparse gradients), so every step reads and
writes all F x H1 weights and their two Adam moments: the defaults (F = 200,000 features, H1 = 512)
are sized for that. Timings and the choice of defaults: see the sparse-family notes in RESULTS.md.
"""

from __future__ import annotations

import torch
from torch import nn

from lcenet.errors import UserError
from lcenet.models import XMTCModel, register

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


@register("sparse")
class SparseMLP(XMTCModel):
    input_kind = "tfidf"  # the pipeline feeds this family TF-IDF features (lcenet.features), not token ids

    def __init__(self, num_labels: int, vocab_size: int, hidden_dims=(512,), activation: str = "relu",
                 dropout: float = 0.5):
        super().__init__()
        hidden_dims = [int(size) for size in hidden_dims]
        if not hidden_dims or min(hidden_dims) < 1:
            raise UserError(f"sparse hidden_dims must be a non-empty list of sizes >= 1 (got {hidden_dims})")
        if activation not in ACTIVATIONS:
            raise UserError(f"sparse activation must be one of {', '.join(ACTIVATIONS)} (got {activation!r})")
        if not 0 <= dropout < 1:
            raise UserError(f"sparse dropout must be in [0, 1) (got {dropout})")
        self.args = {"hidden_dims": hidden_dims, "activation": activation, "dropout": dropout}
        self.input = nn.EmbeddingBag(vocab_size, hidden_dims[0], mode="sum")
        # Same scale as nn.Linear(F, H1)'s default init: uniform(±1/sqrt(F)).
        bound = vocab_size ** -0.5
        nn.init.uniform_(self.input.weight, -bound, bound)
        self.input_bias = nn.Parameter(torch.empty(hidden_dims[0]).uniform_(-bound, bound))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(hidden_dims, hidden_dims[1:]))
        self.output = nn.Linear(hidden_dims[-1], num_labels)

    def saved_args(self) -> dict:
        return dict(self.args)

    def widened_args(self, extra_parameters: int) -> dict:
        """Model arguments that add ``extra_parameters`` (to within one unit) in the last hidden layer: each of
        its units costs its input weights (the F TF-IDF features for the first layer), a bias and L output
        weights."""
        last = self.hidden[-1] if len(self.hidden) else None
        inputs = last.in_features if last is not None else self.input.num_embeddings
        sizes = list(self.args["hidden_dims"])
        sizes[-1] += round(extra_parameters / (inputs + 1 + self.output.out_features))
        return {"hidden_dims": sizes}

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.activation(self.input(indices, offsets, per_sample_weights=weights) + self.input_bias))
        for layer in self.hidden:
            h = self.dropout(self.activation(layer(h)))
        return self.output(h)
