"""Data sets for extreme multi-label text classification: streaming readers, validation and loading.

A data set is a directory with the splits ``train``, ``test`` and optionally ``dev``. Each split is stored in
one of three formats (detected per split):

(a) line-aligned ``{split}_texts.txt[.gz]`` + ``{split}_labels.txt[.gz]`` (labels space-separated),
(b) ``{split}.tsv[.gz]`` with ``labels<TAB>text`` per line (labels space-separated),
(c) ``{split}.jsonl[.gz]`` with ``{"text": str, "labels": [str, ...]}`` per line.

Every problem with the input is raised as :class:`~lcenet.errors.DataError` naming the file and the 1-based
line. :func:`iter_split` streams ``(text, labels)`` pairs; :func:`load_dataset` reads a whole data set into
texts kept on disk (:class:`~lcenet.text_column.TextColumn`) and sparse CSR label matrices (built from index
arrays, never dense) with a train-only label vocabulary.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lcenet.errors import DataError, UserError
from lcenet.text_column import TextColumn, TextColumnWriter

__all__ = [
    "SPLITS",
    "Dataset",
    "Split",
    "SplitFiles",
    "decode_line",
    "find_split",
    "iter_split",
    "labels_to_csr",
    "load_dataset",
]

logger = logging.getLogger("lcenet")

SPLITS = ("train", "dev", "test")
_FORMATS = ("lines", "tsv", "jsonl")
_HASH_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------------------
# Format detection
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split: ``fmt`` is "lines" (paths = (texts, labels)), "tsv" or "jsonl" (one path)."""

    split: str
    fmt: str
    paths: tuple[Path, ...]


def _expected_files(split: str) -> str:
    return (
        f"{split}_texts.txt[.gz] + {split}_labels.txt[.gz], or {split}.tsv[.gz] (labels<TAB>text), "
        f'or {split}.jsonl[.gz] ({{"text": ..., "labels": [...]}})'
    )


def _existing(directory: Path, stem: str) -> list[Path]:
    """The files ``stem`` and ``stem.gz`` that exist in ``directory``."""
    return [p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()]


def _check_dir(data_dir: str | Path) -> Path:
    directory = Path(data_dir)
    if not directory.exists():
        raise DataError(directory, "data directory does not exist")
    if not directory.is_dir():
        raise DataError(
            directory, "not a directory (expected a data set directory with train/dev/test files)"
        )
    return directory


def find_split(data_dir: str | Path, split: str) -> SplitFiles | None:
    """Detect the format of ``split`` in ``data_dir``; None when the split is absent.

    Raises DataError when the split is present in more than one format (or both plain and gzipped), or when
    only half of a line-aligned texts/labels pair exists.
    """
    directory = _check_dir(data_dir)
    texts = _existing(directory, f"{split}_texts.txt")
    labels = _existing(directory, f"{split}_labels.txt")
    tsv = _existing(directory, f"{split}.tsv")
    jsonl = _existing(directory, f"{split}.jsonl")

    found = [p.name for p in texts + labels + tsv + jsonl]
    n_formats = bool(texts or labels) + bool(tsv) + bool(jsonl)
    if n_formats > 1 or len(texts) > 1 or len(labels) > 1 or len(tsv) > 1 or len(jsonl) > 1:
        raise DataError(
            directory,
            f"ambiguous {split!r} split: found {', '.join(found)}; keep exactly one of "
            + _expected_files(split),
        )
    if texts and not labels:
        raise DataError(directory, f"found {texts[0].name} but no {split}_labels.txt[.gz] next to it")
    if labels and not texts:
        raise DataError(directory, f"found {labels[0].name} but no {split}_texts.txt[.gz] next to it")
    if texts:
        return SplitFiles(split, "lines", (texts[0], labels[0]))
    if tsv:
        return SplitFiles(split, "tsv", (tsv[0],))
    if jsonl:
        return SplitFiles(split, "jsonl", (jsonl[0],))
    return None


