"""lcenet.io's run-directory lock (the model directory's files are tested through the families and the CLI)."""

import os
import sys

import pytest

from lcenet.errors import UserError
from lcenet.io import RUN_LOCK_FILE, exclusive_run_directory

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="runs are not locked on Windows")


def test_a_run_directory_is_held_by_one_holder_at_a_time(tmp_path):
    run = tmp_path / "run"
    with exclusive_run_directory(run):
        assert (run / RUN_LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"{run}: another lcenet process \\(pid {os.getpid()}\\) is training"):
            with exclusive_run_directory(run):
                pass
        (run / "log.jsonl").write_text("{}\n")
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl"]  # the lock is gone, what the run wrote stays
    with exclusive_run_directory(run):  # and the next holder gets it
        pass


def test_a_directory_the_lock_created_goes_again_if_nothing_was_written(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError):
        with exclusive_run_directory(run):
            raise UserError("train_labels.txt:7: bad label")
    assert not run.exists()
    run.mkdir()  # one the user made stays, empty
    with exclusive_run_directory(run):
        pass
    assert run.is_dir() and not any(run.iterdir())


def test_a_lock_file_left_by_a_killed_run_does_not_hold_the_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_LOCK_FILE).write_text("12345\n")  # what a SIGKILLed holder leaves: the file, without the lock
    with exclusive_run_directory(run):
        assert (run / RUN_LOCK_FILE).read_text().strip() == str(os.getpid())
