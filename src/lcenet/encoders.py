"""Texts -> model inputs, the first step of the straight path, one encoder per ``input_kind`` of a family:

- ``TokenEncoder`` (``tokens``): a Hugging Face tokenizer -> right-padded ids -> ``TokenInputs``;
- ``TfidfEncoder`` (``tfidf``): TF-IDF features fitted on train -> CSR rows -> ``CsrInputs``;
- ``PairedEncoder`` (``tokens+tfidf``): both -> ``PairedInputs``.

An encoder is fitted (or loaded) once per run, encodes every split with the on-disk cache, saves its files
into the model directory and is loaded back from there, so training, ``predict``, ``evaluate`` and ``serve``
turn text into exactly the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer

from lcenet import text
from lcenet.features import FEATURES_FILE, IDF_FILE, TfidfFeatures, transform_cached
from lcenet.inference import CsrInputs, InputStore, PairedInputs, TokenInputs
from lcenet.io import atomic_write_text

TOKENIZER_FILE = "tokenizer.json"


class Encoder(Protocol):
    vocab_size: int
    files: tuple[str, ...]  # what ``save`` writes into a model directory

    def encode(self, texts: Sequence[str]) -> InputStore: ...

    def encode_cached(self, texts: Sequence[str], cache_dir: Path, source_hash: str, split: str) -> InputStore:
        """``encode`` with the on-disk cache, keyed by the data files (``source_hash``), split and encoder."""
        ...

    def fingerprint(self) -> str: ...

    def save(self, directory: Path) -> None: ...


class TokenEncoder:
    files = (TOKENIZER_FILE,)

    def __init__(self, tokenizer: Tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = text.pad_token_id(tokenizer)
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str]) -> TokenInputs:
        return TokenInputs(text.encode(self.tokenizer, texts, self.max_length), self.pad_id)

    def encode_cached(self, texts: Sequence[str], cache_dir: Path, source_hash: str, split: str) -> TokenInputs:
        key = text.cache_key(source_hash, split, self.fingerprint(), str(self.max_length))
        return TokenInputs(text.encode_cached(self.tokenizer, texts, self.max_length, cache_dir, key), self.pad_id)

    def fingerprint(self) -> str:
        return text.tokenizer_fingerprint(self.tokenizer)

    def save(self, directory: Path) -> None:
        atomic_write_text(directory / TOKENIZER_FILE, self.tokenizer.to_str())

    @classmethod
    def load(cls, directory: Path, max_length: int) -> TokenEncoder:
        return cls(text.load_tokenizer(directory / TOKENIZER_FILE), max_length)


class TfidfEncoder:
    files = (FEATURES_FILE, IDF_FILE)

    def __init__(self, features: TfidfFeatures):
        self.features = features
        self.vocab_size = features.num_features

    def encode(self, texts: Sequence[str]) -> CsrInputs:
        return CsrInputs(self.features.transform(texts))

    def encode_cached(self, texts: Sequence[str], cache_dir: Path, source_hash: str, split: str) -> CsrInputs:
        key = text.cache_key(source_hash, split, self.fingerprint())
        return CsrInputs(transform_cached(self.features, texts, cache_dir, key))

    def fingerprint(self) -> str:
        return self.features.fingerprint()

    def save(self, directory: Path) -> None:
        self.features.save(directory)

    @classmethod
    def load(cls, directory: Path) -> TfidfEncoder:
        return cls(TfidfFeatures.load(directory))


class PairedEncoder:
    """Token ids and TF-IDF features of every text; ``vocab_size`` is the number of TF-IDF features (a pretrained
    encoder, the token side of such a family, brings its own vocabulary)."""

    def __init__(self, tokens: TokenEncoder, tfidf: TfidfEncoder):
        self.tokens, self.tfidf = tokens, tfidf
        self.vocab_size = tfidf.vocab_size
        self.files = tokens.files + tfidf.files

    def encode(self, texts: Sequence[str]) -> PairedInputs:
        return PairedInputs(self.tokens.encode(texts), self.tfidf.encode(texts))

    def encode_cached(self, texts: Sequence[str], cache_dir: Path, source_hash: str, split: str) -> PairedInputs:
        return PairedInputs(self.tokens.encode_cached(texts, cache_dir, source_hash, split),
                            self.tfidf.encode_cached(texts, cache_dir, source_hash, split))

    def fingerprint(self) -> str:
        return f"{self.tokens.fingerprint()}+{self.tfidf.fingerprint()}"

    def save(self, directory: Path) -> None:
        self.tokens.save(directory)
        self.tfidf.save(directory)

    @classmethod
    def load(cls, directory: Path, max_length: int) -> PairedEncoder:
        return cls(TokenEncoder.load(directory, max_length), TfidfEncoder.load(directory))


def load_encoder(input_kind: str, directory: Path, config: dict) -> Encoder:
    """The encoder saved in a model directory, for a family of ``input_kind``."""
    if input_kind == "tfidf":
        return TfidfEncoder.load(directory)
    if input_kind == "tokens+tfidf":
        return PairedEncoder.load(directory, int(config["max_length"]))
    return TokenEncoder.load(directory, int(config["max_length"]))
