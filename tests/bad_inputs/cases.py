"""The bad-input corpus: every kind of broken (or merely unusual) input lcenet must handle, kept as data.

Each case writes its files at test time from the byte literals below: CRLF, a BOM, NUL bytes and invalid UTF-8
would not survive git's and editors' line-ending handling as committed files, and a 50 MB line or a truncated
gzip stream are too big or too binary to commit. ``tests/test_bad_inputs.py`` drives every case through the
real CLI; a server's tests can reuse the "model" and "input" cases (a damaged model directory, a request body).

A case is either *rejected* -- one line ``error: FILE:LINE: problem``, exit 2, no traceback, nothing
half-written -- or *accepted* because the input is legitimate (a BOM, CRLF line ends, repeated labels, tabs
inside TSV text, a very long document); an accepted case must then read exactly like its ``same_as`` files.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ANY_LINE = 0  # Rejected.line: the error names some line, which one depends on buffer sizes (truncated gzip)

# The valid data set the "data" cases start from. Only the test split is written by default; a case supplies
# the train split (so that it can use any format), or overrides or deletes (None) the test files.
TRAIN_TEXTS = b"milk cheese cow\nfishing sea quota\ntax duty import\nwine grape\naid fund budget\nmilk wine\n"
TRAIN_LABELS = b"milk\nfish tax\ntax\nwine\naid\nmilk wine\n"
TEST_FILES = {"test_texts.txt": b"milk cow\ntax tariff\nwine vineyard\n", "test_labels.txt": b"milk\ntax\nwine\n"}
TRAIN = {"train_texts.txt": TRAIN_TEXTS, "train_labels.txt": TRAIN_LABELS}
HUGE_LINE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class Rejected:
    file: str  # the name of the file (or directory) the error must name
    line: int | None  # the 1-based line it must name; None when the problem is the whole file; or ANY_LINE
    problem: str  # a fragment of the problem's description


@dataclass(frozen=True)
class Accepted:
    same_as: dict[str, bytes | None]  # the same content written plainly; the case must read exactly like it
    same_texts: bool = True  # False: only the outcome (document/label/vocabulary counts) must match


# File name -> its content; or a function of the file's path (to damage a file that is there, or to make a large
# one only when needed); or None to delete the file.
Files = dict[str, "bytes | Callable[[Path], bytes] | None"]


@dataclass(frozen=True)
class Case:
    """``target`` says where ``files`` go and which commands see them:

    * "data": a data set directory (over TEST_FILES) -> ``train``, ``preprocess`` (and ``evaluate`` when the
      bad file is a test file);
    * "config": ``config.yaml`` and/or ``args`` -> ``train``;
    * "model": over a copy of a trained model directory (None deletes a file) -> ``predict``, ``evaluate``;
    * "input": ``input.txt`` -> ``predict --input``.
    """

    name: str
    target: str
    files: Files
    expect: Rejected | Accepted
    args: tuple[str, ...] = field(default=())


def write_files(directory: Path, files: Files) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(content(path) if callable(content) else content)


def _truncated_gzip(_: Path) -> bytes:
    data = gzip.compress(b"".join(b"tax\ttax duty import number %d\n" % i for i in range(20_000)), mtime=0)
    return data[: len(data) // 2]


def _huge_line(_: Path) -> bytes:
    """A 50 MB document (one line, no tokenizer-friendly length): legitimate, cut to max_length tokens."""
    words = b"tax tariff "
    return b"milk cow\n" + words * (HUGE_LINE_BYTES // len(words)) + b"\nwine vineyard\n"


def _jsonl(docs) -> bytes:
    return b"".join(json.dumps({"text": text, "labels": labels}).encode() + b"\n" for text, labels in docs)


CASES: list[Case] = [
    # ---- data sets ----------------------------------------------------------------------------------------
    Case("labels file shorter than texts", "data",
         {**TRAIN, "train_labels.txt": b"milk\nfish tax\ntax\nwine\naid\n"},
         Rejected("train_labels.txt", 6, "same number of lines")),
    Case("texts file shorter than labels", "data",
         {**TRAIN, "train_texts.txt": b"milk cheese cow\nfishing sea quota\n"},
         Rejected("train_texts.txt", 3, "same number of lines")),
    Case("empty text", "data", {**TRAIN, "train_texts.txt": TRAIN_TEXTS.replace(b"tax duty import", b"")},
         Rejected("train_texts.txt", 3, "empty text")),
    Case("empty label line", "data", {**TRAIN, "train_labels.txt": TRAIN_LABELS.replace(b"fish tax", b"  ")},
         Rejected("train_labels.txt", 2, "empty label line")),
    Case("invalid UTF-8 (Latin-1 text)", "data",
         {**TRAIN, "train_texts.txt": TRAIN_TEXTS.replace(b"wine grape", b"wine gr\xe4pe")},
         Rejected("train_texts.txt", 4, "invalid UTF-8")),
    Case("UTF-16 file", "data", {**TRAIN, "train_texts.txt": TRAIN_TEXTS.decode().encode("utf-16")},
         Rejected("train_texts.txt", 1, "invalid UTF-8")),
    Case("NUL bytes", "data", {**TRAIN, "train_texts.txt": TRAIN_TEXTS.replace(b"sea", b"s\x00ea")},
         Rejected("train_texts.txt", 2, "NUL byte")),
    Case("empty label line in the test split", "data", {**TRAIN, "test_labels.txt": b"milk\n\nwine\n"},
         Rejected("test_labels.txt", 2, "empty label line")),
    Case("empty files", "data", {"train_texts.txt": b"", "train_labels.txt": b""},
         Rejected("train_texts.txt", None, "no documents")),
    Case("TSV line without a tab", "data", {"train.tsv": b"milk\tmilk cheese\nfish tax fishing sea\n"},
         Rejected("train.tsv", 2, "no tab")),
    Case("malformed JSONL", "data", {"train.jsonl": b'{"text": "milk", "labels": ["milk"]}\n{"text": "tax",\n'},
         Rejected("train.jsonl", 2, "invalid JSON")),
    Case("JSONL labels not a list", "data", {"train.jsonl": b'{"text": "milk", "labels": "milk cow"}\n'},
         Rejected("train.jsonl", 1, '"labels" must be a list')),
    Case("JSONL text not a string", "data",
         {"train.jsonl": b'{"text": "milk", "labels": ["milk"]}\n{"text": 42, "labels": ["tax"]}\n'},
         Rejected("train.jsonl", 2, '"text" must be a string')),
    Case("missing test split", "data", {**TRAIN, "test_texts.txt": None, "test_labels.txt": None},
         Rejected("data", None, "missing 'test' split")),
    Case("unknown format", "data", {"train.csv": b"labels,text\nmilk,milk cheese\n", "test_texts.txt": None,
                                    "test_labels.txt": None},
         Rejected("data", None, "unknown data set format")),
    Case("truncated gzip", "data", {"train.tsv.gz": _truncated_gzip}, Rejected("train.tsv.gz", ANY_LINE, "gzip")),
    Case("plain text named .gz", "data", {"train.tsv.gz": b"milk\tmilk cheese\n"},
         Rejected("train.tsv.gz", 1, "gzip")),
    Case("BOM", "data", {"train_texts.txt": b"\xef\xbb\xbf" + TRAIN_TEXTS,
                         "train_labels.txt": b"\xef\xbb\xbf" + TRAIN_LABELS}, Accepted(TRAIN)),
    Case("BOM in JSONL", "data", {"train.jsonl": b"\xef\xbb\xbf" + _jsonl([("milk cheese", ["milk"])] * 3)},
         Accepted({"train.jsonl": _jsonl([("milk cheese", ["milk"])] * 3)})),
    Case("CRLF line ends", "data", {name: content.replace(b"\n", b"\r\n") for name, content in TRAIN.items()},
         Accepted(TRAIN)),
    Case("duplicate labels on a line", "data",
         {**TRAIN, "train_labels.txt": TRAIN_LABELS.replace(b"fish tax", b"fish tax fish tax")}, Accepted(TRAIN)),
    Case("tabs inside TSV text", "data", {"train.tsv": b"milk\tmilk\tcheese\nwine tax\twine\t\ttax\nmilk\tcow\n"},
         Accepted({"train.jsonl": _jsonl([("milk\tcheese", ["milk"]), ("wine\t\ttax", ["wine", "tax"]),
                                          ("cow", ["milk"])])})),
    Case("50 MB single line", "data", {**TRAIN, "test_texts.txt": _huge_line},
         Accepted({**TRAIN, "test_texts.txt": b"milk cow\ntax tariff\nwine vineyard\n"}, same_texts=False)),
    # ---- configs and flags --------------------------------------------------------------------------------
    Case("non-numeric config value", "config", {"config.yaml": b"model: xmlcnn\ntrain:\n  batch_size: abc\n"},
         Rejected("config.yaml", 3, "train.batch_size must be int")),
    Case("negative batch size", "config", {"config.yaml": b"train:\n  epochs: 2\n  batch_size: -1\n"},
         Rejected("config.yaml", 3, "train.batch_size must be >= 1")),
    Case("zero max length", "config", {"config.yaml": b"data:\n  max_length: 0\n"},
         Rejected("config.yaml", 2, "data.max_length must be >= 1")),
    Case("dev fraction of 1", "config", {"config.yaml": b"data: {dev_fraction: 1.0}\n"},
         Rejected("config.yaml", 1, "data.dev_fraction must be in (0, 1)")),
    Case("zero patience", "config", {"config.yaml": b"train:\n  patience: 0\n"},
         Rejected("config.yaml", 2, "train.patience must be >= 1")),
    Case("weight average decay of 1", "config", {"config.yaml": b"train:\n  ema_decay: 1.0\n"},
         Rejected("config.yaml", 2, "train.ema_decay must be in (0, 1)")),
    Case("unknown config key", "config", {"config.yaml": b"train:\n  epochs: 1\n  learning_rate: 3\n"},
         Rejected("config.yaml", 3, "unknown key(s) learning_rate")),
    Case("unknown top-level key", "config", {"config.yaml": b"model: xmlcnn\noptimiser: sgd\n"},
         Rejected("config.yaml", 2, "unknown key 'optimiser'")),
    Case("invalid YAML", "config", {"config.yaml": b"train:\n  epochs: [1, 2\n"},
         Rejected("config.yaml", ANY_LINE, "invalid YAML")),
    Case("negative learning rate flag", "config", {}, Rejected("settings", None, "train.lr must be > 0"),
         args=("--lr", "-0.1")),
    Case("negative seed flag", "config", {}, Rejected("settings", None, "train.seed must be >= 0"),
         args=("--seed", "-1")),
    Case("zero batch size via --set", "config", {}, Rejected("settings", None, "train.batch_size must be >= 1"),
         args=("--set", "train.batch_size=0")),
    Case("misspelt LCENet setting", "config", {"config.yaml": b"model: xmlcnn\nlcenet:\n  rnak: 256\n"},
         Rejected("config.yaml", 3, "unknown key(s) rnak")),
    Case("LCENet rank not a number", "config", {"config.yaml": b"lcenet: {rank: 256}\ncapacity_control: null\n"
                                                                b"model_args: {}\n"},
         Rejected("settings", None, "lcenet.blocks must be int"), args=("--set", "lcenet.blocks=two")),
    Case("unknown LCENet init", "config", {"config.yaml": b"lcenet:\n  init: random\n"},
         Rejected("config.yaml", 2, "lcenet.init must be one of xavier, identity, cooccurrence")),
    Case("zero LCENet rank via --set", "config", {}, Rejected("settings", None, "lcenet.rank must be >= 1"),
         args=("--lcenet", "--set", "lcenet.rank=0")),
    Case("misspelt model argument", "config", {"config.yaml": b"model: xmlcnn\nmodel_args:\n  hiden_dim: 64\n"},
         Rejected("config.yaml", 3, "model 'xmlcnn' has no setting 'hiden_dim'")),
    Case("model argument of the wrong type", "config",
         {"config.yaml": b"model: xmlcnn\nmodel_args:\n  dropout: high\n"},
         Rejected("config.yaml", 3, "model_args.dropout must be float")),
    Case("unknown model family", "config", {"config.yaml": b"model: xml_cnn\n"},
         Rejected("config.yaml", 1, "unknown model 'xml_cnn'")),
    # ---- model directories --------------------------------------------------------------------------------
    Case("pickle file in the model directory", "model", {"pytorch_model.bin": b"\x80\x04\x95not really"},
         Rejected("pytorch_model.bin", None, "pickle")),
    Case("truncated safetensors", "model", {"model.safetensors": lambda path: path.read_bytes()[:1000]},
         Rejected("model.safetensors", None, "not a valid safetensors file")),
    Case("missing labels.tsv", "model", {"labels.tsv": None}, Rejected("labels.tsv", None, "missing")),
    Case("malformed config.json", "model", {"config.json": b'{"model": "xmlcnn",'},
         Rejected("config.json", None, "malformed JSON")),
    # ---- prediction input ---------------------------------------------------------------------------------
    Case("invalid UTF-8 input", "input", {"input.txt": b"milk cow\nwine gr\xe4pe\n"},
         Rejected("input.txt", 2, "invalid UTF-8")),
    Case("NUL bytes in input", "input", {"input.txt": b"milk cow\nwine\x00grape\n"},
         Rejected("input.txt", 2, "NUL byte")),
    Case("BOM in input", "input", {"input.txt": b"\xef\xbb\xbfmilk cow\nwine grape\n"},
         Accepted({"input.txt": b"milk cow\nwine grape\n"})),
    Case("CRLF input", "input", {"input.txt": b"milk cow\r\nwine grape\r\n"},
         Accepted({"input.txt": b"milk cow\nwine grape\n"})),
]
