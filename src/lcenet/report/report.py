"""Assembly of ``DIR/report.md``: the header, the tables of :mod:`lcenet.report.tables`, the figures of
:mod:`lcenet.report.figures` and the text that explains them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lcenet.io import atomic_write_text
from lcenet.report.figures import ablation_figure, curve_variants, curves_figure, sweep_figure
from lcenet.report.records import (
    CONVERGENCE_METRIC,
    CURVE_METRICS,
    MAX_CURVES,
    STAGNATION_FRACTION,
    TESTED_METRICS,
    Group,
    group_records,
    load_records,
    own_overrides,
)
from lcenet.report.tables import (
    converged_text,
    convergence_notes,
    convergence_table,
    data_lines,
    group_ablation_table,
    main_table,
    md_cell,
    stop_reasons_text,
)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"



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
              "over the seeds both ran (named in the row when one of them ran others too; percentage points; "
              "train time as a ratio). p-values come from paired tests over test documents "
              f"for {', '.join(TESTED_METRICS)}: each run's per-document values (recomputed from its "
              "`test_documents`) are averaged over the seeds both variants share, then compared by a paired "
              f"bootstrap ({n_resamples:,} resamples, two-sided) and a Wilcoxon signed-rank test; bold = p < 0.05; "
              "the seeds column of those rows counts the paired seeds. Single-seed entries show no ±. "
              "n/a: no per-document results in the records. Where a capacity control ran (a base without LCENet, "
              "widened to hold as many extra parameters as LCENet), LCENet is also compared with it. Converged: "
              "runs whose early stopping fired or whose last dev evaluations stopped raising the best dev "
              f"{CONVERGENCE_METRIC} (? = the record predates the field); stop reasons: patience, epochs, max_steps "
              "or max_seconds. **A Δ against a reference that did not converge (or may not have) is in bold with "
              "the reason: it compares early training, not the methods.**", "",
              main_table(groups, n_resamples), ""]

    shared_text = (f" Overrides shared by every run, not repeated in the table: "
                   f"{', '.join(f'`{o}`' for o in shared)}." if shared else "")
    lines += ["## Ablation (test set)", "",
              "Every variant of the grid, mean ± std over seeds (%). Setting: the variant's LCENet arguments "
              "that differ from CorNet's published setting (— = no LCENet head, CorNet = exactly CorNet's: R = "
              "1000, 2 blocks, sigmoid, ELU, residual, xavier, no auxiliary loss), then its own `--set` overrides "
              "(those of its "
              f"variant and model).{shared_text} Parameters are counted by the trainer "
              "(LCENet params: the head alone). Step time is train seconds / optimizer steps (train seconds "
              "count optimizer steps only; records made before that rule also count dev evaluations), and × base "
              "its ratio to the base variant. Converged and stop reasons as in the main table.", "",
              group_ablation_table(groups, overrides), ""]
    figures = experiment_dir / "figures"
    ablation_figures = _figures(groups, figures, "ablation", ablation_figure,
                                f"test {CONVERGENCE_METRIC} per variant")
    lines += [*ablation_figures, ""] if ablation_figures else []

    sweep = _figures(groups, figures, "sweep", lambda g, t, p: sweep_figure(g, t, p, overrides), "rank/blocks sweep")
    if sweep:
        requested = any(r.get("lcenet") is not None and not r.get("lcenet_settings") for r in records)
        lines += ["## LCENet rank / blocks sweep", "",
                  f"Test {CONVERGENCE_METRIC} (mean ± std over seeds) against total parameters and against step "
                  "time, for the LCENet variants that differ only in rank R and blocks B (same other LCENet "
                  "settings, which take CorNet's when left out, and same overrides); R as built (capped "
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
              convergence_table(groups), "", *convergence_notes(groups), ""]
    curves = _figures(groups, figures, "curves", curves_figure, "dev curves")
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
    data = data_lines(records)
    lines = [f"- profile: {', '.join(profiles) or 'n/a'}",
             f"- devices: {', '.join(devices) or 'n/a'}",
             *([f"- data: {data[0]}"] if len(data) == 1 else ["- data:", *(f"  - {line}" for line in data)]),
             *_code_lines(records),
             *_convergence_lines(records),
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
                     f"{md_cell(failure.get('error') or 'no error message')}")
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


def _convergence_lines(records: list[dict]) -> list[str]:
    if not records:
        return []
    converged = converged_text(records)
    if converged == "?":
        return ["- converged, stop reasons: not recorded (the records predate those fields)"]
    derived = sum(bool(r.get("stopping_derived")) for r in records)
    note = (f"; {derived} of {len(records)} records predate these fields, so the trainer's rule was applied to "
            "their dev curves and stop flags" if derived else "")
    return [f"- converged: {converged} runs (early stopping fired, or the last dev evaluations stopped raising the "
            f"best dev {CONVERGENCE_METRIC}); stop reasons: {stop_reasons_text(records)}{note}"]


def _code_lines(records: list[dict]) -> list[str]:
    """The code and library versions the runs came from (``git_commit``, ``git_dirty``, ``torch_version``,
    ``date``); nothing for records from before those fields existed."""
    commits = sorted({f"`{r['git_commit'][:10]}`" + (" (uncommitted changes)" if r.get("git_dirty") else "")
                      for r in records if r.get("git_commit")})
    torches = sorted({str(r["torch_version"]) for r in records if r.get("torch_version")})
    dates = sorted(str(r["date"])[:10] for r in records if r.get("date"))
    if not (commits or torches or dates):
        return []
    unknown = sum(not r.get("git_commit") for r in records)
    parts = [f"git {', '.join(commits) or 'unknown'}" + (f" ({unknown} runs unknown)" if commits and unknown else ""),
             f"torch {', '.join(torches) or 'unknown'}"]
    if dates:
        parts.append(f"run {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else ""))
    return [f"- code: {'; '.join(parts)}"]


def _eval_schedule(records: list[dict]) -> str:
    every = {((r.get("config") or {}).get("train") or {}).get("eval_every_steps") for r in records}
    texts = sorted("every epoch" if e is None else f"every {e} steps" for e in every)
    return "dev evaluated " + " / ".join(texts) if texts else "dev evaluation schedule unknown"
