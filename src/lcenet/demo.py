"""``lcenet demo``: XML-CNN vs XML-CNN+LCENet on the bundled EURLEX57K sample, same seed and settings."""

from __future__ import annotations

import shutil
from pathlib import Path

from lcenet.config import DataSettings, LCENetSettings, RunConfig, TrainSettings
from lcenet.pipeline import run_training
from lcenet.report_console import print_comparison

SAMPLE_DIR = Path(__file__).parent / "sample_data" / "eurlex57k"


def demo_config(lcenet: bool, epochs: int | None = None) -> RunConfig:
    """A CPU-sized XML-CNN (short documents, small embeddings) that trains in about a minute on 2 cores."""
    return RunConfig(
        model="xmlcnn",
        model_args={"embedding_dim": 64, "num_filters": 48, "hidden_dim": 256},
        lcenet=LCENetSettings() if lcenet else None,
        data=DataSettings(max_length=128, vocab_size=30_000, min_frequency=2),
        train=TrainSettings(epochs=epochs or 8, batch_size=32, lr=1e-3, patience=None, seed=0, log_every_steps=20),
    )


def run_demo(output: Path, epochs: int | None = None) -> list[tuple[str, dict]]:
    rows = []
    for name, lcenet in (("XML-CNN", False), ("XML-CNN + LCENet", True)):
        run_dir = output / ("xmlcnn_lcenet" if lcenet else "xmlcnn")
        shutil.rmtree(run_dir, ignore_errors=True)  # the demo trains afresh every time it is run
        summary = run_training(demo_config(lcenet, epochs), SAMPLE_DIR, run_dir, cache_dir=output / "cache")
        rows.append((name, summary))
    print_comparison(rows, f"EURLEX57K sample ({rows[0][1]['train_docs']} train / {rows[0][1]['test_docs']} test "
                           f"docs, {rows[0][1]['num_labels']} labels) — test split, seed 0")
    return rows
