"""Tests for lcenet.data: formats, validation errors (file and line), dev carving, vocabulary, truth CSR."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from lcenet.data import find_split, iter_split, labels_to_csr, load_dataset
from lcenet.errors import DataError

DOCS = [
    ("the first text", ["a", "b"]),
    ("second text here", ["b"]),
    ("third, with punctuation!", ["c", "a", "b"]),
    ("fourth", ["b", "d"]),
]


class Raw(bytes):
    """File content written as is, even to a .gz name."""


def write(path: Path, content: str | bytes) -> Path:
    """Write ``content`` (gzip-compressed when the name ends in .gz, unless it is Raw)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz") and not isinstance(content, Raw):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_split(directory: Path, split: str, docs, fmt: str = "lines", gz: bool = False) -> None:
    ext = ".gz" if gz else ""
    if fmt == "lines":
        write(directory / f"{split}_texts.txt{ext}", "".join(f"{t}\n" for t, _ in docs))
        write(directory / f"{split}_labels.txt{ext}", "".join(" ".join(ls) + "\n" for _, ls in docs))
    elif fmt == "tsv":
        write(directory / f"{split}.tsv{ext}", "".join(f"{' '.join(ls)}\t{t}\n" for t, ls in docs))
    else:
        write(
            directory / f"{split}.jsonl{ext}",
            "".join(json.dumps({"text": t, "labels": ls, "id": i}) + "\n" for i, (t, ls) in enumerate(docs)),
        )


def make_dataset(directory: Path, train=DOCS, test=DOCS[:2], dev=None, fmt="lines", gz=False) -> Path:
    write_split(directory, "train", train, fmt, gz)
    write_split(directory, "test", test, fmt, gz)
    if dev is not None:
        write_split(directory, "dev", dev, fmt, gz)
    return directory


# ----------------------------------------------------------------------------------------------------------
# Good input
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["lines", "tsv", "jsonl"])
@pytest.mark.parametrize("gz", [False, True])
def test_each_format_reads(tmp_path, fmt, gz):
    make_dataset(tmp_path, dev=DOCS[1:3], fmt=fmt, gz=gz)
    assert find_split(tmp_path, "train").fmt == fmt
    assert list(iter_split(tmp_path, "train")) == DOCS
    ds = load_dataset(tmp_path)
    assert list(ds.train.texts) == [t for t, _ in DOCS]
    assert list(ds.dev.texts) == [t for t, _ in DOCS[1:3]]
    assert list(ds.test.texts) == [t for t, _ in DOCS[:2]]
    assert not ds.dev_from_train


def test_tsv_text_may_contain_tabs_and_crlf_is_stripped(tmp_path):
    write(tmp_path / "train.tsv", "a b\tleft\tright\r\nc\tx\r\n")
    assert list(iter_split(tmp_path, "train")) == [("left\tright", ["a", "b"]), ("x", ["c"])]


def test_formats_can_differ_between_splits(tmp_path):
    write_split(tmp_path, "train", DOCS, "tsv", gz=True)
    write_split(tmp_path, "test", DOCS[:1], "jsonl")
    write_split(tmp_path, "dev", DOCS[1:2], "lines")
    ds = load_dataset(tmp_path)
    assert (len(ds.train), len(ds.dev), len(ds.test)) == (4, 1, 1)


def test_repeated_labels_are_deduplicated_in_order(tmp_path):
    write(tmp_path / "train_texts.txt", "x\ny\n")
    write(tmp_path / "train_labels.txt", "b a  b a c\nq  q\n")
    assert list(iter_split(tmp_path, "train")) == [("x", ["b", "a", "c"]), ("y", ["q"])]
    write(tmp_path / "test.jsonl", json.dumps({"text": "t", "labels": ["z", "y", "z"]}) + "\n")
    assert list(iter_split(tmp_path, "test")) == [("t", ["z", "y"])]


def test_iter_split_is_lazy(tmp_path):
    write(tmp_path / "train.tsv", "a\tone\nb\ttwo\nbroken line\n")
    it = iter_split(tmp_path, "train")
    assert next(it) == ("one", ["a"])
    assert next(it) == ("two", ["b"])
    with pytest.raises(DataError, match=r"train\.tsv:3:"):
        next(it)


