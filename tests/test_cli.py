import json
import os
import socket
import sys

import pytest
from typer.testing import CliRunner

from conftest import write_tiny_dataset
from lcenet.cli import app
from lcenet.config import LCENetSettings
from lcenet.io import exclusive_run_directory

runner = CliRunner()

XMLCNN_SMALL = ["--set", "model_args.embedding_dim=16", "--set", "model_args.num_filters=8",
                "--set", "model_args.hidden_dim=16", "--set", "data.vocab_size=200", "--set", "data.min_frequency=1",
                "--set", "train.batch_size=8", "--set", "train.lr=0.01"]

# Evaluation settings that differ from the defaults, so `evaluate` must read them from the model directory.
NON_DEFAULT_EVAL = ["--set", "train.propensity_a=0.3", "--set", "train.propensity_b=4.0",
                    "--set", "train.eval_batch_size=7"]


@pytest.fixture
def trained(tmp_path, monkeypatch):
    monkeypatch.setenv("LCENET_CACHE", str(tmp_path / "cache"))
    data = write_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--model", "xmlcnn", "--lcenet", "--output", str(run),
                                 "--epochs", "3", "--seed", "1", "--max-length", "24", "--device", "cpu",
                                 "--no-progress", *XMLCNN_SMALL, *NON_DEFAULT_EVAL])
    assert result.exit_code == 0, result.output
    return data, run


