"""``lcenet report DIR``: an experiment directory's records -> ``DIR/report.md`` + ``DIR/figures/*.png``.

Every number in the report is read from ``DIR/records/<cell>.json`` (see :mod:`lcenet.records`); nothing is
typed in. Sections: header (name, profile, devices, failed cells, runs stopped by a time budget, how to
regenerate), the paper-style main table (base vs LCENet, mean ± std over seeds, Δ, paired significance tests
over test documents), the ablation table (every variant with its LCENet arguments and own ``--set``
overrides, parameters, step time), a rank/blocks sweep, convergence (steps to reach the base model's best dev
nDCG@5, early stagnation against the same base reference and window for every variant, a warning when the
base was still improving), training curves of every variant (up to MAX_CURVES) and an ablation bar plot.

Layers, each importing only those before it (so the package has no import cycle): :mod:`.records` (constants,
loading, naming and grouping records) <- :mod:`.analysis` (paired tests, curves, convergence) <- :mod:`.tables`
(markdown) and :mod:`.figures` (matplotlib) <- :mod:`.report` (``write_report``, the assembly).
"""

from lcenet.report.figures import curve_variants
from lcenet.report.records import group_records, load_records, own_overrides
from lcenet.report.report import write_report
from lcenet.report.tables import (
    ablation_table,
    converged_text,
    convergence_flag,
    data_lines,
    p_text,
    results_table,
    setting_text,
    shared_seeds,
    stop_reasons_text,
)

__all__ = ["ablation_table", "converged_text", "convergence_flag", "curve_variants", "data_lines", "group_records",
           "load_records", "own_overrides", "p_text", "results_table", "setting_text", "shared_seeds",
           "stop_reasons_text", "write_report"]
