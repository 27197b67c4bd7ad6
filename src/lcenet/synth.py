"""Synthetic XMTC data sets shaped like AmazonCat-13K and Wiki-500K, for testing at 1M+ documents.

The real data sets are large downloads; these generators give data of the same size and label statistics in
the lines format (``{split}_texts.txt.gz`` + ``{split}_labels.txt.gz``), with a signal a model can learn and
label correlations a correlation head (LCENet) can find, so the whole pipeline can be exercised at full scale.

How a document is made (all choices are per shape, in :data:`SHAPES`, and recorded in ``stats.json``):

* **Labels.** The L labels are cut into groups of 2-6 labels. Group popularity is a power law
  ``w_g ∝ (g + offset)^-alpha``. A document draws ``1 + Poisson(mu)`` groups by popularity; from each drawn group
  it takes the group's head label and each other member with that member's probability ``q`` (uniform in
  0.3-0.8). So partners of a label co-occur with it, label frequencies follow the power law with a long tail,
  and ``mu`` is calibrated (by simulation, from the seed) to give the shape's labels per document.
* **Text.** Lengths in words are lognormal (the shape's median and sigma, clipped). Each word is a signal word
  with probability ``signal`` and otherwise a background word (Zipf over the background vocabulary). A signal
  word names one of the document's *expressed* labels: one of that label's topic words, or (with probability
  ``group_word``) one of its group's words. Topic words are drawn from a shared pool, so a word points at
  about two labels or groups, not one. Each label of a document is *hidden* (absent from its text) with
  probability ``hidden`` (one label per document is always expressed): only its partners give it away,
  which is what a label-correlation head can learn. A share ``distractor`` of signal words names a random
  label the document does not have.
* **Words** are 3-5 lowercase letters (a random code per vocabulary entry); labels are named ``L<number>``.

Output is streamed in chunks of :data:`CHUNK_DOCS` documents. Chunk ``c`` of split ``s`` draws from its own
``numpy.random.default_rng([seed, 1 + s, c])`` and is compressed as its own gzip member (multi-member gzip is
plain gzip to every reader), so output is byte for byte the same for a seed whatever the number of worker
processes (same numpy and zlib versions). Everything is written into a temp directory beside the output and
renamed into place at the end: a killed run leaves only a hidden ``.NAME.partial-*`` directory.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import math
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lcenet.errors import UserError

__all__ = ["CHUNK_DOCS", "SHAPES", "Shape", "SynthSettings", "generate", "settings_for"]

CHUNK_DOCS = 2048  # part of the output's definition: another chunk size gives other (equally valid) data
GZIP_LEVEL = 6
SPLIT_NAMES = ("train", "dev", "test")
DEV_FRACTION = 0.05  # dev documents per train document, generated as extra documents (train keeps its size)
GROUP_SIZES = (2, 6)  # inclusive range of labels per correlated group
PARTNER_Q = (0.3, 0.8)  # range of a non-head member's probability of joining its drawn group
TOPIC_WORDS = 5  # topic words per label and per group
TOPIC_WORD_SHARING = 2.0  # labels/groups per topic word, on average
ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


@dataclass(frozen=True)
class Shape:
    """A published data set's size and the generator's settings that imitate it."""

    train: int
    test: int
    labels: int
    labels_per_doc: float
    published: dict
    length_median: float  # words
    length_sigma: float  # of the log length
    length_range: tuple[int, int]
    background_vocab: int
    zipf: float  # exponent of background word frequencies
    alpha: float  # power-law exponent of group popularity
    offset: float  # flattens the head of that power law
    signal: float = 0.2
    group_word: float = 0.3
    hidden: float = 0.2
    distractor: float = 0.15


SHAPES = {
    # Product descriptions: median 130 words (mean ~150, 10-90% ~65-260), short of the 100-250 words reported.
    "amazoncat13k": Shape(
        train=1_186_239, test=306_782, labels=13_330, labels_per_doc=5.04,
        published={"train": 1_186_239, "test": 306_782, "labels": 13_330, "labels_per_doc": 5.04,
                   "docs_per_label": 448.57, "source": "REFERENCE.md (Extreme Classification Repository)"},
        length_median=130, length_sigma=0.55, length_range=(10, 2000), background_vocab=60_000, zipf=1.05,
        alpha=1.5, offset=3.0),
    # Wikipedia articles: median 350 words (mean ~500, 90% < ~1,040); peers truncate to 128-500 tokens anyway.
    "wiki500k": Shape(
        train=1_779_881, test=769_421, labels=501_070, labels_per_doc=4.75,
        published={"train": 1_779_881, "test": 769_421, "labels": 501_070, "labels_per_doc": 4.75,
                   "docs_per_label": 16.86, "source": "recalled from the Extreme Classification Repository, "
                                                      "unverified (REFERENCE.md gives ~1.78M / ~0.77M / ~501K)"},
        length_median=350, length_sigma=0.85, length_range=(20, 5000), background_vocab=200_000, zipf=1.05,
        alpha=0.9, offset=10.0, signal=0.12),
}


@dataclass(frozen=True)
class SynthSettings:
    shape: str
    scale: float = 1.0
    labels: int | None = None  # None: the shape's
    seed: int = 0
    docs: dict = field(default_factory=dict)  # split -> documents, filled by settings_for

    @property
    def num_labels(self) -> int:
        return self.labels or SHAPES[self.shape].labels


def settings_for(shape: str, scale: float = 1.0, labels: int | None = None, seed: int = 0) -> SynthSettings:
    """Validated settings; every split gets at least one document."""
    if shape not in SHAPES:
        raise UserError(f"unknown shape {shape!r} (expected one of: {', '.join(SHAPES)})")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UserError(f"--scale must be a positive number (got {scale})")
    if labels is not None and labels < GROUP_SIZES[0]:
        raise UserError(f"--labels must be at least {GROUP_SIZES[0]} (got {labels})")
    if seed < 0:
        raise UserError(f"--seed must be >= 0 (got {seed})")
    base = SHAPES[shape]
    train = max(1, round(base.train * scale))
    docs = {"train": train, "dev": max(1, round(train * DEV_FRACTION)), "test": max(1, round(base.test * scale))}
    return SynthSettings(shape, float(scale), labels, seed, docs)


# ----------------------------------------------------------------------------------------------------------
# The label and word model (built from the seed, the same in every worker)
# ----------------------------------------------------------------------------------------------------------


def _codes(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct lowercase words of 3+ letters in random order: a fixed-width byte table (each word
    followed by a space, NUL-padded) and the lengths with the space."""
    numbers = rng.permutation(count).astype(np.int64) + 26**2  # 26**2 and up: at least 3 letters
    width = 1
    while 26**width <= numbers.max():
        width += 1
    digits = np.zeros((count, width), dtype=np.uint8)
    lengths = np.zeros(count, dtype=np.int64)
    rest = numbers.copy()
    for position in range(width):  # least significant letter last
        digits[:, width - 1 - position] = rest % 26
        lengths += (numbers >= 26**position).astype(np.int64)
        rest //= 26
    table = np.zeros((count, width + 1), dtype=np.uint8)
    columns = np.arange(width)[None, :]
    shift = width - lengths[:, None]  # leading zero digits to drop
    source = np.clip(columns + shift, 0, width - 1)
    letters = ALPHABET[np.take_along_axis(digits, source, axis=1)]
    table[:, :width] = np.where(columns < lengths[:, None], letters, 0)
    table[np.arange(count), lengths] = ord(" ")
    return table, lengths + 1


