"""Experiments as data: a YAML grid of data sets × models × LCENet variants × seeds.

Every cell is an ordinary ``lcenet train`` run in its own directory, launched as a subprocess so a crash
in one cell cannot take the others down and the exact command is on record. Rerunning an experiment
skips finished cells and resumes killed ones from their checkpoints.

    name: quick_cooking
    profile: cpu-quick                     # a label carried into every record and table
    datasets: {cooking: ../shared/data/CookingStackExchange}   # or a synthetic shape, generated once into
                                           # OUTPUT/data/NAME: {synth: {shape: wiki500k, scale: 0.02, seed: 0}}
    models: {xmlcnn: configs/cooking_xmlcnn.yaml}        # or {config: ..., set: [...]}
    variants:
      base: {lcenet: null}
      lcenet: {lcenet: {}}
      rank16: {lcenet: {rank: 16}}
      wide_base: {lcenet: null, set: [model_args.hidden_dim=1024]}
      capacity: {capacity_control: {}}      # the base + as many parameters as LCENet's defaults add
      base_then_lcenet: {lcenet: {}, init_from: base}   # starts from the same seed's trained base (a variant
                                           # listed above it; its cell runs first), then trains base + LCENet
    seeds: [0, 1, 2]
    set: [train.epochs=5]                  # overrides shared by every cell
    parallel: 1                            # cells run at once (useful on a GPU)
"""

from __future__ import annotations

import json
import logging
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lcenet import synth
from lcenet.config import read_yaml_mapping
from lcenet.errors import UserError
from lcenet.io import atomic_write_json, atomic_write_text
from lcenet.records import run_record

log = logging.getLogger("lcenet")

# The command a cell's run was started with, written into its run directory before it starts.
LAUNCH_COMMAND_FILE = "command.txt"


@dataclass
class Cell:
    dataset: str
    data_dir: str
    model: str
    config: str
    variant: str
    lcenet: dict | None
    seed: int
    overrides: list[str] = field(default_factory=list)
    capacity_control: dict | None = None
    init_from: str | None = None  # a variant: start from the trained model of its cell of the same seed

    @property
    def name(self) -> str:
        return self.name_of(self.variant)

    @property
    def source_name(self) -> str | None:
        """The cell whose trained model this one starts from, if any."""
        return None if self.init_from is None else self.name_of(self.init_from)

    def name_of(self, variant: str) -> str:
        return f"{self.dataset}__{self.model}__{variant}__s{self.seed}"

    def command(self, run_dir: Path, resume: bool = False) -> list[str]:
        args = [sys.executable, "-m", "lcenet.cli", "train", "--data", self.data_dir, "--config", self.config,
                "--output", str(run_dir), "--seed", str(self.seed), "--no-progress"]
        for assignment in self.assignments():
            args += ["--set", assignment]
        if self.source_name is not None:  # a sibling run directory: where it is is known only here
            args += ["--set", f"train.init_from={run_dir.parent / self.source_name / 'model'}"]
        return args + (["--resume"] if resume else [])

    def assignments(self) -> list[str]:
        """The cell's ``--set`` overrides of its config: LCENet on/off and its arguments, then the grid's."""
        switch = ["lcenet=null"] if self.lcenet is None else ["lcenet=true"]
        arguments = [f"lcenet.{key}={json.dumps(value)}" for key, value in (self.lcenet or {}).items()]
        overrides = self.overrides
        if self.capacity_control is not None:
            switch.append("capacity_control=true")
            arguments += [f"capacity_control.{key}={json.dumps(value)}" for key, value in self.capacity_control.items()]
            # The grid's LCENet settings (e.g. --set lcenet.rank=256) size the control like the LCENet it matches.
            overrides = [f"capacity_control.{item[len('lcenet.'):]}" if item.startswith("lcenet.") else item
                         for item in overrides]
        elif self.lcenet is None:  # a base: the grid's LCENet settings are not for it (they would switch LCENet on)
            overrides = [item for item in overrides if not item.startswith("lcenet.")]
        return switch + arguments + overrides


@dataclass
class Experiment:
    name: str
    profile: str
    cells: list[Cell]
    parallel: int = 1
    synthetic: dict[str, synth.SynthSettings] = field(default_factory=dict)  # generated into OUTPUT/data/NAME


