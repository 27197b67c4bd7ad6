"""One-screen summaries on the terminal (rich tables)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

SUMMARY_KEYS = ("P@1", "P@3", "P@5", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5")


def print_run_summary(summary: dict, output: Path) -> None:
    console = Console(stderr=True)
    table = Table(title=f"{summary['config']['model']}{' + LCENet' if summary['config']['lcenet'] is not None else ''}"
                  f" — {output}")
    table.add_column("split")
    for key in SUMMARY_KEYS:
        table.add_column(key, justify="right")
    for split in ("dev", "test"):
        table.add_row(split, *(f"{100 * summary[split][key]:.2f}" for key in SUMMARY_KEYS))
    console.print(table)
    console.print(f"steps {summary['steps']} (best at {summary['best_step']}), epochs {summary['epochs_completed']}"
                  f"{' (early stop)' if summary['stopped_early'] else ''}, train {summary['train_seconds']:.1f}s, "
                  f"wall {summary['wall_seconds']:.1f}s on {summary['device_name']}; "
                  f"{summary['parameters']:,} parameters ({summary['lcenet_parameters']:,} in LCENet)")
    console.print(f"model: {output / 'model'}   log: {output / 'log.jsonl'}   metrics: {output / 'metrics.json'}")


def print_comparison(rows: list[tuple[str, dict]], title: str) -> None:
    """Side-by-side test metrics of several runs (name, metrics.json summary)."""
    console = Console()
    table = Table(title=title)
    table.add_column("model")
    keys = ("P@1", "P@3", "P@5", "nDCG@3", "nDCG@5")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column("train time", justify="right")
    for name, summary in rows:
        table.add_row(name, *(f"{100 * summary['test'][key]:.2f}" for key in keys), f"{summary['train_seconds']:.1f}s")
    if len(rows) == 2:
        (_, base), (_, enhanced) = rows
        table.add_row("Δ", *(f"{100 * (enhanced['test'][k] - base['test'][k]):+.2f}" for k in keys), "")
    console.print(table)
