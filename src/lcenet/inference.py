"""Batches and inference, shared by training, dev evaluation, ``evaluate``, ``predict`` and ``serve``.

A split is model inputs plus its ground truth (CSR). Inputs come from an *input store* that turns row
numbers into the tensors a model is called with, ``model(*store.batch(rows, device))``:

- ``TokenInputs``: token ids ``[N, T]`` (numpy, possibly memory-mapped) → ``(input_ids, attention_mask)``,
  trimmed to the longest document in the batch (models are padding-invariant, so trimming only saves time);
- ``CsrInputs``: a CSR feature matrix ``[N, F]`` → ``(indices, offsets, weights)``, the arguments of
  ``nn.EmbeddingBag(mode="sum")``;
- ``PairedInputs``: both of one set of documents → ``(input_ids, attention_mask, indices, offsets, weights)``.

Training on a GPU uses ``EpochBatches`` with ``resident=True``: the split's inputs (token ids in the
narrowest integer dtype, or the CSR arrays) and its label CSR are moved to the device once, and every batch
is gathered there, so a step does no host work: no scipy row slicing, no numpy → torch copies, no
synchronisation. The row order moves once per epoch, and the one size each batch needs on the host (its
longest document, or its number of non-zeros) is computed for the whole epoch at once from per-row counts.
Both paths give the same batches for the same rows (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from lcenet import metrics
from lcenet.candidates import padded_label_ids
from lcenet.ensemble import DEFAULT_CANDIDATES, DEFAULT_COMBINE, average_over_union

Batch = tuple[torch.Tensor, ...]


class ResidentStore(Protocol):
    """A split's inputs held on the training device."""

    def batch_sizes(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """The host-side size(s) of each consecutive ``batch_size`` slice of ``order`` (what ``batch`` needs),
        one entry (a number, or a row of numbers) per batch."""
        ...

    def batch(self, rows: torch.Tensor, size) -> Batch:
        """The inputs of ``rows``; ``size``: this batch's entry of ``batch_sizes``."""
        ...


class InputStore(Protocol):
    """Model inputs of one split, by row, on the host."""

    def __len__(self) -> int: ...

    def batch(self, rows: np.ndarray, device: torch.device) -> Batch: ...

    def resident(self, device: torch.device) -> ResidentStore: ...


def narrowest_int_dtype(max_value: int) -> torch.dtype:
    """The smallest signed integer dtype holding ``max_value`` (indexing needs signed ids)."""
    for dtype in (torch.int16, torch.int32):
        if max_value <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


@dataclass
class TokenInputs:
    """Right-padded token ids ``[N, T]``; ``pad_id`` marks padding."""

    ids: np.ndarray
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: np.ndarray, device: torch.device) -> Batch:
        batch = np.asarray(self.ids[rows])
        mask = batch != self.pad_id
        length = max(int(mask.sum(axis=1).max()), 1) if len(batch) else 1
        input_ids = torch.from_numpy(batch[:, :length].astype(np.int64)).to(device, non_blocking=True)
        return input_ids, torch.from_numpy(mask[:, :length]).to(device, non_blocking=True)

    def resident(self, device: torch.device) -> ResidentTokens:
        ids = np.asarray(self.ids)
        dtype = narrowest_int_dtype(int(ids.max()) if ids.size else 0)
        lengths = (ids != self.pad_id).sum(axis=1).astype(np.int64)
        return ResidentTokens(torch.from_numpy(ids).to(device=device, dtype=dtype), lengths, self.pad_id)


