import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib import image
from typer.testing import CliRunner

from conftest import load_benchmark, write_tiny_dataset
from lcenet.cli import app
from lcenet.report import (
    ablation_table,
    curve_variants,
    data_lines,
    group_records,
    load_records,
    own_overrides,
    results_table,
    write_report,
)
from lcenet.report.figures import sweep_points
from lcenet.stats import per_document_from_hits

NUM_DOCS = 300


def fake_record(variant, lcenet, seed, hit_rate, speed, parameters=1000, lcenet_parameters=0, step_ms=10.0,
                curve=True, documents=True, with_variant=True, dev_best=0.5, converged=True, stop_reason="epochs"):
    """A record as the experiment runner writes it, with per-document hits drawn at ``hit_rate`` and a dev
    curve ``dev_best * (1 - exp(-speed * step / 100))``."""
    rng = np.random.default_rng([seed, int(hit_rate * 1000)])
    hits = (rng.random((NUM_DOCS, 5)) < hit_rate).astype(np.int64)
    docs = {"k": 5, "hits": (hits << np.arange(5)).sum(axis=1).tolist(), "num_true": [5] * NUM_DOCS}
    test = {f"{m}@{k}": float(per_document_from_hits(docs, m, k).mean()) for m in ("P", "nDCG", "R") for k in (1, 3, 5)}
    test.update({f"PSP@{k}": hit_rate / 2 + 0.01 * seed for k in (1, 3, 5)})
    steps = np.arange(10, 201, 10)
    best = dev_best + 0.01 * seed
    dev_curve = [{"step": int(s), "epoch": int(s // 50), "seconds": s * step_ms / 1000,
                  "nDCG@5": float(best * (1 - np.exp(-speed * s / 100))),
                  "P@1": float(0.9 * best * (1 - np.exp(-speed * s / 100)))} for s in steps]
    record = {
        "dataset": "toy", "model": "xmlcnn", "lcenet": lcenet, "seed": seed, "profile": "unit", "device": "cpu",
        "device_name": "test cpu", "epochs": 4, "epochs_completed": 4, "steps": 200, "best_step": 200,
        "stopped_early": False, "stop_reason": stop_reason, "converged": converged,
        "train_seconds": 200 * step_ms / 1000, "wall_seconds": 30.0,
        "parameters": parameters, "lcenet_parameters": lcenet_parameters,
        "command": f"lcenet train --data data/toy --seed {seed} --set lcenet={'null' if lcenet is None else 'true'}",
        "test": test, "dev": test, "dev_curve": dev_curve if curve else [],
        "config": {"train": {"eval_every_steps": 10}}, "docs": {"train": 1000, "dev": 100, "test": NUM_DOCS},
        "test_documents": docs if documents else None,
    }
    if with_variant:
        record.update(variant=variant, cell=f"toy__xmlcnn__{variant}__s{seed}", experiment="unit")
    return record


VARIANTS = {  # name: (lcenet, hit rate, curve speed, params, lcenet params, step ms)
    "base": (None, 0.40, 1.0, 1000, 0, 10.0),
    "lcenet": ({}, 0.55, 2.0, 1600, 600, 12.0),
    "rank4": ({"rank": 4}, 0.45, 1.5, 1100, 100, 10.5),
    "rank16": ({"rank": 16}, 0.50, 1.8, 1300, 300, 11.0),
    "no_residual": ({"residual": False}, 0.30, 0.5, 1600, 600, 12.0),  # rises slowly: never at 95% of base
}


def write_experiment(directory: Path, records: list[dict], failures: dict | None = None,
                     overrides: dict[str, list[str]] | None = None) -> Path:
    """``overrides``: variant -> the grid cell's ``--set`` overrides (default: none)."""
    (directory / "records").mkdir(parents=True)
    for record in records:
        (directory / "records" / f"{record.get('cell') or record['variant']}.json").write_text(json.dumps(record))
    for cell, error in (failures or {}).items():
        (directory / "records" / f"{cell}.error.json").write_text(json.dumps(
            {"cell": cell, "returncode": 2, "command": "lcenet train ...", "error": error, "seconds": 1.0}))
    cells = [{"name": r["cell"], "dataset": r["dataset"], "model": r["model"], "variant": r["variant"],
              "seed": r["seed"], "lcenet": r["lcenet"], "overrides": (overrides or {}).get(r["variant"], [])}
             for r in records if r.get("cell")]
    (directory / "experiment.json").write_text(json.dumps({"name": "unit", "profile": "unit", "cells": cells}))
    return directory


def linked_figures(report: Path) -> list[Path]:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text(encoding="utf-8"))
    return [report.parent / link for link in links]


def assert_figures_ok(report: Path) -> list[Path]:
    figures = linked_figures(report)
    for path in figures:
        assert path.exists(), path
        pixels = image.imread(path)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.01, path
    return figures


