"""Where a result came from: the code's git commit (and whether the tree had uncommitted changes), library
versions and the date, recorded in every run's metrics.json so a number can be traced and rerun."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import torch

import lcenet


def git_state(directory: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding lcenet's source; (None, None) outside a git checkout (e.g. an
    installed wheel). Dirty counts tracked files only: run outputs are git-ignored or untracked."""
    directory = directory or Path(lcenet.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status.strip())


def provenance() -> dict:
    commit, dirty = git_state()
    return {"git_commit": commit, "git_dirty": dirty, "lcenet_version": lcenet.__version__,
            "torch_version": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
