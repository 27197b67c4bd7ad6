"""benchmarks/kill_fuzz.py, small: SIGKILL a tiny CLI training run at random moments (checkpoints every step),
resume each time (the last kills after training, in the final evaluation and model write), and get the
uninterrupted run's weights, metrics and log bit for bit."""

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import write_tiny_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kill_fuzz.py"
TINY = ["--model", "xmlcnn", "--lcenet", "--device", "cpu", "--seed", "3", "--epochs", "3", "--max-length", "24",
        "--batch-size", "8", "--set", "data.min_frequency=1", "--set", "model_args.embedding_dim=16",
        "--set", "model_args.num_filters=8", "--set", "model_args.hidden_dim=16",
        "--set", "train.checkpoint_every_steps=1", "--set", "train.eval_every_steps=5",
        "--set", "train.log_every_steps=3", "--set", "train.patience=null"]


@pytest.fixture(scope="module")
def kill_fuzz():
    spec = importlib.util.spec_from_file_location("kill_fuzz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork")
def test_killed_and_resumed_run_is_bit_identical(kill_fuzz, tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    record = kill_fuzz.fuzz(tmp_path, kills=4, seed=0, max_delay=0.05, fork=True, data=data, settings=TINY,
                            final_kills=2)
    log = (tmp_path / "launches.log").read_text(errors="replace")
    # The 4 kills at random moments always land; the 2 aimed at the short final evaluation and model write are
    # best effort (on a fast, idle machine that window can close before the signal arrives).
    assert record["kills"] >= 4, (record, log)
    assert record["failed_launches"] == 0 and record["torn_checkpoints"] == 0, (record, log)
    assert record["same"] == dict.fromkeys(record["same"], True), record
    assert record["leftover_temp_files"] == []  # a resume removes what killed writes left behind