def table_row(text: str, *starts: str) -> list[str]:
    prefix = "| " + " | ".join(starts) + " |"
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_on_fabricated_experiment(tmp_path):
    records = [fake_record(name, lcenet, seed, rate, speed, params, lparams, ms)
               for name, (lcenet, rate, speed, params, lparams, ms) in VARIANTS.items() for seed in (0, 1)]
    directory = write_experiment(tmp_path / "exp", records,
                                 {"toy__xmlcnn__bad__s0": "error: LCENet hidden_activation must be one of elu"})
    path = write_report(directory, n_resamples=2000)
    assert path == directory / "report.md"
    text = path.read_text(encoding="utf-8")
    assert "# Experiment report: unit" in text and "profile: unit" in text and "cpu (test cpu)" in text
    assert "`toy__xmlcnn__bad__s0` (exit 2): error: LCENet hidden_activation must be one of elu" in text
    assert "lcenet report " in text and "lcenet train --data data/toy" in text

    # main table: numbers from the records, Δ of the means, p-values of the paired tests
    header = table_row(text, "data set", "model", "variant")
    base = dict(zip(header, table_row(text, "toy", "xmlcnn", "base")))
    enhanced = dict(zip(header, table_row(text, "toy", "xmlcnn", "+ LCENet")))
    delta = dict(zip(header, table_row(text, "toy", "xmlcnn", "Δ (LCENet − base)")))
    p_boot = dict(zip(header, table_row(text, "toy", "xmlcnn", "p (paired bootstrap)")))
    p_wil = dict(zip(header, table_row(text, "toy", "xmlcnn", "p (Wilcoxon)")))
    p1 = [r["test"]["P@1"] for r in records if r["variant"] == "base"]
    assert base["P@1"] == f"{100 * np.mean(p1):.2f} ± {100 * np.std(p1, ddof=1):.2f}"
    assert base["seeds"] == "2" and enhanced["seeds"] == "2"
    p5 = {v: np.mean([r["test"]["P@5"] for r in records if r["variant"] == v]) for v in ("base", "lcenet")}
    assert delta["P@5"] == f"{100 * (p5['lcenet'] - p5['base']):+.2f}" and delta["P@5"].startswith("+")
    for metric in ("P@1", "P@5", "nDCG@5"):
        assert p_boot[metric] == "**<0.001**" and p_wil[metric] == "**<0.001**"
    assert p_boot["P@3"] == "" and p_boot["seeds"] == "2"
    assert base["train time"] == "2.0 s" and delta["train time"] == "×1.20"

    # ablation table: every variant with parameters and step-time ratio
    ablation = text.split("## Ablation")[1].split("##")[0]
    for name in VARIANTS:
        assert f"| toy | xmlcnn | {name} |" in ablation
    rank16 = dict(zip(table_row(ablation, "data set"), table_row(ablation, "toy", "xmlcnn", "rank16")))
    assert rank16["setting"] == "rank=16" and rank16["LCENet params"] == "300" and rank16["params"] == "1,300"
    assert (rank16["step time (ms)"], rank16["× base"]) == ("11.00", "×1.10")
    assert (rank16["converged"], rank16["stop reasons"]) == ("2/2", "epochs ×2")

    # convergence: LCENet's curve rises twice as fast, so it needs about half the steps
    convergence = text.split("## Convergence")[1]
    row = table_row(convergence, "toy", "xmlcnn", "lcenet")
    assert row[4:8] == ["90", "0.50", "100", "0.50"]  # same plateau, twice the rate: half the steps
    assert table_row(convergence, "toy", "xmlcnn", "base")[4:8] == ["180", "1.00", "200", "1.00"]
    assert "never (0/2)" in table_row(convergence, "toy", "xmlcnn", "no_residual")[6]
    stagnation = {name: float(table_row(convergence, "toy", "xmlcnn", name)[8].split(" ±")[0]) for name in VARIANTS}
    assert stagnation["lcenet"] > stagnation["rank16"] > stagnation["rank4"] > stagnation["base"]
    assert stagnation["no_residual"] < stagnation["base"]  # slower than the base: lower, against the same reference
    assert table_row(convergence, "toy", "xmlcnn", "base")[-1] == "2/2"  # still rising at step 200
    assert "Base still improving at its last evaluation (2/2 seeds): ratios are relative to an unconverged base" \
        in convergence
    assert "early-stagnation window steps 10–48" in convergence  # first 20% of the base's steps 10..200
    assert "stopped by `train.max_seconds`" not in text

    figures = assert_figures_ok(path)
    names = {f.name for f in figures}
    assert names == {"toy__xmlcnn__ablation.png", "toy__xmlcnn__sweep.png", "toy__xmlcnn__curves.png"}
    assert "rank / blocks sweep" in text

    # the same table for benchmark scripts, from records alone
    table = results_table(records, n_resamples=500)
    assert "Δ (LCENet − base)" in table and "**<0.001**" in table
    assert table.count("\n") + 1 == 2 + 5  # header, rule, base, LCENet, Δ, two p rows


def test_report_degenerate_cases(tmp_path):
    # one seed, no per-document results, no dev curve, no LCENet variant, records without variant names
    records = [fake_record("base", None, 0, 0.4, 1.0, documents=False, curve=False, with_variant=False),
               fake_record("base", None, 0, 0.5, 1.0, with_variant=False)]
    records[1]["model"] = "attentionxml"
    directory = write_experiment(tmp_path / "exp", [])
    for index, record in enumerate(records):
        (directory / "records" / f"r{index}.json").write_text(json.dumps(record))
    text = write_report(directory, n_resamples=200).read_text(encoding="utf-8")
    row = table_row(text, "toy", "xmlcnn", "base")
    assert row[3] == "1" and "±" not in row[4]
    assert "p (paired" not in text.split("## Ablation")[0]
    assert table_row(text.split("## Convergence")[1], "toy", "xmlcnn", "base")[4] == "n/a"
    assert "sweep" not in text
    assert_figures_ok(directory / "report.md")

    # base and LCENet without per-document results: p-values are n/a, Δ still shown
    enhanced = fake_record("lcenet", {}, 0, 0.6, 2.0, documents=False, with_variant=False)
    table = results_table([records[0], enhanced])
    assert "n/a" in table_row(table, "toy", "xmlcnn", "p (paired bootstrap)") and "Δ (LCENet − base)" in table

    # an LCENet variant alone
    table = results_table([enhanced])
    assert "+ LCENet" in table and "| base |" not in table

    # an empty experiment
    empty = write_experiment(tmp_path / "empty", [])
    assert "No finished runs yet" in write_report(empty).read_text(encoding="utf-8")


# ---- end to end: lcenet experiment -> records -> report -------------------------------------------------------
TINY_CONFIG = {
    "model": "xmlcnn",
    "model_args": {"embedding_dim": 16, "num_filters": 8, "hidden_dim": 16, "filter_sizes": [2, 3], "pool_chunks": 2},
    "data": {"max_length": 24, "vocab_size": 200, "min_frequency": 1},
    "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "lr": 0.005, "patience": None, "device": "cpu",
              "eval_every_steps": 4, "log_every_steps": 2},
}


def experiment_spec(directory: Path, data: Path, variants: dict, seeds: tuple[int, ...] = (0,)) -> Path:
    (directory / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    spec = directory / "experiment.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "profile": "test", "datasets": {"tiny": str(data)},
                                    "models": {"xmlcnn": str(directory / "tiny.yaml")}, "variants": variants,
                                    "seeds": list(seeds), "set": ["train.epochs=2"]}))
    return spec


@pytest.fixture(scope="module")
def finished_experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    data = write_tiny_dataset(root / "data")
    spec = experiment_spec(root, data, {"base": {"lcenet": None}, "lcenet": {"lcenet": {"rank": 4}}})
    env = {"LCENET_CACHE": str(root / "cache")}
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(root / "out")], env=env)
    return root, data, env, result


