"""AttentionXML, flat (You et al., NeurIPS 2019), as CorNet used it on EUR-Lex: word embeddings (dropout 0.2)
-> BiLSTM (256 per direction, 1 layer, learned initial state) -> dropout 0.5 -> label-wise attention (one
learned query of size 2H per label; masked softmax over time; per-label document vector [B, L, 2H]) ->
fully connected layers shared by all labels ([256], ReLU) -> one score per label (a shared Linear(256 -> 1)).

As in the published code the 0.5 dropout sits on the BiLSTM outputs (before the attention), and the
attention queries and linear layers are xavier-uniform initialised. Sequences are packed by true length and
padded positions are masked in the attention, so padding never changes a document's scores. Inputs are
right-padded (the mask is ``ids != 0``); a document with no token is read as its first (pad) token.

Memory. The label-wise part dominates; it is computed in chunks of ``label_chunk_size`` labels (None = all at
once; "auto", the default, = all at once unless the chunk transients below would pass ``CHUNK_BUDGET_BYTES``,
then the largest chunk that fits, so the Python loop over label chunks runs only where memory forces it). With
T the padded length, H the LSTM size per direction, F the last linear size and E the embedding size, autograd
keeps, summed over all chunks, the attention weights (fp32, plus a bf16 copy under autocast),
the per-label document vectors and the hidden layer:

    attention(B) = B * L * (a*T + b*(2H + F)) bytes      a, b = 4, 4 in fp32; 6, 2 under bf16 autocast

plus transients for one chunk of C labels (about 3 * B * C * T * 4 bytes: scores, masked scores and their
gradients) and the BiLSTM's activations (measured: about 34 KB per token on CPU, about 10 KB on a GPU with
cuDNN, at E = 300, H = 256). Chunking bounds only the transients; ``checkpoint_chunks=True`` also drops the
kept attention term (a chunk keeps only its [B, C] scores and is recomputed in backward), at the cost of a
second chunk forward.

At EUR-Lex size (L = 4,271, T = 500, H = 256, F = 256, E = 300) the formula gives 20.7 MiB per document in
fp32 and 18.5 MiB under bf16. Measured peak of a training step (forward + BCE + backward), per document:

    where                                    chunk 1024   chunk None   chunk 1024 + checkpoint_chunks
    CPU, fp32 (RSS, small mmap threshold)    34-36 MiB    44 MiB       20-21 MiB
    CPU, fp32 (RSS, glibc's default malloc)  50-54 MiB    -            40 MiB
    H100, fp32                               31.4 MiB     -            -
    H100, bf16 autocast                      28.6 MiB     37.2 MiB     12.9 MiB

so a batch of about 400 documents fits 24 GB of CPU RAM (about 500 with checkpoint_chunks; ~600 / ~1,000
with MALLOC_MMAP_THRESHOLD_=131072, the small mmap threshold, which stops glibc keeping freed blocks), and
about 2,700 (bf16) or 2,500 (fp32) fit an 80 GB GPU (about 6,000 with checkpoint_chunks; a batch of 1,024
took 29 GB and 0.24 s, i.e. 4,200 documents/s, on an H100 in bf16). The published batch size, 40, needs
about 1.2 GB. Compute, not memory, sets the pace: the attention alone costs 2 * L * T * 2H multiply-adds
per document and pass (2.2 G).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lcenet.errors import UserError
from lcenet.models import XMTCModel, register
from lcenet.row_adam import gather_rows

CHUNK_BUDGET_BYTES = 2 * 2**30  # one label chunk's attention transients, "auto" chunking


@register("attentionxml")
class AttentionXML(XMTCModel):
    def __init__(self, num_labels: int, vocab_size: int, embedding_dim: int = 300, hidden_size: int = 256,
                 num_layers: int = 1, linear_sizes=(256,), dropout: float = 0.5, embedding_dropout: float = 0.2,
                 freeze_embeddings: bool = False, label_chunk_size: int | str | None = "auto",
                 checkpoint_chunks: bool = False):
        super().__init__()
        if label_chunk_size != "auto" and label_chunk_size is not None and (
                not isinstance(label_chunk_size, int) or label_chunk_size < 1):
            raise UserError(f"attentionxml label_chunk_size must be >= 1, null or auto (got {label_chunk_size!r})")
        if num_layers < 1 or hidden_size < 1:
            raise UserError(f"attentionxml needs num_layers and hidden_size >= 1 (got {num_layers}, {hidden_size})")
        self.num_labels = num_labels
        self.label_chunk_size = label_chunk_size
        self.checkpoint_chunks = checkpoint_chunks
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True, bidirectional=True)
        # Learned initial (h, c) for each layer and direction, as in the published code.
        self.initial_state = nn.Parameter(torch.zeros(2, 2 * num_layers, 1, hidden_size))
        self.dropout = nn.Dropout(dropout)
        self.attention = nn.Parameter(torch.empty(num_labels, 2 * hidden_size))  # one query per label
        nn.init.xavier_uniform_(self.attention)
        sizes = [2 * hidden_size, *linear_sizes]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.output = nn.Linear(sizes[-1], 1)
        for layer in (*self.linears, self.output):
            nn.init.xavier_uniform_(layer.weight)

    def word_embedding(self) -> nn.Embedding:
        return self.embedding

    def widened_args(self, extra_parameters: int) -> dict:
        """Model arguments that add ``extra_parameters`` (to within one unit) in the last shared FC layer: each of
        its units costs its input weights, a bias and one output weight. Its compute grows with it (the layer
        runs once per label), so an equal-parameter control is far slower than LCENet at large L."""
        if not self.linears:
            raise UserError("attentionxml: a capacity control widens the shared FC layer; linear_sizes is empty")
        last = self.linears[-1]
        sizes = [layer.out_features for layer in self.linears]
        sizes[-1] += round(extra_parameters / (last.in_features + 2))
        return {"linear_sizes": sizes}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, positions = input_ids.shape
        hidden, valid = self.encode(input_ids, attention_mask)
        step = self.chunk_size(batch, positions)
        use_checkpoint = self.checkpoint_chunks and self.training and torch.is_grad_enabled()
        chunks = []
        for start in range(0, self.num_labels, step):
            query = self.attention[start:start + step]
            if use_checkpoint:
                chunks.append(checkpoint(self._score_chunk, hidden, valid, query, use_reentrant=False))
            else:
                chunks.append(self._score_chunk(hidden, valid, query))
        return torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The BiLSTM states ``[B, T, 2H]`` and the valid positions ``[B, 1, T]``."""
        positions = input_ids.shape[1]
        lengths = attention_mask.sum(dim=1).clamp(min=1)
        hidden = self._encode(input_ids, lengths, positions)
        valid = torch.arange(positions, device=input_ids.device).unsqueeze(0) < lengths.unsqueeze(1)
        return hidden, valid.unsqueeze(1)

    def document_vector(self, encoded: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The mean of the valid BiLSTM states (the shortlist's cluster scorer reads it)."""
        hidden, valid = encoded
        mask = valid.transpose(1, 2).to(hidden.dtype)  # [B, T, 1]
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1)

    @property
    def document_size(self) -> int:
        return self.attention.shape[1]

    def candidate_logits(self, encoded: tuple[torch.Tensor, torch.Tensor], unique: torch.Tensor,
                         inverse: torch.Tensor, sparse: bool) -> torch.Tensor:
        """Label-wise attention with each document's candidates' queries only: O(B·K·T·2H), not O(B·L·T·2H)."""
        hidden, valid = encoded
        queries = gather_rows(self.attention, unique, sparse)[inverse]  # [B, K, 2H]
        return self._score_chunk(hidden, valid, queries)

    def chunk_size(self, batch: int, positions: int) -> int:
        """Labels per chunk: the setting, or with "auto" all labels unless one chunk's transients (scores, masked
        scores and their gradients: about 3 * B * C * T * 4 bytes) would pass CHUNK_BUDGET_BYTES."""
        if self.label_chunk_size != "auto":
            return self.label_chunk_size or self.num_labels
        per_label = 3 * batch * positions * 4
        return max(1, min(self.num_labels, CHUNK_BUDGET_BYTES // max(per_label, 1)))

    def _encode(self, input_ids: torch.Tensor, lengths: torch.Tensor, positions: int) -> torch.Tensor:
        x = self.embedding_dropout(self.embedding(input_ids))
        batch = input_ids.shape[0]
        h0, c0 = (state.expand(-1, batch, -1).contiguous().to(x.dtype) for state in self.initial_state)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed, (h0, c0))
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=positions)
        return self.dropout(out)

    def _score_chunk(self, hidden: torch.Tensor, valid: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Scores of the labels whose queries are ``query``, [C, 2H] for every document or [B, C, 2H] per
        document: -> [B, C]."""
        scores = torch.matmul(query.to(hidden.dtype), hidden.transpose(1, 2))  # [B, C, T]
        # Softmax in fp32 (autocast does the same); every row has a valid position, so -inf is safe.
        weights = scores.float().masked_fill(~valid, float("-inf")).softmax(dim=-1).to(hidden.dtype)
        x = torch.matmul(weights, hidden)  # [B, C, 2H]
        for linear in self.linears:
            x = F.relu(linear(x))
        return self.output(x).squeeze(-1)
