"""``lcenet report DIR``: an experiment directory's records -> ``DIR/report.md`` + ``DIR/figures/*.png``.

Every number in the report is read from ``DIR/records/<cell>.json`` (see :mod:`lcenet.records`); nothing is
typed in. Sections: header (name, profile, devices, failed cells, runs stopped by a time budget, how to
regenerate), the paper-style main table (base vs LCENet, mean ± std over seeds, Δ, paired significance tests
over test documents), the ablation table (every variant with its LCENet arguments and own ``--set``
overrides, parameters, step time), a rank/blocks sweep, convergence (steps to reach the base model's best dev
nDCG@5, early stagnation against the same base reference and window for every variant, a warning when the
base was still improving), training curves of every variant (up to MAX_CURVES) and an ablation bar plot.

Variants: a record's ``variant`` is its name in the experiment grid; records without one (e.g. collected
by benchmark scripts) are called ``base`` when ``lcenet`` is null and ``lcenet`` otherwise. The *base*
variant is the one named ``base`` with ``lcenet`` null; the *LCENet* variant is the one named ``lcenet``.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import shlex
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from lcenet import stats
from lcenet.errors import UserError
from lcenet.io import atomic_write, atomic_write_text

MAIN_METRICS = ("P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5")
TESTED_METRICS = ("P@1", "P@5", "nDCG@5")  # paired tests over test documents
ABLATION_METRICS = ("P@1", "P@5", "nDCG@5")
CURVE_METRICS = ("nDCG@5", "P@1")
CONVERGENCE_METRIC = "nDCG@5"  # the selection metric of the trainer
CONVERGENCE_LEVELS = (0.95, 1.0)
STAGNATION_FRACTION = 0.2
MAX_CURVES = 8  # variants drawn in a training-curve figure
BASE, LCENET = "base", "lcenet"


# ---- records -------------------------------------------------------------------------------------------------
def load_records(experiment_dir: str | Path) -> tuple[list[dict], list[dict], list[str]]:
    """(records, failures, unreadable file names) from ``experiment_dir/records/``, in file-name order."""
    records_dir = Path(experiment_dir) / "records"
    if not records_dir.is_dir():
        raise UserError(f"{experiment_dir}: no records/ folder (not an experiment directory)")
    records, failures, unreadable = [], [], []
    for path in sorted(records_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            unreadable.append(path.name)
            continue
        if path.name.endswith(".error.json"):
            failures.append({"cell": path.name[:-len(".error.json")], **data})
        elif isinstance(data, dict) and "test" in data and "dataset" in data:
            records.append(data)
        else:
            unreadable.append(path.name)
    return records, failures, unreadable


def variant_name(record: dict) -> str:
    variant = record.get("variant")
    if variant:
        return str(variant)
    return BASE if record.get("lcenet") is None else LCENET


def model_name(record: dict) -> str:
    """The model's name in the experiment grid (two grid models may share an architecture), else the
    architecture. Records written before ``grid_model`` existed carry it only inside the cell name."""
    if record.get("grid_model"):
        return str(record["grid_model"])
    cell, variant = record.get("cell"), record.get("variant")
    if cell and variant:
        prefix, suffix = f"{record['dataset']}__", f"__{variant}__s{record.get('seed')}"
        if cell.startswith(prefix) and cell.endswith(suffix) and len(cell) > len(prefix) + len(suffix):
            return cell[len(prefix):-len(suffix)]
    return str(record.get("model"))


def is_base(records: list[dict], name: str) -> bool:
    return name == BASE and all(r.get("lcenet") is None for r in records)


Group = dict[str, list[dict]]  # variant name -> records (one per seed)


def group_records(records: Iterable[dict], variant_order: list[str] | None = None) -> dict[tuple[str, str], Group]:
    """``{(dataset, model): {variant: [records sorted by seed]}}``; variants ordered base, lcenet, then
    ``variant_order`` (the grid's order), then by name."""
    groups: dict[tuple[str, str], Group] = {}
    for record in records:
        key = (str(record["dataset"]), model_name(record))
        groups.setdefault(key, {}).setdefault(variant_name(record), []).append(record)
    order = [BASE, LCENET, *(variant_order or [])]

    def rank(name: str) -> tuple[int, str]:
        return (order.index(name) if name in order else len(order), name)

    return {key: {name: sorted(group[name], key=lambda r: (r.get("seed") is None, r.get("seed")))
                  for name in sorted(group, key=rank)}
            for key, group in sorted(groups.items())}


def base_records(group: Group) -> list[dict] | None:
    records = group.get(BASE)
    return records if records and is_base(records, BASE) else None


# ---- numbers -------------------------------------------------------------------------------------------------
def metric_values(records: list[dict], split: str, metric: str) -> list[float]:
    return [float(r[split][metric]) for r in records if (r.get(split) or {}).get(metric) is not None]


def step_ms(record: dict) -> float | None:
    steps, seconds = record.get("steps"), record.get("train_seconds")
    return 1000.0 * seconds / steps if steps and seconds is not None else None


def paired_document_test(base: list[dict], other: list[dict], metric: str, n_resamples: int = 10000) -> dict | None:
    """Paired test over test documents of ``metric`` (P@k, nDCG@k or R@k), pairing runs by seed: each side's
    per-document values are averaged over the seeds both sides share (and that kept ``test_documents``).
    None when no such seed exists or the test sets differ."""
    name, k = stats.parse_metric(metric)
    base_by_seed = {r.get("seed"): r for r in base if r.get("test_documents")}
    other_by_seed = {r.get("seed"): r for r in other if r.get("test_documents")}
    seeds = sorted(set(base_by_seed) & set(other_by_seed), key=str)
    if not seeds or name not in stats.HIT_METRICS:
        return None
    try:
        a = [stats.per_document_from_hits(base_by_seed[s]["test_documents"], name, k) for s in seeds]
        b = [stats.per_document_from_hits(other_by_seed[s]["test_documents"], name, k) for s in seeds]
    except (KeyError, ValueError):
        return None
    if len({len(v) for v in a + b}) != 1 or len(a[0]) == 0:
        return None
    result = stats.paired_test(np.mean(a, axis=0), np.mean(b, axis=0), n_resamples=n_resamples)
    result["seeds"] = len(seeds)
    return result


def curve(record: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    points = [p for p in record.get("dev_curve") or [] if p.get(metric) is not None and p.get("step") is not None]
    points.sort(key=lambda p: p["step"])
    return (np.array([p["step"] for p in points], dtype=np.float64),
            np.array([p[metric] for p in points], dtype=np.float64))


def mean_curve(records: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(steps, mean, std, count) of ``metric`` over seeds. Seeds evaluated at different steps are linearly
    interpolated on the union of their steps (each only within its own range)."""
    curves = [c for c in (curve(r, metric) for r in records) if c[0].size]
    if not curves:
        return None
    grid = np.unique(np.concatenate([steps for steps, _ in curves]))
    table = np.full((len(curves), grid.size), np.nan)
    for row, (steps, values) in enumerate(curves):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        table[row, inside] = np.interp(grid[inside], steps, values)
    count = np.sum(~np.isnan(table), axis=0)
    mean = np.nansum(table, axis=0) / np.maximum(count, 1)
    squares = np.nansum((table - mean) ** 2, axis=0)
    std = np.where(count > 1, np.sqrt(squares / np.maximum(count - 1, 1)), 0.0)
    keep = count > 0
    return grid[keep], mean[keep], std[keep], count[keep]


def lcenet_settings(record: dict) -> dict | None:
    """The record's LCENet keyword arguments with the constructor's defaults filled in (None for a base run)."""
    if record.get("lcenet") is None:
        return None
    if record.get("lcenet_settings"):  # as built: rank already capped at the number of labels
        return record["lcenet_settings"]
    from lcenet.lcenet import LCENet

    defaults = {name: p.default for name, p in inspect.signature(LCENet.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **record["lcenet"]}


Overrides = dict[int, tuple[str, ...]]  # id(record) -> the record's own --set overrides


def run_overrides(record: dict, cell_overrides: dict[str, list[str]] | None = None) -> list[str]:
    """The ``--set`` overrides a run was launched with, without the ``lcenet...`` ones (those are the record's
    ``lcenet``): the grid cell's ``overrides`` from ``experiment.json`` when known, else parsed from the
    record's ``command``."""
    cell = record.get("cell")
    if cell_overrides and cell in cell_overrides:
        found = list(cell_overrides[cell])
    else:
        try:
            words = shlex.split(record.get("command") or "")
        except ValueError:
            words = []
        found = [word.split("=", 1)[1] for word in words if word.startswith("--set=")]
        found += [value for flag, value in zip(words, words[1:]) if flag == "--set"]
    return [o for o in found if not (o.startswith("lcenet=") or o.startswith("lcenet."))]


def own_overrides(records: Iterable[dict], grid_cells: list[dict] | None = None) -> tuple[Overrides, list[str]]:
    """Each record's own overrides (those of its variant and model) and the shared ones: the overrides common
    to every run and grid cell (the experiment's ``set``), left out of the per-variant settings."""
    records = list(records)
    cell_overrides = {str(c["name"]): [str(o) for o in c.get("overrides") or []] for c in grid_cells or []
                      if isinstance(c, dict) and "name" in c}
    lists = [run_overrides(r, cell_overrides) for r in records]
    lists += [[o for o in v if not (o.startswith("lcenet=") or o.startswith("lcenet."))]
              for v in cell_overrides.values()]
    shared = [o for o in dict.fromkeys(lists[0]) if all(o in other for other in lists[1:])] if lists else []
    return ({id(r): tuple(o for o in found if o not in shared) for r, found in zip(records, lists)}, shared)


# ---- formatting ----------------------------------------------------------------------------------------------
def _pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = stats.mean_std(values)
    return f"{100 * mean:.2f}" if len(values) == 1 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    text = "<0.001" if value < 0.001 else f"{value:.3f}"
    return f"**{text}**" if value < 0.05 else text


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _int(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(set(values)) == 1:
        return f"{int(values[0]):,}"
    return f"{float(np.mean(values)):,.0f}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[object]], align_left: int = 3) -> str:
    lines = [_row(header), "|" + "|".join(":---" if i < align_left else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + [_row(r) for r in rows])


def _setting(record: dict, overrides: Overrides | None = None) -> str:
    """``"—"`` (no LCENet head) or the LCENet arguments (``"defaults"`` when none), then the run's own
    overrides: ``"defaults; train.lcenet_lr=0.0001"``, ``"model_args.hidden_dim=2800"``."""
    lcenet = record.get("lcenet")
    parts = [] if lcenet is None else [", ".join(f"{k}={v}" for k, v in sorted(lcenet.items())) or "defaults"]
    parts += list((overrides or {}).get(id(record), ()))
    return "; ".join(parts) or "—"


def _short(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


# ---- tables --------------------------------------------------------------------------------------------------
def results_table(records: Iterable[dict], n_resamples: int = 10000) -> str:
    """The paper-style main table (markdown): per data set × model, base vs LCENet on the test set as mean ± std
    over seeds (%), the Δ of the means (percentage points), and paired-test p-values over test documents."""
    return _main_table(group_records(records), n_resamples)


def ablation_table(records: Iterable[dict]) -> str:
    """Every variant with its setting (LCENet arguments and its own ``--set`` overrides, read from the records'
    commands), accuracy, parameter counts and step time (markdown)."""
    records = list(records)
    return _ablation_table(group_records(records), own_overrides(records)[0])


def _main_table(groups: dict[tuple[str, str], Group], n_resamples: int = 10000) -> str:
    header = ["data set", "model", "variant", "seeds", *MAIN_METRICS, "train time"]
    rows: list[list[object]] = []
    for (dataset, model), group in groups.items():
        base, enhanced = base_records(group), group.get(LCENET)
        shown = [(BASE, base), ("+ LCENet", enhanced)] if base or enhanced else []
        for label, records in shown:
            if not records:
                continue
            seconds = [r["train_seconds"] for r in records if r.get("train_seconds") is not None]
            rows.append([dataset, model, label, len(records), *(_pct(metric_values(records, "test", m))
                                                                 for m in MAIN_METRICS),
                         f"{np.mean(seconds):.1f} s" if seconds else "n/a"])
        if not (base and enhanced):
            continue
        deltas = []
        for metric in MAIN_METRICS:
            a, b = metric_values(base, "test", metric), metric_values(enhanced, "test", metric)
            deltas.append(f"{100 * (np.mean(b) - np.mean(a)):+.2f}" if a and b else "n/a")
        time_a = [r["train_seconds"] for r in base if r.get("train_seconds")]
        time_b = [r["train_seconds"] for r in enhanced if r.get("train_seconds")]
        rows.append([dataset, model, "Δ (LCENet − base)", "", *deltas,
                     f"×{np.mean(time_b) / np.mean(time_a):.2f}" if time_a and time_b else "n/a"])
        tests = {m: paired_document_test(base, enhanced, m, n_resamples) for m in TESTED_METRICS}
        paired_seeds = next((t["seeds"] for t in tests.values() if t), 0)
        for label, key in (("p (paired bootstrap)", "p_bootstrap"), ("p (Wilcoxon)", "p_wilcoxon")):
            rows.append([dataset, model, label, paired_seeds or "", *(
                (_p(tests[m][key]) if tests[m] else "n/a") if m in TESTED_METRICS else "" for m in MAIN_METRICS), ""])
    if not rows:
        return "_No base or LCENet runs to compare._"
    return _table(header, rows)


def _ablation_table(groups: dict[tuple[str, str], Group], overrides: Overrides | None = None) -> str:
    header = ["data set", "model", "variant", "setting", "seeds", *ABLATION_METRICS, "LCENet params",
              "params", "step time (ms)", "× base"]
    rows = []
    for (dataset, model), group in groups.items():
        base = base_records(group)
        base_ms = [v for v in map(step_ms, base or []) if v is not None]
        for name, records in group.items():
            ms = [v for v in map(step_ms, records) if v is not None]
            ratio = f"×{np.mean(ms) / np.mean(base_ms):.2f}" if ms and base_ms else "n/a"
            rows.append([dataset, model, name, _setting(records[0], overrides), len(records),
                         *(_pct(metric_values(records, "test", m)) for m in ABLATION_METRICS),
                         _int([r.get("lcenet_parameters") for r in records]),
                         _int([r.get("parameters") for r in records]),
                         _num(float(np.mean(ms))) if ms else "n/a", ratio])
    return _table(header, rows, align_left=4)


def _best_at_last(values: np.ndarray) -> bool:
    """The curve's best value is at its last evaluation: the run was still improving when it stopped."""
    return bool(values.size) and bool(values[-1] >= values.max() - 1e-12 * max(1.0, abs(float(values.max()))))


def _convergence_reference(group: Group) -> dict:
    """The base runs' per-seed references: best dev value, steps to each level and the early-stagnation window
    (the first STAGNATION_FRACTION of the base run's evaluated steps), plus fallbacks for seeds the base lacks
    (mean of the bests, window over the base runs' common evaluated range)."""
    base_curves = {r.get("seed"): curve(r, CONVERGENCE_METRIC) for r in base_records(group) or []}
    base_curves = {seed: c for seed, c in base_curves.items() if c[0].size}
    best = {seed: float(values.max()) for seed, (_, values) in base_curves.items()}
    windows = {seed: stats.stagnation_window(steps, STAGNATION_FRACTION) for seed, (steps, _) in base_curves.items()}
    common_window = None
    if base_curves:
        first = max(float(steps[0]) for steps, _ in base_curves.values())
        last = min(float(steps[-1]) for steps, _ in base_curves.values())
        common_window = stats.stagnation_window([first, max(first, last)], STAGNATION_FRACTION)
    return {
        "best": best, "mean_best": float(np.mean(list(best.values()))) if best else None,
        "steps": {level: {seed: stats.steps_to_target(steps, values, level * best[seed])
                          for seed, (steps, values) in base_curves.items()} for level in CONVERGENCE_LEVELS},
        "windows": windows, "common_window": common_window,
        "improving": [_best_at_last(values) for _, values in base_curves.values()],
        "evaluated_once": sum(values.size == 1 for _, values in base_curves.values()),
    }


def _convergence(group: Group) -> list[dict]:
    """Per variant: steps to reach CONVERGENCE_LEVELS × the base's best dev metric (per seed), their ratio to the
    base's, early stagnation against the same base reference and window, and how many runs were still
    improving at their last evaluation."""
    reference = _convergence_reference(group)
    base_best, mean_base_best, base_steps = reference["best"], reference["mean_best"], reference["steps"]
    out = []
    for name, records in group.items():
        row: dict = {"variant": name, "seeds": len(records), "levels": {}, "curves": 0}
        stagnation, bests, totals, improving = [], [], [], []
        for record in records:
            steps, values = curve(record, CONVERGENCE_METRIC)
            seed = record.get("seed")
            if steps.size:
                row["curves"] += 1
                bests.append(float(values.max()))
                improving.append(_best_at_last(values))
                target = base_best.get(seed, mean_base_best)
                window = reference["windows"].get(seed, reference["common_window"])
                if target is not None and target > 0 and window is not None and window[1] > window[0]:
                    stagnation.append(stats.early_stagnation(steps, values, target, window))
            if record.get("steps") is not None:
                totals.append(record["steps"])
        for level in CONVERGENCE_LEVELS:
            reached, ratios, tried = [], [], 0
            for record in records:
                seed = record.get("seed")
                target_best = base_best.get(seed, mean_base_best)
                steps, values = curve(record, CONVERGENCE_METRIC)
                if target_best is None or not steps.size:
                    continue
                tried += 1
                hit = stats.steps_to_target(steps, values, level * target_best)
                if hit is None:
                    continue
                reached.append(hit)
                reference_steps = base_steps[level].get(seed)
                if reference_steps is None and base_steps[level]:
                    known = [v for v in base_steps[level].values() if v is not None]
                    reference_steps = float(np.mean(known)) if known else None
                ratio = stats.step_ratio(hit, reference_steps)
                if ratio is not None:
                    ratios.append(ratio)
            row["levels"][level] = {"reached": reached, "tried": tried, "ratios": ratios}
        row.update(stagnation=stagnation, best=bests, total_steps=totals, improving=improving)
        out.append(row)
    return out


def _convergence_table(groups: dict[tuple[str, str], Group]) -> str:
    header = ["data set", "model", "variant", "seeds"]
    for level in CONVERGENCE_LEVELS:
        header += [f"steps to {level:.0%}", "ratio"]
    header += [f"early stagnation (first {STAGNATION_FRACTION:.0%})", f"best dev {CONVERGENCE_METRIC}", "steps run",
               "best at last eval"]
    rows = []
    for (dataset, model), group in groups.items():
        for row in _convergence(group):
            cells: list[object] = [dataset, model, row["variant"], row["seeds"]]
            for level in CONVERGENCE_LEVELS:
                info = row["levels"][level]
                if not info["tried"]:
                    cells += ["n/a", "n/a"]
                    continue
                if not info["reached"]:
                    cells += [f"never (0/{info['tried']})", "n/a"]
                    continue
                partial = f" ({len(info['reached'])}/{info['tried']})" if len(info["reached"]) < info["tried"] else ""
                cells.append(f"{np.mean(info['reached']):,.0f}{partial}")
                cells.append(f"{np.mean(info['ratios']):.2f}" if info["ratios"] else "n/a")
            if row["stagnation"]:
                mean, std = stats.mean_std(row["stagnation"])
                cells.append(f"{mean:.3f}" if len(row["stagnation"]) == 1 else f"{mean:.3f} ± {std:.3f}")
            else:
                cells.append("n/a")
            cells.append(_pct(row["best"]))
            cells.append(_int(row["total_steps"]) if len(set(row["total_steps"])) <= 1
                         else f"{np.mean(row['total_steps']):,.0f}")
            cells.append(f"{sum(row['improving'])}/{len(row['improving'])}" if row["improving"] else "n/a")
            rows.append(cells)
    return _table(header, rows)


def _convergence_notes(groups: dict[tuple[str, str], Group]) -> list[str]:
    """Per data set × model: the early-stagnation window and reference, and a warning when the base was still
    improving at its last evaluation."""
    notes = []
    for (dataset, model), group in groups.items():
        reference = _convergence_reference(group)
        if not reference["best"]:
            continue
        windows = [w for w in reference["windows"].values() if w[1] > w[0]]
        best = _pct(list(reference["best"].values()))
        if windows:
            start, end = float(np.mean([w[0] for w in windows])), float(np.mean([w[1] for w in windows]))
            per_seed = " (per seed; mean shown)" if len(set(windows)) > 1 else ""
            note = (f"- {dataset} / {model}: early-stagnation window steps {start:,.0f}–{end:,.0f}{per_seed}, "
                    f"reference = base best dev {CONVERGENCE_METRIC} {best}.")
        else:
            note = (f"- {dataset} / {model}: no early-stagnation window (the base runs were evaluated once); "
                    f"reference = base best dev {CONVERGENCE_METRIC} {best}.")
        improving = reference["improving"]
        if reference["evaluated_once"] == len(improving):
            note += (" **The base runs were evaluated only once, at their end: whether they converged is unknown, "
                     "and the step ratios only compare when each run stopped.**")
        elif any(improving):
            note += (f" **Base still improving at its last evaluation ({sum(improving)}/{len(improving)} seeds): "
                     "ratios are relative to an unconverged base** — \"steps to 100%\" means reaching the "
                     "undertrained base's final value, not a converged one.")
        notes.append(note)
    return notes


# ---- figures -------------------------------------------------------------------------------------------------
def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def curve_variants(group: Group) -> tuple[list[str], list[str]]:
    """(drawn, left out) variants of a training-curve figure: base and LCENet first, then the other variants
    without an LCENet head (capacity controls such as a wider base), then the rest in grid order; at most
    MAX_CURVES are drawn."""
    main = [n for n in (BASE, LCENET) if n in group]
    controls = [n for n in group if n not in main and all(r.get("lcenet") is None for r in group[n])]
    ordered = main + controls + [n for n in group if n not in main and n not in controls]
    return ordered[:MAX_CURVES], ordered[MAX_CURVES:]


def _curves_figure(group: Group, title: str, path: Path) -> bool:
    names = curve_variants(group)[0]
    series = {n: {m: mean_curve(group[n], m) for m in CURVE_METRICS} for n in names}
    if not any(c is not None for per_metric in series.values() for c in per_metric.values()):
        return False
    figure = Figure(figsize=(11, 4.8 if len(names) > 4 else 4.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(CURVE_METRICS)))
    handles: dict[str, object] = {}
    for ax, metric in zip(axes, CURVE_METRICS):
        for index, name in enumerate(names):
            data = series[name][metric]
            if data is None:
                continue
            steps, mean, std, count = data
            main = name in (BASE, LCENET)
            no_head = all(r.get("lcenet") is None for r in group[name])
            points = [c for c in (curve(r, metric) for r in group[name]) if c[0].size]
            if all(c[0].size == 1 for c in points):  # one evaluation per run: a point, not a curve
                ys = [100 * float(c[1][0]) for c in points]
                line = ax.errorbar([np.mean([c[0][0] for c in points])], [np.mean(ys)],
                                   yerr=[stats.mean_std(ys)[1]], fmt="o", capsize=4, color=f"C{index % 10}")
                handles.setdefault(name, (line, f"{name} (n={len(points)}, one evaluation each)"))
                continue
            (line,) = ax.plot(steps, 100 * mean, color=f"C{index % 10}", linewidth=2.2 if main else 1.2,
                              linestyle="--" if no_head and not main else "-", marker="o" if main else ".",
                              markersize=3.5 if main else 3, alpha=1.0 if main else 0.85, zorder=3 if main else 2)
            if main and count.max() > 1:
                ax.fill_between(steps, 100 * (mean - std), 100 * (mean + std), color=f"C{index % 10}", alpha=0.18,
                                linewidth=0)
            handles.setdefault(name, (line, f"{name} (n={int(count.max())})"))
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel(f"dev {metric} (%)")
        ax.grid(alpha=0.3)
    figure.legend([h for h, _ in handles.values()], [label for _, label in handles.values()],
                  loc="outside lower center", ncols=min(4, len(handles)), fontsize=8, frameon=False)
    bands = "base and LCENet: mean ± std over seeds" if len(names) > 2 else "mean ± std over seeds"
    figure.suptitle(f"{title}: dev curves ({bands})")
    _save(figure, path)
    return True


def _ablation_figure(group: Group, title: str, path: Path) -> bool:
    names, means, stds = [], [], []
    for name, records in group.items():
        values = metric_values(records, "test", CONVERGENCE_METRIC)
        if values:
            mean, std = stats.mean_std(values)
            names.append(f"{name}\n(n={len(values)})")
            means.append(100 * mean)
            stds.append(100 * std)
    if not names:
        return False
    figure = Figure(figsize=(max(5.0, 1.2 * len(names) + 2), 4), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(names))
    bars = ax.bar(positions, means, yerr=stds, capsize=4, color=[f"C{i % 10}" for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], label_type="center", fontsize=8, color="white")
    ax.set_xticks(positions, names, fontsize=8)
    ax.set_ylabel(f"test {CONVERGENCE_METRIC} (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{title}: variants (error bars: std over seeds)")
    _save(figure, path)
    return True


def _sweep_points(group: Group, overrides: Overrides | None = None) -> list[dict]:
    """LCENet variants that differ from each other only in rank/blocks -- same other LCENet settings and same
    own overrides (so e.g. a variant with another learning rate is not part of the sweep) -- plus the base as a
    reference; empty when there is no rank or blocks variation."""
    overrides = overrides or {}
    candidates = []
    for name, records in group.items():
        settings = lcenet_settings(records[0])
        if settings is not None:
            candidates.append((name, records, settings))
    if len({(s.get("rank"), s.get("blocks")) for _, _, s in candidates}) < 2:
        return []

    def rest(records: list[dict], settings: dict) -> tuple:
        return (tuple(sorted((k, repr(v)) for k, v in settings.items() if k not in ("rank", "blocks"))),
                overrides.get(id(records[0]), ()))

    reference = next((rest(r, s) for n, r, s in candidates if n == LCENET), None)
    if reference is None:
        rests = [rest(r, s) for _, r, s in candidates]
        reference = max(set(rests), key=rests.count)
    points = []
    base = base_records(group)
    if base:
        points.append({"label": "base", "records": base, "base": True})
    for name, records, settings in candidates:
        if rest(records, settings) == reference:
            built = "" if records[0].get("lcenet_settings") else "*"  # * = as requested: not recorded as built
            points.append({"label": f"R={settings.get('rank')}{built}/B={settings.get('blocks')}", "name": name,
                           "records": records, "base": False})
    labels = [p["label"] for p in points]
    for point in points:
        if labels.count(point["label"]) > 1:
            point["label"] += f" ({point['name']})"
    return points if sum(not p["base"] for p in points) >= 2 else []


def _thin_ticks(values: list[float], log: bool, span: tuple[float, float], min_gap: float = 0.09) -> list[float]:
    """Data values to label on an axis, dropping any closer than ``min_gap`` of the axis width to the previous
    label (so tick labels do not overlap)."""
    scale = (lambda v: math.log10(v)) if log else (lambda v: v)
    low, high = scale(span[0]), scale(span[1])
    width = high - low if high > low else 1.0
    kept: list[float] = []
    for value in sorted(values):
        if not kept or (scale(value) - scale(kept[-1])) / width >= min_gap:
            kept.append(value)
    return kept


def _sweep_figure(group: Group, title: str, path: Path, overrides: Overrides | None = None) -> bool:
    points = []
    for point in _sweep_points(group, overrides):
        values = metric_values(point["records"], "test", CONVERGENCE_METRIC)
        params = [r["parameters"] for r in point["records"] if r.get("parameters")]
        ms = [v for v in map(step_ms, point["records"]) if v is not None]
        if values and params:
            mean, std = stats.mean_std(values)
            points.append({**point, "y": 100 * mean, "err": 100 * std, "params": float(np.mean(params)),
                           "ms": float(np.mean(ms)) if ms else None})
    if len([p for p in points if not p["base"]]) < 2:
        return False
    figure = Figure(figsize=(11, 4.4), layout="constrained")
    ax_params, ax_time = figure.subplots(1, 2)
    for ax, key, xlabel in ((ax_params, "params", "parameters (total)"), (ax_time, "ms", "step time (ms)")):
        shown = [p for p in points if p[key] is not None and p[key] > 0]
        if not shown:
            ax.set_axis_off()
            continue
        xs = [p[key] for p in shown]
        log = max(xs) / min(xs) >= 3
        if log:
            ax.set_xscale("log")
        for p in shown:
            ax.errorbar([p[key]], [p["y"]], yerr=[p["err"]], fmt="s" if p["base"] else "o", capsize=3,
                        color="C0" if p["base"] else "C1")
        ax.margins(x=0.12, y=0.12)
        ax.autoscale_view()
        low, high = ax.get_xlim()
        scale = (lambda v: math.log10(v)) if log else (lambda v: v)
        for p in shown:  # labels of points in the right part of the axes go to the left of the point
            right = (scale(p[key]) - scale(low)) / ((scale(high) - scale(low)) or 1.0) > 0.7
            ax.annotate(p["label"], (p[key], p["y"]), textcoords="offset points", xytext=(-5 if right else 5, 4),
                        ha="right" if right else "left", fontsize=8)
        ticks = _thin_ticks(xs, log, (low, high))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter([_short(t) for t in ticks]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlim(low, high)
        ax.set_xlabel(f"{xlabel}{', log scale' if log else ''}")
        ax.set_ylabel(f"test {CONVERGENCE_METRIC} (%)")
        ax.grid(alpha=0.3, which="both")
    figure.suptitle(f"{title}: LCENet rank (R, as built: capped at L) / blocks (B) sweep")
    _save(figure, path)
    return True


# ---- the report ----------------------------------------------------------------------------------------------
def _figures(groups: dict[tuple[str, str], Group], figures: Path, kind: str, draw, caption: str) -> list[str]:
    """Draw one figure of ``kind`` per data set × model; markdown image links for those drawn."""
    links = []
    for (dataset, model), group in groups.items():
        file = f"{_slug(dataset)}__{_slug(model)}__{kind}.png"
        if draw(group, f"{dataset} / {model}", figures / file):
            links.append(f"![{dataset} / {model}: {caption}](figures/{file})")
    return links


def write_report(experiment_dir: str | Path, n_resamples: int = 10000) -> Path:
    """Write ``experiment_dir/report.md`` and ``experiment_dir/figures/*.png`` from the run records."""
    experiment_dir = Path(experiment_dir)
    records, failures, unreadable = load_records(experiment_dir)
    spec_path = experiment_dir / "experiment.json"
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8")) if spec_path.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        spec = {}
    spec = spec if isinstance(spec, dict) else {}
    grid_cells = [c for c in spec.get("cells", []) if isinstance(c, dict) and "name" in c]
    variant_order = list(dict.fromkeys(c.get("variant") for c in grid_cells if c.get("variant")))
    groups = group_records(records, variant_order)
    overrides, shared = own_overrides(records, grid_cells)
    name = spec.get("name") or next((r["experiment"] for r in records if r.get("experiment")), experiment_dir.name)

    lines = [f"# Experiment report: {name}", ""]
    lines += _header(experiment_dir, spec, records, failures, unreadable, grid_cells)
    if not records:
        lines += ["", "_No finished runs yet._", ""]
        return _finish(experiment_dir, lines)

    lines += ["", "## Main results (test set)", "",
              "Mean ± sample std over seeds, in %. Δ is the mean of LCENet minus the mean of the base model "
              "(percentage points; train time as a ratio). p-values come from paired tests over test documents "
              f"for {', '.join(TESTED_METRICS)}: each run's per-document values (recomputed from its "
              "`test_documents`) are averaged over the seeds both variants share, then compared by a paired "
              f"bootstrap ({n_resamples:,} resamples, two-sided) and a Wilcoxon signed-rank test; bold = p < 0.05; "
              "the seeds column of those rows counts the paired seeds. Single-seed entries show no ±. "
              "n/a: no per-document results in the records.", "",
              _main_table(groups, n_resamples), ""]

    shared_text = (f" Overrides shared by every run, not repeated in the table: "
                   f"{', '.join(f'`{o}`' for o in shared)}." if shared else "")
    lines += ["## Ablation (test set)", "",
              "Every variant of the grid, mean ± std over seeds (%). Setting: the variant's LCENet arguments "
              "(— = no LCENet head, defaults = LCENet's defaults), then its own `--set` overrides (those of its "
              f"variant and model).{shared_text} Parameters are counted by the trainer "
              "(LCENet params: the head alone). Step time is train seconds / optimizer steps (train seconds "
              "count optimizer steps only; records made before that rule also count dev evaluations), and × base "
              "its ratio to the base variant.", "",
              _ablation_table(groups, overrides), ""]
    figures = experiment_dir / "figures"
    ablation_figures = _figures(groups, figures, "ablation", _ablation_figure,
                                f"test {CONVERGENCE_METRIC} per variant")
    lines += [*ablation_figures, ""] if ablation_figures else []

    sweep = _figures(groups, figures, "sweep", lambda g, t, p: _sweep_figure(g, t, p, overrides), "rank/blocks sweep")
    if sweep:
        requested = any(r.get("lcenet") is not None and not r.get("lcenet_settings") for r in records)
        lines += ["## LCENet rank / blocks sweep", "",
                  f"Test {CONVERGENCE_METRIC} (mean ± std over seeds) against total parameters and against step "
                  "time, for the LCENet variants that differ only in rank R and blocks B (same other LCENet "
                  "settings, which take LCENet's defaults when left out, and same overrides); R as built (capped "
                  "at L, the number of labels)"
                  + ("; R* = as requested, for runs whose records predate the as-built settings" if requested
                     else "")
                  + ". The square is the base model. Log x when the values span a factor of 3 or more.", "",
                  *sweep, ""]

    stopped = sum(bool(r.get("stopped_by_time")) for r in records)
    lines += ["## Convergence (dev set)", "",
              f"Steps to reach 95% and 100% of the base variant's best dev {CONVERGENCE_METRIC}. The target is "
              "set per seed: a run is compared with the best dev value of the base run with the same seed (with "
              "the mean of the base runs' bests when the base has no such seed). Steps are the first dev "
              "evaluation at or above the target, averaged over the seeds that reach it ((k/n) when only k of n "
              "do); ratio is the mean over seeds of steps(variant) / steps(base run of the same seed) — the "
              "paper claims about 0.5 for LCENet. Steps are only as fine as the dev evaluations "
              f"({_eval_schedule(records)}). Early stagnation measures every variant against the same reference "
              f"and window: the area under its dev {CONVERGENCE_METRIC} curve over one early window — the first "
              f"{STAGNATION_FRACTION:.0%} of the evaluated steps of the base run with the same seed (the base runs' "
              "common evaluated range when the base has no such seed) — divided by the window's width and by the "
              "base run's best dev value (linear interpolation between evaluations, held flat outside a run's "
              "evaluated range; trapezoid rule). 1 = at the base's best throughout the window, 0 = flat at zero, "
              "above 1 = above the base's best; higher = faster. A run that learns nothing scores its low level "
              "over the base's best, not 1. Best at last eval: runs whose best dev value is their last evaluation "
              "(still improving when they stopped)"
              + (f"; {stopped} of {len(records)} runs were stopped by `train.max_seconds`, so these curves show "
                 "early training, not convergence" if stopped else "") + ".", "",
              _convergence_table(groups), "", *_convergence_notes(groups), ""]
    curves = _figures(groups, figures, "curves", _curves_figure, "dev curves")
    if curves:
        left_out = [f"{dataset} / {model}: {', '.join(curve_variants(group)[1])}"
                    for (dataset, model), group in groups.items() if curve_variants(group)[1]]
        lines += ["### Training curves", "",
                  f"Dev {' and '.join(CURVE_METRICS)} against optimizer steps for every variant (at most "
                  f"{MAX_CURVES} per figure: base, LCENet, then variants without an LCENet head — dashed — then the "
                  "rest in grid order). Lines are the mean over seeds; base and LCENet are drawn thick with bands "
                  "± one std, the other variants thin without bands (seeds evaluated at different steps are "
                  "interpolated linearly on the union of their steps)."
                  + (f" Not drawn (see the tables): {'; '.join(left_out)}." if left_out else ""), "", *curves, ""]
    else:
        lines += ["_No dev curves in the records._", ""]
    return _finish(experiment_dir, lines)


def _finish(experiment_dir: Path, lines: list[str]) -> Path:
    path = experiment_dir / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _header(experiment_dir: Path, spec: dict, records: list[dict], failures: list[dict], unreadable: list[str],
            grid_cells: list[dict]) -> list[str]:
    profiles = sorted({str(r.get("profile")) for r in records if r.get("profile")} | (
        {str(spec["profile"])} if spec.get("profile") else set()))
    devices = sorted({f"{r.get('device')} ({r.get('device_name')})".replace("(1 threads)", "(1 thread)")
                      for r in records if r.get("device")})
    recorded = {r.get("cell") for r in records}
    failed = {f["cell"] for f in failures}
    missing = [c["name"] for c in grid_cells if c["name"] not in recorded and c["name"] not in failed]
    extra = [c for c in recorded if c and grid_cells and c not in {g["name"] for g in grid_cells}]
    lines = [f"- profile: {', '.join(profiles) or 'n/a'}",
             f"- devices: {', '.join(devices) or 'n/a'}",
             f"- records: {len(records)}" + (f" of {len(grid_cells)} grid cells" if grid_cells else "")
             + (f" ({len(extra)} from cells no longer in the grid)" if extra else ""),
             f"- failed cells: {len(failures)}"]
    stopped = [r for r in records if r.get("stopped_by_time")]
    if stopped:
        budgets = sorted({str(((r.get("config") or {}).get("train") or {}).get("max_seconds")) for r in stopped}
                         - {"None"})
        budget = f" ({' / '.join(budgets)} s)" if budgets else ""
        lines.append(f"- time budget: **{len(stopped)} of {len(records)} runs were stopped by "
                     f"`train.max_seconds`{budget}: early training, not convergence**")
    for failure in failures:
        lines.append(f"  - `{failure['cell']}` (exit {failure.get('returncode', '?')}): "
                     f"{_cell(failure.get('error') or 'no error message')}")
    if missing:
        lines.append(f"- not run yet: {len(missing)} ({', '.join(f'`{m}`' for m in missing)})")
    if unreadable:
        lines.append(f"- unreadable record files (skipped): {', '.join(f'`{u}`' for u in unreadable)}")
    lines += ["", f"Regenerate this report with `lcenet report {experiment_dir}`; it reads only "
              "`records/*.json`, and each record keeps the command that produced its run."]
    example = next((r for r in records if r.get("command")), None)
    if example:
        lines += [f"For example, `{example.get('cell') or example['dataset']}` came from:", "", "```",
                  example["command"], "```"]
    return lines


def _eval_schedule(records: list[dict]) -> str:
    every = {((r.get("config") or {}).get("train") or {}).get("eval_every_steps") for r in records}
    texts = sorted("every epoch" if e is None else f"every {e} steps" for e in every)
    return "dev evaluated " + " / ".join(texts) if texts else "dev evaluation schedule unknown"