def test_experiment_end_to_end(finished_experiment):
    root, _, env, result = finished_experiment
    assert result.exit_code == 0, result.output
    out = root / "out"
    records = {p.name for p in (out / "records").glob("*.json")}
    assert records == {"tiny__xmlcnn__base__s0.json", "tiny__xmlcnn__lcenet__s0.json"}
    record = json.loads((out / "records" / "tiny__xmlcnn__lcenet__s0.json").read_text())
    # the record names what differs from CorNet's setting: rank, and the auxiliary loss and init lcenet's default
    # changes
    assert record["variant"] == "lcenet" and record["lcenet"] == {"rank": 4, "aux_loss_weight": 1.0,
                                                                  "init": "identity"}
    assert record["test_documents"]
    assert len(record["dev_curve"]) >= 2
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "Δ (LCENet − base" in text and "p (paired bootstrap)" in text and "## Convergence" in text
    header = table_row(text, "data set", "model", "variant")
    enhanced = dict(zip(header, table_row(text, "tiny", "xmlcnn", "+ LCENet")))
    assert f"{100 * record['test']['nDCG@5']:.2f}" == enhanced["nDCG@5"]
    # how the run ended, from the trainer through the record to the table: 2 epochs, no patience
    assert record["stop_reason"] == "epochs" and isinstance(record["converged"], bool)
    assert enhanced["converged"] == f"{int(record['converged'])}/1" and enhanced["stop reasons"] == "epochs ×1"
    assert "- data: tiny: full splits (train " in text
    import torch

    assert f"torch {torch.__version__}" in text.split("- code: ")[1].splitlines()[0]  # provenance of the runs
    assert {f.name for f in assert_figures_ok(out / "report.md")} >= {"tiny__xmlcnn__curves.png"}

    rerun = CliRunner().invoke(app, ["experiment", str(root / "experiment.yaml"), "--output", str(out)], env=env)
    assert rerun.exit_code == 0, rerun.output
    assert "0 run, 2 already finished, 0 failed" in rerun.output


def test_collect_only_writes_finished_records_and_starts_nothing(finished_experiment, tmp_path):
    root, data, env, _ = finished_experiment
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    launched = json.loads((out / "records" / "tiny__xmlcnn__lcenet__s0.json").read_text())["command"]
    for cell in ("base", "lcenet"):
        (out / "records" / f"tiny__xmlcnn__{cell}__s0.json").unlink()
    # the grid changed since the runs: their records keep the commands they were started with
    spec = experiment_spec(tmp_path, data, {"base": {"lcenet": None}, "lcenet": {"lcenet": {"rank": 4, "blocks": 1}},
                                            "rank2": {"lcenet": {"rank": 2}}})
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(out), "--collect-only"], env=env)
    assert result.exit_code == 0, result.output
    assert "0 run, 2 already finished, 0 failed, 1 not run" in result.output
    assert (out / "records" / "tiny__xmlcnn__base__s0.json").exists()  # collected again from its run
    collected = json.loads((out / "records" / "tiny__xmlcnn__lcenet__s0.json").read_text())["command"]
    assert collected == launched and "lcenet.rank=4" in collected and "blocks" not in collected
    assert not (out / "runs" / "tiny__xmlcnn__rank2__s0").exists()


def test_only_and_seed_pick_the_cells_a_run_considers(finished_experiment, tmp_path):
    """--only (model or variant) and --seed narrow the grid together; a filter that leaves nothing is one line."""
    root, data, env, _ = finished_experiment
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)  # base and lcenet of seed 0 are finished
    spec = experiment_spec(tmp_path, data, {"base": {"lcenet": None}, "lcenet": {"lcenet": {"rank": 4}}},
                           seeds=(0, 1, 2))
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", str(spec), "--output", str(out), "--collect-only", "--only", "lcenet",
                                 "--seed", "0", "--seed", "2"], env=env)
    assert result.exit_code == 0, result.output
    assert "0 run, 1 already finished, 0 failed, 1 not run" in result.output
    result = runner.invoke(app, ["experiment", str(spec), "--output", str(out), "--collect-only", "--seed", "5"],
                           env=env)
    assert result.exit_code == 2 and "--seed 5: no cell of" in result.output


def test_experiment_failed_cell(finished_experiment, tmp_path):
    root, data, env, _ = finished_experiment
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)  # base and lcenet are finished; two new cells, one of them invalid
    # valid settings, but the word-vector file is missing: found only when the cell runs
    spec = experiment_spec(tmp_path, data, {"base": {"lcenet": None}, "lcenet": {"lcenet": {"rank": 4}},
                                            "bad": {"lcenet": {"rank": 4}, "set": ["train.embeddings=missing.txt"]},
                                            "rank2": {"lcenet": {"rank": 2}}})
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(out)], env=env)
    assert result.exit_code == 1, result.output
    assert "1 run, 2 already finished, 1 failed, 0 not run" in result.output
    error = json.loads((out / "records" / "tiny__xmlcnn__bad__s0.error.json").read_text())
    assert "missing.txt" in error["error"] and error["returncode"] != 0
    assert not (out / "records" / "tiny__xmlcnn__bad__s0.json").exists()
    assert (out / "records" / "tiny__xmlcnn__rank2__s0.json").exists()
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "failed cells: 1" in text and "`tiny__xmlcnn__bad__s0`" in text and "missing.txt" in text
    assert "| tiny | xmlcnn | rank2 |" in text
    assert_figures_ok(out / "report.md")


def test_a_variant_started_from_another_waits_for_its_run_and_counts_on_from_its_steps(finished_experiment, tmp_path):
    from lcenet.report.analysis import curve

    root, data, env, _ = finished_experiment
    out = tmp_path / "out"
    spec = experiment_spec(tmp_path, data, {"base": {"lcenet": None},
                                            "then_lcenet": {"lcenet": {"rank": 4}, "init_from": "base"}},
                           seeds=(0, 1))
    # two at once: each LCENet cell starts once its base has finished, and seed 1's base does not wait for that
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(out), "--parallel", "2"], env=env)
    assert result.exit_code == 0, result.output

    def started(cell):
        return (out / "runs" / f"tiny__xmlcnn__{cell}" / "command.txt").stat().st_mtime

    def ended(cell):
        return (out / "runs" / f"tiny__xmlcnn__{cell}" / "metrics.json").stat().st_mtime

    assert started("then_lcenet__s0") >= ended("base__s0") and started("then_lcenet__s1") >= ended("base__s1")
    assert started("base__s1") < ended("base__s0")
    base = json.loads((out / "records" / "tiny__xmlcnn__base__s0.json").read_text())
    warm = json.loads((out / "records" / "tiny__xmlcnn__then_lcenet__s0.json").read_text())
    assert f"train.init_from={out / 'runs' / 'tiny__xmlcnn__base__s0' / 'model'}" in warm["command"]
    assert warm["init_from_variant"] == "base" and warm["init_from_steps"] == base["best_step"]
    assert curve(warm, "nDCG@5")[0][0] == base["best_step"] + warm["dev_curve"][0]["step"]
    text = (out / "report.md").read_text(encoding="utf-8")
    ablation = dict(zip(table_row(text, "data set", "model", "variant", "setting"),
                        table_row(text, "tiny", "xmlcnn", "then_lcenet")))
    assert ablation["setting"] == "aux_loss_weight=1.0, init=identity, rank=4; from base's trained model"


