"""The report's matplotlib figures (written as PNG): training curves, the ablation bar plot and the LCENet
rank/blocks sweep."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from lcenet import stats
from lcenet.io import atomic_write
from lcenet.report.analysis import curve, mean_curve
from lcenet.report.records import (
    BASE,
    CONVERGENCE_METRIC,
    CURVE_METRICS,
    MAX_CURVES,
    Group,
    Overrides,
    base_records,
    lcenet_records,
    lcenet_settings,
    metric_values,
    step_ms,
)


def _short(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def main_variants(group: Group) -> list[str]:
    """The variants drawn thick with bands: the base and the LCENet variant."""
    lcenet = lcenet_records(group)
    return [n for n in (BASE, lcenet[0] if lcenet else None) if n in group]


def curve_variants(group: Group) -> tuple[list[str], list[str]]:
    """(drawn, left out) variants of a training-curve figure: base and LCENet first, then the other variants
    without an LCENet head (capacity controls such as a wider base), then the rest in grid order; at most
    MAX_CURVES are drawn."""
    main = main_variants(group)
    controls = [n for n in group if n not in main and all(r.get("lcenet") is None for r in group[n])]
    ordered = main + controls + [n for n in group if n not in main and n not in controls]
    return ordered[:MAX_CURVES], ordered[MAX_CURVES:]


def curves_figure(group: Group, title: str, path: Path) -> bool:
    names, main_names = curve_variants(group)[0], main_variants(group)
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
            main = name in main_names
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


def ablation_figure(group: Group, title: str, path: Path) -> bool:
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


def sweep_points(group: Group, overrides: Overrides | None = None) -> list[dict]:
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

    lcenet = lcenet_records(group)
    reference = next((rest(r, s) for n, r, s in candidates if lcenet and n == lcenet[0]), None)
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


def sweep_figure(group: Group, title: str, path: Path, overrides: Overrides | None = None) -> bool:
    points = []
    for point in sweep_points(group, overrides):
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