def _require_split(data_dir: str | Path, split: str) -> SplitFiles:
    files = find_split(data_dir, split)
    if files is not None:
        return files
    directory = Path(data_dir)
    if all(find_split(directory, s) is None for s in SPLITS):
        present = sorted(p.name for p in directory.iterdir())
        shown = ", ".join(present[:10]) + (f", ... ({len(present)} entries)" if len(present) > 10 else "")
        raise DataError(
            directory,
            "unknown data set format: no train/dev/test split found "
            f"(directory contains: {shown or 'nothing'}); "
            "expected " + _expected_files("train") + "; the same for 'test' and, optionally, 'dev'",
        )
    raise DataError(directory, f"missing {split!r} split: expected " + _expected_files(split))


# ----------------------------------------------------------------------------------------------------------
# Streaming line reader
# ----------------------------------------------------------------------------------------------------------


def _iter_lines(path: Path) -> Iterator[str]:
    """Yield the lines of a (possibly gzipped) UTF-8 file without line endings, decoding strictly.

    Decoding and gzip errors become DataError with the 1-based line number where they happened.
    """
    try:
        raw_file = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise DataError(path, f"cannot open: {exc.strerror or exc}") from exc
    lineno = 0
    with raw_file:
        it = iter(raw_file)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as exc:
                kind = "corrupt gzip data" if path.name.endswith(".gz") else "read error"
                raise DataError(path, f"{kind}: {exc}", line=lineno + 1) from exc
            lineno += 1
            line = decode_line(raw, path, lineno)
            if line.endswith("\n"):
                line = line[:-1]
                if line.endswith("\r"):
                    line = line[:-1]
            yield line


