"""Generate benchmarks/RESULTS.md from the JSON records under benchmarks/results/ (never edit it by hand).

    python benchmarks/make_results.py

Reads every experiment directory (benchmarks/results/<experiment>/records/*.json, written by
`lcenet experiment`), every step-time record (benchmarks/results/step_time_*.json, written by
benchmarks/step_time.py) and every serving load test (benchmarks/results/serve_load_*.json, written by
benchmarks/load_test.py). All numbers in the output come from those files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lcenet.io import atomic_write_text
from lcenet.report import (
    ablation_table,
    converged_text,
    convergence_flag,
    data_lines,
    group_records,
    load_records,
    own_overrides,
    p_text,
    results_table,
    setting_text,
    shared_seeds,
    stop_reasons_text,
)
from lcenet.report.analysis import paired_document_test
from lcenet.report.records import BASE, base_records, is_capacity_control, lcenet_records

sys.path.insert(0, str(Path(__file__).parent))
from prepare_scale import extrapolate  # noqa: E402 -- a sibling script, also when loaded by path (the tests)

RESULTS = Path(__file__).parent / "results"
TARGET_POINTS = 1.0  # the issues' target: LCENet >= +1.0 P@1 and >= +1.0 nDCG@5 over its base
# How shortlist_step stored LCENet's tables (records before its --row-orders kept label order).
ROW_ORDERS = {"labels": "label order", "clusters": "cluster order"}


def experiment_section(directory: Path, records: list[dict], failures: list[dict]) -> list[str]:
    """An experiment's section from its records and failed cells (``load_records(directory)``)."""
    if not records:
        return []
    spec = json.loads((directory / "experiment.json").read_text())
    devices = sorted({r["device_name"] for r in records})
    data = data_lines(records)
    lines = [f"## {spec['name']} (profile `{spec['profile']}`)", "",
             f"Device: {', '.join(devices)}. Seeds: {sorted({r['seed'] for r in records})}. "
             f"Records: {len(records)}, failed cells: {len(failures)}. Data: {'; '.join(data)}. Full report with "
             "significance tests, convergence analysis and plots: "
             f"[{directory.name}/report.md]({directory.name}/report.md).", ""]
    lines += ["Training per cell (mean over the cell's seeds): epochs trained / steps / train seconds "
              "(cells sharing a device timed as they ran) and per epoch, whether the time "
              "budget (train.max_seconds) ended it, how many of its runs converged and why they stopped "
              "(for records older than those fields, worked out by the trainer's rule from their dev curves; "
              "? = no dev curve):", ""]
    lines += ["| model | variant | epochs | steps | train s | train s / epoch | stopped by time | converged "
              "| stop reasons |",
              "|:--|:--|--:|--:|--:|--:|:--|:--|:--|"]
    seen = {}
    for r in records:
        seen.setdefault((r.get("grid_model") or r["model"], r.get("variant", "")), []).append(r)
    for (model, variant), group in seen.items():
        epochs = [epochs_trained(r) for r in group]
        lines.append(f"| {model} | {variant} | {np.mean(epochs):.2f} | "
                     f"{np.mean([r['steps'] for r in group]):,.0f} | {np.mean([r['train_seconds'] for r in group]):.0f}"
                     f" | {np.mean([r['train_seconds'] / e for r, e in zip(group, epochs)]):.0f}"
                     f" | {sum(bool(r.get('stopped_by_time')) for r in group)}/{len(group)}"
                     f" | {converged_text(group)} | {stop_reasons_text(group)} |")
    lines += shortlist_lines(seen)
    variants = {r.get("variant") for r in records}
    if BASE in variants:
        lines += ["", "### Test set, base vs +LCENet", "", results_table(records, n_resamples=2000), ""]
        lines += target_lines(records)
    if len(variants) > 2 or BASE not in variants:  # a selection grid without a base shows its variants side by side
        lines += ["", "### All variants", "", ablation_table(records), ""]
    return lines


def references(group: dict[str, list[dict]], name: str, overrides) -> list[tuple[str, list[dict]]]:
    """What a variant is compared with: the grid's base. A variant started from another's trained models
    (``init_from_variant``) is compared with that variant first, then with the controls trained alike (the same
    overrides but LCENet's rate): the source trained on without a head, and a capacity control trained on from its own
    converged models. A capacity control started from its own trained models is compared with the base, then with
    its source."""
    source = group[name][0].get("init_from_variant")
    if source is None or source not in group:
        return [(BASE, group[BASE])]
    if is_capacity_control(group[name]):
        return [(BASE, group[BASE]), *([(source, group[source])] if source != BASE else [])]

    def own_overrides_but_lcenet_lr(records: list[dict]) -> set[str]:
        return {o for o in overrides.get(id(records[0]), ()) if not o.startswith("train.lcenet_lr=")}

    def control_trained_alike(records: list[dict]) -> bool:
        """The source trained on without a head, or a capacity control trained on from its own models; alike."""
        if not all(r.get("lcenet") is None and r.get("init_from_variant") for r in records):
            return False
        if not is_capacity_control(records) and records[0]["init_from_variant"] != source:
            return False
        return own_overrides_but_lcenet_lr(records) == own_overrides_but_lcenet_lr(group[name])

    controls = [(other, records) for other, records in group.items()
                if other != name and control_trained_alike(records)]
    return [(source, group[source]), *sorted(controls, key=lambda control: is_capacity_control(control[1]))]