def test_label_vocabulary_truth_and_csr(tmp_path, caplog):
    train = [("t1", ["b", "a"]), ("t2", ["b"]), ("t3", ["c", "b", "a"]), ("t4", ["z"])]
    dev = [("d1", ["a", "new1"]), ("d2", ["new2", "new1"])]
    test = [("e1", ["new3", "c"]), ("e2", ["b"])]
    make_dataset(tmp_path, train=train, dev=dev, test=test)
    with caplog.at_level(logging.WARNING, logger="lcenet"):
        ds = load_dataset(tmp_path)
    # Descending train frequency, ties by name; only train labels.
    assert ds.label_names == ["b", "a", "c", "z"]
    assert ds.label_frequency.tolist() == [3, 2, 1, 1]
    assert ds.unseen_labels == ["new1", "new2", "new3"]
    assert ds.num_labels == 4 and ds.num_truth_columns == 7

    for split, n_cols in ((ds.train, 4), (ds.dev, 7), (ds.test, 7)):
        assert sp.isspmatrix_csr(split.labels)
        assert split.labels.dtype == np.float32
        assert split.labels.shape == (len(split.texts), n_cols)
        assert np.all(split.labels.data == 1.0)
    assert ds.train.labels.toarray().tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]
    assert ds.dev.labels.toarray().tolist() == [[0, 1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0]]
    assert ds.test.labels.toarray().tolist() == [[0, 0, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 0]]

    warnings = [r.getMessage() for r in caplog.records if r.name == "lcenet"]
    assert warnings == [
        "dev: 2 labels never seen in train (kept as misses)",
        "test: 1 labels never seen in train (kept as misses)",
    ]


def test_no_warning_when_all_labels_seen(tmp_path, caplog):
    make_dataset(tmp_path, dev=DOCS[:1])
    with caplog.at_level(logging.WARNING, logger="lcenet"):
        ds = load_dataset(tmp_path)
    assert ds.unseen_labels == [] and not caplog.records
    assert ds.test.labels.shape == (2, ds.num_labels)


def _many_docs(n: int):
    return [(f"doc {i}", [f"l{i % 7}", f"u{i}"] if i % 5 == 0 else [f"l{i % 7}"]) for i in range(n)]


def test_dev_carved_from_train_deterministically(tmp_path):
    docs = _many_docs(50)
    make_dataset(tmp_path, train=docs, test=[("test doc", ["l1"])])
    ds = load_dataset(tmp_path, dev_fraction=0.2, dev_seed=3)
    again = load_dataset(tmp_path, dev_fraction=0.2, dev_seed=3)
    other = load_dataset(tmp_path, dev_fraction=0.2, dev_seed=4)
    assert ds.dev_from_train
    assert len(ds.dev) == 10 and len(ds.train) == 40
    assert list(ds.dev.texts) == list(again.dev.texts) and list(ds.train.texts) == list(again.train.texts)
    assert list(ds.dev.texts) != list(other.dev.texts)
    assert ds.source_hash == again.source_hash != other.source_hash
    assert not set(ds.dev.texts) & set(ds.train.texts)
    assert sorted([*ds.dev.texts, *ds.train.texts]) == sorted(t for t, _ in docs)
    # Order within each part follows the file.
    order = {t: i for i, (t, _) in enumerate(docs)}
    assert [order[t] for t in ds.dev.texts] == sorted(order[t] for t in ds.dev.texts)

    # Vocabulary from the remaining train docs only; labels only in the carved dev are unseen.
    by_text = dict(docs)
    train_labels = {label for t in ds.train.texts for label in by_text[t]}
    assert set(ds.label_names) == train_labels
    dev_only = {label for t in ds.dev.texts for label in by_text[t]} - train_labels
    assert set(ds.unseen_labels) == dev_only and dev_only  # the u{i} labels are unique to a doc
    # Dev truth rows match the doc's labels.
    columns = ds.label_names + ds.unseen_labels
    for row, text in enumerate(ds.dev.texts):
        got = {columns[j] for j in ds.dev.labels[row].indices}
        assert got == set(by_text[text])
    for row, text in enumerate(ds.train.texts):
        assert {ds.label_names[j] for j in ds.train.labels[row].indices} == set(by_text[text])


