"""Why a run stopped and whether it converged: one rule for the trainer and for records written before the
trainer recorded it.

A run converged when early stopping fired on dev nDCG@5, or when its last ``CONVERGENCE_WINDOW`` dev
evaluations raised the best score before them by less than ``CONVERGENCE_TOLERANCE`` (0.1 points).
"""

from __future__ import annotations

CONVERGENCE_WINDOW = 2  # evaluations
CONVERGENCE_TOLERANCE = 0.001  # nDCG@5 as a fraction: 0.1 points


def stop_reason(stopped_early: bool, stopped_by_time: bool, steps: int, max_steps: int | None) -> str:
    if stopped_early:
        return "patience"
    if stopped_by_time:
        return "max_seconds"
    if max_steps is not None and steps >= max_steps:
        return "max_steps"
    return "epochs"


def converged(dev_scores: list[float], reason: str) -> bool:
    """Too few evaluations to tell counts as not converged."""
    if reason == "patience":
        return True
    if len(dev_scores) <= CONVERGENCE_WINDOW:
        return False
    before = max(dev_scores[:-CONVERGENCE_WINDOW])
    return max(dev_scores[-CONVERGENCE_WINDOW:]) - before < CONVERGENCE_TOLERANCE
