"""Tokenization with the Hugging Face ``tokenizers`` library, and an on-disk cache of encoded ids.

* :func:`train_word_tokenizer` trains a word-level tokenizer ("[PAD]" = 0, "[UNK]" = 1) from an iterator.
* :func:`load_tokenizer` reads a ``tokenizer.json`` (ours, or a Hugging Face checkpoint's such as BERT).
* :func:`encode` turns texts into a right-padded int32 id matrix (N, max_length).
* :func:`encode_cached` / :func:`word_tokenizer_cached` keep results in a cache directory
  (:func:`default_cache_dir`), keyed by :func:`cache_key`; files are written atomically.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

from lcenet.errors import UserError
from lcenet.io import atomic_write, atomic_write_text

__all__ = [
    "PAD_TOKEN",
    "UNK_TOKEN",
    "cache_key",
    "default_cache_dir",
    "encode",
    "encode_cached",
    "load_tokenizer",
    "pad_token_id",
    "tokenizer_fingerprint",
    "train_word_tokenizer",
    "word_tokenizer_cached",
]

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
_TRAIN_BATCH = 1024
# Characters of text encoded per requested token before a full re-encode is needed (see encode()).
_CHARS_PER_TOKEN = 8


# ----------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_word_tokenizer(
    texts: Iterable[str], vocab_size: int = 100_000, min_frequency: int = 2, lowercase: bool = True
) -> Tokenizer:
    """Train a WordLevel tokenizer: NFKC (+ lowercase) normalization, words and punctuation marks as tokens.

    Special tokens: "[PAD]" (id 0) and "[UNK]" (id 1); ``vocab_size`` counts them. Words seen fewer than
    ``min_frequency`` times map to "[UNK]". No special tokens are added around a text when encoding.
    """
    if vocab_size < 3:
        raise UserError(f"vocab_size must be at least 3 (two special tokens and one word), got {vocab_size}")
    tokenizer = Tokenizer(WordLevel(unk_token=UNK_TOKEN))
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    # Tokens are words (\w+) and runs of punctuation ([^\w\s]+), split at whitespace. (BertPreTokenizer,
    # which isolates every mark, trains about 1.5x slower.)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = WordLevelTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, UNK_TOKEN],
        show_progress=False,
    )
    tokenizer.train_from_iterator(_batches(texts, _TRAIN_BATCH), trainer=trainer)
    if tokenizer.token_to_id(PAD_TOKEN) != 0 or tokenizer.token_to_id(UNK_TOKEN) != 1:  # pragma: no cover
        raise RuntimeError("word tokenizer training did not put [PAD] at id 0 and [UNK] at id 1")
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` (a directory is taken to contain one). UserError if missing or malformed."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a plain Exception on bad JSON or an unknown schema
        raise UserError(f"{path}: not a valid tokenizer.json ({exc})") from exc


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id used for padding: "[PAD]" if in the vocabulary, else the tokenizer's padding token or "<pad>",
    else 0. Models derive the attention mask as ``ids != pad id``."""
    pad = tokenizer.token_to_id(PAD_TOKEN)
    if pad is not None:
        return pad
    padding = tokenizer.padding
    if padding:
        pad = tokenizer.token_to_id(padding.get("pad_token", "")) if padding.get("pad_token") else None
        if pad is None and padding.get("pad_id") is not None:
            pad = int(padding["pad_id"])
        if pad is not None:
            return pad
    pad = tokenizer.token_to_id("<pad>")
    return 0 if pad is None else pad


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A short hash of the tokenizer's full configuration and vocabulary (for cache keys)."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()[:24]


# ----------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------


_ENCODING_COPIES: weakref.WeakKeyDictionary[Tokenizer, dict[int, Tokenizer]] = weakref.WeakKeyDictionary()