def load_experiment(path: str | Path, data_overrides: dict[str, str] | None = None) -> Experiment:
    path = Path(path)
    spec = read_yaml_mapping(path, "experiment")
    allowed = {"name", "profile", "datasets", "models", "variants", "seeds", "set", "parallel"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    for key in ("datasets", "models", "variants", "seeds"):
        if not spec.get(key):
            raise UserError(f"{path}: '{key}' is required and must not be empty")
    datasets = {**spec["datasets"], **(data_overrides or {})}
    shared = _string_list(spec.get("set", []), path, "set")
    cells = []
    synthetic = {}
    for dataset, data_dir in datasets.items():
        if dataset not in spec["datasets"]:
            raise UserError(f"--data {dataset}=...: the experiment has no data set {dataset!r}")
        if isinstance(data_dir, dict):
            synthetic[dataset] = _synthetic_settings(data_dir, path, dataset)
            data_dir = ""  # known once the output directory is: run_experiment fills it in
        elif not isinstance(data_dir, str):
            raise UserError(f"{path}: datasets.{dataset} must be a directory or {{synth: {{shape: ..., scale: ...}}}}")
        for model, model_spec in spec["models"].items():
            model_spec = {"config": model_spec} if isinstance(model_spec, str) else dict(model_spec or {})
            if "config" not in model_spec:
                raise UserError(f"{path}: models.{model} needs a config file")
            config = _resolve(model_spec["config"], path)
            model_set = _string_list(model_spec.get("set", []), path, f"models.{model}.set")
            variants = []
            for variant, variant_spec in spec["variants"].items():
                variant_spec = dict(variant_spec or {})
                if not set(variant_spec) <= {"lcenet", "capacity_control", "set", "init_from"}:
                    raise UserError(f"{path}: variants.{variant} takes only 'lcenet', 'capacity_control', 'set' and "
                                    "'init_from'")
                if variant_spec.get("lcenet") is not None and variant_spec.get("capacity_control") is not None:
                    raise UserError(f"{path}: variants.{variant}: capacity_control is a base without LCENet")
                # Listed above it, so a chain of sources cannot loop; the cell starts once its source has ended.
                if "init_from" in variant_spec and variant_spec["init_from"] not in [v for v, _, _ in variants]:
                    raise UserError(f"{path}: variants.{variant}.init_from must name a variant listed above it (got "
                                    f"{variant_spec['init_from']!r})")
                variants.append((variant, variant_spec,
                                 _string_list(variant_spec.get("set", []), path, f"variants.{variant}.set")))
            # Seed-major: every variant of the first seed runs before the second seed starts, so a grid stopped
            # early still holds complete, paired comparisons.
            for seed in spec["seeds"]:
                for variant, variant_spec, variant_set in variants:
                    cells.append(Cell(dataset, str(data_dir), model, config, variant, variant_spec.get("lcenet"),
                                      int(seed), shared + model_set + variant_set,
                                      variant_spec.get("capacity_control"), variant_spec.get("init_from")))
    return Experiment(spec.get("name", path.stem), str(spec.get("profile", "default")), cells,
                      int(spec.get("parallel", 1)), synthetic)


def _synthetic_settings(spec: dict, path: Path, dataset: str) -> synth.SynthSettings:
    arguments = spec.get("synth")
    allowed = {"shape", "scale", "seed", "labels"}
    if set(spec) != {"synth"} or not isinstance(arguments, dict) or not set(arguments) <= allowed:
        raise UserError(f"{path}: datasets.{dataset}: a synthetic data set is {{synth: {{shape: NAME, scale: F, "
                        "seed: N, labels: N}}}} (labels: the shape's unless given)")
    if "shape" not in arguments:
        raise UserError(f"{path}: datasets.{dataset}.synth needs a shape ({', '.join(synth.SHAPES)})")
    return synth.settings_for(arguments["shape"], arguments.get("scale", 1.0), arguments.get("labels"),
                              arguments.get("seed", 0))


def _generate_synthetic(settings: synth.SynthSettings, directory: Path) -> None:
    """Generate the data set into ``directory`` unless it is there already (with the same settings)."""
    stats_path = directory / "stats.json"
    if stats_path.exists():
        found = json.loads(stats_path.read_text(encoding="utf-8"))["settings"]
        wanted = {"shape": settings.shape, "scale": settings.scale, "seed": settings.seed, "labels": settings.labels}
        if {key: found[key] for key in wanted} != wanted:
            raise UserError(f"{directory}: holds a synthetic data set with other settings "
                            f"({', '.join(f'{k}={found[k]}' for k in wanted)}); expected "
                            f"{', '.join(f'{k}={v}' for k, v in wanted.items())}")
        return
    log.info("generating %s (shape %s, scale %g, seed %d)", directory, settings.shape, settings.scale, settings.seed)
    synth.generate(settings, directory)


def _string_list(value: Any, path: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{path}: {key} must be a list of KEY=VALUE strings")
    return value


def _resolve(config: str, experiment_file: Path) -> str:
    """Config paths are relative to the working directory, or else to the experiment file."""
    candidate = Path(config)
    if not candidate.exists() and (experiment_file.parent / config).exists():
        candidate = experiment_file.parent / config
    if not candidate.exists():
        raise UserError(f"{experiment_file}: config {config} not found")
    return str(candidate)


def cell_status(run_dir: Path) -> str:
    if (run_dir / "metrics.json").exists():
        return "done"
    if (run_dir / "checkpoint.safetensors").exists():
        return "resumable"
    return "new"


def run_experiment(experiment: Experiment, output: str | Path, parallel: int | None = None,
                   collect_only: bool = False) -> dict[str, str]:
    """Run every unfinished cell; write records/ for finished ones. Returns {cell name: status}.
    ``collect_only``: run nothing, only write the records of finished cells (status "pending" for the rest)."""
    output = Path(output)
    (output / "records").mkdir(parents=True, exist_ok=True)
    (output / "runs").mkdir(exist_ok=True)
    data_dirs = {}
    for dataset, settings in experiment.synthetic.items():
        data_dirs[dataset] = output / "data" / dataset
        if not collect_only:
            _generate_synthetic(settings, data_dirs[dataset])
    cells = [replace(c, data_dir=str(data_dirs[c.dataset])) if c.dataset in data_dirs else c for c in experiment.cells]
    atomic_write_json(output / "experiment.json", {
        "name": experiment.name, "profile": experiment.profile,
        "cells": [{"name": c.name, "dataset": c.dataset, "model": c.model, "variant": c.variant, "seed": c.seed,
                   "lcenet": c.lcenet, "capacity_control": c.capacity_control, "overrides": c.overrides,
                   "init_from": c.init_from}
                  for c in cells]})

    def run_cell(cell: Cell) -> str:
        run_dir = output / "runs" / cell.name
        status = cell_status(run_dir)
        error_path = output / "records" / f"{cell.name}.error.json"
        if status != "done" and cell.source_name is not None:  # started once its source's run had ended
            if cell_status(output / "runs" / cell.source_name) != "done":
                if collect_only or cells_in_flight.stopped_by is not None:
                    return "pending"
                atomic_write_json(error_path, {"cell": cell.name, "error": f"its source {cell.source_name} has not "
                                               f"finished: run it first (--only {cell.init_from})"})
                log.warning("[%s] not started: %s has not finished", cell.name, cell.source_name)
                return "failed"
        if status != "done" and (collect_only or cells_in_flight.stopped_by is not None):
            return "pending"
        if status != "done":
            command = cell.command(run_dir, resume=status == "resumable")
            log.info("[%s] %s", cell.name, "resuming" if status == "resumable" else "starting")
            run_dir.mkdir(parents=True, exist_ok=True)
            if status == "new":  # the record keeps this, even if the grid file changes before it is collected
                atomic_write_text(run_dir / LAUNCH_COMMAND_FILE, shlex.join(_portable(command)) + "\n")
            started = time.perf_counter()
            with open(run_dir / "stderr.log", "a", encoding="utf-8") as stderr:
                returncode = cells_in_flight.run(command, stderr)
            if returncode is None:  # the grid was stopped (SIGTERM or SIGINT) before or while this cell ran
                return "pending"
            if returncode != 0:
                tail = (run_dir / "stderr.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
                atomic_write_json(error_path, {"cell": cell.name, "returncode": returncode,
                                               "command": shlex.join(command), "error": tail[-1] if tail else "",
                                               "seconds": time.perf_counter() - started})
                log.warning("[%s] failed (exit %d): %s", cell.name, returncode, tail[-1] if tail else "")
                return "failed"
        # Runs started before command.txt existed get the command the grid gives now.
        launched = run_dir / LAUNCH_COMMAND_FILE
        command = (launched.read_text(encoding="utf-8").strip() if launched.exists()
                   else shlex.join(_portable(cell.command(run_dir))))
        try:
            record = run_record(run_dir, cell.dataset, experiment.profile, command)
            if cell.source_name is not None:
                # Its steps continue the source's: the source's model is its weights at the source's best step.
                source = json.loads((output / "runs" / cell.source_name / "metrics.json").read_text(encoding="utf-8"))
                record.update(init_from_variant=cell.init_from, init_from_steps=source["best_step"])
        except (UserError, ValueError, KeyError, OSError) as error:  # e.g. a damaged metrics.json: report, go on
            atomic_write_json(error_path, {"cell": cell.name, "error": f"unreadable results: {error}"})
            log.warning("[%s] unreadable results: %s", cell.name, error)
            return "failed"
        error_path.unlink(missing_ok=True)
        record.update(variant=cell.variant, grid_model=cell.model, cell=cell.name, experiment=experiment.name)
        atomic_write_json(output / "records" / f"{cell.name}.json", record)
        log.info("[%s] %s: test P@1 %.4f nDCG@5 %.4f", cell.name, "skipped (finished)" if status == "done" else
                 "done", record["test"]["P@1"], record["test"]["nDCG@5"])
        return "skipped" if status == "done" else "done"

    workers = max(1, parallel or experiment.parallel)
    cells_in_flight = CellProcesses()
    statuses: dict[str, str] = {}
    with cells_in_flight.stopped_by_signals(), ThreadPoolExecutor(max_workers=workers) as pool:
        waiting, running = list(cells), {}
        while waiting or running:
            unfinished = {c.name for c in waiting} | {c.name for c in running.values()}
            # In grid order, each cell whose source (a variant's init_from) is not still to run in this grid:
            # a cell waiting for its source lets the cells after it start meanwhile.
            for cell in [c for c in waiting if c.source_name not in unfinished][:workers - len(running)]:
                waiting.remove(cell)
                running[pool.submit(run_cell, cell)] = cell
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                statuses[running.pop(future).name] = future.result()
    return {c.name: statuses[c.name] for c in cells}


class CellProcesses:
    """The grid's running ``lcenet train`` processes. A SIGTERM or SIGINT sent to the grid alone (a scheduler, a
    ``timeout``, ``kill``) would otherwise leave them training, orphaned, and a relaunch of the grid would meet
    them in their run directories; so while :meth:`stopped_by_signals` is active the signal terminates them
    (they resume from their checkpoints), starts no further cell, and, once they are gone, ends this process as
    the signal would have."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopped_by: int | None = None

    def run(self, command: list[str], stderr) -> int | None:
        """The process's exit code, or None if the grid was stopped before or while it ran."""
        with self._lock:
            if self.stopped_by is not None:
                return None
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
            self._running.add(process)
        returncode = process.wait()
        with self._lock:
            self._running.discard(process)
            return None if self.stopped_by is not None else returncode

    def stop(self, signum: int, frame=None) -> None:
        with self._lock:
            self.stopped_by = signum
            for process in self._running:
                process.terminate()

    @contextmanager
    def stopped_by_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread may take signals
            yield
            return
        previous = {signum: signal.signal(signum, self.stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.stopped_by is not None:
            log.warning("stopped by signal %d; rerun the same command to resume the unfinished cells",
                        self.stopped_by)
            signal.raise_signal(self.stopped_by)


def _portable(command: list[str]) -> list[str]:
    """The command as a user would type it: ``lcenet train ...`` rather than this interpreter's path."""
    return ["lcenet", *command[3:]]