def decode_line(raw: bytes, path: str | Path, lineno: int) -> str:
    """One line of a text file, decoded strictly as UTF-8 (a BOM on line 1 is dropped).

    A NUL byte is refused although it is valid UTF-8: in a text file it means a binary file, or UTF-16 text
    whose every other byte is NUL (which would otherwise read as garbage words without any error).
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"invalid UTF-8 (byte offset {exc.start} in the line): {exc.reason}"
        raise DataError(path, problem, line=lineno) from exc
    if "\0" in line:
        raise DataError(path, f"NUL byte at offset {line.index(chr(0))} in the line (a binary or UTF-16 file?)",
                        line=lineno)
    return line[1:] if lineno == 1 and line.startswith("\ufeff") else line


def _split_labels(field: str, path: Path, lineno: int) -> list[str]:
    labels = list(dict.fromkeys(field.split()))
    if not labels:
        raise DataError(path, "empty label line (every document needs at least one label)", line=lineno)
    return labels


def _check_text(text: str, path: Path, lineno: int) -> str:
    if not text or text.isspace():
        raise DataError(path, "empty text", line=lineno)
    return text


def _iter_lines_format(texts_path: Path, labels_path: Path) -> Iterator[tuple[str, list[str]]]:
    label_lines = _iter_lines(labels_path)
    n = 0
    for text in _iter_lines(texts_path):
        n += 1
        label_line = next(label_lines, None)
        if label_line is None:
            raise DataError(
                labels_path,
                f"file ended after {n - 1} lines, but {texts_path.name} has more "
                "(text and label files must have the same number of lines)",
                line=n,
            )
        yield _check_text(text, texts_path, n), _split_labels(label_line, labels_path, n)
    if next(label_lines, None) is not None:
        raise DataError(
            texts_path,
            f"file ended after {n} lines, but {labels_path.name} has more "
            "(text and label files must have the same number of lines)",
            line=n + 1,
        )


def _iter_tsv(path: Path) -> Iterator[tuple[str, list[str]]]:
    for n, line in enumerate(_iter_lines(path), start=1):
        labels_field, tab, text = line.partition("\t")
        if not tab:
            raise DataError(path, "malformed TSV line: expected 'labels<TAB>text' but found no tab", line=n)
        labels = _split_labels(labels_field, path, n)
        yield _check_text(text, path, n), labels


def _jsonl_field(record: dict, key: str, kind: type, described: str, path: Path, n: int):
    """``record[key]``, which must exist and be of ``kind``; else a DataError at ``path:n``."""
    if key not in record:
        raise DataError(path, f'malformed JSONL: missing "{key}"', line=n)
    value = record[key]
    if not isinstance(value, kind):
        raise DataError(path, f'malformed JSONL: "{key}" must be {described}, got {type(value).__name__}', line=n)
    return value


def _iter_jsonl(path: Path) -> Iterator[tuple[str, list[str]]]:
    for n, line in enumerate(_iter_lines(path), start=1):
        if not line.strip():
            raise DataError(path, "malformed JSONL: empty line", line=n)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                path, f"malformed JSONL: invalid JSON ({exc.msg} at column {exc.colno})", line=n
            ) from exc
        if not isinstance(record, dict):
            raise DataError(
                path, f"malformed JSONL: expected a JSON object, got {type(record).__name__}", line=n
            )
        text = _jsonl_field(record, "text", str, "a string", path, n)
        raw_labels = _jsonl_field(record, "labels", list, "a list of strings", path, n)
        if not raw_labels:
            raise DataError(path, 'empty "labels" list (every document needs at least one label)', line=n)
        cleaned = []
        for label in raw_labels:
            if not isinstance(label, str):
                raise DataError(
                    path, f'malformed JSONL: "labels" must be strings, got {type(label).__name__}', line=n
                )
            label = label.strip()
            if not label:
                raise DataError(path, 'malformed JSONL: empty string in "labels"', line=n)
            cleaned.append(label)
        yield _check_text(text, path, n), list(dict.fromkeys(cleaned))


def _iter_files(files: SplitFiles) -> Iterator[tuple[str, list[str]]]:
    if files.fmt == "lines":
        return _iter_lines_format(*files.paths)
    if files.fmt == "tsv":
        return _iter_tsv(files.paths[0])
    return _iter_jsonl(files.paths[0])


def iter_split(data_dir: str | Path, split: str) -> Iterator[tuple[str, list[str]]]:
    """Stream ``(text, labels)`` of one split lazily, validating as it goes.

    Labels repeated on one line are de-duplicated (first occurrence order is kept). Raises DataError (naming
    the file and the 1-based line) on bad input, and when the split does not exist.
    """
    files = _require_split(data_dir, split)
    yield from _iter_files(files)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split: texts (on disk, read on demand) and a float32 CSR truth matrix (N, num_columns) with 1.0
    entries."""

    texts: TextColumn
    labels: sp.csr_matrix
    name: str

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Dataset:
    """A loaded data set.

    ``label_names`` is the label vocabulary (train only, by descending train frequency then name), so model
    outputs have L = ``len(label_names)`` columns. Dev/test truth matrices have ``L + len(unseen_labels)``
    columns: labels never seen in train get the extra columns and count as misses. The train matrix has L.
    """

    train: Split
    dev: Split
    test: Split
    label_names: list[str]
    unseen_labels: list[str]
    label_frequency: np.ndarray
    source_hash: str
    dev_from_train: bool = False

    @property
    def num_labels(self) -> int:
        """L, the number of train labels (= columns a model predicts)."""
        return len(self.label_names)

    @property
    def num_truth_columns(self) -> int:
        return len(self.label_names) + len(self.unseen_labels)


def labels_to_csr(
    label_lists: Iterable[Sequence[str]],
    label_index: Mapping[str, int],
    num_columns: int,
    *,
    ignore_unknown: bool = False,
) -> sp.csr_matrix:
    """Build a float32 CSR (N, num_columns) with 1.0 at ``label_index[label]`` for each document's labels.

    Repeated labels within a document are counted once. A label missing from ``label_index`` raises
    ValueError, unless ``ignore_unknown`` (then it is skipped).
    """
    indptr = array("q", [0])
    indices = array("q")
    for labels in label_lists:
        seen: set[int] = set()
        for label in labels:
            col = label_index.get(label)
            if col is None:
                if ignore_unknown:
                    continue
                raise ValueError(f"label {label!r} is not in the label index")
            if col in seen:
                continue
            if not 0 <= col < num_columns:
                raise ValueError(f"label {label!r} has column {col}, outside 0..{num_columns - 1}")
            seen.add(col)
            indices.append(col)
        indptr.append(len(indices))
    return _csr(np.frombuffer(indptr, dtype=np.int64), np.frombuffer(indices, dtype=np.int64), num_columns)