def test_dev_carving_takes_at_least_one_doc(tmp_path):
    make_dataset(tmp_path, train=DOCS)
    ds = load_dataset(tmp_path, dev_fraction=0.01)
    assert len(ds.dev) == 1 and len(ds.train) == 3


def test_cannot_carve_dev_from_one_train_doc(tmp_path):
    make_dataset(tmp_path, train=DOCS[:1])
    with pytest.raises(DataError, match="train_texts.txt"):
        load_dataset(tmp_path)


def test_max_docs_caps_each_split_and_changes_hash(tmp_path):
    make_dataset(tmp_path, train=_many_docs(30), test=_many_docs(10), dev=_many_docs(8))
    full = load_dataset(tmp_path)
    capped = load_dataset(tmp_path, max_docs={"train": 5, "test": 3})
    assert (len(capped.train), len(capped.dev), len(capped.test)) == (5, 8, 3)
    assert list(capped.train.texts) == full.train.texts[:5]
    assert capped.source_hash != full.source_hash
    assert load_dataset(tmp_path).source_hash == full.source_hash


def _label_names(split, row, dataset) -> set[str]:
    names = dataset.label_names + dataset.unseen_labels
    return {names[column] for column in split.labels[row].indices}


def test_sample_seed_draws_a_random_subset_in_file_order(tmp_path):
    make_dataset(tmp_path, train=_many_docs(40), test=_many_docs(20), dev=_many_docs(20))
    full = load_dataset(tmp_path)
    caps = {"train": 10, "dev": 5, "test": 5}
    sampled = load_dataset(tmp_path, max_docs=caps, sample_seed=1)
    first_n = load_dataset(tmp_path, max_docs=caps)
    for name in ("train", "dev", "test"):
        whole, subset = getattr(full, name), getattr(sampled, name)
        assert len(subset) == caps[name] and list(subset.texts) != list(getattr(first_n, name).texts)
        rows = [whole.texts.index(text) for text in subset.texts]
        assert rows == sorted(rows)  # file order kept
        for i, row in enumerate(rows):  # each text keeps its own labels
            assert _label_names(subset, i, sampled) == _label_names(whole, row, full)
    again = load_dataset(tmp_path, max_docs=caps, sample_seed=1)
    assert list(again.train.texts) == list(sampled.train.texts) and again.source_hash == sampled.source_hash
    other = load_dataset(tmp_path, max_docs=caps, sample_seed=2)
    assert list(other.train.texts) != list(sampled.train.texts)
    assert len({sampled.source_hash, other.source_hash, first_n.source_hash}) == 3
    # without max_docs the seed changes nothing, not even the cache key
    assert load_dataset(tmp_path, sample_seed=1).source_hash == full.source_hash


def test_source_hash_follows_file_bytes(tmp_path):
    make_dataset(tmp_path)
    before = load_dataset(tmp_path).source_hash
    write(tmp_path / "test_texts.txt", "the first text\nsecond text changed\n")
    assert load_dataset(tmp_path).source_hash != before


def test_labels_to_csr():
    index = {"a": 0, "b": 1, "c": 2}
    m = labels_to_csr([["a", "c", "a"], [], ["b"]], index, 4)
    assert m.shape == (3, 4) and m.dtype == np.float32
    assert m.toarray().tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    with pytest.raises(ValueError, match="'x'"):
        labels_to_csr([["x"]], index, 3)
    assert labels_to_csr([["x", "b"]], index, 3, ignore_unknown=True).toarray().tolist() == [[0, 1, 0]]
    assert labels_to_csr([], index, 3).shape == (0, 3)


# ----------------------------------------------------------------------------------------------------------
# Bad input: DataError naming the file and the 1-based line
# ----------------------------------------------------------------------------------------------------------

GOOD_TEXTS = "one\ntwo\nthree\n"
GOOD_LABELS = "a\nb\nc\n"

