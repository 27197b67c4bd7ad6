"""TF-IDF document features for the sparse model family, saved without pickle, and batches for EmbeddingBag.

* :class:`TfidfFeatures` fits scikit-learn's ``TfidfVectorizer`` on the train texts and saves the vocabulary
  (``features.json``, a term list in index order, plus the settings) and the idf vector
  (``features_idf.safetensors``). Loading rebuilds a vectorizer from those two files, so a reloaded object
  transforms new text exactly as the fitted one did (no pickle anywhere).
* :func:`fit_cached` / :func:`transform_cached` keep results in a cache directory (as text.py does for token
  ids), keyed by the caller with :func:`lcenet.text.cache_key` and :meth:`TfidfFeatures.fingerprint`.
* Batches of these rows become the sparse family's inputs through :class:`lcenet.inference.CsrInputs`.

Tokens are runs of two or more word characters (``TOKEN_PATTERN``, scikit-learn's default): punctuation and
one-letter words are dropped, numbers are kept. Features are word unigrams and bigrams (``ngram_max=2``)
seen in at least ``min_df`` train documents, the ``max_features`` most frequent kept; values are
``(1 + log tf) * idf``, each row l2-normalised, float32.

Memory at a million documents: scikit-learn's fit counts every distinct n-gram of the texts it is given before
``min_df`` and ``max_features`` prune them, about 23 KB per AmazonCat-13K-shaped document (≈ 27 GiB at its
1.19M train documents). So a train split larger than ``fit_max_docs`` (default 100,000) has its vocabulary and
idf fitted on that many of its documents drawn at random (seed 0): the ``max_features`` n-grams kept are the
most frequent ones, which a random sample of 100,000 documents ranks, and whose document frequencies it
estimates, closely. Every document is then transformed, ``TRANSFORM_CHUNK`` at a time, so transforming holds one
chunk's n-gram counts, not the split's. Smaller splits are fitted on all their documents.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from lcenet.errors import UserError
from lcenet.io import atomic_write, atomic_write_json, load_tensors, save_tensors

__all__ = ["TOKEN_PATTERN", "TfidfFeatures", "fit_cached", "transform_cached"]

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
FEATURES_FILE = "features.json"
IDF_FILE = "features_idf.safetensors"
DEFAULT_SETTINGS = {"ngram_max": 2, "min_df": 2, "max_features": 200_000, "lowercase": True, "sublinear_tf": True,
                    "fit_max_docs": 100_000}
TRANSFORM_CHUNK = 20_000  # documents transformed at a time
FIT_SAMPLE_SEED = 0


class TfidfFeatures:
    """A fitted TF-IDF vocabulary: ``transform(texts)`` gives float32 CSR ``[N, num_features]``."""

    def __init__(self, settings: dict, terms: list[str], idf: np.ndarray):
        if len(terms) != len(idf):
            raise UserError(f"TF-IDF features: {len(terms)} terms but {len(idf)} idf values")
        self.settings = dict(settings)
        self.terms = list(terms)
        self.idf = np.asarray(idf, dtype=np.float32)
        self._vectorizer = _vectorizer(self.settings, vocabulary=self.terms)
        self._vectorizer.idf_ = self.idf  # scikit-learn's public setter; also checks the vocabulary

    @classmethod
    def fit(cls, texts: Sequence[str], **settings) -> TfidfFeatures:
        """Fit on ``texts`` (the train split); ``settings`` override :data:`DEFAULT_SETTINGS`."""
        return cls._fit(texts, settings, with_matrix=False)[0]

    @classmethod
    def fit_transform(cls, texts: Sequence[str], **settings) -> tuple[TfidfFeatures, sp.csr_matrix]:
        """:meth:`fit` and the features of ``texts`` (one pass where the fit used every document: about half
        the time of fit + transform)."""
        features, matrix = cls._fit(texts, settings, with_matrix=True)
        return features, features.transform(texts) if matrix is None else matrix

    @classmethod
    def _fit(cls, texts: Sequence[str], settings: dict, with_matrix: bool
             ) -> tuple[TfidfFeatures, sp.csr_matrix | None]:
        """The fitted features, and (``with_matrix``, when the fit saw every document) those of ``texts``."""
        unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
        if unknown:
            raise UserError(f"unknown TF-IDF setting(s) {', '.join(unknown)}; choose from "
                            f"{', '.join(DEFAULT_SETTINGS)}")
        settings = {**DEFAULT_SETTINGS, **settings}
        integers = ("ngram_max", "min_df", "max_features", "fit_max_docs")
        for name in integers:  # scikit-learn reads a float min_df as a fraction
            if isinstance(settings[name], bool) or not isinstance(settings[name], int):
                raise UserError(f"TF-IDF {name} must be an integer (got {settings[name]!r})")
        if min(settings[name] for name in integers) < 1:
            raise UserError(f"TF-IDF {', '.join(integers)} must be >= 1 (got "
                            f"{', '.join(str(settings[name]) for name in integers)})")
        vectorizer = _vectorizer(settings)
        matrix = None
        try:
            if len(texts) > settings["fit_max_docs"]:  # see the module docstring: the fit's memory grows with them
                rows = np.random.default_rng(FIT_SAMPLE_SEED).choice(len(texts), settings["fit_max_docs"],
                                                                     replace=False)
                vectorizer.fit(texts[int(row)] for row in np.sort(rows))
            elif with_matrix:
                matrix = _csr32(vectorizer.fit_transform(texts))
            else:
                vectorizer.fit(texts)
        except ValueError as error:  # "empty vocabulary" when min_df prunes every term
            raise UserError(f"TF-IDF features: {error}") from None
        return cls(settings, vectorizer.get_feature_names_out().tolist(), vectorizer.idf_), matrix

    @property
    def num_features(self) -> int:
        return len(self.terms)

    def transform(self, texts: Iterable[str]) -> sp.csr_matrix:
        """Features of ``texts``, ``TRANSFORM_CHUNK`` documents at a time (the same rows as one call)."""
        texts = iter(texts)
        chunks = []
        while chunk := list(itertools.islice(texts, TRANSFORM_CHUNK)):
            chunks.append(_csr32(self._vectorizer.transform(chunk)))
        if not chunks:
            return sp.csr_matrix((0, self.num_features), dtype=np.float32)
        return chunks[0] if len(chunks) == 1 else _csr32(sp.vstack(chunks, format="csr"))

    def fingerprint(self) -> str:
        """A short hash of the settings, terms and idf values (for cache keys)."""
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode("utf-8"))
        digest.update("\n".join(self.terms).encode("utf-8"))
        digest.update(self.idf.tobytes())
        return digest.hexdigest()[:24]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        atomic_write_json(directory / FEATURES_FILE, {"settings": self.settings, "terms": self.terms})
        save_tensors(directory / IDF_FILE, {"idf": torch.from_numpy(self.idf)})

    @classmethod
    def load(cls, directory: str | Path) -> TfidfFeatures:
        directory = Path(directory)
        path = directory / FEATURES_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{path}: malformed JSON ({error})") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict) \
                or not isinstance(saved.get("terms"), list):
            raise UserError(f"{path}: not a TF-IDF features file (needs 'settings' and 'terms')")
        tensors, _ = load_tensors(directory / IDF_FILE)
        if "idf" not in tensors:
            raise UserError(f"{directory / IDF_FILE}: no 'idf' tensor")
        return cls({**DEFAULT_SETTINGS, **saved["settings"]}, saved["terms"], tensors["idf"].numpy())


def _vectorizer(settings: dict, vocabulary: list[str] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(
        lowercase=settings["lowercase"], token_pattern=TOKEN_PATTERN, ngram_range=(1, settings["ngram_max"]),
        min_df=settings["min_df"], max_features=settings["max_features"], sublinear_tf=settings["sublinear_tf"],
        norm="l2", use_idf=True, smooth_idf=True, dtype=np.float32, vocabulary=vocabulary)


def _csr32(matrix: sp.spmatrix) -> sp.csr_matrix:
    """CSR, float32 values, int32 indices (the smallest that EmbeddingBag batches are cut from)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.sort_indices()
    return matrix