def _csr(indptr: np.ndarray, indices: np.ndarray, num_columns: int) -> sp.csr_matrix:
    """A canonical float32 CSR of ones from indptr/indices (int32 indices when they fit)."""
    n_rows = len(indptr) - 1
    idx_dtype = np.int32 if max(len(indices), num_columns) < np.iinfo(np.int32).max else np.int64
    matrix = sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices.astype(idx_dtype), indptr.astype(idx_dtype)),
        shape=(n_rows, num_columns),
    )
    matrix.sort_indices()
    return matrix


class _RawSplit:
    """Texts plus labels as provisional integer ids (shared id space across splits), in CSR layout."""

    def __init__(self, texts: TextColumn, indptr: np.ndarray, ids: np.ndarray):
        self.texts = texts
        self.indptr = indptr
        self.ids = ids

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows: np.ndarray) -> _RawSplit:
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # Gather the id ranges of the selected rows without a Python loop.
        offsets = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1], dtype=np.int64)
        return _RawSplit(self.texts.take(rows), indptr, self.ids[offsets])


def _read_raw(files: SplitFiles, label_ids: dict[str, int], max_docs: int | None) -> _RawSplit:
    texts = TextColumnWriter()
    indptr = array("q", [0])
    ids = array("q")
    for text, labels in _iter_files(files):
        texts.append(text)
        for label in labels:
            i = label_ids.get(label)
            if i is None:
                i = label_ids[label] = len(label_ids)
            ids.append(i)
        indptr.append(len(ids))
        if max_docs is not None and len(texts) >= max_docs:
            break
    if not len(texts):
        raise DataError(files.paths[0], f"the {files.split!r} split has no documents")
    return _RawSplit(texts.finish(), np.frombuffer(indptr, dtype=np.int64), np.frombuffer(ids, dtype=np.int64))


def _capped(files: SplitFiles, label_ids: dict[str, int], cap: int | None, sample_seed: int | None) -> _RawSplit:
    """The split's first ``cap`` documents, or with ``sample_seed`` a uniform random ``cap`` of them (in file
    order; the whole split is read)."""
    if cap is None or sample_seed is None:
        return _read_raw(files, label_ids, cap)
    raw = _read_raw(files, label_ids, None)
    if cap >= len(raw):
        return raw
    rng = np.random.default_rng([sample_seed, SPLITS.index(files.split)])
    return raw.take(np.sort(rng.choice(len(raw), size=cap, replace=False)))


