"""A split's texts kept on disk: UTF-8 in an unnamed temporary file, their byte ranges in memory.

At Wiki-500K's shape (2.6M documents of about 2.9 KB) a split's texts as Python strings would hold about
7 GiB of RAM for the whole run, though after tokenization only dev evaluation and sampling look at them
again. A :class:`TextColumn` costs 16 bytes per document in memory; the operating system's page cache, not
the process, keeps what was read recently. The file lives in the system's temporary directory (``TMPDIR``)
and disappears with the last column that uses it. Reads go through ``os.pread``, so views of one file (see
:meth:`TextColumn.take`) never share a file position.
"""

from __future__ import annotations

import operator
import os
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from typing import BinaryIO, overload

import numpy as np


class TextColumn(Sequence[str]):
    """A read-only sequence of texts: ``column[i]`` reads one text, ``column[a:b]`` gives a list, and
    ``column.take(rows)`` a view of some rows (no copy of the texts)."""

    def __init__(self, file: BinaryIO, starts: np.ndarray, lengths: np.ndarray):
        self._file = file  # every view holds the file, so it stays open while any view is alive
        self._fd = file.fileno()
        self._starts = starts
        self._lengths = lengths

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._read(i) for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"text {index} of {len(self)}")
        return self._read(i)

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self._read(i)

    def __repr__(self) -> str:
        return f"TextColumn({len(self)} texts)"

    def take(self, rows: np.ndarray | Sequence[int]) -> TextColumn:
        """The texts at ``rows``, in that order: a view of the same file."""
        rows = np.asarray(rows, dtype=np.int64)
        return TextColumn(self._file, self._starts[rows], self._lengths[rows])

    @property
    def resident_bytes(self) -> int:
        """Memory this column holds (its byte ranges); the texts themselves stay on disk."""
        return self._starts.nbytes + self._lengths.nbytes

    @property
    def utf8_bytes(self) -> int:
        """The size of the texts in the file."""
        return int(self._lengths.sum())

    def _read(self, i: int) -> str:
        length = int(self._lengths[i])
        return os.pread(self._fd, length, int(self._starts[i])).decode("utf-8") if length else ""


class TextColumnWriter:
    """Appends texts to a new temporary file; :meth:`finish` gives the :class:`TextColumn` over them."""

    def __init__(self) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile(prefix="lcenet-texts-")
        self._starts = array("q")
        self._lengths = array("q")
        self._end = 0

    def __len__(self) -> int:
        return len(self._starts)

    def append(self, text: str) -> None:
        data = text.encode("utf-8")
        self._file.write(data)
        self._starts.append(self._end)
        self._lengths.append(len(data))
        self._end += len(data)

    def finish(self) -> TextColumn:
        self._file.flush()
        return TextColumn(self._file, np.frombuffer(self._starts, dtype=np.int64),
                          np.frombuffer(self._lengths, dtype=np.int64))