def summary_section(experiments: dict[str, list[dict]]) -> list[str]:
    """Every LCENet variant and capacity control of every experiment against what :func:`references` names (the
    base of its own grid; for a variant started from trained models, their variant and the controls trained on
    alike), on the seeds both ran: Δ of the means (points) on dev nDCG@5 (the model selected on dev) and test
    P@1 / nDCG@5, and whether an LCENet variant meets the +1.0 target over the base. Bold: the reference or the
    variant did not converge (or may not have), so the Δ is early training."""
    header = ("| experiment | model | variant | setting | seeds | converged (reference, variant) | Δ dev nDCG@5 "
              "| Δ test P@1 | Δ test nDCG@5 | p (test nDCG@5) | +1.0 target |")
    rows, compared, met = [], 0, 0
    for experiment, records in experiments.items():
        overrides = own_overrides(records)[0]
        for (_, model), group in group_records(records).items():
            base = base_records(group)
            for name, variant in group.items():
                has_head = all(r.get("lcenet") is not None for r in variant)
                if not base or name == BASE or not (has_head or is_capacity_control(variant)):
                    continue
                for number, (reference_name, reference_runs) in enumerate(references(group, name, overrides)):
                    compared_row = comparison_row(experiment, model, name, variant, reference_name, reference_runs,
                                                  overrides, against_base=number == 0)
                    if compared_row is None:
                        continue
                    row, verdict = compared_row
                    rows.append(row)
                    compared += verdict in ("met", "missed")  # the target, over a converged base only
                    met += verdict == "met"
    if not rows:
        return []
    return ["# Summary: every variant against its base", "",
            "Each LCENet variant and capacity control (`capacity`: the base widened by as many parameters as LCENet "
            "adds) against the base of the same grid, on the seeds both ran; Δ in points of the means. A variant "
            "started from another variant's trained models is compared with that variant (`X vs Y` unless it is the "
            "base), and also with the controls trained on alike (`X vs Y`): those models without a head, and a "
            "capacity control trained on from its own converged models (itself compared with the base and with "
            "its source). p: paired bootstrap over "
            "test documents of nDCG@5, each document's value averaged over the shared seeds (n/a: no per-document "
            "results). **Bold**: the reference or the variant did not converge (or may not have), so the Δ measures "
            "early training. "
            f"Where the base and the variant both converged, {met} of {compared} LCENet variants meet the target "
            f"(+{TARGET_POINTS:.1f} test P@1 and nDCG@5 over the base; a run shared by two grids counts in each).", "",
            header, "|:--|:--|:--|:--|--:|:--|--:|--:|--:|--:|:--|", *rows, ""]


def comparison_row(experiment: str, model: str, name: str, variant: list[dict], reference_name: str,
                   reference_runs: list[dict], overrides, against_base: bool) -> tuple[str, str] | None:
    """The summary's row of ``variant`` against a reference variant's runs, and its +1.0 target verdict when the
    reference is its base (None if they share no seed)."""
    reference, compared_runs, _ = shared_seeds(reference_runs, variant)
    seeds = {r.get("seed") for r in reference} & {r.get("seed") for r in compared_runs}
    if not seeds:
        return None
    deltas = [delta_points(reference, compared_runs, split, metric)
              for split, metric in (("dev", "nDCG@5"), ("test", "P@1"), ("test", "nDCG@5"))]
    converged = convergence_flag(reference + compared_runs) is None
    verdict = "—"
    if against_base and all(r.get("lcenet") is not None for r in variant):
        verdict = "met" if min(deltas[1:]) >= TARGET_POINTS else "missed"
        verdict += "" if converged else " (early training)"
    label = name if reference_name == BASE else f"{name} vs {reference_name}"
    test = paired_document_test(reference, compared_runs, "nDCG@5")
    cells = [experiment, model, label, setting_text(variant[0], overrides), len(seeds),
             f"{converged_text(reference)}, {converged_text(compared_runs)}",
             *(f"{delta:+.2f}" for delta in deltas), "n/a" if test is None else p_text(test["p_bootstrap"]), verdict]
    if not converged:
        cells[6:9] = [f"**{cell}**" for cell in cells[6:9]]
    return "| " + " | ".join(str(cell) for cell in cells) + " |", verdict


