"""lcenet.experiment's process handling (grids, records and reports end to end: test_report.py)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import write_tiny_dataset
from lcenet.errors import UserError
from lcenet.io import RUN_LOCK_FILE, exclusive_run_directory

LONG_TINY_RUN = {
    "model": "xmlcnn",
    "model_args": {"embedding_dim": 8, "num_filters": 4, "hidden_dim": 8, "filter_sizes": [2], "pool_chunks": 1},
    "data": {"max_length": 16, "vocab_size": 100, "min_frequency": 1},
    "train": {"epochs": 100000, "batch_size": 8, "patience": None, "device": "cpu", "checkpoint_every_steps": 1},
}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_terminated_grid_stops_its_running_cell_and_starts_no_other(tmp_path):
    """SIGTERM to the grid alone (as a scheduler or `timeout` sends it) ends the training process it launched
    too: none is left training, orphaned, where a relaunch of the grid would resume the same cell."""
    data = write_tiny_dataset(tmp_path / "data")
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(LONG_TINY_RUN))
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump({"name": "long", "profile": "test", "datasets": {"tiny": str(data)},
                                    "models": {"xmlcnn": str(tmp_path / "long.yaml")},
                                    "variants": {"base": {"lcenet": None}, "lcenet": {"lcenet": {"rank": 4}}},
                                    "seeds": [0], "parallel": 1}))
    out = tmp_path / "out"
    grid = subprocess.Popen([sys.executable, "-m", "lcenet", "experiment", str(spec), "--output", str(out)],
                            env={**os.environ, "LCENET_CACHE": str(tmp_path / "cache")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = out / "runs" / "tiny__xmlcnn__base__s0"
    try:
        stop_while_training(grid, first)
    finally:  # a failure here must leave no 100,000-epoch run training
        if grid.poll() is None:
            grid.kill()
        kill_any_holder(first)
    assert not (out / "runs" / "tiny__xmlcnn__lcenet__s0").exists()  # the next cell never started
    assert list((out / "records").glob("*.error.json")) == []  # a stopped cell is not a failed one


def stop_while_training(grid: subprocess.Popen, run):
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.safetensors").exists():  # the cell is training
        assert grid.poll() is None and time.monotonic() < deadline, grid.communicate()[1]
        time.sleep(0.1)
    grid.send_signal(signal.SIGTERM)
    stderr = grid.communicate(timeout=60)[1]
    assert grid.returncode == -signal.SIGTERM, stderr
    assert "rerun the same command to resume" in stderr
    with exclusive_run_directory(run):  # no process trains there any more
        pass


def kill_any_holder(run):
    try:
        with exclusive_run_directory(run):
            return
    except UserError:
        os.kill(int((run / RUN_LOCK_FILE).read_text()), signal.SIGKILL)
