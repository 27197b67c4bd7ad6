"""Run records: one JSON per finished training run, the raw material of RESULTS.md and the reports.

A record joins what the run wrote (metrics.json, log.jsonl) with how it was launched (command, profile,
data set name), so every number in a generated table can be traced to a command that reproduces it.
"""

from __future__ import annotations

import json
from pathlib import Path

from lcenet import stopping
from lcenet.config import changes_from_cornet
from lcenet.errors import UserError


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dev_curve(log: list[dict]) -> list[dict]:
    """[{step, epoch, seconds, P@1, nDCG@5, ...}] from the dev evaluations of a run log."""
    return [{"step": r["step"], "epoch": r["epoch"], "seconds": r.get("seconds"), **r["metrics"]}
            for r in log if r.get("event") == "eval"]


def run_record(run_dir: str | Path, dataset: str, profile: str, command: str) -> dict:
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise UserError(f"{metrics_path}: missing (the run did not finish)")
    summary = json.loads(metrics_path.read_text(encoding="utf-8"))
    config = summary["config"]
    return {
        "dataset": dataset,
        "model": config["model"],
        # The LCENet settings that differ from CorNet's (what tables print), whatever the defaults were.
        "lcenet": None if config["lcenet"] is None else changes_from_cornet(config["lcenet"]),
        "seed": config["train"]["seed"],
        "profile": profile,
        "device": summary["device"],
        "device_name": summary["device_name"],
        "epochs": config["train"]["epochs"],
        "epochs_completed": summary["epochs_completed"],
        "steps": summary["steps"],
        "best_step": summary["best_step"],
        "stopped_early": summary["stopped_early"],
        "stopped_by_time": summary.get("stopped_by_time", False),
        # Records from before these fields existed: None here, worked out by complete() when read.
        "stop_reason": summary.get("stop_reason"),
        "converged": summary.get("converged"),
        "data_restrictions": summary.get("data_restrictions", {"max_docs": config["data"].get("max_docs"),
                                                                "sample_seed": config["data"].get("sample_seed")}),
        "git_commit": summary.get("git_commit"),
        "git_dirty": summary.get("git_dirty"),
        "torch_version": summary.get("torch_version"),
        "date": summary.get("date"),
        "train_seconds": summary["train_seconds"],
        "wall_seconds": summary["wall_seconds"],  # of the last process; earlier ones stopped at resumed_at_steps
        "resumed_at_steps": summary.get("resumed_at_steps"),  # None: a record from before the field
        "parameters": summary["parameters"],
        "lcenet_parameters": summary["lcenet_parameters"],
        "lcenet_settings": summary.get("lcenet_settings"),
        "model_args": summary.get("model_args"),  # as built: a capacity control's widened arguments
        "num_labels": summary.get("num_labels"),
        "shortlist": summary.get("shortlist"),  # clusters, candidates per document, dev/test recall (or None)
        "command": command,
        "test": summary["test"],
        "dev": summary["dev"],
        "dev_curve": dev_curve(read_log(run_dir)),
        "config": config,
        "docs": {"train": summary["train_docs"], "dev": summary["dev_docs"], "test": summary["test_docs"]},
        "test_documents": _read_json(run_dir / "test_documents.json"),
    }


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def complete(record: dict) -> dict:
    """A record with ``stop_reason`` and ``converged`` filled in by :mod:`lcenet.stopping`'s rule where it was
    written before the trainer recorded them (from its stop flags, step count and dev curve, which hold all
    the rule reads); ``stopping_derived`` says so. Records with no dev curve stay unknown (None)."""
    if record.get("stop_reason") is not None and record.get("converged") is not None:
        return record
    curve = [point.get("nDCG@5") for point in record.get("dev_curve") or []]
    if "stopped_early" not in record or not curve or None in curve:
        return record
    max_steps = ((record.get("config") or {}).get("train") or {}).get("max_steps")
    reason = stopping.stop_reason(record["stopped_early"], record.get("stopped_by_time", False), record["steps"],
                                  max_steps)
    return {**record, "stop_reason": reason, "converged": stopping.converged(curve, reason), "stopping_derived": True}
