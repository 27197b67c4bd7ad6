"""Numbers computed from run records: paired significance tests over test documents, dev curves (per run and
averaged over seeds) and the convergence analysis (steps to the base's best dev value, early stagnation)."""

from __future__ import annotations

import numpy as np

from lcenet import stats
from lcenet.report.records import CONVERGENCE_LEVELS, CONVERGENCE_METRIC, STAGNATION_FRACTION, Group, base_records


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
    """(steps, values) of a run's dev evaluations; a run started from another's trained model (a grid variant's
    ``init_from``) counts its steps on from the steps that model had trained."""
    points = [p for p in record.get("dev_curve") or [] if p.get(metric) is not None and p.get("step") is not None]
    points.sort(key=lambda p: p["step"])
    return (np.array([p["step"] for p in points], dtype=np.float64) + record.get("init_from_steps", 0),
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


def _best_at_last(values: np.ndarray) -> bool:
    """The curve's best value is at its last evaluation: the run was still improving when it stopped."""
    return bool(values.size) and bool(values[-1] >= values.max() - 1e-12 * max(1.0, abs(float(values.max()))))


def convergence_reference(group: Group) -> dict:
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


def convergence_rows(group: Group) -> list[dict]:
    """Per variant: steps to reach CONVERGENCE_LEVELS × the base's best dev metric (per seed), their ratio to the
    base's, early stagnation against the same base reference and window, and how many runs were still
    improving at their last evaluation."""
    reference = convergence_reference(group)
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
