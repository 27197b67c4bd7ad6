"""The bad-input corpus (tests/bad_inputs/cases.py) through the real CLI: each case is either refused with one
line naming the file and line (exit 2, no traceback, nothing half-written) or accepted and read exactly like
its clean equivalent."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bad_inputs.cases import ANY_LINE, CASES, TEST_FILES, Accepted, Case, Rejected, write_files
from lcenet.cli import app
from lcenet.data import iter_split

runner = CliRunner()

# Small and short, so that a case that wrongly passes validation still finishes quickly (and then fails).
SMALL = ["--model", "xmlcnn", "--device", "cpu", "--max-length", "8", "--set", "model_args.embedding_dim=4",
         "--set", "model_args.num_filters=2", "--set", "model_args.hidden_dim=4", "--set", "data.min_frequency=1",
         "--set", "train.max_steps=1", "--set", "train.batch_size=4"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A trained (1 step) model directory for the "model" and "input" cases."""
    tmp = tmp_path_factory.mktemp("model")
    write_files(tmp / "data", {**TEST_FILES, **CASES_BY_NAME["BOM"].expect.same_as})
    result = runner.invoke(app, ["train", "--data", str(tmp / "data"), "--output", str(tmp / "run"),
                                 "--cache-dir", str(tmp / "cache"), "--no-progress", *SMALL])
    assert result.exit_code == 0, result.output
    return tmp / "run" / "model"


CASES_BY_NAME = {case.name: case for case in CASES}


def test_the_corpus_covers_at_least_20_kinds():
    assert len(CASES_BY_NAME) == len(CASES) >= 20
    assert {case.target for case in CASES} == {"data", "config", "model", "input"}
    assert sum(isinstance(case.expect, Accepted) for case in CASES) >= 5


def assert_rejected(result, expect: Rejected) -> None:
    """Exit 2 and exactly one stderr line ``error: .../FILE[:LINE]: ...problem...``; nothing on stdout."""
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "Traceback" not in result.output and len(message.splitlines()) == 1, message
    assert result.stdout == "", result.stdout
    line = {None: "", ANY_LINE: r":\d+"}.get(expect.line, f":{expect.line}")
    assert re.match(rf"error: (.*/)?{re.escape(expect.file)}{line}: ", message), message
    assert expect.problem in message, message


def cli(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def preprocess(data: Path, cache: Path):
    return cli("preprocess", "--data", data, "--cache-dir", cache, *SMALL[:2], "--set", "data.min_frequency=1")


def nothing_in(directory: Path) -> bool:
    return not directory.exists() or not any(directory.iterdir())


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, tmp_path, request):
    if case.target == "data":
        check_data(case, tmp_path, request)
    elif case.target == "config":
        check_config(case, tmp_path)
    else:
        check_model_or_input(case, tmp_path, request.getfixturevalue("model_dir"))


def check_data(case: Case, tmp_path: Path, request) -> None:
    data, cache, run = tmp_path / "data", tmp_path / "cache", tmp_path / "run"
    write_files(data, {**TEST_FILES, **case.files})
    if isinstance(case.expect, Rejected):
        assert_rejected(cli("train", "--data", data, "--output", run, "--cache-dir", cache, "--no-progress",
                            *SMALL), case.expect)
        assert_rejected(preprocess(data, cache), case.expect)
        assert nothing_in(run) and nothing_in(cache)  # no run directory, no cache entry
        if case.expect.file.startswith("test"):
            assert_rejected(cli("evaluate", request.getfixturevalue("model_dir"), "--data", data, "--device", "cpu"),
                            case.expect)
        return
    clean = tmp_path / "clean"
    write_files(clean, {**TEST_FILES, **case.expect.same_as})
    result, expected = preprocess(data, cache), preprocess(clean, tmp_path / "clean_cache")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(expected.stdout)  # the same documents, labels, vocabulary
    if case.expect.same_texts:
        for split in ("train", "test"):
            assert list(iter_split(data, split)) == list(iter_split(clean, split))


def check_config(case: Case, tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    write_files(data, {**TEST_FILES, **CASES_BY_NAME["BOM"].expect.same_as})
    write_files(tmp_path, case.files)
    config = ["--config", tmp_path / "config.yaml"] if case.files else []
    result = cli("train", "--data", data, "--output", run, "--cache-dir", tmp_path / "cache", "--no-progress",
                 *SMALL, *config, *case.args)
    assert_rejected(result, case.expect)
    assert nothing_in(run) and nothing_in(tmp_path / "cache")


def check_model_or_input(case: Case, tmp_path: Path, model_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    if case.target == "model":
        write_files(model, case.files)
        (tmp_path / "input.txt").write_bytes(b"milk cow\n")
        data = tmp_path / "data"
        write_files(data, {**TEST_FILES, **CASES_BY_NAME["BOM"].expect.same_as})
        assert_rejected(cli("evaluate", model, "--data", data, "--device", "cpu"), case.expect)
    else:
        write_files(tmp_path, case.files)
    result = cli("predict", model, "--input", tmp_path / "input.txt", "--device", "cpu")
    if isinstance(case.expect, Rejected):
        assert_rejected(result, case.expect)
        return
    write_files(tmp_path / "clean", case.expect.same_as)
    expected = cli("predict", model, "--input", tmp_path / "clean" / "input.txt", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected.stdout and len(result.stdout.splitlines()) == 2
