"""Tests for lcenet.features: TF-IDF fit/transform, pickle-free save/load, the caches, EmbeddingBag batches."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

import lcenet.features as features_module
from lcenet.errors import UserError
from lcenet.features import TOKEN_PATTERN, TfidfFeatures, fit_cached, transform_cached
from lcenet.inference import CsrInputs

TRAIN = ["The cat sat on the mat.", "The dog sat on the log!", "A cat and a dog, on the mat.",
         "Fishing quota for the sea", "the sea and the cat"] * 2
NEW = ["a cat on the sea", "nothing known here", "DOG sat on the mat mat mat"]


def test_fit_matches_scikit_learn_and_is_float32_csr():
    features = TfidfFeatures.fit(TRAIN, min_df=2)
    reference = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=TOKEN_PATTERN,
                                max_features=200_000).fit(TRAIN)
    assert features.terms == reference.get_feature_names_out().tolist()
    assert "sat on" in features.terms and "a" not in features.terms  # bigrams; one-letter words dropped
    matrix = features.transform(NEW)
    assert isinstance(matrix, sp.csr_matrix) and matrix.dtype == np.float32
    assert matrix.shape == (3, features.num_features)
    np.testing.assert_allclose(matrix.toarray(), reference.transform(NEW).toarray(), rtol=1e-6, atol=1e-7)
    assert matrix[1].nnz == 0  # no known term: an empty row
    np.testing.assert_allclose(sp.linalg.norm(matrix[[0, 2]], axis=1), 1.0, rtol=1e-6)


def test_fit_transform_equals_fit_then_transform():
    features, matrix = TfidfFeatures.fit_transform(TRAIN, max_features=7)
    assert features.num_features == 7
    assert (matrix != features.transform(TRAIN)).nnz == 0


def test_a_large_train_split_is_fitted_on_a_random_sample_and_transformed_whole():
    """Past fit_max_docs the vocabulary and idf are those of fit_max_docs documents drawn with seed 0 (terms only
    in the other documents are not features), and every document gets its row."""
    texts = [f"common words here unique{i} token{i % 7}" for i in range(40)]
    features, matrix = TfidfFeatures.fit_transform(texts, min_df=1, ngram_max=1, fit_max_docs=10)
    sample = np.sort(np.random.default_rng(0).choice(40, 10, replace=False))
    alone = TfidfFeatures.fit([texts[i] for i in sample], min_df=1, ngram_max=1, fit_max_docs=10)
    assert features.terms == alone.terms and np.array_equal(features.idf, alone.idf)
    assert sum(term.startswith("unique") for term in features.terms) == 10
    assert matrix.shape == (40, features.num_features)
    assert (matrix != features.transform(texts)).nnz == 0
    with pytest.raises(UserError, match="fit_max_docs"):
        TfidfFeatures.fit(texts, fit_max_docs=0)


def test_transform_in_chunks_gives_the_rows_of_one_call(monkeypatch):
    features = TfidfFeatures.fit(TRAIN)
    whole = features.transform(TRAIN + NEW)
    monkeypatch.setattr(features_module, "TRANSFORM_CHUNK", 3)
    chunked = features.transform(iter(TRAIN + NEW))
    assert chunked.shape == whole.shape and (chunked != whole).nnz == 0
    assert features.transform([]).shape == (0, features.num_features)


def test_save_load_round_trip_transforms_new_text_identically(tmp_path):
    features = TfidfFeatures.fit(TRAIN, ngram_max=1, lowercase=False)
    features.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["features.json", "features_idf.safetensors"]
    loaded = TfidfFeatures.load(tmp_path / "model")
    assert loaded.settings == features.settings and loaded.terms == features.terms
    assert loaded.fingerprint() == features.fingerprint()
    assert (loaded.transform(NEW) != features.transform(NEW)).nnz == 0
    assert "DOG" not in features.terms and "dog" in features.terms  # lowercase=False kept, and it matters


def test_fingerprint_follows_settings():
    assert TfidfFeatures.fit(TRAIN).fingerprint() == TfidfFeatures.fit(TRAIN).fingerprint()
    assert TfidfFeatures.fit(TRAIN).fingerprint() != TfidfFeatures.fit(TRAIN, ngram_max=1).fingerprint()


def test_bad_settings_and_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="unknown TF-IDF setting"):
        TfidfFeatures.fit(TRAIN, max_df=0.5)
    with pytest.raises(UserError, match="min_df"):
        TfidfFeatures.fit(TRAIN, min_df=0)
    with pytest.raises(UserError, match="min_df must be an integer"):
        TfidfFeatures.fit(TRAIN, min_df=0.5)
    with pytest.raises(UserError, match="TF-IDF features"):
        TfidfFeatures.fit(["one two", "three four"], min_df=2)  # nothing left
    with pytest.raises(UserError, match="not found"):
        TfidfFeatures.load(tmp_path)
    (tmp_path / "features.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a TF-IDF features file"):
        TfidfFeatures.load(tmp_path)


def test_transform_cached_reuses_and_repairs(tmp_path, monkeypatch):
    features = TfidfFeatures.fit(TRAIN)
    first = transform_cached(features, NEW, tmp_path, "k1")
    path = tmp_path / "k1.tfidf.npz"
    with np.load(path, allow_pickle=False) as saved:  # a plain, pickle-free npz
        assert set(saved.files) == {"format", "shape", "data", "indices", "indptr"}
    monkeypatch.setattr(TfidfFeatures, "transform", lambda self, texts: pytest.fail("cache not used"))
    again = transform_cached(features, NEW, tmp_path, "k1")
    assert (again != first).nnz == 0 and again.dtype == np.float32
    monkeypatch.undo()
    path.write_bytes(b"garbage")
    assert (transform_cached(features, NEW, tmp_path, "k1") != first).nnz == 0  # recomputed
    assert transform_cached(features, NEW[:2], tmp_path, "k1").shape[0] == 2  # wrong shape: recomputed


def test_cached_npz_with_pickled_arrays_is_not_unpickled(tmp_path):
    features = TfidfFeatures.fit(TRAIN)
    expected = features.transform(NEW)
    np.savez(tmp_path / "k.tfidf.npz", format=np.array(["csr", object()], dtype=object), shape=expected.shape,
             data=expected.data, indices=expected.indices, indptr=expected.indptr)
    assert (transform_cached(features, NEW, tmp_path, "k") != expected).nnz == 0  # refused, recomputed


def test_fit_cached_fits_once_and_reuses_the_features(tmp_path, monkeypatch):
    features = fit_cached(TRAIN, tmp_path, "fit", ngram_max=1)
    assert features.terms == TfidfFeatures.fit(TRAIN, ngram_max=1).terms
    monkeypatch.setattr(TfidfFeatures, "fit", lambda *a, **k: pytest.fail("cache not used"))
    assert fit_cached(TRAIN, tmp_path, "fit", ngram_max=1).fingerprint() == features.fingerprint()


def test_csr_rows_are_embedding_bag_input():
    matrix = sp.csr_matrix(np.array([[0, 0.5, 0, 0.25], [0, 0, 0, 0], [1.0, 0, 2.0, 0]], dtype=np.float32))
    indices, offsets, weights = CsrInputs(matrix).batch(np.array([2, 1, 0]), torch.device("cpu"))
    assert indices.dtype == offsets.dtype == torch.int64 and weights.dtype == torch.float32
    assert indices.tolist() == [0, 2, 1, 3] and offsets.tolist() == [0, 2, 2]
    assert weights.tolist() == [1.0, 2.0, 0.5, 0.25]
    bag = torch.nn.EmbeddingBag(4, 3, mode="sum")
    expected = torch.from_numpy(matrix[[2, 1, 0]].toarray()) @ bag.weight
    torch.testing.assert_close(bag(indices, offsets, per_sample_weights=weights), expected)
