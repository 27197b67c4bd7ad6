"""Document vectors of a frozen encoder kept in memory (:class:`VectorMemo`, one per process and encoder reading)
and on disk (:class:`FeatureStore`), so that every model and run reading the same documents with the same frozen
encoder in the same way (an ensemble's members, a grid's cells, a resumed run, ``lcenet evaluate``) encodes each
document once.

A store is a directory named by everything a vector depends on besides the document (:func:`store_name`): the
encoder's weights, the layers read, the pooling, the precision, the device type and the torch version. It holds
shards, each written atomically: ``keys`` ``[n, 16]`` uint8 (:func:`document_keys`: a 128-bit BLAKE2b digest of
a document's token ids and mask) and ``vectors`` ``[n, D]`` float32. Several processes may write to one store at
once: every shard has a name of its own, and a document that two processes both encoded is read once. A process
killed mid-run loses only the vectors it had not yet written (fewer than ``SHARD_DOCUMENTS``); a shard that
cannot be read is skipped with a warning (its documents are encoded again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

import numpy as np
import safetensors
import torch
from torch import nn

from lcenet.io import save_tensors

log = logging.getLogger("lcenet")


class FeatureStore:
    """One store: the vectors its shards hold, read a document at a time from memory-mapped shards (a store that
    other data sets filled too costs only its keys' index here), and vectors added since, written as shards.
    Readouts open it through :meth:`open`, which gives every readout of a process the same store, so the members
    of an ensemble that read one encoder alike encode each document once between them."""

    SHARD_DOCUMENTS = 4096
    _opened: ClassVar[dict[Path, FeatureStore]] = {}

    @classmethod
    def open(cls, directory: Path) -> FeatureStore:
        """This process's store in ``directory`` (a new one if that directory was removed since)."""
        store = cls._opened.get(directory)
        if store is None or (store.shards and not directory.is_dir()):
            store = cls._opened[directory] = cls(directory)
        return store

    def __init__(self, directory: Path):
        self.directory = directory
        self.pending: dict[bytes, torch.Tensor] = {}
        self.shards = []
        self.index: dict[bytes, tuple[int, int]] = {}  # key -> (shard, row)
        for path in sorted(directory.glob("*.safetensors")):
            self._read_shard(path)

    def __contains__(self, key: bytes) -> bool:
        return key in self.pending or key in self.index

    def get(self, key: bytes) -> torch.Tensor | None:
        """The kept vector of the document ``key`` (on the CPU), or None."""
        if (vector := self.pending.get(key)) is not None:
            return vector
        where = self.index.get(key)
        if where is None:
            return None
        shard, row = where
        return self.shards[shard].get_slice("vectors")[row:row + 1][0]

    def add(self, keys: list[bytes], vectors: torch.Tensor) -> None:
        for key, vector in zip(keys, vectors.detach().float().cpu()):
            self.pending.setdefault(key, vector)
        if len(self.pending) >= self.SHARD_DOCUMENTS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.directory / f"{uuid.uuid4().hex}.safetensors"
        keys = torch.frombuffer(bytearray(b"".join(self.pending)), dtype=torch.uint8).reshape(-1, KEY_BYTES)
        save_tensors(path, {"keys": keys, "vectors": torch.stack(list(self.pending.values()))})
        self.pending = {}
        self._read_shard(path)

    def _read_shard(self, path: Path) -> None:
        try:
            shard = safetensors.safe_open(str(path), framework="pt")
            keys = shard.get_tensor("keys").numpy()
        except Exception as error:  # safetensors raises its own error types; a cache must not stop a run
            log.warning("%s: skipped, not a readable feature shard (%s)", path, error)
            return
        for row, key in enumerate(keys):
            self.index.setdefault(bytes(key), (len(self.shards), row))
        self.shards.append(shard)


class VectorMemo:
    """The vectors of recently read documents, for every readout of this process that computes the same vectors
    on the same device (named by :func:`store_name` and the device): the members of an ensemble or a server that
    read one encoder alike encode a text once between them and remember it once. At most ``documents`` vectors (the
    least recently used go first); a memo lasts while a readout holds it."""

    documents: ClassVar[int] = 200_000  # 1.5 GiB of fp32 vectors at MiniLM-L6's 5 x 384
    _shared: ClassVar[weakref.WeakValueDictionary[str, VectorMemo]] = weakref.WeakValueDictionary()

    @classmethod
    def shared(cls, name: str) -> VectorMemo:
        memo = cls._shared.get(name)
        if memo is None:
            memo = cls._shared[name] = cls()
        return memo

    @classmethod
    def bound(cls, documents: int) -> None:
        """Remember at most ``documents`` vectors per memo from now on (a server's bound), in this process."""
        cls.documents = documents
        for memo in list(cls._shared.values()):
            memo._trim()

    def __init__(self):
        self.vectors: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.vectors)

    def get(self, key: bytes) -> torch.Tensor | None:
        vector = self.vectors.get(key)
        if vector is not None:
            self.vectors.move_to_end(key)
        return vector

    def add(self, key: bytes, vector: torch.Tensor) -> None:
        self.vectors[key] = vector
        self._trim()

    def _trim(self) -> None:
        while len(self.vectors) > self.documents:
            self.vectors.popitem(last=False)


KEY_BYTES = 16


def document_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[bytes]:
    """A key per row that two rows share exactly when their tokens and mask agree up to the last unmasked one
    (a BLAKE2b digest of those: padding and batch width do not change it)."""
    ids = input_ids.cpu().numpy().astype(np.int64)
    mask = attention_mask.cpu().numpy().astype(bool)
    ends = np.where(mask.any(1), mask.shape[1] - np.argmax(mask[:, ::-1], axis=1), 0)
    return [hashlib.blake2b(ids[row, :end].tobytes() + mask[row, :end].tobytes(), digest_size=KEY_BYTES).digest()
            for row, end in enumerate(ends)]


def store_name(encoder: nn.Module, settings: dict, device_type: str) -> str:
    """A digest of the encoder's weights and buffers, the readout ``settings``, the device type and torch's
    version: two readouts share a store exactly when they compute the same vectors."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([settings, device_type, torch.__version__], sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