def test_a_variant_needs_its_source_listed_above_it_and_finished(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    spec = experiment_spec(tmp_path, data, {"a_lcenet": {"lcenet": {"rank": 4}, "init_from": "base"},
                                            "base": {"lcenet": None}})  # written in this (sorted) order
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "variants.a_lcenet.init_from must name a variant listed above it" in result.output
    spec = experiment_spec(tmp_path, data, {"base": {"lcenet": None},
                                            "then_lcenet": {"lcenet": {"rank": 4}, "init_from": "base"}})
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(out), "--only", "then_lcenet"])
    assert result.exit_code == 1, result.output
    error = json.loads((out / "records" / "tiny__xmlcnn__then_lcenet__s0.error.json").read_text())
    assert "tiny__xmlcnn__base__s0 has not finished: run it first (--only base)" in error["error"]
    assert not (out / "runs" / "tiny__xmlcnn__then_lcenet__s0").exists()


def test_a_grid_with_an_invalid_setting_is_refused_before_any_run(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    spec = experiment_spec(tmp_path, data, {"base": {"lcenet": None},
                                            "bad": {"lcenet": {"hidden_activation": "swish"}}})
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cell tiny__xmlcnn__bad__s0" in result.stderr and "lcenet.hidden_activation must be one of" in result.stderr
    assert not list((tmp_path / "out").glob("runs/*"))


def test_a_synthetic_data_set_is_generated_once_into_the_experiment(tmp_path):
    spec = experiment_spec(tmp_path, tmp_path / "unused", {"base": {"lcenet": None}})
    content = yaml.safe_load(spec.read_text())
    content["datasets"] = {"synthetic": {"synth": {"shape": "amazoncat13k", "scale": 0.0001, "labels": 40}}}
    spec.write_text(yaml.safe_dump(content))
    out, env = tmp_path / "out", {"LCENET_CACHE": str(tmp_path / "cache")}
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(out), "--no-report"], env=env)
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "data" / "synthetic" / "stats.json").read_text())
    assert stats["labels"] == 40 and stats["generated"]["train"]["docs"] == 119  # 0.0001 x 1,186,239
    record = json.loads((out / "records" / "synthetic__xmlcnn__base__s0.json").read_text())
    assert f"--data {out / 'data' / 'synthetic'} " in record["command"]

    generated = (out / "data" / "synthetic" / "train_texts.txt.gz").stat().st_mtime_ns
    content["variants"]["lcenet"] = {"lcenet": {"rank": 4}}
    spec.write_text(yaml.safe_dump(content))
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(out), "--no-report"], env=env)
    assert result.exit_code == 0, result.output
    assert (out / "data" / "synthetic" / "train_texts.txt.gz").stat().st_mtime_ns == generated  # reused

    content["datasets"]["synthetic"]["synth"]["seed"] = 1
    spec.write_text(yaml.safe_dump(content))
    result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(out)], env=env)
    assert result.exit_code == 2 and "other settings" in result.output and "Traceback" not in result.output