def shortlist_lines(cells: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Per cell in shortlist mode: L, the candidates per document and the shortlist's recall (the share of a
    document's true labels among its candidates at inference; labels unseen in train count as misses)."""
    lines = []
    for (model, variant), group in cells.items():
        shortlists = [r.get("shortlist") for r in group]
        if not all(shortlists):
            continue
        recall = {split: [100 * s[f"{split}_recall"] for s in shortlists] for split in ("dev", "test")}
        lines.append(f"- {model} {variant}: L = {group[0]['num_labels']:,}, {shortlists[0]['num_clusters']:,} "
                     f"clusters, {shortlists[0]['candidates_per_document']:,} candidates per document; shortlist "
                     f"recall dev {np.mean(recall['dev']):.2f} ± {np.std(recall['dev']):.2f}, test "
                     f"{np.mean(recall['test']):.2f} ± {np.std(recall['test']):.2f} % (labels unseen in train "
                     "count as misses).")
    return ["", *lines] if lines else []


def epochs_trained(record: dict) -> float:
    """Epochs of training data seen, fractional (epochs_completed counts whole epochs only)."""
    train = record["config"]["train"]
    return record["steps"] * train["batch_size"] * train.get("grad_accum_steps", 1) / record["docs"]["train"]


def delta_points(reference: list[dict], enhanced: list[dict], split: str, metric: str) -> float:
    """Mean of ``enhanced`` minus mean of ``reference`` on a split's metric, in points."""
    return 100 * (np.mean([r[split][metric] for r in enhanced]) - np.mean([r[split][metric] for r in reference]))


def target_lines(records: list[dict]) -> list[str]:
    """Whether each model's LCENet variant meets the target, from the means over the seeds both ran; flagged in
    bold when the base did not converge (or may not have), so the Δ measures early training rather than LCENet."""
    lines = []
    for (_, model), group in group_records(records).items():
        base, lcenet = base_records(group), lcenet_records(group)
        if not (base and lcenet):
            continue
        base, enhanced, seeds = shared_seeds(base, lcenet[1])
        verdicts = []
        for metric in ("P@1", "nDCG@5"):
            delta = delta_points(base, enhanced, "test", metric)
            verdicts.append(f"{metric} {delta:+.2f} points ({'met' if delta >= TARGET_POINTS else 'missed'})")
        flag = convergence_flag(base)
        lines.append(f"- Target (+{TARGET_POINTS:.1f} P@1 and nDCG@5), {model}{f' ({seeds})' if seeds else ''}: "
                     + ", ".join(verdicts)
                     + (f" **(base {flag})**" if flag else "") + ".")
    return lines + [""] if lines else []


def step_time_section(paths: list[Path]) -> list[str]:
    if not paths:
        return []
    lines = ["## Step time and throughput: base vs +LCENet", "",
             "Synthetic batches, identical for both models; training steps (forward, backward, Adam) timed in "
             "interleaved repeats, median per model and median of the per-repeat ratios. bf16 autocast on CUDA. "
             "Batch path: `host` slices each batch on the host and copies it to the device, `resident` keeps the "
             "split on the device and gathers batches there (records from before the paths were timed apart: "
             "host); `+mode` = the same path with `train.compile: mode`, `+bf16_cpu` with `train.bf16_cpu` (bf16 "
             "autocast on the CPU). Speed-up: the median per-repeat speed-up of `resident` over `host`, and of a "
             "compiled or bf16_cpu path over the same path eager in fp32.", "",
             "| device | family | L | batch × T | LCENet | batch path | base ms/step | +LCENet ms/step | "
             "median ratio | train docs/s (base / +LCENet) | infer docs/s (base / +LCENet) | "
             "speed-up (base / +LCENet) |",
             "|:--|:--|--:|:--|:--|:--|--:|--:|--:|--:|--:|--:|"]
    records = [json.loads(path.read_text()) for path in paths]
    for record in records:
        for case in record["cases"]:
            # Records from before lcenet_settings existed ran with the script's defaults (no --rank/--blocks).
            settings = case.get("lcenet_settings") or {"rank": 1000, "blocks": 2}
            lcenet = f"R={settings['rank']}, {settings['blocks']} blocks"
            for path, base, enhanced, ratio in timed_paths(case):
                speedup = (case.get("resident_speedup") if path == "resident"
                           else {**case.get("compile_speedup", {}), **case.get("bf16_cpu_speedup", {})}.get(path))
                lines.append(f"| {record['device_name']} | {case['family']} | {case['num_labels']:,} | "
                             f"{case['batch']} × {case['max_length']} | {lcenet} | {path} | "
                             f"{1000 * base['median_step_s']:.1f} | {1000 * enhanced['median_step_s']:.1f} | "
                             f"×{ratio:.3f} | {base['train_docs_per_s']:,.0f} / {enhanced['train_docs_per_s']:,.0f} | "
                             f"{base['infer_docs_per_s']:,.0f} / {enhanced['infer_docs_per_s']:,.0f} | "
                             + (f"×{speedup['base']:.2f} / ×{speedup['lcenet']:.2f} |" if speedup else "— |"))
    lines.append("")
    lines += [source_line(path, record) for path, record in zip(paths, records)]
    return lines + [""]


def record_table(paths: list[Path], header: list[str], rows: Callable[[Path, dict], list[str]]) -> list[str]:
    """A benchmark section: ``header`` (title, prose, table head), the table ``rows`` of each record, then each
    record's source line; nothing when there are no records."""
    if not paths:
        return []
    records = [json.loads(path.read_text()) for path in paths]
    lines = list(header)
    for path, record in zip(paths, records):
        lines += rows(path, record)
    return lines + [""] + [source_line(path, record) for path, record in zip(paths, records)] + [""]


def sparse_epoch_section(paths: list[Path]) -> list[str]:
    """One real EURLEX57K training epoch of the sparse family per variant (benchmarks/sparse_epoch.py)."""
    def rows(path: Path, record: dict) -> list[str]:
        lines = []
        for name, run in record["variants"].items():
            settings = run["lcenet_settings"]
            lcenet = f"R={settings['rank']}, {settings['blocks']} blocks" if settings else "—"
            dev = run["dev_after_one_epoch"]
            lines.append(f"| `{path.name}` | {record['threads']} | {name} | {lcenet} | "
                         f"{run['epoch_train_seconds']:.1f} | {run['train_docs_per_s']:,.0f} | "
                         f"{100 * dev['P@1']:.2f} / {100 * dev['nDCG@5']:.2f} |")
        return lines

    return record_table(paths, [
        "## Sparse family: one training epoch on EURLEX57K", "",
        "All 45,000 train documents, batch 512, `lcenet train` for one epoch per variant in its own process; "
        "seconds are the run's training steps (dev evaluation excluded). The dev scores after one epoch only "
        "check that bf16 trains as fp32 does.", "",
        "| record | threads | variant | LCENet | s/epoch | train docs/s | dev P@1 / nDCG@5 after 1 epoch |",
        "|:--|--:|:--|:--|--:|--:|--:|"], rows)


def frozen_features_section(paths: list[Path]) -> list[str]:
    """``lcenet evaluate`` of a frozen-encoder model with an empty and a filled feature cache
    (benchmarks/frozen_features.py)."""
    def rows(path: Path, record: dict) -> list[str]:
        seconds = record["evaluate_seconds"]
        return [f"| `{path.name}` | `{record['model']}` | {record['split']} | {record['threads']} | "
                f"{record['load_average_1min']:.1f} | {seconds['empty_cache']:.1f} | "
                f"{seconds['filled_cache']:.1f} | ×{record['speedup']:.2f} | {record['same_metrics']} |"]

    return record_table(paths, [
        "## Frozen encoders: the document vectors kept on disk", "",
        "`lcenet evaluate` of a frozen-encoder model on one split in its own process, first with an empty cache "
        "directory (every document encoded), then with the vectors that run kept.", "",
        "| record | model | split | threads | load | empty cache s | filled cache s | speed-up | same metrics |",
        "|:--|:--|:--|--:|--:|--:|--:|--:|:--|"], rows)


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
        model = f"{served_model(record)}, L = {record['num_labels']:,}"
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


def served_model(record: dict) -> str:
    """``"xmlcnn + LCENet"``, or for an ensemble ``"ensemble of 7 (3 sparse, 4 bert_sparse; logit mean)"``. Records
    from before ensembles could be served name one model in ``model`` and ``lcenet``."""
    members = record.get("members") or [{"family": record["model"], "lcenet": record["lcenet"]}]
    names = [f"{member['family']}{' + LCENet' if member['lcenet'] else ''}" for member in members]
    if len(names) == 1:
        return names[0]
    counts = ", ".join(f"{names.count(name)} {name}" for name in dict.fromkeys(names))
    return f"ensemble of {len(names)} ({counts}; {record['combine']} mean)"


def timed_paths(case: dict) -> list[tuple[str, dict, dict, float]]:
    """(batch path, base timings, +LCENet timings, median ratio) per path a step-time case timed. Cases from
    before the paths were timed apart hold one ``base``/``lcenet`` pair and a float ratio: the host path."""
    if "paths" not in case:
        return [("host", case["base"], case["lcenet"], case["median_ratio"])]
    return [(path, case[f"base/{path}"], case[f"lcenet/{path}"], case["median_ratio"][path]) for path in case["paths"]]


def source_line(path: Path, record: dict, details: str = "") -> str:
    """A benchmark record's bullet: its file, the command that wrote it, wall time, provenance and ``details``."""
    return (f"- `{path.name}`: `{record['command']}` ({record['wall_seconds']:.0f} s, {provenance_text(record)}"
            f"{details})")


def provenance_text(record: dict) -> str:
    """``"torch 2.13.0+cpu, git 6a11421..., 2026-11-26"``; older records name torch only."""
    parts = [f"torch {record.get('torch_version') or record.get('torch')}"]
    if record.get("git_commit"):
        parts.append(f"git `{record['git_commit'][:10]}`" + (" (uncommitted changes)" if record.get("git_dirty")
                                                             else ""))
    if record.get("date"):
        parts.append(str(record["date"])[:10])
    return ", ".join(parts)


def reliability_section(kill_paths: list[Path], ddp_paths: list[Path], versus_paths: list[Path]) -> list[str]:
    """Kill-and-resume fuzzing, torchrun throughput and the LibMultiLabel comparison, one row per record."""
    lines = []
    if kill_paths:
        lines += ["## Kill -9 and resume", "",
                  "| record | kills | in a checkpoint write | after training | torn checkpoints | failed resumes | "
                  "identical to an uninterrupted run | command |", "|:--|--:|--:|--:|--:|--:|:--|:--|"]
        for path in kill_paths:
            r = json.loads(path.read_text())
            lines.append(f"| `{path.name}` | {r['kills']} | {r['kills_during_checkpoint_write']} | "
                         f"{r['kills_after_training']} | {r['torn_checkpoints']} | {r['failed_launches']} | "
                         f"{'yes' if r['identical'] else '**no**'} | `{r['command']}` |")
        lines.append("")
    if ddp_paths:
        lines += ["## torchrun: train docs/s by number of processes", "",
                  "| record | device | processes | global batch | docs/s | × 1 process | note |",
                  "|:--|:--|--:|--:|--:|--:|:--|"]
        for path in ddp_paths:
            r = json.loads(path.read_text())
            for run in r["runs"]:
                lines.append(f"| `{path.name}` | {run['device_name']} | {run['processes']} | "
                             f"{r['shape']['global_batch']} | {run['train_docs_per_s']:,.1f} | "
                             f"×{run['speedup_vs_1']:.2f} | {r.get('note', '')} |")
        lines.append("")
    if versus_paths:
        lines += ["## XML-CNN training vs LibMultiLabel (same shape, same batches, one run)", "",
                  "| record | device | load (1 min) | LibMultiLabel's process | lcenet docs/s | "
                  "lcenet bf16_cpu docs/s | LibMultiLabel docs/s | speed-up | speed-up with bf16_cpu |",
                  "|:--|:--|:--|:--|--:|--:|--:|--:|--:|"]
        for path in versus_paths:
            r = json.loads(path.read_text())
            load = r.get("load_average_1min", {})
            docs = r["train_docs_per_s"]
            process = r.get("libmultilabel_process", "shared with lcenet's")
            lines.append(f"| `{path.name}` | {r['device_name']} | "
                         f"{load.get('before', 0):.1f} → {load.get('after', 0):.1f} | "
                         f"{process} | {docs['lcenet']:.1f} | "
                         f"{docs['lcenet_bf16_cpu']:.1f} | {docs['libmultilabel']:.1f} | "
                         f"×{r['speedup_vs_libmultilabel']:.2f} | ×{r['speedup_vs_libmultilabel_bf16_cpu']:.2f} |")
        lines.append("")
    return lines


def scale_section(prepare: list[Path], shortlist: list[Path], clusters: list[Path], recall: list[Path]) -> list[str]:
    """Extreme-scale pieces measured so far: data preparation, shortlist LCENet steps, label clustering."""
    lines = []
    if prepare:
        lines += ["## Extreme scale: preparing synthetic AmazonCat-13K / Wiki-500K shapes", "",
                  "At full scale: measured where a record ran scale 1, otherwise extrapolated from two smaller "
                  "scales by the slope between them, computed here from each record's per-scale measurements by "
                  "`prepare_scale.extrapolate` (each stage's peak RSS on its own slope; the largest is the peak) "
                  "(targets: ≤ 8 GiB peak RSS; AmazonCat-13K-shape preparation ≤ 15 minutes).", "",
                  "| record | shape | model | full-scale docs | how | prepare minutes | peak RSS GiB | peak stage | "
                  "command |", "|:--|:--|:--|--:|:--|--:|--:|:--|:--|"]
        for path in prepare:
            r = json.loads(path.read_text())
            full = extrapolate(r["runs"], r["full_scale_extrapolation"]["docs"])
            scales = [run["scale"] for run in r["runs"]]
            how = "measured" if scales[-1] == 1 else "from scales " + ", ".join(f"{scale:g}" for scale in scales)
            lines.append(f"| `{path.name}` | {r['shape']} | {r['model']} | {full['docs']:,} | {how} | "
                         f"{full['prepare_minutes']:.1f} | {full['peak_rss_gib']:.1f} | {full['peak_stage']} | "
                         f"`{r['command']}` |")
        lines.append("")
    if shortlist:
        lines += ["## Extreme scale: LCENet training step, dense vs shortlist (random logits, B = 64)", ""]
        for path in shortlist:
            r = json.loads(path.read_text())
            lines += ["| record | L | R | candidates K | mode | LCENet's rows | median step s | peak RSS GiB |",
                      "|:--|--:|--:|--:|:--|:--|--:|--:|"]
            for case in r["cases"]:
                candidates = f"{case['candidates']:,}" if case["candidates"] else "—"
                if case.get("cluster_size") and case["candidates"]:
                    candidates += f" ({case['candidates'] // case['cluster_size']} clusters of {case['cluster_size']})"
                lines.append(f"| `{path.name}` | {case['num_labels']:,} | {case['rank']} | {candidates} | "
                             f"{case['mode']} | {ROW_ORDERS[case.get('row_order', 'labels')]} | "
                             f"{case['median_step_s']:.3f} | {case['peak_rss_bytes'] / 2**30:.2f} |")
            lines += ["", source_line(path, r), ""]  # the command holds any --note
    if clusters or recall:
        lines += ["## Extreme scale: balanced label clustering", ""]
    for path in clusters:
        r = json.loads(path.read_text())
        lines += ["| record | labels | label-feature nonzeros | seconds | peak RSS GiB | clusters | sizes |",
                  "|:--|--:|--:|--:|--:|--:|:--|"]
        lines += [f"| `{path.name}` | {c['labels']:,} | {c['nnz']:,} | {c['seconds']:.1f} | {c['peak_rss_gib']:.2f} | "
                  f"{c['clusters']:,} | {c['min_cluster_size']}–{c['max_cluster_size']} |" for c in r["cases"]]
        lines += ["", f"- `{r['command']}` ({r['date'][:10]})", ""]
    for path in recall:
        r = json.loads(path.read_text())
        lines += [f"Shortlist recall on {r['data']} test ({r['labels']:,} labels, {r['clusters']} clusters, an "
                  "untrained centroid scorer), `" + path.name + "`:", "",
                  "| clusters kept → K | balanced 2-means | random clusters |", "|:--|--:|--:|"]
        lines += [f"| {key.replace('top_', '').replace('_K_', ' → ')} | {value:.3f} | "
                  f"{r['recall_random_clusters'][key]:.3f} |"
                  for key, value in sorted(r["recall_balanced_2means"].items(),
                                           key=lambda item: int(item[0].split("_")[-1]))]
        lines.append("")
    return lines


def scale_step_section(paths: list[Path]) -> list[str]:
    """Whole-model training steps, dense vs shortlist, base vs +LCENet, across L (benchmarks/scale_step.py)."""
    if not paths:
        return []
    lines = ["## Extreme scale: XML-CNN training step, dense vs shortlist, base vs +LCENet (B = 64, T = 500)", "",
             "The trainer's step; shortlist = balanced clusters of 100 labels, top 10 plus the true labels' clusters, "
             "row-sparse label-table gradients and RowAdam. Each measurement in its own process (peak: its RSS, or "
             "CUDA max allocated). The LCENet ratio is the median over alternating base / +LCENet step pairs in one "
             "process where the record has them (later records), with the ratio of the two processes' medians in "
             "brackets; older records have only the latter. Targets: at L = 501,070 a step fits "
             "24 GiB on CPU; the shortlist step at 500K ≤ 2× the 4K one; LCENet ≤ ×1.10 in shortlist mode.", ""]
    for path in paths:
        record = json.loads(path.read_text())
        lines += [f"`{path.name}`:", "", "| device | L | mode | R | base s/step | +LCENet s/step | LCENet ratio | "
                  "× the 4K step (base) | peak GiB (base / +LCENet) | predict 1 doc p50 / p99 ms (base; +LCENet) |",
                  "|:--|--:|:--|--:|--:|--:|--:|--:|--:|--:|"]
        first = {c["mode"]: c["base"]["median_step_s"] for c in record["cases"]
                 if c["num_labels"] == min(x["num_labels"] for x in record["cases"]) and "median_step_s" in c}
        for case in record["cases"]:
            base, head = case.get("base", {}), case.get("lcenet", {})
            if "median_step_s" not in case:
                lines.append(f"| {record['device_name']} | {case['num_labels']:,} | {case['mode']} | — | "
                             f"failed: {base.get('error') or head.get('error')} | | | | | |")
                continue
            lines.append(f"| {record['device_name']} | {case['num_labels']:,} | {case['mode']} | "
                         f"{head['lcenet_settings']['rank']} | {base['median_step_s']:.3f} | "
                         f"{head['median_step_s']:.3f} | {ratio_text(case)} | "
                         f"×{base['median_step_s'] / first[case['mode']]:.2f} | "
                         f"{base['peak_memory_gib']:.2f} / {head['peak_memory_gib']:.2f} | "
                         f"{latency_text(base)}; {latency_text(head)} |")
        load = record.get("load_average_at_start")
        details = ((f"; load average at start {load[0]:.1f}" if load else "")
                   + ("; **bf16 autocast on the CPU** (train.bf16_cpu)" if record.get("bf16_cpu") else "")
                   + ("; freed memory kept for reuse (train.reuse_freed_memory)" if record.get("reuse_freed_memory")
                      else "")
                   + ("; **stopped before every case ran**" if record.get("finished") is False else ""))
        lines += ["", source_line(path, record, details), ""]
    return lines


def step_flops_section(paths: list[Path]) -> list[str]:
    """FLOPs of a training step, base vs +LCENet (benchmarks/step_flops.py): the floor of the step-time ratio."""
    if not paths:
        return []
    lines = ["## Extreme scale: FLOPs of the same training step, base vs +LCENet", "",
             "The models, batches and shortlist of the step times above, counted by torch's FlopCounterMode over the "
             "trainer's step (matrix products and convolutions, forward and backward; element-wise work, gathers "
             "and the optimizer count 0). Where the step is compute-bound (CPU), the FLOP ratio is about the lowest "
             "LCENet step ratio any implementation of the same products reaches. Max R within 10%: the largest rank "
             "at which LCENet adds at most 10% of the base's FLOPs (its FLOPs are linear in R).", ""]
    for path in paths:
        record = json.loads(path.read_text())
        lines += [f"`{path.name}`:", "", "| L | mode | R | base GFLOP/step | LCENet adds GFLOP | FLOP ratio | "
                  "max R within 10% |", "|--:|:--|--:|--:|--:|--:|--:|"]
        lines += [f"| {c['num_labels']:,} | {c['mode']} | {c['rank']} | {c['base_gflop']:.1f} | "
                  f"{c['lcenet_added_gflop']:.1f} | ×{c['lcenet_flop_ratio']:.3f} | {c['max_rank_within_10_percent']} |"
                  for c in record["cases"]]
        lines += ["", source_line(path, record), ""]
    return lines


def ratio_text(case: dict) -> str:
    """The paired ratio with the range of its pairs (how noisy the machine was) and the separate processes' ratio
    in brackets, or for older records the separate one alone."""
    if "lcenet_step_ratio_separate" not in case:
        return f"×{case['lcenet_step_ratio']:.3f}"
    paired = f"×{case['lcenet_step_ratio']:.3f}" if "lcenet_step_ratio" in case else "—"
    pairs = [head / base for base, head in case.get("pairs", {}).get("pairs_s", [])]
    spread = f" [×{min(pairs):.2f}–×{max(pairs):.2f}]" if pairs else ""
    return f"{paired}{spread} (×{case['lcenet_step_ratio_separate']:.3f})"


def latency_text(measurement: dict) -> str:
    latency = measurement.get("predict_latency_ms")
    return f"{latency['p50']:.1f} / {latency['p99']:.1f}" if latency else "—"


BEST_ENSEMBLES_SHOWN = 10
# Records written before ensembles could average logits averaged sigmoid scores; their reproduce command now
# needs the rule spelt out, since the default became the logit mean.
RULE_BEFORE_COMBINE = "sigmoid"
SEARCHES = {"exhaustive": "every subset of the models up to the size limit",
            "forward": "greedy forward selection: each round adds the model that makes the best ensemble"}


def rule_comparison(candidates: list[dict]) -> list[str]:
    """How the combining rules compare on the ensembles both searches scored (none when one rule was searched)."""
    by_rule: dict[str, dict[tuple, float]] = {}
    for c in candidates:
        if len(c["members"]) > 1:
            by_rule.setdefault(c.get("combine", RULE_BEFORE_COMBINE), {})[tuple(c["members"])] = c["dev"]["nDCG@5"]
    if len(by_rule) != 2:
        return []
    (first, a), (second, b) = by_rule.items()
    both = sorted(set(a) & set(b))
    if not both:
        return []
    gains = np.array([a[members] - b[members] for members in both]) * 100
    return ["", f"The {len(both)} ensembles scored under both rules: dev nDCG@5 by {first} minus by {second}: "
                f"mean {gains.mean():+.2f}, min {gains.min():+.2f}, max {gains.max():+.2f}; {first} higher on "
                f"{int((gains > 0).sum())} of {len(both)}."]


def best_ensemble_section(paths: list[Path]) -> list[str]:
    """The best model or ensemble chosen on dev, scored once on test (benchmarks/best_ensemble.py)."""
    lines = []
    for path in paths:
        record = json.loads(path.read_text())
        best = record["best"]
        reproduce = best["reproduce"] + ("" if "combine" in best else f" --combine {RULE_BEFORE_COMBINE}")
        candidates = record["candidates"]
        singles: dict[str, dict] = {}  # one model scores alike under every rule: shown once
        for c in candidates:
            if len(c["members"]) == 1:
                singles.setdefault(c["members"][0], c)
        ensembles = sorted((c for c in candidates if len(c["members"]) > 1), key=lambda c: -c["dev"]["nDCG@5"])
        shown = [*singles.values(), *ensembles[:BEST_ENSEMBLES_SHOWN]]
        lines += [f"## Best model chosen on dev: `{path.name}`", "",
                  f"Data `{record['data']}`; {len(candidates)} single models and ensembles scored on dev "
                  f"({SEARCHES[record.get('search', 'exhaustive')]}), the best by "
                  f"{record['selected_on']} scored on test once. Below: every single model and the "
                  f"{min(BEST_ENSEMBLES_SHOWN, len(ensembles))} best of the {len(ensembles)} ensembles (all of them "
                  "in the record).", "",
                  "| members | combined by | dev P@1 | dev nDCG@5 |", "|:--|:--|--:|--:|"]
        lines += [f"| {' + '.join(Path(m).parent.name for m in c['members'])} | "
                  f"{c.get('combine', RULE_BEFORE_COMBINE) if len(c['members']) > 1 else ''} | "
                  f"{100 * c['dev']['P@1']:.2f} | {100 * c['dev']['nDCG@5']:.2f} |" for c in shown]
        lines += rule_comparison(candidates)
        lines += ["", f"Chosen: {' + '.join(Path(m).parent.name for m in best['members'])} (combined by "
                  f"{best.get('combine', RULE_BEFORE_COMBINE)}): **test P@1 "
                  f"{100 * best['test']['P@1']:.2f}, nDCG@5 {100 * best['test']['nDCG@5']:.2f}** "
                  f"(P@3 {100 * best['test']['P@3']:.2f}, P@5 {100 * best['test']['P@5']:.2f}). Reproduce: "
                  f"`{reproduce}`; the members' training commands:", ""]
        lines += [f"- `{run['command']}` (test P@1 {100 * run['test_P@1']:.2f}, nDCG@5 {100 * run['test_nDCG@5']:.2f})"
                  for run in record["member_runs"].values()]
        lines += ["", f"- `{record['command']}` ({record['wall_seconds']:.0f} s, {provenance_text(record)})", ""]
    return lines


def main() -> None:
    lines = ["# Results", "",
             "Generated by `python benchmarks/make_results.py` from the JSON records in `benchmarks/results/`; "
             "do not edit by hand. Each record holds the exact command, device, seed and wall time of its run.", ""]
    converged, early, loaded = [], [], {}
    for directory in sorted(p for p in RESULTS.iterdir() if (p / "records").is_dir()):
        records, failures, _ = load_records(directory)
        loaded[directory] = records, failures
        (converged if records and all(r.get("converged") for r in records) else early).append(directory)
    lines += summary_section({d.name: loaded[d][0] for d in converged + early})
    lines += ["# Converged evidence", "",
              "Experiments in which every run converged: early stopping on dev nDCG@5 fired, or its last two dev "
              "evaluations raised the best by less than 0.1 points (`src/lcenet/stopping.py`).", ""]
    for directory in converged:
        lines += experiment_section(directory, *loaded[directory])
    lines += ["# Early training and partly converged experiments", "",
              "In each of these, at least one run stopped while it was still improving (a time or epoch budget), "
              "so a Δ against such a base is early training: the tables flag it.", "",
              (Path(__file__).parent / "early_training.md").read_text(encoding="utf-8"), ""]
    for directory in early:
        lines += experiment_section(directory, *loaded[directory])
    lines += ["# Benchmarks", ""]
    lines += step_time_section(sorted(RESULTS.glob("step_time_*.json")))
    lines += sparse_epoch_section(sorted(RESULTS.glob("sparse_epoch_*.json")))
    lines += frozen_features_section(sorted(RESULTS.glob("frozen_features_*.json")))
    lines += serve_load_section(sorted(RESULTS.glob("serve_load_*.json")))
    lines += reliability_section(sorted(RESULTS.glob("kill_fuzz_*.json")),
                                 sorted(RESULTS.glob("ddp_throughput_*.json")),
                                 sorted(RESULTS.glob("vs_libmultilabel_*.json")))
    lines += scale_section(sorted(RESULTS.glob("prepare_*.json")), sorted(RESULTS.glob("shortlist_lcenet_*.json")),
                           sorted(RESULTS.glob("cluster_labels_*.json")), sorted(RESULTS.glob("cluster_recall_*.json")))
    lines += scale_step_section(sorted(RESULTS.glob("scale_*.json")))
    lines += step_flops_section(sorted(RESULTS.glob("step_flops*.json")))
    lines += best_ensemble_section(sorted(RESULTS.glob("best_ensemble_*.json")))
    atomic_write_text(Path(__file__).parent / "RESULTS.md", "\n".join(lines))
    print(Path(__file__).parent / "RESULTS.md")


if __name__ == "__main__":
    main()
