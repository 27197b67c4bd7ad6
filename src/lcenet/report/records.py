"""Run records of an experiment directory: loading them, naming their variants and models, grouping them by
data set × model, and the constants every layer of the report shares.

Variants: a record's ``variant`` is its name in the experiment grid; records without one (e.g. collected
by benchmark scripts) are called ``base`` when ``lcenet`` is null and ``lcenet`` otherwise. The *base*
variant is the one named ``base`` with ``lcenet`` null; the *LCENet* variant is the one named ``lcenet``, else
the only variant with an LCENet head (a grid comparing the base with one named setting, e.g. ``lcenet_default``); the
*capacity control* is the variant named ``capacity``, else the first whose runs set ``capacity_control`` (a
base without LCENet, widened to hold as many extra parameters as LCENet).

Fields added to the records over time: ``stop_reason`` and ``converged`` of older records are worked out on
loading by the trainer's own rule (:func:`lcenet.records.complete`: their stop flags and dev curves hold all it
reads); ``data_restrictions`` comes from their data config; anything else missing is unknown.

The bottom layer of :mod:`lcenet.report`: records <- analysis <- tables, figures <- report; no module imports
one above it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from pathlib import Path

from lcenet.config import CORNET
from lcenet.errors import UserError
from lcenet.records import complete

MAIN_METRICS = ("P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5")
TESTED_METRICS = ("P@1", "P@5", "nDCG@5")  # paired tests over test documents
ABLATION_METRICS = ("P@1", "P@5", "nDCG@5")
CURVE_METRICS = ("nDCG@5", "P@1")
CONVERGENCE_METRIC = "nDCG@5"  # the selection metric of the trainer
CONVERGENCE_LEVELS = (0.95, 1.0)
STAGNATION_FRACTION = 0.2
MAX_CURVES = 8  # variants drawn in a training-curve figure
BASE, LCENET, CAPACITY = "base", "lcenet", "capacity"
SPLITS = ("train", "dev", "test")


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
            records.append(complete(data))
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


def lcenet_records(group: Group) -> tuple[str, list[dict]] | None:
    """(name, records) of the group's LCENet variant: the variant named ``lcenet`` with an LCENet head, else the
    only variant with one; None when there is none or several others and none is named ``lcenet``."""
    with_head = {name: records for name, records in group.items()
                 if all(r.get("lcenet") is not None for r in records)}
    if LCENET in with_head:
        return LCENET, with_head[LCENET]
    return next(iter(with_head.items())) if len(with_head) == 1 else None


def is_capacity_control(records: list[dict]) -> bool:
    return any(((r.get("config") or {}).get("capacity_control")) is not None for r in records)


def capacity_records(group: Group) -> tuple[str, list[dict]] | None:
    """(name, records) of the group's capacity control: the variant named ``capacity`` without an LCENet head,
    else the first variant whose runs set ``config.capacity_control``; None when there is none."""
    for name, records in group.items():
        if name == CAPACITY and all(r.get("lcenet") is None for r in records):
            return name, records
    return next(((name, records) for name, records in group.items()
                 if name != BASE and is_capacity_control(records)), None)


def converged_state(records: list[dict]) -> bool | None:
    """True when every run converged, False when one did not, None when none is known not to have converged
    but one's convergence is unknown (a record from before ``converged`` existed)."""
    flags = [r.get("converged") for r in records]
    if any(flag is False for flag in flags):
        return False
    return None if any(flag is None for flag in flags) else True


def data_restriction(record: dict) -> dict | None:
    """``{max_docs, sample_seed}``: the documents per split the run was cut to (``max_docs`` None or empty = the
    full splits), from the record or, for records from before ``data_restrictions``, from its data config; None
    when neither says."""
    if record.get("data_restrictions") is not None:
        return record["data_restrictions"]
    data = (record.get("config") or {}).get("data")
    if data is None:
        return None
    return {"max_docs": data.get("max_docs"), "sample_seed": data.get("sample_seed")}

def metric_values(records: list[dict], split: str, metric: str) -> list[float]:
    return [float(r[split][metric]) for r in records if (r.get(split) or {}).get(metric) is not None]


def step_ms(record: dict) -> float | None:
    steps, seconds = record.get("steps"), record.get("train_seconds")
    return 1000.0 * seconds / steps if steps and seconds is not None else None


def lcenet_settings(record: dict) -> dict | None:
    """The record's LCENet keyword arguments, CorNet's filled in where it holds none (None for a base run)."""
    if record.get("lcenet") is None:
        return None
    if record.get("lcenet_settings"):  # as built: rank already capped at the number of labels
        return record["lcenet_settings"]
    return {**CORNET.kwargs(), **record["lcenet"]}


Overrides = dict[int, tuple[str, ...]]  # id(record) -> the record's own --set overrides


def run_overrides(record: dict, cell_overrides: dict[str, list[str]] | None = None) -> list[str]:
    """The ``--set`` overrides a run was launched with, without the ``lcenet...`` and ``capacity_control...``
    ones (those are the record's ``lcenet`` and ``config.capacity_control``) and a grid's ``train.init_from`` (the
    record's ``init_from_variant``): the grid cell's ``overrides`` from ``experiment.json`` when known, else parsed
    from the record's ``command``."""
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
    return [o for o in found if not _head_override(o) and not o.startswith("train.init_from=")]


def _head_override(override: str) -> bool:
    return override.split("=", 1)[0].split(".", 1)[0] in ("lcenet", "capacity_control")


def own_overrides(records: Iterable[dict], grid_cells: list[dict] | None = None) -> tuple[Overrides, list[str]]:
    """Each record's own overrides (those of its variant and model) and the shared ones: the overrides common
    to every run and grid cell (the experiment's ``set``), left out of the per-variant settings."""
    records = list(records)
    cell_overrides = {str(c["name"]): [str(o) for o in c.get("overrides") or []] for c in grid_cells or []
                      if isinstance(c, dict) and "name" in c}
    lists = [run_overrides(r, cell_overrides) for r in records]
    lists += [[o for o in v if not _head_override(o)] for v in cell_overrides.values()]
    shared = [o for o in dict.fromkeys(lists[0]) if all(o in other for other in lists[1:])] if lists else []
    return ({id(r): tuple(o for o in found if o not in shared) for r, found in zip(records, lists)}, shared)