@dataclass
class ResidentTokens:
    ids: torch.Tensor  # [N, T] on the device, narrowest integer dtype
    lengths: np.ndarray  # [N] true lengths, on the host
    pad_id: int

    def batch_sizes(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        if not len(order):
            return np.zeros(0, dtype=np.int64)
        return np.maximum(np.maximum.reduceat(self.lengths[order], np.arange(0, len(order), batch_size)), 1)

    def batch(self, rows: torch.Tensor, size) -> Batch:
        input_ids = self.ids.index_select(0, rows)[:, :int(size)].long()
        return input_ids, input_ids != self.pad_id


@dataclass
class CsrInputs:
    """A CSR feature matrix ``[N, F]`` (e.g. TF-IDF)."""

    features: sp.csr_matrix

    def __len__(self) -> int:
        return self.features.shape[0]

    def batch(self, rows: np.ndarray, device: torch.device) -> Batch:
        block = self.features[rows]
        return (torch.from_numpy(block.indices.astype(np.int64)).to(device, non_blocking=True),
                torch.from_numpy(block.indptr[:-1].astype(np.int64)).to(device, non_blocking=True),
                torch.from_numpy(block.data.astype(np.float32)).to(device, non_blocking=True))

    def resident(self, device: torch.device) -> ResidentCsr:
        return ResidentCsr.from_scipy(self.features, device)


@dataclass
class ResidentCsr:
    """A CSR matrix on a device; ``gather`` collects the non-zeros of some rows without host work."""

    indptr: torch.Tensor
    indices: torch.Tensor
    data: torch.Tensor
    row_nnz: np.ndarray  # on the host

    @classmethod
    def from_scipy(cls, matrix: sp.csr_matrix, device: torch.device) -> ResidentCsr:
        matrix = sp.csr_matrix(matrix)
        matrix.sort_indices()
        return cls(torch.from_numpy(matrix.indptr.astype(np.int64)).to(device),
                   torch.from_numpy(matrix.indices.astype(np.int64)).to(device),
                   torch.from_numpy(matrix.data.astype(np.float32)).to(device),
                   np.diff(matrix.indptr).astype(np.int64))

    def batch_sizes(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        if not len(order):
            return np.zeros(0, dtype=np.int64)
        return np.add.reduceat(self.row_nnz[order], np.arange(0, len(order), batch_size))

    def batch_widths(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """The most non-zeros of one row in each batch (the width of padded per-row tables)."""
        if not len(order):
            return np.zeros(0, dtype=np.int64)
        return np.maximum.reduceat(self.row_nnz[order], np.arange(0, len(order), batch_size))

    def gather(self, rows: torch.Tensor, nnz: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row position in the batch, column, value) of every non-zero of ``rows`` in row order, and each
        row's start in that output. ``nnz`` (from ``batch_sizes``) spares a device → host read."""
        starts = self.indptr.index_select(0, rows)
        counts = self.indptr.index_select(0, rows + 1) - starts
        position = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts, output_size=nnz)
        first = torch.cumsum(counts, 0) - counts
        within = torch.arange(nnz, device=rows.device) - first.index_select(0, position)
        source = starts.index_select(0, position) + within
        return position, self.indices.index_select(0, source), self.data.index_select(0, source), first

    def batch(self, rows: torch.Tensor, size) -> Batch:
        _, columns, values, offsets = self.gather(rows, int(size))
        return columns, offsets, values


@dataclass
class PairedInputs:
    """Token ids and a CSR feature matrix of the same documents (a family that reads both)."""

    tokens: TokenInputs
    features: CsrInputs

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, rows: np.ndarray, device: torch.device) -> Batch:
        return (*self.tokens.batch(rows, device), *self.features.batch(rows, device))

    def resident(self, device: torch.device) -> ResidentPair:
        return ResidentPair(self.tokens.resident(device), self.features.resident(device))


@dataclass
class ResidentPair:
    tokens: ResidentTokens
    features: ResidentCsr

    def batch_sizes(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """``[batches, 2]``: each batch's longest document and its number of non-zeros."""
        return np.stack([self.tokens.batch_sizes(order, batch_size),
                         self.features.batch_sizes(order, batch_size)], axis=1)

    def batch(self, rows: torch.Tensor, size) -> Batch:
        return (*self.tokens.batch(rows, size[0]), *self.features.batch(rows, size[1]))


def train_truth(labels: sp.csr_matrix, rows: np.ndarray, num_labels: int) -> sp.csr_matrix:
    """The truth of one batch's rows as training targets: columns past ``num_labels`` (labels unseen in train,
    kept in dev/test truth as misses) are never targets."""
    block = labels[rows]
    return block[:, :num_labels] if block.shape[1] != num_labels else block


@dataclass
class SplitTensors:
    """Model inputs of a split and its ground truth CSR ``[N, L(+unseen)]``."""

    inputs: InputStore
    labels: sp.csr_matrix

    def __len__(self) -> int:
        return len(self.inputs)


class EpochBatches:
    """(inputs, targets) of consecutive ``batch_size`` slices of one epoch's row order.

    ``resident=False`` slices on the host and copies each batch to ``device`` (memory-mapped ids stay on
    disk); ``resident=True`` keeps the split on ``device`` and gathers batches there. Targets are dense
    ``[B, L]`` 0/1, or with ``label_ids`` (for models that score candidates) each row's train label ids
    ``[B, T]`` padded with -1, T = the batch's most labels per document: nothing of size L per document.
    """

    def __init__(self, split: SplitTensors, num_labels: int, batch_size: int, device: torch.device,
                 resident: bool, label_ids: bool = False):
        self.split, self.num_labels, self.batch_size, self.device = split, num_labels, batch_size, device
        self.label_ids = label_ids
        self.inputs: ResidentStore | None = None
        self.labels: ResidentCsr | None = None
        if resident:
            self.inputs = split.inputs.resident(device)
            truth = split.labels if split.labels.shape[1] == num_labels else split.labels[:, :num_labels]
            self.labels = ResidentCsr.from_scipy(truth, device)
        self.order = np.zeros(0, dtype=np.int64)

    def start_epoch(self, order: np.ndarray) -> None:
        self.order = order
        if self.inputs is not None:
            self.order_on_device = torch.from_numpy(order).to(self.device)
            self.input_sizes = self.inputs.batch_sizes(order, self.batch_size)
            self.label_sizes = self.labels.batch_sizes(order, self.batch_size)
            self.label_widths = self.labels.batch_widths(order, self.batch_size)

    def get(self, start: int) -> tuple[Batch, torch.Tensor]:
        """The batch of ``order[start:start + batch_size]``; ``start`` is a multiple of ``batch_size``."""
        stop = start + self.batch_size
        if self.inputs is None:
            rows = self.order[start:stop]
            truth = train_truth(self.split.labels, rows, self.num_labels)
            targets = (padded_label_ids(truth, self.device) if self.label_ids else
                       torch.from_numpy(truth.toarray().astype(np.float32, copy=False)).to(self.device,
                                                                                          non_blocking=True))
            return self.split.inputs.batch(rows, self.device), targets
        rows = self.order_on_device[start:stop]
        index = start // self.batch_size
        position, columns, _, first = self.labels.gather(rows, int(self.label_sizes[index]))
        if self.label_ids:
            targets = torch.full((len(rows), max(1, int(self.label_widths[index]))), -1, device=self.device)
            within = torch.arange(len(columns), device=self.device) - first.index_select(0, position)
            targets.index_put_((position, within), columns)
        else:
            targets = torch.zeros(len(rows), self.num_labels, device=self.device)
            targets.index_put_((position, columns), torch.ones_like(columns, dtype=targets.dtype))
        return self.inputs.batch(rows, self.input_sizes[index]), targets


def autocast(device: torch.device, enabled: bool, on_cpu: bool = False):
    """bf16 autocast on CUDA when ``enabled``; on the CPU only when ``on_cpu`` too (training's ``bf16_cpu``)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=enabled and (device.type == "cuda" or (on_cpu and device.type == "cpu")))


@torch.no_grad()
def predict_top_k(model: torch.nn.Module, inputs: InputStore, k: int, device: torch.device, batch_size: int = 256,
                  bf16: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-k label indices and sigmoid scores, ``[N, k]`` each; never materialises ``[N, L]``."""
    return ensemble_top_k([model], [inputs], k, device, batch_size, bf16)


@torch.no_grad()
def ensemble_top_k(models: Sequence[torch.nn.Module], inputs: Sequence[InputStore], k: int, device: torch.device,
                   batch_size: int = 256, bf16: bool = True, candidates: int = DEFAULT_CANDIDATES,
                   combine: str = DEFAULT_COMBINE) -> tuple[np.ndarray, np.ndarray]:
    """Top-k labels of the models' combined score (each model reads its own inputs of the same documents;
    ``combine``: mean logit or mean sigmoid score) over the union of their top-``candidates`` labels
    (:mod:`lcenet.ensemble`); one model: its own top k."""
    for model in models:
        model.eval()
    count = len(inputs[0])
    indices, scores = [], []
    for start in range(0, count, batch_size):
        rows = np.arange(start, min(start + batch_size, count))
        with autocast(device, bf16):
            outputs = [model.score(*store.batch(rows, device)) for model, store in zip(models, inputs)]
        top, top_scores = average_over_union(outputs, k, candidates, combine)
        indices.append(top.cpu().numpy())
        scores.append(top_scores.cpu().numpy())
    if not indices:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate(indices), np.concatenate(scores)


def evaluate_model(model: torch.nn.Module, split: SplitTensors, device: torch.device,
                   inv_propensity: np.ndarray | None, batch_size: int = 256, bf16: bool = True,
                   ks=metrics.DEFAULT_KS) -> dict[str, float]:
    top, _ = predict_top_k(model, split.inputs, max(ks), device, batch_size, bf16)
    return metrics.evaluate(top, split.labels, ks=ks, inv_propensity=inv_propensity)