# (files to write into the train split, file named in the error, line)
BAD_CASES = {
    "labels file shorter": (
        {"train_texts.txt": GOOD_TEXTS, "train_labels.txt": "a\nb\n"},
        "train_labels.txt",
        3,
    ),
    "texts file shorter": (
        {"train_texts.txt": "one\n", "train_labels.txt": GOOD_LABELS},
        "train_texts.txt",
        2,
    ),
    "empty labels file": ({"train_texts.txt": GOOD_TEXTS, "train_labels.txt": ""}, "train_labels.txt", 1),
    "empty text": (
        {"train_texts.txt": "one\n\nthree\n", "train_labels.txt": GOOD_LABELS},
        "train_texts.txt",
        2,
    ),
    "whitespace text": (
        {"train_texts.txt": "one\ntwo\n \t \n", "train_labels.txt": GOOD_LABELS},
        "train_texts.txt",
        3,
    ),
    "empty label line": (
        {"train_texts.txt": GOOD_TEXTS, "train_labels.txt": "a\n  \nc\n"},
        "train_labels.txt",
        2,
    ),
    "invalid utf8 text": (
        {"train_texts.txt": b"one\ntw\xff\xfeo\nthree\n", "train_labels.txt": GOOD_LABELS},
        "train_texts.txt",
        2,
    ),
    "invalid utf8 labels gz": (
        {"train_texts.txt.gz": GOOD_TEXTS, "train_labels.txt.gz": b"a\nb\n\xc3\n"},
        "train_labels.txt.gz",
        3,
    ),
    "tsv without tab": ({"train.tsv": "a\tone\nb two\n"}, "train.tsv", 2),
    "tsv empty text": ({"train.tsv": "a\tone\nb\t\n"}, "train.tsv", 2),
    "tsv empty labels": ({"train.tsv.gz": "a\tone\nb\ttwo\n \tthree\n"}, "train.tsv.gz", 3),
    "tsv invalid utf8": ({"train.tsv": b"a\t\xe9t\xe9\n"}, "train.tsv", 1),
    "jsonl invalid json": ({"train.jsonl": '{"text": "x", "labels": ["a"]}\n{"text": \n'}, "train.jsonl", 2),
    "jsonl not an object": ({"train.jsonl": '["x", ["a"]]\n'}, "train.jsonl", 1),
    "jsonl missing text": (
        {"train.jsonl": '{"text": "x", "labels": ["a"]}\n{"labels": ["a"]}\n'},
        "train.jsonl",
        2,
    ),
    "jsonl text not str": ({"train.jsonl": '{"text": 5, "labels": ["a"]}\n'}, "train.jsonl", 1),
    "jsonl empty text": ({"train.jsonl": '{"text": "  ", "labels": ["a"]}\n'}, "train.jsonl", 1),
    "jsonl missing labels": ({"train.jsonl": '{"text": "x"}\n'}, "train.jsonl", 1),
    "jsonl labels not list": ({"train.jsonl": '{"text": "x", "labels": "a b"}\n'}, "train.jsonl", 1),
    "jsonl label not str": ({"train.jsonl": '{"text": "x", "labels": ["a", 3]}\n'}, "train.jsonl", 1),
    "jsonl empty labels": (
        {"train.jsonl.gz": '{"text": "x", "labels": ["a"]}\n{"text": "y", "labels": []}\n'},
        "train.jsonl.gz",
        2,
    ),
    "jsonl blank line": ({"train.jsonl": '{"text": "x", "labels": ["a"]}\n\n'}, "train.jsonl", 2),
    "jsonl invalid utf8": ({"train.jsonl": b'{"text": "\xff", "labels": ["a"]}\n'}, "train.jsonl", 1),
    "not gzip at all": ({"train.tsv.gz": Raw(b"a\tplain text, not gzip\n")}, "train.tsv.gz", 1),
}


def _gz_bytes(text: str) -> bytes:
    return gzip.compress(text.encode("utf-8"))