def _source_hash(
    split_files: Sequence[SplitFiles], dev_fraction: float, dev_seed: int, max_docs: Mapping[str, int | None],
    sample_seed: int | None = None,
) -> str:
    digest = hashlib.sha256()
    for files in split_files:
        for path in files.paths:
            digest.update(f"\0{files.split}\0{files.fmt}\0{path.name}\0".encode())
            with open(path, "rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    digest.update(chunk)
    settings = {"dev_fraction": float(dev_fraction), "dev_seed": int(dev_seed), "max_docs": dict(max_docs)}
    if sample_seed is not None and max_docs:
        settings["sample_seed"] = int(sample_seed)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _check_max_docs(max_docs: Mapping[str, int | None] | None) -> dict[str, int | None]:
    if max_docs is None:
        return {}
    caps: dict[str, int | None] = {}
    for split, cap in max_docs.items():
        if split not in SPLITS:
            raise UserError(f"max_docs: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1):
            raise UserError(f"max_docs[{split!r}] must be a positive integer or null, got {cap!r}")
        caps[split] = None if cap is None else int(cap)
    return caps


def load_dataset(
    data_dir: str | Path,
    dev_fraction: float = 0.1,
    dev_seed: int = 0,
    max_docs: Mapping[str, int | None] | None = None,
    sample_seed: int | None = None,
) -> Dataset:
    """Read, validate and index a data set directory.

    Without a ``dev`` split, a dev set of ``max(1, round(dev_fraction * N_train))`` train documents is drawn
    with ``numpy.random.default_rng(dev_seed)`` and the label vocabulary is built from the remaining train
    documents. ``max_docs`` caps the documents read per split (the first n lines), e.g. ``{"train": 1000}``;
    with ``sample_seed`` the n documents are drawn uniformly at random instead (seeded per split, file order
    kept), which matters for files sorted by date or id.
    Logs one warning per dev/test split that has labels never seen in train.
    """
    if not 0.0 <= float(dev_fraction) < 1.0:
        raise UserError(f"dev_fraction must be in [0, 1), got {dev_fraction!r}")
    caps = _check_max_docs(max_docs)
    directory = _check_dir(data_dir)
    train_files = _require_split(directory, "train")
    test_files = _require_split(directory, "test")
    dev_files = find_split(directory, "dev")

    label_ids: dict[str, int] = {}  # provisional ids, shared by all splits
    train_raw = _capped(train_files, label_ids, caps.get("train"), sample_seed)
    dev_from_train = dev_files is None
    if dev_from_train:
        n = len(train_raw)
        if n < 2:
            raise DataError(train_files.paths[0], f"cannot carve a dev split from {n} train document(s)")
        n_dev = min(max(1, round(float(dev_fraction) * n)), n - 1)
        rng = np.random.default_rng(dev_seed)
        dev_rows = np.sort(rng.choice(n, size=n_dev, replace=False))
        keep = np.ones(n, dtype=bool)
        keep[dev_rows] = False
        if caps.get("dev") is not None:
            dev_rows = dev_rows[: caps["dev"]]
        dev_raw = train_raw.take(dev_rows)
        train_raw = train_raw.take(np.flatnonzero(keep))
    else:
        dev_raw = _capped(dev_files, label_ids, caps.get("dev"), sample_seed)
    test_raw = _capped(test_files, label_ids, caps.get("test"), sample_seed)

    names = np.empty(len(label_ids), dtype=object)
    names[list(label_ids.values())] = list(label_ids.keys())

    # Train vocabulary: descending train frequency, then name.
    counts = np.bincount(train_raw.ids, minlength=len(label_ids))
    train_ids = np.flatnonzero(counts)
    order = sorted(train_ids.tolist(), key=lambda i: (-counts[i], names[i]))
    label_names = [names[i] for i in order]
    num_labels = len(label_names)

    column = np.full(len(label_ids), -1, dtype=np.int64)
    column[order] = np.arange(num_labels, dtype=np.int64)
    unseen_ids = sorted(
        (i for i in np.unique(np.concatenate([dev_raw.ids, test_raw.ids])).tolist() if column[i] < 0),
        key=lambda i: names[i],
    )
    unseen_labels = [names[i] for i in unseen_ids]
    column[unseen_ids] = num_labels + np.arange(len(unseen_ids), dtype=np.int64)
    num_columns = num_labels + len(unseen_labels)

    for name, raw in (("dev", dev_raw), ("test", test_raw)):
        n_unseen = int(np.count_nonzero(column[np.unique(raw.ids)] >= num_labels))
        if n_unseen:
            logger.warning("%s: %d labels never seen in train (kept as misses)", name, n_unseen)

    def to_split(raw: _RawSplit, name: str, width: int) -> Split:
        return Split(texts=raw.texts, labels=_csr(raw.indptr, column[raw.ids], width), name=name)

    split_files = [f for f in (train_files, dev_files, test_files) if f is not None]
    return Dataset(
        train=to_split(train_raw, "train", num_labels),
        dev=to_split(dev_raw, "dev", num_columns),
        test=to_split(test_raw, "test", num_columns),
        label_names=label_names,
        unseen_labels=unseen_labels,
        label_frequency=counts[order].astype(np.int64),
        source_hash=_source_hash(split_files, dev_fraction, dev_seed, caps, sample_seed),
        dev_from_train=dev_from_train,
    )