def test_train_evaluate_predict_end_to_end(trained, tmp_path):
    data, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["lcenet"] == LCENetSettings().kwargs() and metrics["lcenet_parameters"] > 0
    assert metrics["config"]["train"]["epochs"] == 3 and metrics["config"]["train"]["seed"] == 1

    result = runner.invoke(app, ["evaluate", str(run / "model"), "--data", str(data), "--split", "test",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["P@1"] == pytest.approx(metrics["test"]["P@1"])
    assert scores["nDCG@5"] == pytest.approx(metrics["test"]["nDCG@5"])
    for metric in ("PSP@1", "PSP@3", "PSP@5"):  # the run's propensity constants, not the defaults
        assert scores[metric] == pytest.approx(metrics["test"][metric])
    result = runner.invoke(app, ["evaluate", str(run / "model"), "--data", str(data), "--device", "cpu",
                                 "--propensity-a", "0.55", "--propensity-b", "1.5", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    overridden = json.loads(result.stdout)
    assert overridden["P@1"] == pytest.approx(scores["P@1"])
    assert overridden["PSP@3"] != pytest.approx(scores["PSP@3"])

    texts = "milk cheese cow\nfishing quota sea\n\nwine grape vineyard\n"
    result = runner.invoke(app, ["predict", str(run / "model"), "-k", "2", "--device", "cpu"], input=texts)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4
    assert all(len(line["labels"]) == 2 and len(line["scores"]) == 2 for line in lines)

    names = tmp_path / "names.tsv"
    names.write_text("milk\tMilk products\nfish\tFisheries\n")
    infile = tmp_path / "in.txt"
    infile.write_text(texts)
    result = runner.invoke(app, ["predict", str(run / "model"), "--input", str(infile), "--names", str(names),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout.splitlines()[0])
    assert len(first["labels"]) == 5 and len(first["names"]) == 5
    assert all(name == {"milk": "Milk products", "fish": "Fisheries"}.get(label, label)
               for label, name in zip(first["labels"], first["names"]))


def test_config_file_and_flags_override(tmp_path, monkeypatch):
    monkeypatch.setenv("LCENET_CACHE", str(tmp_path / "cache"))
    data = write_tiny_dataset(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text("model: xmlcnn\nmodel_args: {embedding_dim: 8, num_filters: 4, hidden_dim: 8}\n"
                      "lcenet: {rank: 3, blocks: 1}\ndata: {max_length: 16, min_frequency: 1}\n"
                      "train: {epochs: 5, batch_size: 16, device: cpu}\n")
    result = runner.invoke(app, ["train", "--data", str(data), "--config", str(config), "--output",
                                 str(tmp_path / "r"), "--epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())["config"]
    assert saved["train"]["epochs"] == 1 and saved["train"]["batch_size"] == 16
    assert saved["lcenet"] == LCENetSettings(rank=3, blocks=1).kwargs()
    result = runner.invoke(app, ["train", "--data", str(data), "--config", str(config), "--no-lcenet", "--output",
                                 str(tmp_path / "r2"), "--epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["lcenet_parameters"] == 0

    result = runner.invoke(app, ["train", "--data", str(data), "--config", str(config), "--no-lcenet", "--output",
                                 str(tmp_path / "r3"), "--epochs", "1", "--no-progress", "--set",
                                 "capacity_control=true", "--set", "capacity_control.rank=3"])
    assert result.exit_code == 0, result.output
    wide = json.loads((tmp_path / "r3" / "metrics.json").read_text())
    assert wide["model_args"]["hidden_dim"] > 8 and wide["config"]["capacity_control"]["rank"] == 3
    result = runner.invoke(app, ["train", "--data", str(data), "--config", str(config), "--output",
                                 str(tmp_path / "r4"), "--set", "capacity_control=true"])
    one_line_error(result, "capacity_control is a base without LCENet")


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "Traceback" not in result.output and len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.skipif(sys.platform == "win32", reason="runs are not locked on Windows")
def test_a_run_directory_another_process_trains_in_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LCENET_CACHE", str(tmp_path / "cache"))
    data = write_tiny_dataset(tmp_path / "data")
    busy = tmp_path / "busy"
    with exclusive_run_directory(busy):  # as a run training there holds it
        for resume in ([], ["--resume"]):
            one_line_error(runner.invoke(app, ["train", "--data", str(data), "--output", str(busy), "--no-progress",
                                               *resume]),
                           f"{busy}: another lcenet process (pid {os.getpid()}) is training in this directory")
    assert not busy.exists()  # nothing written


def test_user_errors_are_one_line(trained, tmp_path):
    data, run = trained
    bad = tmp_path / "bad"
    write_tiny_dataset(bad)
    labels = (bad / "train_labels.txt").read_text().splitlines()
    labels[6] = ""
    (bad / "train_labels.txt").write_text("\n".join(labels) + "\n")
    out = tmp_path / "badrun"
    one_line_error(runner.invoke(app, ["train", "--data", str(bad), "--output", str(out), "--no-progress"]),
                   "train_labels.txt:7")
    assert not out.exists() or not any(out.iterdir())  # nothing half-written

    one_line_error(runner.invoke(app, ["train", "--data", str(tmp_path / "nope"), "--output", str(out)]), "nope")
    one_line_error(runner.invoke(app, ["train", "--data", str(data), "--model", "transformerxl", "--output",
                                       str(out), "--no-progress"]), "unknown model")
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 1\n  learning_rate: 3\n")
    one_line_error(runner.invoke(app, ["train", "--data", str(data), "--config", str(config), "--output",
                                       str(out)]), "c.yaml", "learning_rate")
    one_line_error(runner.invoke(app, ["train", "--data", str(data), "--output", str(out), "--set", "train.nope=1"]),
                   "train.nope")
    # a size the family refuses is found when the model is built, after the data are read
    one_line_error(runner.invoke(app, ["train", "--data", str(data), "--output", str(out), "--no-progress", "--set",
                                       "data.min_frequency=1", "--set", "model_args.hidden_dim=-5"]),
                   "model 'xmlcnn': hidden_dim must be an integer >= 1 (got -5)")
    assert not out.exists() or not any(out.iterdir())
    one_line_error(runner.invoke(app, ["predict", str(tmp_path / "missing_model")]), "missing_model")
    one_line_error(runner.invoke(app, ["serve", str(tmp_path / "missing_model")]), "missing_model")
    one_line_error(runner.invoke(app, ["serve", str(run / "model"), "--max-texts", "0"]), "--max-texts")
    one_line_error(runner.invoke(app, ["serve", str(run / "model"), "--remembered-texts", "-1"]),
                   "--remembered-texts must be >= 0")
    one_line_error(runner.invoke(app, ["serve", str(run / "model"), str(run / "model"), "--combine", "vote"]),
                   "logit or sigmoid", "'vote'")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        one_line_error(runner.invoke(app, ["serve", str(run / "model"), "--port", str(port)]),
                       f"127.0.0.1:{port}: cannot listen")
    one_line_error(runner.invoke(app, ["predict", str(run / "model"), "--device", "cpu"], input=b"ok\n\xff\xfe\n"),
                   "<stdin>:2", "UTF-8")


def test_train_on_from_a_model_directory_with_its_settings(trained, tmp_path):
    data, run = trained
    warm = tmp_path / "warm"
    result = runner.invoke(app, ["train", "--data", str(data), "--init-from", str(run / "model"), "--output",
                                 str(warm), "--epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    source, metrics = (json.loads((r / "metrics.json").read_text()) for r in (run, warm))
    assert metrics["init_from"] == {"model_dir": str(run / "model"), "loaded": ["family model", "LCENet"],
                                    "fresh": []}
    # the source's settings (no --config given), the flags over them
    expected = {**source["config"]["train"], "epochs": 1, "init_from": str(run / "model")}
    assert metrics["config"]["train"] == expected and metrics["config"]["model_args"] == source["config"]["model_args"]
    one_line_error(runner.invoke(app, ["train", "--data", str(data), "--init-from", str(tmp_path / "nothing"),
                                       "--output", str(tmp_path / "x")]), "nothing/config.json: missing")
    assert not (tmp_path / "x").exists()


def test_model_dir_with_pickle_or_malformed_files_is_refused(trained, tmp_path):
    import shutil

    _, run = trained
    poisoned = tmp_path / "poisoned"
    shutil.copytree(run / "model", poisoned)
    (poisoned / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    one_line_error(runner.invoke(app, ["predict", str(poisoned)], input="x\n"), "pytorch_model.bin", "pickle")

    broken = tmp_path / "broken"
    shutil.copytree(run / "model", broken)
    (broken / "config.json").write_text("{not json")
    one_line_error(runner.invoke(app, ["predict", str(broken)], input="x\n"), "config.json", "malformed")

    truncated = tmp_path / "truncated"
    shutil.copytree(run / "model", truncated)
    (truncated / "model.safetensors").write_bytes(b"garbage")
    one_line_error(runner.invoke(app, ["predict", str(truncated)], input="x\n"), "model.safetensors")


def test_model_dir_records_format_version_and_checksums(trained, tmp_path):
    import hashlib
    import shutil

    _, run = trained
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["format_version"] == 2
    assert config["files"] == {name: hashlib.sha256((run / "model" / name).read_bytes()).hexdigest()
                               for name in ("model.safetensors", "tokenizer.json", "labels.tsv")}
    expected = runner.invoke(app, ["predict", str(run / "model"), "--device", "cpu"], input="milk cheese\n")
    assert expected.exit_code == 0, expected.output

    def copy(name: str, config_changes: dict | None = None):
        directory = tmp_path / name
        shutil.copytree(run / "model", directory)
        if config_changes is not None:
            changed = {**config, **config_changes}
            (directory / "config.json").write_text(json.dumps({k: v for k, v in changed.items() if v is not None}))
        return directory

    # Version 1 (as written before checksums: no format_version, no files) still loads.
    old = copy("v1", {"format_version": None, "files": None})
    result = runner.invoke(app, ["predict", str(old), "--device", "cpu"], input="milk cheese\n")
    assert result.exit_code == 0 and result.stdout == expected.stdout, result.output

    future = copy("future", {"format_version": 99})
    one_line_error(runner.invoke(app, ["predict", str(future)], input="x\n"),
                   f"{future}/config.json: model format version 99 is not supported by lcenet", "(supports ≤ 2)")

    for name in ("model.safetensors", "labels.tsv", "tokenizer.json"):
        changed = copy(f"changed_{name}")
        content = bytearray((changed / name).read_bytes())
        content[len(content) // 2] ^= 1  # one flipped bit
        (changed / name).write_bytes(bytes(content))
        one_line_error(runner.invoke(app, ["predict", str(changed)], input="x\n"),
                       f"{changed}/{name}: sha256 mismatch (the file is corrupt or was changed after saving)")

    truncated = copy("truncated_v1", {"format_version": None, "files": None})  # no checksum to catch it first
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[:len(weights) - 100])
    one_line_error(runner.invoke(app, ["predict", str(truncated)], input="x\n"),
                   f"{truncated}/model.safetensors: truncated ({len(weights) - 100} bytes, its header needs "
                   f"{len(weights)})")

def test_every_command_has_help():
    for command in ([], ["train"], ["evaluate"], ["predict"], ["serve"], ["demo"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_bad_setting_values_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LCENET_CACHE", str(tmp_path / "cache"))
    data = write_tiny_dataset(tmp_path / "data")
    out = str(tmp_path / "r")
    one_line_error(runner.invoke(app, ["train", "--data", str(data), "--output", out, "--set", "train.epochs=abc"]),
                   "train.epochs", "abc")
    one_line_error(runner.invoke(app, ["train", "--data", str(data), "--output", out, "--set", "train.lr=true"]),
                   "train.lr")
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  max_length: [1, 2]\n")
    one_line_error(runner.invoke(app, ["train", "--data", str(data), "--config", str(config), "--output", out]),
                   "c.yaml", "data.max_length")
    one_line_error(runner.invoke(app, ["train", "--data", str(data), "--output", out, "--device", "tpu"]), "tpu")


def test_predict_keeps_input_order_across_batches(trained):
    _, run = trained
    texts = "".join(f"{line}\n" for line in ["milk cheese", "tax duty", "wine", "fishing sea", "aid fund"])
    whole = runner.invoke(app, ["predict", str(run / "model"), "--device", "cpu"], input=texts)
    batched = runner.invoke(app, ["predict", str(run / "model"), "--device", "cpu", "--batch-size", "2"],
                            input=texts)
    assert whole.exit_code == batched.exit_code == 0
    single = "".join(runner.invoke(app, ["predict", str(run / "model"), "--device", "cpu"], input=line + "\n").stdout
                     for line in texts.splitlines())
    # Each line's prediction does not depend on its neighbours. The scores agree up to float rounding: a matmul
    # over another batch shape may sum in another order, which can move the 6th printed decimal.
    expected = [json.loads(line) for line in whole.stdout.splitlines()]
    assert len(expected) == 5
    for other in (batched.stdout, single):
        got = [json.loads(line) for line in other.splitlines()]
        assert [r["labels"] for r in got] == [r["labels"] for r in expected]
        for row, reference in zip(got, expected):
            assert row["scores"] == pytest.approx(reference["scores"], rel=0, abs=2e-6)


def test_serve_without_its_extra_is_a_one_line_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.delitem(sys.modules, "lcenet.serve", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if `pip install lcenet` without [serve]
    one_line_error(runner.invoke(app, ["serve", str(tmp_path)]), "needs fastapi and uvicorn", "lcenet[serve]")
