"""Build the bundled demo/test sample from ../shared/data/EURLEX57K (CC BY-SA 4.0).

    python scripts/make_sample.py ../shared/data/EURLEX57K src/lcenet/sample_data/eurlex57k

A seeded random subset of each split; each text is cut to its first MAX_WORDS whitespace tokens so the
sample stays small. Deterministic: the same input gives byte-identical files.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

SIZES = {"train": 4000, "dev": 500, "test": 500}
MAX_WORDS = 256
SEED = 0


def main(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for split, size in SIZES.items():
        with gzip.open(source / f"{split}_texts.txt.gz", "rt", encoding="utf-8") as handle:
            texts = handle.read().splitlines()
        with gzip.open(source / f"{split}_labels.txt.gz", "rt", encoding="utf-8") as handle:
            labels = handle.read().splitlines()
        rows = np.sort(np.random.default_rng([SEED, len(texts)]).choice(len(texts), size, replace=False))
        for name, lines in (("texts", [" ".join(texts[i].split()[:MAX_WORDS]) for i in rows]),
                            ("labels", [labels[i] for i in rows])):
            # mtime=0: reproducible gzip bytes
            with gzip.GzipFile(target / f"{split}_{name}.txt.gz", "wb", mtime=0) as handle:
                handle.write(("\n".join(lines) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