# ----------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------


def _save_csr(path: Path, matrix: sp.csr_matrix) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: save_npz would append ".npz" to a bare path
            # Uncompressed: zlib would halve the file but make every cache hit several seconds slower.
            sp.save_npz(handle, matrix, compressed=False)

    atomic_write(path, write)


def _load_csr(path: Path, n_rows: int, n_cols: int) -> sp.csr_matrix | None:
    """The cached matrix if present, well-formed and of the expected shape; None otherwise (recompute)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:  # np.load, not load_npz: pickle is visibly off
            if saved["format"].item() not in (b"csr", "csr"):
                return None
            matrix = sp.csr_matrix((saved["data"], saved["indices"], saved["indptr"]),
                                   shape=tuple(saved["shape"]))
    except (OSError, ValueError, KeyError):
        return None
    if matrix.shape != (n_rows, n_cols) or matrix.dtype != np.float32:
        return None
    return matrix


def transform_cached(features: TfidfFeatures, texts: Sequence[str], cache_dir: str | Path,
                     key: str) -> sp.csr_matrix:
    """:meth:`TfidfFeatures.transform` with a cache: ``{cache_dir}/{key}.tfidf.npz`` is read when present.

    The key must identify the texts and the features (see :func:`lcenet.text.cache_key` and
    :meth:`TfidfFeatures.fingerprint`). A damaged cached file or one of the wrong shape is recomputed.
    """
    path = Path(cache_dir) / f"{key}.tfidf.npz"
    cached = _load_csr(path, len(texts), features.num_features)
    if cached is not None:
        return cached
    matrix = features.transform(texts)
    _save_csr(path, matrix)
    return matrix


def fit_cached(texts: Sequence[str], cache_dir: str | Path, key: str, **settings) -> TfidfFeatures:
    """:meth:`TfidfFeatures.fit` with a cache: the folder ``{cache_dir}/{key}.tfidf`` (the saved features) is read
    when present. The key must cover the texts and ``settings``. The features of every split, train included, go
    through :func:`transform_cached`.
    """
    directory = Path(cache_dir) / f"{key}.tfidf"
    if (directory / FEATURES_FILE).is_file() and (directory / IDF_FILE).is_file():
        try:
            return TfidfFeatures.load(directory)
        except UserError:
            pass  # a damaged cache entry: fit again and overwrite it
    features = TfidfFeatures.fit(texts, **settings)
    features.save(directory)
    return features