def _encoding_copy(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    """A copy of ``tokenizer`` that truncates to ``max_length`` and does not pad, made once per tokenizer and
    length: re-parsing a 10K-word tokenizer takes about 10 ms, which dominated predicting one document (a
    server's every request). The copy reflects the tokenizer as first seen; lcenet never changes a tokenizer
    after building it."""
    copies = _ENCODING_COPIES.setdefault(tokenizer, {})
    if max_length not in copies:
        work = Tokenizer.from_str(tokenizer.to_str())
        work.no_padding()
        work.enable_truncation(max_length)
        copies[max_length] = work
    return copies[max_length]


def _cut(text: str, budget: int) -> str:
    """A prefix of ``text`` of at most ``budget`` characters ending right before a space or tab (the text
    itself if it is short or has no such break near the budget)."""
    if len(text) <= budget:
        return text
    i = max(text.rfind(" ", 0, budget + 1), text.rfind("\t", 0, budget + 1))
    while i > 0 and text[i - 1] in " \t":
        i -= 1
    return text[:i] if i > budget // 2 else text


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 2048) -> np.ndarray:
    """Encode ``texts`` to int32 ids (N, max_length), truncated and right-padded with :func:`pad_token_id`.

    Special tokens are added by the tokenizer's post-processor when it has one (e.g. [CLS] ... [SEP] for BERT;
    truncation keeps room for them); our word tokenizer has none, so nothing is added. The caller's tokenizer
    is not modified.

    Long texts are first cut at a space after ``_CHARS_PER_TOKEN * max_length`` characters, so tokenization
    time does not grow with document length; a cut text that then does not fill the row is encoded again in
    full, so the result is the same as encoding the full texts.
    """
    if max_length < 1:
        raise UserError(f"max_length must be positive, got {max_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pad = pad_token_id(tokenizer)
    out = np.full((len(texts), max_length), pad, dtype=np.int32)
    if not len(texts):
        return out
    work = _encoding_copy(tokenizer, max_length)
    encode_batch = getattr(work, "encode_batch_fast", work.encode_batch)  # _fast skips char offsets
    budget = _CHARS_PER_TOKEN * max_length + 64

    def fill(rows: Sequence[int], batch: list[str]) -> list[int]:
        """Write the encodings of ``batch`` into ``out[rows]``; return the rows that did not fill up."""
        short = []
        for row, enc in zip(rows, encode_batch(batch, add_special_tokens=True)):
            ids = enc.ids
            if len(ids) > max_length:  # only if the special tokens alone exceed max_length
                ids = ids[:max_length]
            out[row, : len(ids)] = ids
            if len(ids) < max_length:
                short.append(row)
        return short

    for start in range(0, len(texts), batch_size):
        rows = range(start, min(start + batch_size, len(texts)))
        batch = [texts[i] for i in rows]
        cut = [_cut(text, budget) for text in batch]
        short = fill(rows, cut)
        redo = [row for row in short if len(cut[row - start]) < len(batch[row - start])]
        if redo:
            out[redo] = pad
            fill(redo, [texts[i] for i in redo])
    return out


# ----------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$LCENET_CACHE`` if set, else ``~/.cache/lcenet``."""
    env = os.environ.get("LCENET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lcenet"


def cache_key(*parts: str) -> str:
    """sha256 hex digest of the parts (unambiguously joined), truncated to 24 characters."""
    digest = hashlib.sha256()
    for part in parts:
        data = str(part).encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:24]


ENCODE_CHUNK_DOCS = 8192  # 16 MB of int32 ids at T = 500


def _load_cached_ids(path: Path, n_rows: int, max_length: int) -> np.ndarray | None:
    """The cached id matrix if present and of the expected shape/dtype; None otherwise (recompute)."""
    if not path.is_file():
        return None
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if ids.shape != (n_rows, max_length) or ids.dtype != np.int32:
        return None
    return ids


def encode_cached(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int, cache_dir: str | Path, key: str
) -> np.ndarray:
    """:func:`encode` with a cache: ``{cache_dir}/{key}.npy``, written in chunks of ``ENCODE_CHUNK_DOCS``
    documents and always returned memory-mapped (read-only).

    The key must identify the texts, the tokenizer and max_length (see :func:`cache_key`,
    :func:`tokenizer_fingerprint`). A cached file of the wrong shape or dtype is recomputed.
    """
    path = Path(cache_dir) / f"{key}.npy"
    cached = _load_cached_ids(path, len(texts), max_length)
    if cached is not None:
        return cached

    def write(tmp: Path) -> None:
        # Chunk by chunk into the .npy file: memory holds one chunk of ids, not the split's N x T matrix (4.9 GiB
        # for a Wiki-500K-shaped train split at T = 500).
        with open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": np.dtype(np.int32).str, "fortran_order": False,
                                                          "shape": (len(texts), max_length)})
            for start in range(0, len(texts), ENCODE_CHUNK_DOCS):
                handle.write(encode(tokenizer, texts[start:start + ENCODE_CHUNK_DOCS], max_length).tobytes())

    atomic_write(path, write)
    ids = _load_cached_ids(path, len(texts), max_length)
    if ids is None:
        raise UserError(f"{path}: the token-id cache could not be read back after writing it")
    return ids


def word_tokenizer_cached(texts: Iterable[str], cache_dir: str | Path, key: str, **settings) -> Tokenizer:
    """:func:`train_word_tokenizer` with a cache: loads ``{cache_dir}/{key}.tokenizer.json`` when present.

    ``settings`` are passed to :func:`train_word_tokenizer`; the key must cover them and the texts.
    """
    path = Path(cache_dir) / f"{key}.tokenizer.json"
    if path.is_file():
        try:
            return load_tokenizer(path)
        except UserError:
            pass  # a damaged cache file: train again and overwrite it
    tokenizer = train_word_tokenizer(texts, **settings)
    atomic_write_text(path, tokenizer.to_str())
    return tokenizer