def _names(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Label names ``L0 ... L{count-1}`` as a fixed-width byte table (name + space) and lengths with the space."""
    names = [f"L{i} ".encode() for i in range(count)]
    width = max(len(name) for name in names)
    table = np.frombuffer(b"".join(name.ljust(width, b"\0") for name in names), dtype=np.uint8)
    return table.reshape(count, width), np.fromiter(map(len, names), dtype=np.int64, count=count)


class Model:
    """Groups, popularity, topic words and vocabulary for one settings object."""

    def __init__(self, settings: SynthSettings):
        shape = SHAPES[settings.shape]
        self.settings, self.shape = settings, shape
        rng = np.random.default_rng([settings.seed, 0])
        n_labels = settings.num_labels
        sizes = rng.integers(GROUP_SIZES[0], GROUP_SIZES[1] + 1, size=n_labels // GROUP_SIZES[0] + 1)
        sizes = sizes[:int(np.searchsorted(np.cumsum(sizes), n_labels)) + 1]  # just enough to cover every label
        sizes[-1] -= sizes.sum() - n_labels  # the last group is cut short
        self.group_size = sizes.astype(np.int64)
        self.group_start = np.concatenate([[0], np.cumsum(self.group_size)[:-1]])
        self.num_groups = len(self.group_size)
        self.label_group = np.repeat(np.arange(self.num_groups), self.group_size)
        weights = (np.arange(self.num_groups) + shape.offset) ** -shape.alpha
        self.group_cdf = np.cumsum(weights) / weights.sum()
        self.q = rng.uniform(*PARTNER_Q, size=n_labels)
        self.q[self.group_start] = 1.0  # every drawn group gives at least its head label
        pool = max(TOPIC_WORDS, round(TOPIC_WORDS * (n_labels + self.num_groups) / TOPIC_WORD_SHARING))
        self.label_words = shape.background_vocab + rng.integers(0, pool, size=(n_labels, TOPIC_WORDS))
        self.group_words = shape.background_vocab + rng.integers(0, pool, size=(self.num_groups, TOPIC_WORDS))
        background = np.arange(1, shape.background_vocab + 1, dtype=np.float64) ** -shape.zipf
        self.background_cdf = np.cumsum(background) / background.sum()
        self.vocab_size = shape.background_vocab + pool
        self.words, self.word_lengths = _codes(self.vocab_size, rng)
        self.names, self.name_lengths = _names(n_labels)
        self.mu = self._calibrate(rng)

    def draw_labels(self, rng: np.random.Generator, n: int, mu: float) -> tuple[np.ndarray, np.ndarray]:
        """(doc, label) pairs of ``n`` documents, sorted by doc then label, no repeats."""
        draws = 1 + rng.poisson(mu, size=n)
        draw_doc = np.repeat(np.arange(n), draws)
        groups = np.minimum(np.searchsorted(self.group_cdf, rng.random(len(draw_doc)), side="right"),
                            self.num_groups - 1)
        sizes = self.group_size[groups]
        member_doc = np.repeat(draw_doc, sizes)
        firsts = np.cumsum(sizes) - sizes
        members = np.repeat(self.group_start[groups] - firsts, sizes) + np.arange(sizes.sum())
        keep = rng.random(len(members)) < self.q[members]
        n_labels = self.settings.num_labels
        keys = np.unique(member_doc[keep] * n_labels + members[keep])
        return keys // n_labels, keys % n_labels

    def _calibrate(self, rng: np.random.Generator) -> float:
        """The Poisson mean of extra groups per document that gives the shape's labels per document (a few
        secant steps on simulated documents; repeated groups make the relation slightly non-linear)."""
        target = self.shape.labels_per_doc
        per_group = float(np.sum(np.diff(np.concatenate([[0.0], self.group_cdf]))
                                 * np.add.reduceat(self.q, self.group_start)))
        mu = max(0.0, target / per_group - 1)
        for _ in range(4):
            doc, _ = self.draw_labels(np.random.default_rng(rng.integers(2**63)), 50_000, mu)
            got = len(doc) / 50_000
            mu = max(0.0, mu + (target - got) / per_group)
        return mu

    def chunk(self, split: int, index: int, n: int) -> tuple[bytes, bytes, dict]:
        """Texts and labels of one chunk (gzip members) and its counts for ``stats.json``."""
        shape = self.shape
        rng = np.random.default_rng([self.settings.seed, 1 + split, index])
        doc, label = self.draw_labels(rng, n, self.mu)
        counts = np.bincount(doc, minlength=n)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        expressed = rng.random(len(label)) >= shape.hidden
        expressed[indptr[:-1] + (rng.random(n) * counts).astype(np.int64)] = True
        shown = label[expressed]
        shown_counts = np.bincount(doc[expressed], minlength=n)
        shown_ptr = np.concatenate([[0], np.cumsum(shown_counts)])

        low, high = shape.length_range
        lengths = np.clip(np.rint(rng.lognormal(math.log(shape.length_median), shape.length_sigma, size=n)),
                          low, high).astype(np.int64)
        token_doc = np.repeat(np.arange(n), lengths)
        tokens = np.minimum(np.searchsorted(self.background_cdf, rng.random(len(token_doc)), side="right"),
                            shape.background_vocab - 1)
        signal = np.flatnonzero(rng.random(len(token_doc)) < shape.signal)
        signal_doc = token_doc[signal]
        about = shown[shown_ptr[signal_doc] + (rng.random(len(signal)) * shown_counts[signal_doc]).astype(np.int64)]
        distract = rng.random(len(signal)) < shape.distractor
        about[distract] = rng.integers(0, self.settings.num_labels, size=int(distract.sum()))
        slot = rng.integers(0, TOPIC_WORDS, size=len(signal))
        tokens[signal] = np.where(rng.random(len(signal)) < shape.group_word,
                                  self.group_words[self.label_group[about], slot], self.label_words[about, slot])

        texts = _lines(self.words, self.word_lengths, tokens, lengths)
        label_lines = _lines(self.names, self.name_lengths, label, counts)
        group_keys = np.unique(doc * self.num_groups + self.label_group[label], return_counts=True)[1]
        stats = {"docs": n, "label_counts": np.bincount(label, minlength=self.settings.num_labels),
                 "length_counts": np.bincount(lengths, minlength=high + 1), "words": int(lengths.sum()),
                 "text_bytes": len(texts), "pairs": int(np.sum(counts * (counts - 1) // 2)),
                 "partner_pairs": int(np.sum(group_keys * (group_keys - 1) // 2)), "hidden": int((~expressed).sum())}
        return (gzip.compress(texts, GZIP_LEVEL, mtime=0), gzip.compress(label_lines, GZIP_LEVEL, mtime=0), stats)


def _lines(table: np.ndarray, lengths: np.ndarray, items: np.ndarray, per_line: np.ndarray) -> bytes:
    """Lines of space-separated table entries (``per_line[i]`` items on line i): each entry ends in a space,
    so dropping the NUL padding joins them, and the last space of a line becomes the newline."""
    rows = table[items]
    flat = rows[rows != 0]
    ends = np.cumsum(np.bincount(np.repeat(np.arange(len(per_line)), per_line), weights=lengths[items],
                                 minlength=len(per_line)).astype(np.int64))
    flat[ends - 1] = ord("\n")
    return flat.tobytes()


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


_WORKER_MODEL: Model | None = None


def _init_worker(settings: SynthSettings) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = Model(settings)


def _worker_chunk(task: tuple[int, int, int]) -> tuple[bytes, bytes, dict]:
    assert _WORKER_MODEL is not None
    return _WORKER_MODEL.chunk(*task)


def _tasks(settings: SynthSettings) -> list[tuple[int, int, int]]:
    """(split, chunk, documents) in file order."""
    tasks = []
    for split, name in enumerate(SPLIT_NAMES):
        total = settings.docs[name]
        tasks += [(split, c, min(CHUNK_DOCS, total - c * CHUNK_DOCS)) for c in range(-(-total // CHUNK_DOCS))]
    return tasks


def _results(settings: SynthSettings, model: Model, workers: int) -> Iterator[tuple[int, tuple[bytes, bytes, dict]]]:
    """Chunks in file order; with workers, at most 2 per worker in flight so memory stays bounded."""
    tasks = _tasks(settings)
    if workers <= 1:
        for task in tasks:
            yield task[0], model.chunk(*task)
        return
    with concurrent.futures.ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(settings,)) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append((task[0], pool.submit(_worker_chunk, task)))
            if len(pending) >= 2 * workers:
                split, future = pending.popleft()
                yield split, future.result()
        while pending:
            split, future = pending.popleft()
            yield split, future.result()


def generate(settings: SynthSettings, output: str | Path, workers: int = 1,
             progress: Callable[[str, int], None] | None = None) -> dict:
    """Write the data set and ``stats.json`` into ``output`` (which must not exist, or be empty); return the
    stats. ``progress(split, docs_done)`` is called after every chunk."""
    from lcenet import __version__

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"{output}: already exists and is not an empty directory")
    if workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    output.parent.mkdir(parents=True, exist_ok=True)
    model = Model(settings)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        totals: dict[str, dict] = {}
        files: dict[int, tuple] = {}
        for split, (texts, labels, counts) in _results(settings, model, workers):
            if split not in files:
                for handles in files.values():
                    _close(handles)
                name = SPLIT_NAMES[split]
                files[split] = (open(tmp / f"{name}_texts.txt.gz", "wb"), open(tmp / f"{name}_labels.txt.gz", "wb"))
            files[split][0].write(texts)
            files[split][1].write(labels)
            total = totals.setdefault(SPLIT_NAMES[split], {})
            for key, value in counts.items():
                total[key] = total[key] + value if key in total else value
            if progress:
                progress(SPLIT_NAMES[split], total["docs"])
        for handles in files.values():
            _close(handles)
        _write_groups(tmp / "groups.txt.gz", model)
        stats = _stats(settings, model, totals, __version__)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it private; the data set is an ordinary directory
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    except BaseException:
        for handles in files.values():
            _close(handles)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def _close(handles: tuple) -> None:
    for handle in handles:
        handle.close()


def _write_groups(path: Path, model: Model) -> None:
    """The true groups, one per line (head first), so analyses can check what a correlation head learned."""
    lines = _lines(model.names, model.name_lengths, np.arange(model.settings.num_labels), model.group_size)
    path.write_bytes(gzip.compress(lines, GZIP_LEVEL, mtime=0))


def _median(histogram: np.ndarray) -> float:
    cumulative = np.cumsum(histogram)
    total = cumulative[-1]
    low = int(np.searchsorted(cumulative, (total + 1) // 2))  # the lower middle value
    high = int(np.searchsorted(cumulative, total // 2 + 1))
    return (low + high) / 2


def _split_stats(total: dict, num_labels: int) -> dict:
    counts = total["label_counts"]
    assignments = int(counts.sum())
    seen = counts[counts > 0]
    top = np.sort(counts)[::-1][:max(1, num_labels // 100)]
    return {
        "docs": total["docs"],
        "labels_per_doc": assignments / total["docs"],
        "docs_per_label": assignments / num_labels,
        "labels_seen": int(len(seen)),
        "docs_per_label_median": float(np.median(counts)),
        "labels_under_5_docs": float(np.mean(counts < 5)),
        "labels_with_no_docs": float(np.mean(counts == 0)),
        "top_1pct_labels_share": float(top.sum() / assignments),
        "max_docs_of_a_label": int(counts.max()),
        "words_per_doc_mean": total["words"] / total["docs"],
        "words_per_doc_median": _median(total["length_counts"]),
        "text_bytes_per_doc": total["text_bytes"] / total["docs"],
        "label_pairs_within_groups": total["partner_pairs"] / max(1, total["pairs"]),
        "hidden_label_share": total["hidden"] / assignments,
    }


def _stats(settings: SynthSettings, model: Model, totals: dict, version: str) -> dict:
    shape = SHAPES[settings.shape]
    return {
        "shape": settings.shape,
        "labels": settings.num_labels,
        "generated": {name: _split_stats(totals[name], settings.num_labels) for name in SPLIT_NAMES},
        "published": shape.published,
        "settings": {**asdict(replace(settings, docs=dict(settings.docs))),
                     "generator": {**{k: v for k, v in asdict(shape).items() if k != "published"},
                                   "groups": model.num_groups, "group_sizes": list(GROUP_SIZES),
                                   "partner_q": list(PARTNER_Q), "topic_words": TOPIC_WORDS,
                                   "topic_word_sharing": TOPIC_WORD_SHARING, "extra_groups_mu": model.mu,
                                   "vocab_size": model.vocab_size, "dev_fraction": DEV_FRACTION,
                                   "chunk_docs": CHUNK_DOCS, "gzip_level": GZIP_LEVEL}},
        "seed": settings.seed,
        "lcenet_version": version,
        "numpy_version": np.__version__,
    }
