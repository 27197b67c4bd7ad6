"""Kill-9 fuzzing of training: SIGKILL ``lcenet train`` at random moments, continue with ``--resume`` each time,
and check that the final weights and metrics are bit-identical to an uninterrupted run's.

    python benchmarks/kill_fuzz.py                    # 24 + 3 kills, seed 0 -> benchmarks/results/kill_fuzz_cpu.json
    python benchmarks/kill_fuzz.py --kills 40 --seed 3 --output /tmp/kf.json

The run is a small XML-CNN + LCENet on the bundled EURLEX57K sample that writes a checkpoint after every step
and evaluates on dev every few steps, so a random moment often falls inside a checkpoint write. Each kill waits
until the relaunched process shows progress (a file in the run directory written since the launch: Python
start-up is not what is being tested), then a random 0..max_delay seconds, then sends SIGKILL. After each kill:

* a leftover atomic-write temp file (``.checkpoint.safetensors.*.tmp``) means the kill hit a checkpoint write;
* ``checkpoint.safetensors``, when present, must be a complete, loadable safetensors file (never torn);
* the next launch resumes; every launch must either be killed by us or exit 0 -- an error exit means a resume
  tripped over something a kill left behind.

The last few kills (``--final-kills``) wait until the checkpoint says training is over, so that they land in the
final dev/test evaluation, the model directory write or the metrics write.

At the end the model directory, best/last checkpoints, metrics, per-document test hits and the log (less its
wall-clock fields) are compared with a run that was never interrupted. ``--fork`` starts each launch by
forking this process instead of a new interpreter (no 2-3 s of imports per launch; what the test uses).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from safetensors import safe_open

from lcenet.io import RUN_LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "lcenet" / "sample_data" / "eurlex57k"
CHECKPOINT = "checkpoint.safetensors"

# Small enough that one launch reaches training in about a second, big enough (a 17 MB checkpoint: weights and
# Adam moments) that checkpoint writes take a real share of the time.
SETTINGS = ["--model", "xmlcnn", "--lcenet", "--device", "cpu", "--seed", "0", "--max-length", "64",
            "--batch-size", "16", "--set", "data.max_docs={train: 320, dev: 100, test: 100}",
            "--set", "data.vocab_size=5000", "--set", "model_args.embedding_dim=16",
            "--set", "model_args.num_filters=16", "--set", "model_args.hidden_dim=64",
            "--set", "train.checkpoint_every_steps=1", "--set", "train.eval_every_steps=7",
            "--set", "train.log_every_steps=2", "--set", "train.patience=null"]


class Launch:
    """One ``lcenet train`` process: a fresh interpreter, or a fork of this one (``fork=True``)."""

    def __init__(self, argv: list[str], log: Path, fork: bool):
        self.started_ns = time.time_ns()
        with open(log, "ab") as out:
            if not fork:
                env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
                self.process = subprocess.Popen([sys.executable, "-m", "lcenet", *argv], stdout=out, stderr=out,
                                                env=env)
                self.pid = self.process.pid
                return
            self.process = None
            self.pid = os.fork()
            if self.pid == 0:  # the child: run the CLI, never return into the caller's code
                code = 1
                # One thread, as the interpreter launch's OMP_NUM_THREADS=1: a forked child that opens an OpenMP team
                # of the size its parent used waits forever for threads fork did not copy (seen in oneDNN's conv).
                torch.set_num_threads(1)
                try:
                    os.dup2(out.fileno(), 1)
                    os.dup2(out.fileno(), 2)
                    from lcenet.cli import app

                    app(args=argv, standalone_mode=True)
                    code = 0
                except SystemExit as done:
                    code = done.code if isinstance(done.code, int) else 1
                except BaseException:  # a crash: its traceback goes to the log (os._exit would lose it)
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.process is not None:
            return self.process.poll()
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.005)
        return self.poll()

    def kill(self) -> int:
        os.kill(self.pid, signal.SIGKILL)
        return self.wait()


def train_argv(data: Path, run: Path, cache: Path, resume: bool, settings: list[str] = SETTINGS) -> list[str]:
    # The comparison reads the final checkpoint and best weights, which a finished run would delete.
    return ["train", "--data", str(data), "--output", str(run), "--cache-dir", str(cache), "--no-progress",
            *settings, "--set", "train.keep_checkpoints=true", *(["--resume"] if resume else [])]


def progressed_since(run: Path, started_ns: int) -> bool:
    """Whether anything in the run directory was written after ``started_ns``."""
    try:
        return any(entry.stat().st_mtime_ns > started_ns for entry in os.scandir(run))
    except FileNotFoundError:  # not created yet, or a temp file renamed away while we looked
        return False


def temp_files(run: Path) -> set[str]:
    """Write-in-progress files: ``.NAME.*.tmp`` (ours), ``.tmpXXXXXX`` (safetensors'), ``.model.*`` folders; not
    the run's lock file, which a kill leaves behind (unlocked) and the next launch takes."""
    return {p.name for p in run.glob(".*") if p.name != RUN_LOCK_FILE} if run.exists() else set()


def checkpoint_is_complete(run: Path) -> bool:
    path = run / CHECKPOINT
    if not path.exists():
        return True
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                handle.get_tensor(name)
        return True
    except Exception:  # any failure to read it back is a torn file
        return False


def steps_done(run: Path) -> int:
    """The optimizer steps recorded in the run's checkpoint (0 without one)."""
    try:
        with safe_open(str(run / CHECKPOINT), framework="pt") as handle:
            return json.loads(handle.metadata()["trainer"])["step"]
    except Exception:  # absent, or being replaced while we read it
        return 0


def fuzz(workdir: Path, kills: int, seed: int, max_delay: float, fork: bool, data: Path = SAMPLE,
         settings: list[str] = SETTINGS, final_kills: int = 3) -> dict:
    """Run the reference and the killed run under ``workdir``; return the record (see the module docstring).

    The first ``kills`` kills come at random moments; the last ``final_kills`` once the checkpoint says training
    is over, so that they land in what follows it: the final dev/test evaluation and the model directory write.
    """
    started = time.perf_counter()
    cache, log = workdir / "cache", workdir / "launches.log"
    reference = workdir / "reference"
    reference_started = time.perf_counter()
    code = Launch(train_argv(data, reference, cache, False, settings), log, fork).wait()
    if code != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {code}); see {log}")
    reference_seconds = time.perf_counter() - reference_started
    total_steps = json.loads((reference / "metrics.json").read_text())["steps"]

    rng = random.Random(seed)
    run = workdir / "killed"
    record = {"kills": 0, "kills_during_checkpoint_write": 0, "kills_during_other_writes": 0,
              "kills_after_training": 0, "final_kill_misses": 0, "launches": 0, "failed_launches": 0,
              "torn_checkpoints": 0, "finished_before_all_kills": False}
    while True:
        before = temp_files(run)
        launch = Launch(train_argv(data, run, cache, record["launches"] > 0, settings), log, fork)
        record["launches"] += 1
        if record["kills"] >= kills + final_kills:
            code = launch.wait()
            record["failed_launches"] += code != 0
            break
        final = record["kills"] >= kills
        while launch.poll() is None and not (progressed_since(run, launch.started_ns)
                                             and (not final or steps_done(run) >= total_steps)):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, max_delay))
        if launch.poll() is not None or launch.kill() != -signal.SIGKILL:  # it finished before the kill came
            record["failed_launches"] += launch.poll() != 0
            if final and record["final_kill_misses"] < 3 * final_kills:
                record["final_kill_misses"] += 1  # a finished run can be resumed again: it redoes the final part
                continue
            record["finished_before_all_kills"] = True
            break
        record["kills"] += 1
        new = temp_files(run) - before
        # The safetensors library's own temp files (".tmpXXXXXX") belong to the checkpoint or best-weights write
        # in progress, which our ".NAME.*.tmp" files identify.
        ours = {name for name in new if not name.startswith(".tmp")}
        record["kills_during_checkpoint_write"] += any(name.startswith(f".{CHECKPOINT}.") for name in ours)
        record["kills_during_other_writes"] += any(not name.startswith(f".{CHECKPOINT}.") for name in ours)
        record["kills_after_training"] += steps_done(run) >= total_steps
        record["torn_checkpoints"] += not checkpoint_is_complete(run)
    record["leftover_temp_files"] = sorted(temp_files(run))
    record.update(compare(reference, run))
    record["identical"] = all(record["same"].values())
    record["reference_wall_seconds"] = reference_seconds
    record["wall_seconds"] = time.perf_counter() - started
    return record


