"""Tests for lcenet.text: word tokenizer training, encoding (ours and a BERT-like WordPiece), caching."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel, WordPiece

import lcenet.text as text_mod
from lcenet.errors import UserError
from lcenet.text import (
    cache_key,
    default_cache_dir,
    encode,
    encode_cached,
    load_tokenizer,
    pad_token_id,
    tokenizer_fingerprint,
    train_word_tokenizer,
    word_tokenizer_cached,
)

CORPUS = [
    "The cat sat on the mat.",
    "The dog sat on the log!",
    "A cat and a dog (and a bird), on the mat.",
    "Rare-word zebra appears once.",
] * 3 + ["unique"]


@pytest.fixture(scope="module")
def word_tok() -> Tokenizer:
    return train_word_tokenizer(iter(CORPUS), vocab_size=1000, min_frequency=2)


def bert_like() -> Tokenizer:
    vocab = {
        "[PAD]": 0,
        "[UNK]": 1,
        "[CLS]": 2,
        "[SEP]": 3,
        "hello": 4,
        "world": 5,
        "wor": 6,
        "##ld": 7,
        "!": 8,
        "the": 9,
        "cat": 10,
        "##s": 11,
    }
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok


# ----------------------------------------------------------------------------------------------------------
# Tokenizer training and loading
# ----------------------------------------------------------------------------------------------------------


def test_word_tokenizer_special_tokens_and_vocab(word_tok):
    assert word_tok.token_to_id("[PAD]") == 0
    assert word_tok.token_to_id("[UNK]") == 1
    assert pad_token_id(word_tok) == 0
    vocab = word_tok.get_vocab()
    assert {"the", "cat", "mat", ".", "!", "(", "),"} <= set(vocab)  # lowercased words and punctuation
    assert "The" not in vocab
    assert "unique" not in vocab  # below min_frequency
    assert word_tok.encode("unique cat").ids == [1, vocab["cat"]]


def test_word_tokenizer_normalizes_nfkc_and_lowercase(word_tok):
    # NFKC maps full-width letters to ASCII; then lowercase.
    assert word_tok.encode("ＣＡＴ Mat").ids == word_tok.encode("cat mat").ids
    cased = train_word_tokenizer(CORPUS, min_frequency=1, lowercase=False)
    assert cased.token_to_id("The") is not None and cased.token_to_id("unique") is not None


def test_word_tokenizer_vocab_size_counts_special_tokens():
    tok = train_word_tokenizer(CORPUS, vocab_size=5, min_frequency=1)
    assert tok.get_vocab_size() == 5
    with pytest.raises(UserError):
        train_word_tokenizer(CORPUS, vocab_size=2)


def test_load_tokenizer_round_trip(tmp_path, word_tok):
    path = tmp_path / "tokenizer.json"
    word_tok.save(str(path))
    loaded = load_tokenizer(path)
    assert loaded.get_vocab() == word_tok.get_vocab()
    assert load_tokenizer(tmp_path).get_vocab() == word_tok.get_vocab()  # a checkpoint directory
    assert load_tokenizer(str(path)).encode("the cat").ids == word_tok.encode("the cat").ids


def test_load_tokenizer_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(UserError, match="nope.json"):
        load_tokenizer(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a tokenizer"')
    with pytest.raises(UserError, match="bad.json"):
        load_tokenizer(bad)
    with pytest.raises(UserError, match="tokenizer.json"):
        load_tokenizer(tmp_path)  # a directory without tokenizer.json


def test_pad_token_id_fallbacks():
    tok = Tokenizer(WordLevel({"a": 0, "<pad>": 1, "<unk>": 2}, unk_token="<unk>"))
    assert pad_token_id(tok) == 1
    tok = Tokenizer(WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    assert pad_token_id(tok) == 0
    tok.enable_padding(pad_id=2, pad_token="<unk>")
    assert pad_token_id(tok) == 2


# ----------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------


def test_encode_pads_and_truncates(word_tok):
    ids = encode(word_tok, ["the cat sat on the mat.", "cat", "unique zebra!"], max_length=4)
    assert ids.dtype == np.int32 and ids.shape == (3, 4)
    v = word_tok.get_vocab()
    assert ids.tolist() == [
        [v["the"], v["cat"], v["sat"], v["on"]],
        [v["cat"], 0, 0, 0],
        [1, v["zebra"], v["!"], 0],
    ]
    assert encode(word_tok, [], max_length=4).shape == (0, 4)


def test_encode_leaves_the_callers_tokenizer_alone(word_tok):
    tok = Tokenizer.from_str(word_tok.to_str())
    tok.enable_padding(length=2, pad_id=0, pad_token="[PAD]")
    before = (tok.padding, tok.truncation)
    encode(tok, ["the cat sat"], max_length=6)
    assert (tok.padding, tok.truncation) == before
    assert len(tok.encode("the cat sat on").ids) == 4


def test_encode_small_batches_match(word_tok):
    texts = [f"the cat {'sat ' * (i % 5)} on the mat" for i in range(23)]
    assert np.array_equal(encode(word_tok, texts, 6, batch_size=4), encode(word_tok, texts, 6))


def test_encode_bert_like_wordpiece_adds_special_tokens():
    tok = bert_like()
    ids = encode(tok, ["Hello world!", "the CATS", "hello hello hello hello hello"], max_length=6)
    assert ids.tolist() == [
        [2, 4, 5, 8, 3, 0],
        [2, 9, 10, 11, 3, 0],
        [2, 4, 4, 4, 4, 3],  # truncation keeps room for [SEP]
    ]
    assert pad_token_id(tok) == 0
    assert encode(tok, ["hello world"], max_length=1).shape == (1, 1)


@pytest.mark.parametrize("make", [bert_like, lambda: train_word_tokenizer(CORPUS, min_frequency=1)])
def test_long_texts_are_encoded_as_if_not_cut(monkeypatch, make):
    tok = make()
    rng = np.random.default_rng(0)
    words = ["hello", "world", "the", "cat", "cats", "!", "mat", "zebra", "x" * 40, "worldworld"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 400)))) for _ in range(60)]
    texts.append("y" * 5000)  # no space to cut at
    texts.append(("z" * 60 + " ") * 50)  # long words: the cut text does not fill the row
    got = {ml: encode(tok, texts, ml) for ml in (3, 16, 64)}
    monkeypatch.setattr(text_mod, "_CHARS_PER_TOKEN", 10**9)  # never cut
    for ml, ids in got.items():
        assert np.array_equal(ids, encode(tok, texts, ml))


# ----------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------


def test_cache_key_and_default_dir(monkeypatch, tmp_path):
    key = cache_key("a", "bc")
    assert len(key) == 24 and int(key, 16) >= 0
    assert key == cache_key("a", "bc") != cache_key("ab", "c")
    monkeypatch.setenv("LCENET_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LCENET_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "lcenet"


def test_tokenizer_fingerprint(word_tok):
    assert tokenizer_fingerprint(word_tok) == tokenizer_fingerprint(Tokenizer.from_str(word_tok.to_str()))
    assert tokenizer_fingerprint(word_tok) != tokenizer_fingerprint(bert_like())


def test_encode_cached_reuses_file(tmp_path, monkeypatch, word_tok):
    texts = ["the cat sat", "on the mat", "dog"]
    first = encode_cached(word_tok, texts, 5, tmp_path, "k1")
    path = tmp_path / "k1.npy"
    assert path.is_file() and os.listdir(tmp_path) == ["k1.npy"]  # no temp files left
    mtime = path.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("encode must not run on a cache hit")

    monkeypatch.setattr(text_mod, "encode", boom)
    second = encode_cached(word_tok, texts, 5, tmp_path, "k1")
    assert isinstance(second, np.memmap) and not second.flags.writeable
    assert np.array_equal(first, second) and second.dtype == np.int32
    assert path.stat().st_mtime_ns == mtime


def test_encode_cached_recomputes_a_mismatched_or_damaged_file(tmp_path, word_tok):
    texts = ["the cat sat", "dog"]
    np.save(tmp_path / "k.npy", np.zeros((5, 5), dtype=np.int32))
    ids = np.array(encode_cached(word_tok, texts, 4, tmp_path, "k"))  # a copy: the file is damaged in place below
    assert ids.shape == (2, 4) and np.array_equal(ids, encode(word_tok, texts, 4))
    (tmp_path / "k.npy").write_bytes(b"\x93NUMPY garbage")
    assert np.array_equal(encode_cached(word_tok, texts, 4, tmp_path, "k"), ids)
    assert np.load(tmp_path / "k.npy").shape == (2, 4)


def test_encode_cached_writes_in_chunks_and_a_failure_leaves_nothing(tmp_path, monkeypatch, word_tok):
    texts = ["the cat sat", "on the mat", "dog", "the dog sat on the cat"]
    monkeypatch.setattr(text_mod, "ENCODE_CHUNK_DOCS", 3)  # chunks of 3 + 1 documents
    ids = encode_cached(word_tok, texts, 4, tmp_path / "a", "k")
    assert np.array_equal(ids, encode(word_tok, texts, 4))
    calls = []
    original = text_mod.encode

    def fail_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(*args, **kwargs)

    monkeypatch.setattr(text_mod, "encode", fail_on_second_chunk)
    with pytest.raises(OSError, match="disk full"):
        encode_cached(word_tok, texts, 4, tmp_path / "b", "k")
    assert os.listdir(tmp_path / "b") == []  # no partial cache file, no temp file


def test_word_tokenizer_cached(tmp_path, monkeypatch):
    first = word_tokenizer_cached(CORPUS, tmp_path, "tok", min_frequency=1)
    assert os.listdir(tmp_path) == ["tok.tokenizer.json"]

    def boom(*args, **kwargs):
        raise AssertionError("must not train again")

    monkeypatch.setattr(text_mod, "train_word_tokenizer", boom)
    second = word_tokenizer_cached(CORPUS, tmp_path, "tok", min_frequency=1)
    assert second.get_vocab() == first.get_vocab()
    assert pad_token_id(second) == 0
