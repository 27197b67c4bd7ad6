"""Generate benchmarks/RESULTS.md from the JSON records under benchmarks/results/ (never edit it by hand).

    python benchmarks/make_results.py

Reads every experiment directory (benchmarks/results/<experiment>/records/*.json, written by
`lcenet experiment`), every step-time record (benchmarks/results/step_time_*.json, written by
benchmarks/step_time.py) and every serving load test (benchmarks/results/serve_load_*.json, written by
benchmarks/load_test.py). All numbers in the output come from those files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lcenet.io import atomic_write_text
from lcenet.report import ablation_table, load_records, results_table

RESULTS = Path(__file__).parent / "results"
TARGET_POINTS = 1.0  # the issues' target: LCENet >= +1.0 P@1 and >= +1.0 nDCG@5 over its base


def experiment_section(directory: Path) -> list[str]:
    records, failures, _ = load_records(directory)
    if not records:
        return []
    spec = json.loads((directory / "experiment.json").read_text())
    devices = sorted({r["device_name"] for r in records})
    lines = [f"## {spec['name']} (profile `{spec['profile']}`)", "",
             f"Device: {', '.join(devices)}. Seeds: {sorted({r['seed'] for r in records})}. "
             f"Records: {len(records)}, failed cells: {len(failures)}. Full report with significance tests, "
             f"convergence analysis and plots: [{directory.name}/report.md]({directory.name}/report.md).", ""]
    lines += ["Training per cell (mean over the cell's seeds): epochs trained / steps / train seconds "
              "(cells sharing a device timed as they ran) and per epoch, and whether the time "
              "budget (train.max_seconds) ended it:", ""]
    lines += ["| model | variant | epochs | steps | train s | train s / epoch | stopped by time |",
              "|:--|:--|--:|--:|--:|--:|:--|"]
    seen = {}
    for r in records:
        seen.setdefault((r.get("grid_model") or r["model"], r.get("variant", "")), []).append(r)
    for (model, variant), group in seen.items():
        epochs = [epochs_trained(r) for r in group]
        lines.append(f"| {model} | {variant} | {np.mean(epochs):.2f} | "
                     f"{np.mean([r['steps'] for r in group]):,.0f} | {np.mean([r['train_seconds'] for r in group]):.0f}"
                     f" | {np.mean([r['train_seconds'] / e for r, e in zip(group, epochs)]):.0f}"
                     f" | {sum(bool(r.get('stopped_by_time')) for r in group)}/{len(group)} |")
    lines += ["", "### Test set, base vs +LCENet", "", results_table(records, n_resamples=2000), ""]
    lines += target_lines(records)
    if len({r.get("variant") for r in records}) > 2:
        lines += ["### All variants", "", ablation_table(records), ""]
    return lines


def epochs_trained(record: dict) -> float:
    """Epochs of training data seen, fractional (epochs_completed counts whole epochs only)."""
    train = record["config"]["train"]
    return record["steps"] * train["batch_size"] * train.get("grad_accum_steps", 1) / record["docs"]["train"]


def target_lines(records: list[dict]) -> list[str]:
    """Whether each model's LCENet variant meets the target, from the means over seeds."""
    means: dict[tuple[str, str, str], list[float]] = {}
    for r in records:
        variant = r.get("variant") or ("base" if r["lcenet"] is None else "lcenet")
        for metric in ("P@1", "nDCG@5"):
            means.setdefault((r.get("grid_model") or r["model"], variant, metric), []).append(r["test"][metric])
    lines = []
    for model in sorted({key[0] for key in means}):
        verdicts = []
        for metric in ("P@1", "nDCG@5"):
            base, enhanced = means.get((model, "base", metric)), means.get((model, "lcenet", metric))
            if base and enhanced:
                delta = 100 * (np.mean(enhanced) - np.mean(base))
                verdicts.append(f"{metric} {delta:+.2f} points ({'met' if delta >= TARGET_POINTS else 'missed'})")
        if verdicts:
            lines.append(f"- Target (+{TARGET_POINTS:.1f} P@1 and nDCG@5), {model}: " + ", ".join(verdicts) + ".")
    return lines + [""] if lines else []


