"""The report's markdown tables (the paper-style main table, the ablation table and the convergence table) and
the texts that describe how runs ended and what data they saw."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np

from lcenet import stats
from lcenet.config import changes_from_cornet
from lcenet.report.analysis import convergence_reference, convergence_rows, paired_document_test
from lcenet.report.records import (
    ABLATION_METRICS,
    BASE,
    CONVERGENCE_LEVELS,
    CONVERGENCE_METRIC,
    LCENET,
    MAIN_METRICS,
    SPLITS,
    STAGNATION_FRACTION,
    TESTED_METRICS,
    Group,
    Overrides,
    base_records,
    capacity_records,
    converged_state,
    data_restriction,
    group_records,
    lcenet_records,
    metric_values,
    own_overrides,
    step_ms,
)


# ---- formatting ----------------------------------------------------------------------------------------------
def _pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = stats.mean_std(values)
    return f"{100 * mean:.2f}" if len(values) == 1 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def p_text(value: float | None) -> str:
    """A p-value as the tables print it: 3 decimals or <0.001, bold below 0.05."""
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


def md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(md_cell(c) for c in cells) + " |"


TEXT_COLUMNS = ("converged", "stop reasons")  # left-aligned wherever they are


def _table(header: list[str], rows: list[list[object]], align_left: int = 3) -> str:
    lines = [_row(header), "|" + "|".join(":---" if i < align_left or name in TEXT_COLUMNS else "---:"
                                          for i, name in enumerate(header)) + "|"]
    return "\n".join(lines + [_row(r) for r in rows])


CORNET_LABEL = "CorNet"  # an LCENet run with CorNet's published setting (lcenet.config.CORNET)


def _arguments(arguments: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(arguments.items()))


def setting_text(record: dict, overrides: Overrides | None = None) -> str:
    """``"—"`` (no LCENet head) or the LCENet arguments that differ from CorNet's (``"CorNet"`` when none), or for
    a capacity control the LCENet arguments it matches in parameters and the model arguments it widened, then the
    run's own overrides: ``"CorNet; train.lcenet_lr=0.0001"``, ``"capacity control (LCENet CorNet): hidden_dim=2800"``,
    ``"aux_loss_weight=1.0, init=identity; from base's trained model"`` (a grid variant with ``init_from: base``).
    """
    lcenet = record.get("lcenet")
    parts = [] if lcenet is None else [_arguments(lcenet) or CORNET_LABEL]
    config = record.get("config") or {}
    if config.get("capacity_control") is not None:
        widened = {k: v for k, v in (record.get("model_args") or {}).items()
                   if (config.get("model_args") or {}).get(k) != v}
        matched = changes_from_cornet(config["capacity_control"])
        parts.append(f"capacity control (LCENet {_arguments(matched) or CORNET_LABEL})"
                     + (f": {_arguments(widened)}" if widened else ""))
    if record.get("init_from_variant"):
        parts.append(f"from {record['init_from_variant']}'s trained model")
    parts += list((overrides or {}).get(id(record), ()))
    return "; ".join(parts) or "—"


# ---- how runs ended, what data they saw ----------------------------------------------------------------------
def converged_text(records: list[dict]) -> str:
    """``"2/3"``: runs that converged of all; ``"?"`` when unknown for every run, ``"1/3 (1 ?)"`` for some."""
    flags = [r.get("converged") for r in records]
    unknown = sum(flag is None for flag in flags)
    if unknown == len(flags):
        return "?"
    return f"{sum(flag is True for flag in flags)}/{len(flags)}" + (f" ({unknown} ?)" if unknown else "")


def stop_reasons_text(records: list[dict]) -> str:
    """``"patience ×2, epochs ×1"`` (most frequent first); ``"?"`` for records that do not say."""
    counts = Counter(r.get("stop_reason") or "?" for r in records)
    if set(counts) == {"?"}:
        return "?"
    return ", ".join(f"{reason} ×{n}" for reason, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def convergence_flag(records: list[dict]) -> str | None:
    """Why a comparison against these runs is not one against a converged model (None when every run
    converged): ``"not converged"`` or, for records from before ``converged`` existed, ``"convergence unknown"``."""
    state = converged_state(records)
    return None if state else "not converged" if state is False else "convergence unknown"


def delta_label(reference_name: str, reference: list[dict], enhanced_name: str = "LCENet", note: str = "") -> str:
    """``"Δ (LCENet − base)"`` (``note`` after a semicolon), in bold with the reason when the reference did not
    converge: its Δ compares early training, not the methods."""
    flag = convergence_flag(reference)
    note = f"; {note}" if note else ""
    if flag is None:
        return f"Δ ({enhanced_name} − {reference_name}{note})"
    reason = f"{reference_name} not converged: early training" if flag == "not converged" else \
        f"{reference_name} {flag}"
    return f"**Δ ({enhanced_name} − {reference_name}{note}; {reason})**"


def shared_seeds(reference: list[dict], enhanced: list[dict]) -> tuple[list[dict], list[dict], str]:
    """Both sides restricted to the seeds they share, so that a Δ of means compares the same seeds, with a note
    naming them; both unchanged (and no note) when their seeds are the same or they share none."""
    seeds_a, seeds_b = ({r.get("seed") for r in records} for records in (reference, enhanced))
    shared = seeds_a & seeds_b
    if seeds_a == seeds_b or not shared:
        return reference, enhanced, ""
    names = ", ".join(str(seed) for seed in sorted(shared))
    return ([r for r in reference if r.get("seed") in shared], [r for r in enhanced if r.get("seed") in shared],
            f"seed{'s' if len(shared) > 1 else ''} {names}, which both ran")


def restriction_text(restriction: dict | None) -> str:
    """``"train 5,000, dev 1,000 documents at most (random, sample seed 0); test full"``, ``"full splits"``."""
    if restriction is None:
        return "not recorded"
    max_docs = restriction.get("max_docs") or {}
    caps = {split: max_docs[split] for split in SPLITS if max_docs.get(split) is not None}
    if not caps:
        return "full splits"
    seed = restriction.get("sample_seed")
    how = "the first in file order" if seed is None else f"random, sample seed {seed}"
    full = [split for split in SPLITS if split not in caps]
    return (", ".join(f"{split} {cap:,}" for split, cap in caps.items()) + f" documents at most ({how})"
            + (f"; {' and '.join(full)} full" if full else ""))


def data_lines(records: list[dict]) -> list[str]:
    """One line per distinct data restriction among the records (with the documents the runs saw, when the
    records say): ``"EUR-Lex57K: full splits (train 45,000, dev 6,000, test 6,000 documents)"``."""
    seen: dict[tuple[str, str, str], int] = {}
    for record in records:
        docs = record.get("docs") or {}
        counts = ", ".join(f"{split} {docs[split]:,}" for split in SPLITS if docs.get(split) is not None)
        key = (str(record.get("dataset")), restriction_text(data_restriction(record)), counts)
        seen[key] = seen.get(key, 0) + 1
    lines = []
    for (dataset, text, counts), n in seen.items():
        details = [f"{counts} documents"] if counts else []
        if len(seen) > 1:
            details.append(f"{n} of {len(records)} runs")
        lines.append(f"{dataset}: {text}" + (f" ({'; '.join(details)})" if details else ""))
    return lines


# ---- tables --------------------------------------------------------------------------------------------------
def results_table(records: Iterable[dict], n_resamples: int = 10000) -> str:
    """The paper-style main table (markdown): per data set × model, base vs LCENet on the test set as mean ± std
    over seeds (%), the Δ of the means over the seeds both ran (percentage points), and paired-test p-values over
    test documents."""
    return main_table(group_records(records), n_resamples)


def ablation_table(records: Iterable[dict]) -> str:
    """Every variant with its setting (LCENet arguments and its own ``--set`` overrides, read from the records'
    commands), accuracy, parameter counts and step time (markdown)."""
    records = list(records)
    return group_ablation_table(group_records(records), own_overrides(records)[0])


def main_table(groups: dict[tuple[str, str], Group], n_resamples: int = 10000) -> str:
    header = ["data set", "model", "variant", "seeds", *MAIN_METRICS, "train time", "converged", "stop reasons"]
    rows: list[list[object]] = []
    for (dataset, model), group in groups.items():
        base, lcenet, capacity = base_records(group), lcenet_records(group), capacity_records(group)
        capacity = capacity[1] if capacity else None
        enhanced = lcenet[1] if lcenet else None
        enhanced_label = "+ LCENet" if not lcenet or lcenet[0] == LCENET else f"+ LCENet ({lcenet[0]})"
        for label, records in ((BASE, base), (enhanced_label, enhanced), ("capacity control", capacity)):
            if not records:
                continue
            seconds = [r["train_seconds"] for r in records if r.get("train_seconds") is not None]
            rows.append([dataset, model, label, len(records), *(_pct(metric_values(records, "test", m))
                                                                 for m in MAIN_METRICS),
                         f"{np.mean(seconds):.1f} s" if seconds else "n/a", converged_text(records),
                         stop_reasons_text(records)])
        if not enhanced:
            continue
        for name, reference, p_label in ((BASE, base, "p"), ("capacity control", capacity, "p vs capacity")):
            if reference:
                rows += [[dataset, model, *cells] for cells in
                         _comparison_rows(name, reference, enhanced, p_label, n_resamples)]
    if not rows:
        return "_No base or LCENet runs to compare._"
    return _table(header, rows)


def _comparison_rows(name: str, reference: list[dict], enhanced: list[dict], p_label: str,
                     n_resamples: int) -> list[list[object]]:
    """The Δ row (LCENet − reference, flagged when the reference did not converge) and the paired tests' p rows
    of the main table, from the variant column on."""
    reference, enhanced, note = shared_seeds(reference, enhanced)
    deltas = []
    for metric in MAIN_METRICS:
        a, b = metric_values(reference, "test", metric), metric_values(enhanced, "test", metric)
        deltas.append(f"{100 * (np.mean(b) - np.mean(a)):+.2f}" if a and b else "n/a")
    time_a = [r["train_seconds"] for r in reference if r.get("train_seconds")]
    time_b = [r["train_seconds"] for r in enhanced if r.get("train_seconds")]
    rows: list[list[object]] = [[delta_label(name, reference, note=note), "", *deltas,
                                 f"×{np.mean(time_b) / np.mean(time_a):.2f}" if time_a and time_b else "n/a", "", ""]]
    tests = {m: paired_document_test(reference, enhanced, m, n_resamples) for m in TESTED_METRICS}
    paired_seeds = next((t["seeds"] for t in tests.values() if t), 0)
    for label, key in ((f"{p_label} (paired bootstrap)", "p_bootstrap"), (f"{p_label} (Wilcoxon)", "p_wilcoxon")):
        rows.append([label, paired_seeds or "", *(
            (p_text(tests[m][key]) if tests[m] else "n/a") if m in TESTED_METRICS else "" for m in MAIN_METRICS),
            "", "", ""])
    return rows


def group_ablation_table(groups: dict[tuple[str, str], Group], overrides: Overrides | None = None) -> str:
    header = ["data set", "model", "variant", "setting", "seeds", *ABLATION_METRICS, "LCENet params",
              "params", "step time (ms)", "× base", "converged", "stop reasons"]
    rows = []
    for (dataset, model), group in groups.items():
        base = base_records(group)
        base_ms = [v for v in map(step_ms, base or []) if v is not None]
        for name, records in group.items():
            ms = [v for v in map(step_ms, records) if v is not None]
            ratio = f"×{np.mean(ms) / np.mean(base_ms):.2f}" if ms and base_ms else "n/a"
            rows.append([dataset, model, name, setting_text(records[0], overrides), len(records),
                         *(_pct(metric_values(records, "test", m)) for m in ABLATION_METRICS),
                         _int([r.get("lcenet_parameters") for r in records]),
                         _int([r.get("parameters") for r in records]),
                         _num(float(np.mean(ms))) if ms else "n/a", ratio, converged_text(records),
                         stop_reasons_text(records)])
    return _table(header, rows, align_left=4)


def convergence_table(groups: dict[tuple[str, str], Group]) -> str:
    header = ["data set", "model", "variant", "seeds"]
    for level in CONVERGENCE_LEVELS:
        header += [f"steps to {level:.0%}", "ratio"]
    header += [f"early stagnation (first {STAGNATION_FRACTION:.0%})", f"best dev {CONVERGENCE_METRIC}", "steps run",
               "best at last eval"]
    rows = []
    for (dataset, model), group in groups.items():
        for row in convergence_rows(group):
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


def convergence_notes(groups: dict[tuple[str, str], Group]) -> list[str]:
    """Per data set × model: the early-stagnation window and reference, and a warning when the base was still
    improving at its last evaluation."""
    notes = []
    for (dataset, model), group in groups.items():
        reference = convergence_reference(group)
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