@pytest.mark.parametrize("case", sorted(BAD_CASES))
@pytest.mark.parametrize("via", ["iter_split", "load_dataset"])
def test_bad_input_names_file_and_line(tmp_path, case, via):
    files, bad_name, line = BAD_CASES[case]
    for name, content in files.items():
        write(tmp_path / name, content)
    write_split(tmp_path, "test", DOCS[:2])
    with pytest.raises(DataError) as info:
        if via == "iter_split":
            list(iter_split(tmp_path, "train"))
        else:
            load_dataset(tmp_path)
    err = info.value
    assert Path(err.path).name == bad_name
    assert err.line == line
    assert f"{bad_name}:{line}: " in str(err)


def test_error_in_test_split_is_reported(tmp_path):
    write_split(tmp_path, "train", DOCS)
    write(tmp_path / "test.tsv", "a\tok\nno tab here\n")
    with pytest.raises(DataError, match=r"test\.tsv:2: malformed TSV"):
        load_dataset(tmp_path)


def test_truncated_gzip_is_a_data_error(tmp_path):
    data = _gz_bytes("".join(f"label{i}\ttext number {i} " * 20 + "\n" for i in range(2000)))
    write(tmp_path / "train.tsv.gz", Raw(data[: len(data) // 2]))
    with pytest.raises(DataError, match=r"train\.tsv\.gz:\d+: corrupt gzip") as info:
        list(iter_split(tmp_path, "train"))
    assert info.value.line > 1


def test_corrupt_gzip_data_is_a_data_error(tmp_path):
    data = bytearray(_gz_bytes("a\tsome text that compresses\n" * 500))
    data[30:60] = b"\x00" * 30  # damage the deflate stream
    write(tmp_path / "train.tsv.gz", Raw(data))
    with pytest.raises(DataError, match=r"train\.tsv\.gz:\d+: "):
        list(iter_split(tmp_path, "train"))


def test_empty_split_is_a_data_error(tmp_path):
    write(tmp_path / "train.tsv", "")
    write_split(tmp_path, "test", DOCS)
    with pytest.raises(DataError, match=r"train\.tsv: .*no documents"):
        load_dataset(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# Bad directories
# ----------------------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as info:
        load_dataset(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        list(iter_split(missing, "train"))


def test_file_instead_of_directory(tmp_path):
    path = write(tmp_path / "train.tsv", "a\tb\n")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(path)


@pytest.mark.parametrize("missing", ["train", "test"])
def test_missing_required_split(tmp_path, missing):
    present = "test" if missing == "train" else "train"
    write_split(tmp_path, present, DOCS)
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path}: ") and f"missing '{missing}' split" in msg
    assert f"{missing}_texts.txt" in msg and f"{missing}.tsv" in msg and f"{missing}.jsonl" in msg


def test_missing_dev_split_via_iter_split(tmp_path):
    make_dataset(tmp_path)
    with pytest.raises(DataError, match="missing 'dev' split"):
        list(iter_split(tmp_path, "dev"))


def test_unknown_format(tmp_path):
    write(tmp_path / "data.csv", "a,b\n")
    write(tmp_path / "train.txt", "x\n")
    with pytest.raises(DataError, match="unknown data set format") as info:
        load_dataset(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path}: ") and "data.csv" in msg and "train_texts.txt" in msg


@pytest.mark.parametrize(
    "names",
    [
        ["train.tsv", "train.jsonl"],
        ["train.tsv", "train.tsv.gz"],
        ["train_texts.txt", "train_labels.txt", "train.jsonl.gz"],
        ["train_texts.txt", "train_texts.txt.gz", "train_labels.txt"],
    ],
)
def test_ambiguous_split(tmp_path, names):
    for name in names:
        write(tmp_path / name, "a\tb\n")
    write_split(tmp_path, "test", DOCS)
    with pytest.raises(DataError, match="ambiguous 'train' split") as info:
        load_dataset(tmp_path)
    for name in names:
        assert name in str(info.value)


def test_half_of_a_line_aligned_pair(tmp_path):
    write(tmp_path / "train_texts.txt.gz", "x\n")
    write_split(tmp_path, "test", DOCS)
    with pytest.raises(DataError, match="train_texts.txt.gz but no train_labels.txt"):
        load_dataset(tmp_path)