def step_time_section(paths: list[Path]) -> list[str]:
    if not paths:
        return []
    lines = ["## Step time and throughput: base vs +LCENet", "",
             "Synthetic batches, identical for both models; training steps (forward, backward, Adam) timed in "
             "interleaved repeats, median per model and median of the per-repeat ratios. bf16 autocast on CUDA.", "",
             "| device | family | L | batch × T | LCENet | base ms/step | +LCENet ms/step | median ratio | "
             "train docs/s (base / +LCENet) | infer docs/s (base / +LCENet) |",
             "|:--|:--|--:|:--|:--|--:|--:|--:|--:|--:|"]
    for path in paths:
        record = json.loads(path.read_text())
        for case in record["cases"]:
            base, enhanced = case["base"], case["lcenet"]
            # Records from before lcenet_settings existed ran with the script's defaults (no --rank/--blocks).
            settings = case.get("lcenet_settings") or {"rank": 1000, "blocks": 2}
            lcenet = f"R={settings['rank']}, {settings['blocks']} blocks"
            lines.append(f"| {record['device_name']} | {case['family']} | {case['num_labels']:,} | "
                         f"{case['batch']} × {case['max_length']} | {lcenet} | {1000 * base['median_step_s']:.1f} | "
                         f"{1000 * enhanced['median_step_s']:.1f} | ×{case['median_ratio']:.3f} | "
                         f"{base['train_docs_per_s']:,.0f} / {enhanced['train_docs_per_s']:,.0f} | "
                         f"{base['infer_docs_per_s']:,.0f} / {enhanced['infer_docs_per_s']:,.0f} |")
    lines.append("")
    lines += [f"- `{p.name}`: `{json.loads(p.read_text())['command']}` "
              f"({json.loads(p.read_text())['wall_seconds']:.0f} s, torch {json.loads(p.read_text())['torch']})"
              for p in paths]
    return lines + [""]


def serve_load_section(paths: list[Path]) -> list[str]:
    if not paths:
        return []
    lines = ["## Serving: `lcenet serve` under load", "",
             "Single-document requests (k = 5) from concurrent clients in another process on the same machine; "
             "micro-batching as configured in the record.", "",
             "| record | model | device (cores) | clients | requests | errors | docs/s | p50 ms | p95 ms | p99 ms | "
             "mean batch |", "|:--|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|"]
    notes = []
    for path in paths:
        record = json.loads(path.read_text())
        model = f"{record['model']}{' + LCENet' if record['lcenet'] else ''}, L = {record['num_labels']:,}"
        for level in record["levels"]:
            lines.append(f"| `{path.name}` | {model} | {record['device']} ({record['cpu_cores']}) | "
                         f"{level['concurrency']} | {level['requests']:,} | {level['errors']} | "
                         f"{level['docs_per_s']:,.0f} | {level['p50_ms']:.1f} | {level['p95_ms']:.1f} | "
                         f"{level['p99_ms']:.1f} | {level['mean_batch_docs']:.1f} |")
        met = ", ".join(f"{name} {'met' if ok else 'missed'}" for name, ok in record["targets_met"].items())
        notes.append(f"- `{path.name}`: `{record['command']}` ({record['date']}, commit "
                     f"{(record['git_commit'] or 'unknown')[:8]}, {record['wall_seconds']:.0f} s). Targets: {met}."
                     + (f" {record['note']}" if record["note"] else ""))
    return lines + [""] + notes + [""]

def main() -> None:
    lines = ["# Results", "",
             "Generated by `python benchmarks/make_results.py` from the JSON records in `benchmarks/results/`; "
             "do not edit by hand. Each record holds the exact command, device, seed and wall time of its run.", ""]
    for directory in sorted(p for p in RESULTS.iterdir() if (p / "records").is_dir()):
        lines += experiment_section(directory)
    lines += step_time_section(sorted(RESULTS.glob("step_time_*.json")))
    lines += serve_load_section(sorted(RESULTS.glob("serve_load_*.json")))
    atomic_write_text(Path(__file__).parent / "RESULTS.md", "\n".join(lines))
    print(Path(__file__).parent / "RESULTS.md")


if __name__ == "__main__":
    main()
