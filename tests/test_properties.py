"""Property tests (hypothesis): the three data formats round-trip any text and label set they can carry, and the
metrics stay in [0, 1], ignore document order and label numbering, and agree with napkinxc on random cases."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcenet.data import iter_split
from lcenet.metrics import evaluate, inverse_propensity

# A few seconds per run; LCENET_PROPERTY_EXAMPLES=2000 for a longer search.
SETTINGS = settings(max_examples=int(os.environ.get("LCENET_PROPERTY_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---- readers ------------------------------------------------------------------------------------------------
# What each format cannot carry, and so is left out of the generated data:
# * lines and TSV: "\n" ends a document and "\r" before it is a CRLF line end, so neither is in a text (other
#   Unicode line breaks, e.g. U+2028 or U+0085, are ordinary characters there and are generated); TSV labels end
#   at the first tab, so a tab may be in a TSV text, never in a label.
# * labels of the lines and TSV formats are separated by whitespace (str.split: any Unicode whitespace), so a
#   label has none; JSONL labels are stripped, so they may hold inner spaces but not leading/trailing ones.
# * all formats: NUL bytes are refused (a binary or UTF-16 file), a text must not be empty or whitespace only
#   (refused), and a U+FEFF at the very start of a file (the first text or label) is taken as a byte order mark
#   and dropped.
# Repeated labels on one line are generated: readers keep the first of each, in order.

LINE_TEXT = st.text(st.characters(blacklist_characters="\n\r\x00", blacklist_categories=("Cs",)), min_size=1,
                    max_size=40).filter(lambda t: not t.isspace() and not t.startswith("\ufeff"))
ANY_TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1,
                   max_size=40).filter(lambda t: not t.isspace())
WORD_LABEL = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1,
                     max_size=8).filter(lambda label: not any(c.isspace() for c in label) and label[0] != "\ufeff")
JSON_LABEL = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8).filter(
    lambda label: label == label.strip() and label)


def documents(text, label):
    return st.lists(st.tuples(text, st.lists(label, min_size=1, max_size=5)), min_size=1, max_size=8)


def write(path: Path, lines: list[str], gz: bool) -> None:
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    if gz:
        data = gzip.compress(data)
    (path.parent / (path.name + (".gz" if gz else ""))).write_bytes(data)


def read_back(directory: Path) -> list[tuple[str, list[str]]]:
    docs = list(iter_split(directory, "train"))
    for path in directory.iterdir():
        path.unlink()
    return docs


def deduplicated(docs):
    return [(text, list(dict.fromkeys(labels))) for text, labels in docs]


@SETTINGS
@given(docs=documents(LINE_TEXT, WORD_LABEL), gz=st.booleans())
def test_lines_format_round_trips(tmp_path, docs, gz):
    write(tmp_path / "train_texts.txt", [text for text, _ in docs], gz)
    write(tmp_path / "train_labels.txt", [" ".join(labels) for _, labels in docs], gz)
    assert read_back(tmp_path) == deduplicated(docs)


@SETTINGS
@given(docs=documents(LINE_TEXT, WORD_LABEL), gz=st.booleans())
def test_tsv_format_round_trips(tmp_path, docs, gz):
    write(tmp_path / "train.tsv", [" ".join(labels) + "\t" + text for text, labels in docs], gz)
    assert read_back(tmp_path) == deduplicated(docs)


@SETTINGS
@given(docs=documents(ANY_TEXT, JSON_LABEL), gz=st.booleans(), ascii_only=st.booleans())
def test_jsonl_format_round_trips(tmp_path, docs, gz, ascii_only):
    write(tmp_path / "train.jsonl", [json.dumps({"text": text, "labels": labels}, ensure_ascii=ascii_only)
                                     for text, labels in docs], gz)
    assert read_back(tmp_path) == deduplicated(docs)


# ---- metrics ------------------------------------------------------------------------------------------------


@st.composite
def ranking_cases(draw):
    """(top [N, k] of distinct labels < L, truth CSR [N, L + unseen], train label frequencies, k)."""
    num_labels = draw(st.integers(1, 12))
    unseen = draw(st.integers(0, 3))
    num_docs = draw(st.integers(1, 15))
    k = draw(st.integers(1, min(5, num_labels)))
    top = np.array([draw(st.permutations(range(num_labels)))[:k] for _ in range(num_docs)], dtype=np.int64)
    sets = [sorted(draw(st.sets(st.integers(0, num_labels + unseen - 1), max_size=6))) for _ in range(num_docs)]
    indptr = np.cumsum([0] + [len(s) for s in sets])
    indices = np.array([label for s in sets for label in s], dtype=np.int64)
    truth = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(num_docs, num_labels + unseen))
    frequency = np.array(draw(st.lists(st.integers(0, 50), min_size=num_labels + unseen,
                                       max_size=num_labels + unseen)))
    return top, truth, frequency, k


def scores(top, truth, frequency, k) -> dict[str, float]:
    return evaluate(top, truth, ks=range(1, k + 1), inv_propensity=inverse_propensity(frequency, 100))


@SETTINGS
@given(case=ranking_cases())
def test_metrics_are_between_0_and_1(case):
    for name, value in scores(*case).items():
        assert 0.0 <= value <= 1.0 + 1e-12, name


@SETTINGS
@given(case=ranking_cases(), data=st.data())
def test_metrics_ignore_document_order_and_label_numbering(case, data):
    top, truth, frequency, k = case
    expected = scores(*case)
    order = np.array(data.draw(st.permutations(range(truth.shape[0]))))
    assert scores(top[order], truth[order], frequency, k) == pytest.approx(expected, abs=1e-12)

    rename = np.array(data.draw(st.permutations(range(truth.shape[1]))))  # column c becomes rename[c]
    relabelled = sp.csr_matrix((truth.data, rename[truth.indices], truth.indptr), shape=truth.shape)
    moved = np.empty_like(frequency)
    moved[rename] = frequency
    assert scores(rename[top], relabelled, moved, k) == pytest.approx(expected, abs=1e-12)


@SETTINGS
@given(case=ranking_cases())
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_metrics_agree_with_napkinxc(case):
    nxc = pytest.importorskip("napkinxc.metrics")
    top, truth, frequency, k = case
    ours = scores(*case)
    inv_ps = inverse_propensity(frequency, 100)
    pred = top.tolist()  # napkinxc reads a list of label lists as a ranking (an array would be scores)
    theirs = {"P": nxc.precision_at_k(truth, pred, k=k), "nDCG": nxc.ndcg_at_k(truth, pred, k=k),
              "R": nxc.recall_at_k(truth, pred, k=k), "PSP": nxc.psprecision_at_k(truth, pred, inv_ps, k=k),
              "PSnDCG": nxc.psndcg_at_k(truth, pred, inv_ps, k=k)}
    for metric, values in theirs.items():
        for j in range(k):
            if np.isnan(values[j]):  # napkinxc's 0/0 when no document has a relevant label; ours is 0 (documented)
                assert truth.nnz == 0 and ours[f"{metric}@{j + 1}"] == 0.0
            else:
                assert ours[f"{metric}@{j + 1}"] == pytest.approx(values[j], abs=1e-9), (metric, j + 1)