def test_experiment_checks_every_cell_before_running(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    spec = experiment_spec(tmp_path, data, {"base": {"lcenet": None}, "lcenet": {"lcenet": {"rank": 4}}})
    out = tmp_path / "out"
    for bad in (["--set", "parallel=2"], ["--set", "train.epochs=two"]):
        result = CliRunner().invoke(app, ["experiment", str(spec), "--output", str(out), *bad])
        assert result.exit_code == 2, result.output
        assert "cell tiny__xmlcnn__base__s0" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not out.exists()


def test_report_settings_time_budget_and_shared_reference(tmp_path):
    """Variant overrides in the setting column, the time-budget line, early stagnation against the base's best,
    a converged base (no warning) and the sweep leaving out variants trained differently."""
    variants = {  # name: (lcenet, hit rate, curve speed, dev best, own overrides)
        "base": (None, 0.40, 1.0, 0.5, []),
        "lcenet": ({}, 0.55, 2.0, 0.5, []),
        "rank4": ({"rank": 4}, 0.45, 1.5, 0.5, []),
        "lcenet_lr": ({}, 0.50, 1.5, 0.5, ["train.lcenet_lr=0.0001"]),
        "wide_base": (None, 0.60, 3.0, 0.6, ["model_args.hidden_dim=64"]),
        "stuck": ({"residual": False}, 0.05, 20.0, 0.05, []),  # flat at 5% from the first evaluation on
    }
    records = []
    for name, (lcenet, rate, speed, best, own) in variants.items():
        for seed in (0, 1):
            record = fake_record(name, lcenet, seed, rate, speed, dev_best=best)
            record["command"] += " --set train.epochs=4" + "".join(f" --set {o}" for o in own)
            record["stopped_by_time"] = name != "stuck"
            record["config"]["train"]["max_seconds"] = 60
            if name == "base":  # the base peaks at step 150 and then drops: converged
                for point in record["dev_curve"]:
                    if point["step"] > 150:
                        point["nDCG@5"] *= 0.8
            records.append(record)
    overrides = {name: ["train.epochs=4", *spec[4]] for name, spec in variants.items()}
    directory = write_experiment(tmp_path / "exp", records, overrides=overrides)
    text = write_report(directory, n_resamples=200).read_text(encoding="utf-8")
    assert "10 of 12 runs were stopped by `train.max_seconds` (60 s): early training, not convergence" in text

    ablation = text.split("## Ablation")[1].split("##")[0]
    settings = {name: table_row(ablation, "toy", "xmlcnn", name)[3] for name in variants}
    assert settings == {"base": "—", "lcenet": "CorNet", "rank4": "rank=4",
                        "lcenet_lr": "CorNet; train.lcenet_lr=0.0001", "wide_base": "model_args.hidden_dim=64",
                        "stuck": "residual=False"}
    assert "not repeated in the table: `train.epochs=4`" in ablation
    # the same settings from the records' commands alone (no experiment.json)
    table = ablation_table(records)
    assert table_row(table, "toy", "xmlcnn", "wide_base")[3] == "model_args.hidden_dim=64"
    assert table_row(table, "toy", "xmlcnn", "lcenet_lr")[3] == "CorNet; train.lcenet_lr=0.0001"

    convergence = text.split("## Convergence")[1]
    stagnation = {name: float(table_row(convergence, "toy", "xmlcnn", name)[8].split(" ±")[0]) for name in variants}
    # a run that learns nothing cannot beat the base; faster curves score higher
    assert stagnation["stuck"] < stagnation["base"] < stagnation["lcenet"] < stagnation["wide_base"]
    assert stagnation["stuck"] < 0.15  # would be about 1 against its own best
    assert table_row(convergence, "toy", "xmlcnn", "base")[-1] == "0/2"
    assert "still improving" not in convergence.split("### Training curves")[0].split("|")[-1]

    # the sweep: lcenet and rank4 differ only in rank; lcenet_lr has another learning rate, stuck another setting
    group = group_records(records)[("toy", "xmlcnn")]
    points = sweep_points(group, own_overrides(records)[0])
    assert [p["label"] for p in points] == ["base", "R=1000*/B=2", "R=4*/B=2"]
    assert "## LCENet rank / blocks sweep" in text and "R as built (capped at L" in text
    assert {f.name for f in assert_figures_ok(directory / "report.md")} == {
        "toy__xmlcnn__ablation.png", "toy__xmlcnn__sweep.png", "toy__xmlcnn__curves.png"}


def test_curve_variants_order_and_cap():
    names = ["rank4", "base", "lcenet", "a", "b", "c", "d", "e", "wide_base", "f"]
    group = {n: [{"lcenet": None if n in ("base", "wide_base") else {}}] for n in names}
    drawn, left_out = curve_variants(group)
    assert drawn == ["base", "lcenet", "wide_base", "rank4", "a", "b", "c", "d"] and left_out == ["e", "f"]
    assert curve_variants({"base": group["base"]}) == (["base"], [])


def test_device_name_thread_count(monkeypatch):
    import torch

    from lcenet.pipeline import device_name

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert device_name(torch.device("cpu")).endswith("(1 thread)")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert device_name(torch.device("cpu")).endswith("(4 threads)")


# ---- how runs ended, capacity control, RESULTS.md --------------------------------------------------------------
def test_unconverged_base_flags_every_delta(tmp_path):
    make_results = load_benchmark("make_results")
    base = [fake_record("base", None, seed, 0.4, 1.0, converged=seed != 1, stop_reason=reason)
            for seed, reason in ((0, "patience"), (1, "max_seconds"), (2, "patience"))]
    enhanced = [fake_record("lcenet", {}, seed, 0.55, 2.0, stop_reason="epochs") for seed in (0, 1, 2)]
    table = results_table(base + enhanced, n_resamples=200)
    header = table_row(table, "data set")
    base_row = dict(zip(header, table_row(table, "toy", "xmlcnn", "base")))
    assert (base_row["converged"], base_row["stop reasons"]) == ("2/3", "patience ×2, max_seconds ×1")
    assert table_row(table, "toy", "xmlcnn", "**Δ (LCENet − base; base not converged: early training)**")
    assert "| Δ (LCENet − base) |" not in table
    target = make_results.target_lines(base + enhanced)[0]
    assert target.endswith("**(base not converged)**.") and "P@1 +" in target

    # records from before converged / stop_reason existed: unknown, flagged too, never counted as converged
    for record in base + enhanced:
        del record["converged"], record["stop_reason"]
    table = results_table(base + enhanced, n_resamples=200)
    base_row = dict(zip(header, table_row(table, "toy", "xmlcnn", "base")))
    assert (base_row["converged"], base_row["stop reasons"]) == ("?", "?")
    assert table_row(table, "toy", "xmlcnn", "**Δ (LCENet − base; base convergence unknown)**")
    assert make_results.target_lines(base + enhanced)[0].endswith("**(base convergence unknown)**.")

    # a converged base: a plain Δ row and verdict; mixed knowledge shows the unknown count
    base = [fake_record("base", None, seed, 0.4, 1.0, stop_reason="patience") for seed in (0, 1, 2)]
    enhanced[0]["converged"] = True
    table = results_table(base + enhanced, n_resamples=200)
    assert table_row(table, "toy", "xmlcnn", "Δ (LCENet − base)")
    assert dict(zip(header, table_row(table, "toy", "xmlcnn", "+ LCENet")))["converged"] == "1/3 (2 ?)"
    assert "base not" not in make_results.target_lines(base + enhanced)[0]


def test_capacity_control_row_and_deltas(tmp_path):
    records = []
    for seed in (0, 1):
        records.append(fake_record("base", None, seed, 0.40, 1.0))
        records.append(fake_record("lcenet", {}, seed, 0.55, 2.0, parameters=1600, lcenet_parameters=600))
        capacity = fake_record("capacity", None, seed, 0.45, 1.5, parameters=1600, converged=False,
                               stop_reason="max_seconds")
        capacity["config"].update(capacity_control={}, model_args={"hidden_dim": 16, "num_filters": 8})
        capacity["model_args"] = {"hidden_dim": 40, "num_filters": 8}  # as built: widened
        capacity["command"] += " --set capacity_control=true"
        records.append(capacity)
    text = write_report(write_experiment(tmp_path / "exp", records), n_resamples=500).read_text(encoding="utf-8")
    main = text.split("## Main results")[1].split("## Ablation")[0]
    header = table_row(main, "data set")
    rows = [line.split("|")[3].strip() for line in main.splitlines() if line.startswith("| toy |")]
    assert rows == ["base", "+ LCENet", "capacity control", "Δ (LCENet − base)", "p (paired bootstrap)",
                    "p (Wilcoxon)", "**Δ (LCENet − capacity control; capacity control not converged: early training)**",
                    "p vs capacity (paired bootstrap)", "p vs capacity (Wilcoxon)"]
    capacity_row = dict(zip(header, table_row(main, "toy", "xmlcnn", "capacity control")))
    assert (capacity_row["converged"], capacity_row["stop reasons"]) == ("0/2", "max_seconds ×2")
    delta = dict(zip(header, table_row(main, "toy", "xmlcnn", rows[6])))
    p1 = {v: np.mean([r["test"]["P@1"] for r in records if r["variant"] == v]) for v in ("lcenet", "capacity")}
    assert delta["P@1"] == f"{100 * (p1['lcenet'] - p1['capacity']):+.2f}"
    p_capacity = dict(zip(header, table_row(main, "toy", "xmlcnn", "p vs capacity (paired bootstrap)")))
    assert p_capacity["seeds"] == "2" and p_capacity["P@1"] not in ("", "n/a")

    # the ablation setting names what it matches and what it widened (not the capacity_control override)
    ablation = text.split("## Ablation")[1].split("##")[0]
    assert table_row(ablation, "toy", "xmlcnn", "capacity")[3] == "capacity control (LCENet CorNet): hidden_dim=40"

    # a capacity control under another name is found by its config
    for record in records:
        if record["variant"] == "capacity":
            record["variant"] = "equal_params"
    assert "| capacity control |" in results_table(records, n_resamples=200)
    assert "capacity control" not in results_table([r for r in records if r["variant"] != "equal_params"])


def test_delta_compares_only_the_seeds_both_variants_ran(tmp_path):
    """A base with seeds 0 and 1 against LCENet with seed 0 only: the Δ row is LCENet s0 − base s0 and says so
    (the rows of each variant keep all their seeds)."""
    records = [fake_record("base", None, 0, 0.40, 1.0), fake_record("base", None, 1, 0.80, 1.0),
               fake_record("lcenet", {}, 0, 0.50, 2.0, parameters=1600, lcenet_parameters=600)]
    main = results_table(records, n_resamples=200)
    header = table_row(main, "data set")
    label = "Δ (LCENet − base; seed 0, which both ran)"
    delta = dict(zip(header, table_row(main, "toy", "xmlcnn", label)))
    p1 = {(r["variant"], r["seed"]): r["test"]["P@1"] for r in records}
    assert delta["P@1"] == f"{100 * (p1['lcenet', 0] - p1['base', 0]):+.2f}"
    assert dict(zip(header, table_row(main, "toy", "xmlcnn", "base")))["seeds"] == "2"
    same_seeds = results_table([*records, fake_record("lcenet", {}, 1, 0.85, 2.0)], n_resamples=200)
    assert "| Δ (LCENet − base) |" in same_seeds


def test_the_only_variant_with_an_lcenet_head_is_compared_with_the_base_whatever_its_name():
    """A grid of the base and one named LCENet setting gets the Δ and p rows against the base; with two named
    settings and none called ``lcenet`` nothing says which to compare, so the main table shows the base alone."""
    base = [fake_record("base", None, s, 0.40, 1.0) for s in (0, 1)]
    default = [fake_record("lcenet_default", {"aux_loss_weight": 1.0}, s, 0.55, 2.0) for s in (0, 1)]
    main = results_table(base + default, n_resamples=200)
    header = table_row(main, "data set")
    row = dict(zip(header, table_row(main, "toy", "xmlcnn", "+ LCENet (lcenet_default)")))
    delta = dict(zip(header, table_row(main, "toy", "xmlcnn", "Δ (LCENet − base)")))
    p1 = [np.mean([r["test"]["P@1"] for r in runs]) for runs in (base, default)]
    assert row["seeds"] == "2" and delta["P@1"] == f"{100 * (p1[1] - p1[0]):+.2f}"
    assert "p (paired bootstrap)" in main
    other = [fake_record("rank4", {"rank": 4}, s, 0.45, 1.5) for s in (0, 1)]
    assert "Δ" not in results_table(base + default + other, n_resamples=200)


def test_data_restrictions_in_headers(tmp_path):
    make_results = load_benchmark("make_results")
    records = [fake_record(name, lcenet, 0, rate, 1.0) for name, lcenet, rate in (("base", None, 0.4),
                                                                                   ("lcenet", {}, 0.5))]
    records[0]["data_restrictions"] = {"max_docs": {"train": 5000, "dev": 1000}, "sample_seed": 0}
    records[1]["config"]["data"] = {"max_docs": {"train": 5000, "dev": 1000}, "sample_seed": 0}  # older record
    for record in records:
        record["docs"] = {"train": 5000, "dev": 1000, "test": 6000}
        record["config"]["train"]["batch_size"] = 50  # 200 steps: 2 epochs
    directory = write_experiment(tmp_path / "exp", records)
    text = write_report(directory, n_resamples=200).read_text(encoding="utf-8")
    assert ("- data: toy: train 5,000, dev 1,000 documents at most (random, sample seed 0); test full "
            "(train 5,000, dev 1,000, test 6,000 documents)") in text
    section = "\n".join(make_results.experiment_section(directory, *load_records(directory)[:2]))
    assert "Data: toy: train 5,000, dev 1,000 documents at most (random, sample seed 0); test full" in section
    assert "| xmlcnn | base | 2.00 | 200 | 2 | 1 | 0/1 | 1/1 | epochs ×1 |" in section

    # runs cut differently: one line each, with how many runs
    records[1]["config"]["data"] = {"max_docs": {"test": 1000}, "sample_seed": None}
    (directory / "records" / f"{records[1]['cell']}.json").write_text(json.dumps(records[1]))
    text = write_report(directory, n_resamples=200).read_text(encoding="utf-8")
    assert ("  - toy: test 1,000 documents at most (the first in file order); train and dev full "
            "(train 5,000, dev 1,000, test 6,000 documents; 1 of 2 runs)") in text

    records[1]["config"]["data"] = {"max_docs": None}
    del records[1]["docs"]
    assert data_lines(records[1:]) == ["toy: full splits"]
    del records[1]["config"]["data"]
    assert data_lines(records[1:]) == ["toy: not recorded"]


def test_step_time_section_old_and_new_formats(tmp_path):
    make_results = load_benchmark("make_results")
    timing = {"median_step_s": 0.01, "train_docs_per_s": 6400.0, "infer_docs_per_s": 20000.0}
    slower = {"median_step_s": 0.012, "train_docs_per_s": 5333.0, "infer_docs_per_s": 18000.0}
    case = {"family": "xmlcnn", "num_labels": 4271, "batch": 64, "max_length": 500, "repeats": 3}
    old = {"device_name": "old cpu", "command": "python benchmarks/step_time.py", "wall_seconds": 10.0,
           "torch": "2.4.0", "cases": [{**case, "base": timing, "lcenet": slower, "median_ratio": 1.2}]}
    new = {"device_name": "new gpu", "command": "python benchmarks/step_time.py --device cuda", "wall_seconds": 20.0,
           "torch": "2.13.0", "torch_version": "2.13.0", "git_commit": "6a1142158f56142835285b2bf64b22c636642488",
           "git_dirty": True, "date": "2026-11-26T10:00:00+00:00",
           "cases": [{**case, "lcenet_settings": {"rank": 64, "blocks": 1},
                      "paths": ["host", "resident", "host+bf16_cpu"],
                      "base/host": timing, "lcenet/host": slower, "base/resident": slower, "lcenet/resident": timing,
                      "base/host+bf16_cpu": timing, "lcenet/host+bf16_cpu": timing,
                      "median_ratio": {"host": 1.2, "resident": 0.9, "host+bf16_cpu": 1.0},
                      "resident_speedup": {"base": 1.5, "lcenet": 2.25},
                      "bf16_cpu_speedup": {"host+bf16_cpu": {"base": 1.0, "lcenet": 1.2}}}]}
    paths = [tmp_path / "step_time_cpu.json", tmp_path / "step_time_cuda.json"]
    for path, record in zip(paths, (old, new)):
        path.write_text(json.dumps(record))
    text = "\n".join(make_results.step_time_section(paths))
    assert "| old cpu | xmlcnn | 4,271 | 64 × 500 | R=1000, 2 blocks | host | 10.0 | 12.0 | ×1.200 | 6,400 / 5,333 " \
           "| 20,000 / 18,000 | — |" in text
    assert "| new gpu | xmlcnn | 4,271 | 64 × 500 | R=64, 1 blocks | host | 10.0 | 12.0 | ×1.200 |" in text
    assert "| new gpu | xmlcnn | 4,271 | 64 × 500 | R=64, 1 blocks | resident | 12.0 | 10.0 | ×0.900 | 5,333 / 6,400 " \
           "| 18,000 / 20,000 | ×1.50 / ×2.25 |" in text
    assert "| host+bf16_cpu | 10.0 | 10.0 | ×1.000 | 6,400 / 6,400 | 20,000 / 20,000 | ×1.00 / ×1.20 |" in text
    assert "(10 s, torch 2.4.0)" in text
    assert "(20 s, torch 2.13.0, git `6a1142158f` (uncommitted changes), 2026-11-26)" in text


def test_served_models_are_named_for_one_model_and_for_an_ensemble():
    served_model = load_benchmark("make_results").served_model
    assert served_model({"model": "xmlcnn", "lcenet": {"rank": 8}}) == "xmlcnn + LCENet"  # a record before ensembles
    members = [{"family": "sparse", "lcenet": None}, {"family": "bert_sparse", "lcenet": None},
               {"family": "sparse", "lcenet": None}]
    assert served_model({"members": members, "combine": "logit"}) == \
        "ensemble of 3 (2 sparse, 1 bert_sparse; logit mean)"
    assert served_model({"members": members[:1], "combine": None}) == "sparse"


def test_scale_step_ratio_shows_the_spread_of_its_pairs():
    make_results = load_benchmark("make_results")
    paired = {"lcenet_step_ratio": 1.1, "lcenet_step_ratio_separate": 1.25,
              "pairs": {"pairs_s": [[2.0, 2.2], [1.0, 1.5], [2.0, 1.6]]}}
    assert make_results.ratio_text(paired) == "×1.100 [×0.80–×1.50] (×1.250)"
    assert make_results.ratio_text({"lcenet_step_ratio_separate": 1.25}) == "— (×1.250)"
    assert make_results.ratio_text({"lcenet_step_ratio": 1.3}) == "×1.300"


def test_grid_lcenet_settings_size_the_capacity_control_and_leave_the_base_alone():
    from lcenet.experiment import Cell

    cell = Cell("d", "data", "xmlcnn", "c.yaml", "capacity", None, 0, ["lcenet.rank=8", "train.lr=0.1"], {})
    assert cell.assignments() == ["lcenet=null", "capacity_control=true", "capacity_control.rank=8", "train.lr=0.1"]
    plain = Cell("d", "data", "xmlcnn", "c.yaml", "lcenet", {}, 0, ["lcenet.rank=8"])
    assert plain.assignments() == ["lcenet=true", "lcenet.rank=8"]
    base = Cell("d", "data", "xmlcnn", "c.yaml", "base", None, 0, ["lcenet.rank=8", "train.lr=0.1"])
    assert base.assignments() == ["lcenet=null", "train.lr=0.1"]  # stays a base


def test_sparse_epoch_section_lists_every_variant(tmp_path):
    make_results = load_benchmark("make_results")
    run = {"epoch_train_seconds": 40.0, "train_docs_per_s": 1125.0, "lcenet_settings": None,
           "dev_after_one_epoch": {"P@1": 0.5, "nDCG@5": 0.4}}
    record = {"threads": 2, "command": "python benchmarks/sparse_epoch.py", "wall_seconds": 90.0,
              "torch_version": "2.13.0", "variants": {
                  "base": run, "lcenet+bf16_cpu": {**run, "lcenet_settings": {"rank": 1000, "blocks": 2},
                                                   "epoch_train_seconds": 60.0, "train_docs_per_s": 750.0}}}
    path = tmp_path / "sparse_epoch_cpu.json"
    path.write_text(json.dumps(record))
    text = "\n".join(make_results.sparse_epoch_section([path]))
    assert "| `sparse_epoch_cpu.json` | 2 | base | — | 40.0 | 1,125 | 50.00 / 40.00 |" in text
    assert "| `sparse_epoch_cpu.json` | 2 | lcenet+bf16_cpu | R=1000, 2 blocks | 60.0 | 750 | 50.00 / 40.00 |" in text
    assert make_results.sparse_epoch_section([]) == []


@pytest.mark.parametrize("spec", sorted((Path(__file__).parent.parent / "configs" / "experiments").glob("*.yaml")),
                         ids=lambda path: path.stem)
def test_every_shipped_experiment_builds_every_cell(spec, monkeypatch):
    """A typo in a shipped grid (an unknown setting, a bad value) fails here, not hours into a run."""
    from lcenet.cli import build_config
    from lcenet.experiment import load_experiment

    monkeypatch.chdir(spec.parent.parent.parent)  # configs name their model configs from the repository root
    plan = load_experiment(spec)
    assert plan.cells
    for cell in plan.cells:
        build_config(Path(cell.config), None, None, cell.assignments(), seed=cell.seed)


def test_prepare_extrapolation_takes_the_stage_whose_peak_grows_fastest():
    """A stage with the highest peak at small scales but a flat one (a TF-IDF fit on a fixed sample) loses to a
    stage that grows with the documents once both are carried to full scale."""
    load_benchmark("make_results")  # puts benchmarks/ on the path
    from prepare_scale import extrapolate

    def run(docs, fit_peak, encode_peak):
        stages = {"generate": {"seconds": 1.0}, "fit_encoder": {"seconds": 10.0, "peak_rss_bytes": fit_peak},
                  "encode_train": {"seconds": docs / 100, "peak_rss_bytes": encode_peak}}
        return {"docs": {"train": docs}, "stages": stages, "peak_rss_after_generate_bytes": max(fit_peak, encode_peak),
                "bytes_per_doc": {"texts_in_memory": 16, "label_csr": 40, "encoded_inputs": 1000,
                                  "gzip_on_disk": 300}}

    gib = 2**30
    full = extrapolate([run(1000, 2 * gib, gib), run(2000, 2 * gib, 1.5 * gib)], 10_000)
    assert full["peak_stage"] == "encode_train"
    assert full["peak_rss_gib"] == pytest.approx(1.5 + 0.5 * 8)  # +0.5 GiB per 1,000 documents
    assert full["stage_peak_rss_gib"]["fit_encoder"] == pytest.approx(2.0)
    assert full["stage_minutes"]["fit_encoder"] == pytest.approx(0.0)  # a fixed cost drops out of the slope


def started_from(record: dict, source: str = "base") -> dict:
    """``record`` as a grid variant ``init_from: base`` (or ``source``) writes it."""
    command = f"{record['command']} --set train.init_from=/runs/toy__xmlcnn__{source}__s{record['seed']}/model"
    return {**record, "command": command, "init_from_variant": source, "init_from_steps": 200}


def capacity_control(record: dict) -> dict:
    record["config"]["capacity_control"] = {}
    return record


def test_summary_compares_every_variant_with_its_own_base_on_shared_seeds(tmp_path):
    make_results = load_benchmark("make_results")
    converged = write_experiment(tmp_path / "converged", [
        *(fake_record("base", None, seed, 0.40, 1.0) for seed in (0, 1, 2)),
        *(fake_record("lcenet", {}, seed, 0.55, 2.0) for seed in (0, 1)),  # seed 2 not run: compared on 0 and 1
        *(fake_record("rank4", {"rank": 4}, seed, 0.40, 1.0) for seed in (0, 1, 2)),
        # started from the base's trained models, with and without a head
        *(started_from(fake_record("then_lcenet", {}, seed, 0.50, 1.0)) for seed in (0, 1)),
        *(started_from(fake_record("continued", None, seed, 0.45, 1.0)) for seed in (0, 1)),
        # a capacity control, and the same trained on from its own converged models
        *(capacity_control(fake_record("wide", None, seed, 0.44, 1.0)) for seed in (0, 1)),
        *(started_from(capacity_control(fake_record("wide_continued", None, seed, 0.47, 1.0)), "wide")
          for seed in (0, 1))])
    capacity = capacity_control(fake_record("capacity", None, 0, 0.45, 1.0))
    early = write_experiment(tmp_path / "early", [fake_record("base", None, 0, 0.40, 1.0, converged=False),
                                                  fake_record("lcenet", {}, 0, 0.55, 2.0), capacity])
    text = "\n".join(make_results.summary_section({d.name: load_records(d)[0] for d in (converged, early)}))
    header = table_row(text, "experiment")
    rows = {(row[0], row[2]): dict(zip(header, row)) for row in
            ([cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith(("| converged", "| early")))}
    assert set(rows) == {("converged", "lcenet"), ("converged", "rank4"), ("converged", "then_lcenet"),
                         ("converged", "then_lcenet vs continued"), ("converged", "then_lcenet vs wide_continued"),
                         ("converged", "wide"), ("converged", "wide_continued"),
                         ("converged", "wide_continued vs wide"), ("early", "lcenet"), ("early", "capacity")}
    # the controls trained alike follow the source, the one without a head first
    labels = [label for _, label in rows]
    assert labels.index("then_lcenet") < labels.index("then_lcenet vs continued") < labels.index(
        "then_lcenet vs wide_continued")

    lcenet = rows["converged", "lcenet"]
    assert lcenet["seeds"] == "2"
    records = load_records(converged)[0]
    mean = {variant: np.mean([r["test"]["P@1"] for r in records if r["variant"] == variant and r["seed"] < 2])
            for variant in ("base", "lcenet")}
    assert float(lcenet["Δ test P@1"]) == pytest.approx(100 * (mean["lcenet"] - mean["base"]), abs=0.006)
    assert lcenet["+1.0 target"] == "met" and rows["converged", "rank4"]["+1.0 target"] == "missed"
    assert "rank=4" in rows["converged", "rank4"]["setting"]
    # against an unconverged base: bold deltas and an early-training verdict, not counted in the headline
    assert rows["early", "lcenet"]["Δ test P@1"].startswith("**")
    assert rows["early", "lcenet"]["+1.0 target"] == "met (early training)"
    assert rows["early", "capacity"]["+1.0 target"] == "—"
    # a variant started from a trained base, also against that base trained on: no target there
    records = {(r["variant"], r["seed"]): r for r in records}
    against_control = rows["converged", "then_lcenet vs continued"]
    assert float(against_control["Δ test P@1"]) == pytest.approx(100 * np.mean(
        [records["then_lcenet", s]["test"]["P@1"] - records["continued", s]["test"]["P@1"] for s in (0, 1)]), abs=0.006)
    assert against_control["+1.0 target"] == "—" and rows["converged", "then_lcenet"]["+1.0 target"] == "met"
    assert against_control["setting"] == "CorNet; from base's trained model"  # not the path of one seed's source
    against_capacity = rows["converged", "then_lcenet vs wide_continued"]
    assert float(against_capacity["Δ test P@1"]) == pytest.approx(100 * np.mean(
        [records["then_lcenet", s]["test"]["P@1"] - records["wide_continued", s]["test"]["P@1"] for s in (0, 1)]),
        abs=0.006)
    assert rows["converged", "wide_continued"]["+1.0 target"] == "—"
    assert "both converged, 2 of 3 LCENet variants meet the target" in text