def _tensors(path: Path, prefixes: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys() if name.startswith(prefixes)}


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def _log_records(run: Path) -> list[dict]:
    """log.jsonl without its wall-clock fields (the only ones a kill may change)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "eval_seconds")} for r in records]


def compare(reference: Path, run: Path) -> dict:
    if not (run / "metrics.json").exists():
        return {"same": {"finished": False}}
    metrics_a, metrics_b = (json.loads((r / "metrics.json").read_text()) for r in (reference, run))
    keys = ("dev", "test", "best_step", "steps", "epochs_completed")
    return {"same": {
        "model_weights": _same_tensors(_tensors(reference / "model" / "model.safetensors"),
                                       _tensors(run / "model" / "model.safetensors")),
        "best_weights": _same_tensors(_tensors(reference / "best.safetensors"), _tensors(run / "best.safetensors")),
        "last_checkpoint": _same_tensors(*(_tensors(r / CHECKPOINT, ("model.", "optimizer.", "rng."))
                                           for r in (reference, run))),
        "metrics": all(metrics_a[k] == metrics_b[k] for k in keys),
        "test_documents": (reference / "test_documents.json").read_text() == (run / "test_documents.json").read_text(),
        "log": _log_records(reference) == _log_records(run),
    }, "test_metrics": metrics_b["test"]}


def git_commit() -> str:
    """HEAD, with "-dirty" when tracked files differ from it (then the record is not reproducible from HEAD)."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return git("rev-parse", "HEAD").strip() + ("-dirty" if git("status", "--porcelain", "-uno").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24, help="kills at random moments")
    parser.add_argument("--final-kills", type=int, default=3, help="then kills after training, in the final "
                        "evaluation and model directory write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.25, help="seconds after progress before the kill")
    parser.add_argument("--fork", action="store_true", help="fork this process per launch (no interpreter start)")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temp dir, removed)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "kill_fuzz_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    commit = git_commit()  # before the runs: what the launches import
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kill_fuzz."))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        record = fuzz(workdir, args.kills, args.seed, args.max_delay, args.fork, final_kills=args.final_kills)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    from lcenet.io import atomic_write_json
    from lcenet.pipeline import device_name

    record = {"benchmark": "kill_fuzz", "command": " ".join(["python", "benchmarks/kill_fuzz.py", *sys.argv[1:]]),
              "train_command": "lcenet " + " ".join(train_argv(Path("DATA"), Path("RUN"), Path("CACHE"), False)),
              "git_commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"), "device": "cpu", "device_name": device_name(torch.device("cpu")),
              "torch": torch.__version__, "seed": args.seed, "max_delay": args.max_delay, "fork": args.fork,
              **record}
    atomic_write_json(args.output, record)
    print(json.dumps(record, indent=2))
    ok = (record["identical"] and not record["failed_launches"] and not record["torn_checkpoints"]
          and record["kills"] >= args.kills + args.final_kills)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
