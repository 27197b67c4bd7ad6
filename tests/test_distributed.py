"""Training in 2 CPU processes (gloo), as torchrun would start them, against the single-process trainer."""

import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from conftest import tiny_config, write_tiny_dataset
from lcenet.config import ShortlistSettings
from lcenet.distributed import shard_epoch
from lcenet.errors import UserError
from lcenet.io import load_tensors
from lcenet.pipeline import load_model, run_training
from lcenet.predict import Predictor
from lcenet.train import CHECKPOINT_FILE

# DDP sums the ranks' gradients (all-reduce) and each rank averages BCE over its own rows, so the floating
# point additions happen in another order than in one process: equal up to rounding, not bit for bit.
ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, jobs: list[dict]) -> None:
    """One torchrun-like rank: the environment torchrun sets, then ``run_training`` for each job in turn."""
    import time

    import lcenet.train as train_module

    torch.set_num_threads(1)
    original_fit = train_module.Trainer.fit
    for job in jobs:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))

        def fit(self, resume=False, on_step=None, job=job):
            def die(step):
                # A kill: the process ends at once, with no clean-up (no process-group teardown, no finally).
                # Raising instead left a DDP reducer on a destroyed process group, which could abort later.
                if step == job.get("die_at_step"):
                    os._exit(0)
            state = original_fit(self, resume=resume, on_step=die)
            Path(job["output"], f"rank{rank}.json").write_text(json.dumps({"step": state["step"]}))
            return state

        train_module.Trainer.fit = fit
        if job.get("fast_clock_rank") == rank:  # this rank's clock runs 1000x fast: it alone would stop at once
            train_module.time = type("FastClock", (), {"perf_counter": lambda: 1000 * time.perf_counter()})
        try:
            run_training(job["config"], job["data"], job["output"], resume=job.get("resume", False),
                         cache_dir=job["cache"], progress=False)
        finally:
            train_module.Trainer.fit = original_fit
            train_module.time = time
        # A DDP wrapper that outlives its process group takes gloo down with it at the interpreter's exit (SIGABRT).
        assert not any(isinstance(o, DistributedDataParallel) for o in gc.get_objects()), "DDP outlived its group"


def train_in_processes(world: int, jobs: list[dict]) -> None:
    """``world`` processes run ``jobs`` in turn; a job with ``die_at_step`` ends them, so it must come last."""
    ports: list[int] = []
    while len(ports) < len(jobs):  # one port per job: a closed port asked for again may be handed out again
        port = free_port()
        if port not in ports:
            ports.append(port)
    mp.spawn(_worker, args=(world, [{**job, "port": port} for job, port in zip(jobs, ports)]), nprocs=world,
             join=True)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(run_dir / CHECKPOINT_FILE)
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optimizer."))}


def no_dropout_config(**train):
    config = tiny_config(epochs=2, lcenet=True, keep_checkpoints=True, **train)
    config.model_args.update(dropout=0.0, embedding_dropout=0.0)  # DDP ranks draw other masks than one process
    return config


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """57 train documents, global batch 8, 2 micro-batches a step: the epoch's last step holds 8 + 1 rows,
    so one rank has a row and the other only padding. Trained in 1 process and in 2. The same 2 processes
    (one start-up) also train ``time_limit/`` with a clock that runs 1000x fast in rank 1."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_tiny_dataset(root / "data", docs=(57, 20, 20))
    config = no_dropout_config(grad_accum_steps=2)
    # Shortlist mode: every label a candidate (6 labels, 4 clusters, all chosen), so one process's row-sparse
    # gradients and DDP's dense ones train the same weights.
    shortlist = no_dropout_config()
    shortlist.shortlist = ShortlistSettings(cluster_size=2, top_clusters=4)
    run_training(config, data, root / "one", cache_dir=root / "cache", progress=False)
    run_training(shortlist, data, root / "one_shortlist", cache_dir=root / "cache", progress=False)
    common = {"data": data, "cache": root / "cache"}
    train_in_processes(2, [{**common, "config": config, "output": root / "two"},
                           {**common, "config": shortlist, "output": root / "two_shortlist"},
                           {**common, "config": tiny_config(epochs=3, max_seconds=0.5), "output": root / "time_limit",
                            "fast_clock_rank": 1}])
    return root


def test_two_processes_take_the_same_steps_to_the_same_weights(ddp_run):
    one, two = final_weights(ddp_run / "one"), final_weights(ddp_run / "two")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=ATOL, msg=name)
    metrics_one = json.loads((ddp_run / "one" / "metrics.json").read_text())
    metrics_two = json.loads((ddp_run / "two" / "metrics.json").read_text())
    assert metrics_two["steps"] == metrics_one["steps"] == 2 * 4  # ceil(57 / 16) steps per epoch
    assert (metrics_one["processes"], metrics_two["processes"]) == (1, 2)
    assert metrics_two["best_step"] == metrics_one["best_step"]
    log_one = [json.loads(line) for line in (ddp_run / "one" / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (ddp_run / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_two] == [r["step"] for r in log_one]  # rank 0 alone wrote the log
    losses = [(a["loss"], b["loss"]) for a, b in zip(log_one, log_two) if a["event"] == "train"]
    assert losses and all(abs(a - b) < ATOL for a, b in losses)  # the logged loss is the global batch's


def test_shortlist_mode_trains_the_same_weights_in_two_processes(ddp_run):
    one, two = final_weights(ddp_run / "one_shortlist"), final_weights(ddp_run / "two_shortlist")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=ATOL, msg=name)


def test_a_model_trained_in_two_processes_predicts_in_one(ddp_run):
    state, _ = load_tensors(ddp_run / "two" / "model" / "model.safetensors")
    assert not any(name.startswith("module.") for name in state)
    texts = ["milk cheese cow", "fishing quota sea tax", ""]
    two = Predictor([load_model(ddp_run / "two" / "model", device="cpu")]).predict(texts, k=3)
    one = Predictor([load_model(ddp_run / "one" / "model", device="cpu")]).predict(texts, k=3)
    assert [r["labels"] for r in two] == [r["labels"] for r in one]
    assert np.allclose([r["scores"] for r in two], [r["scores"] for r in one], atol=1e-4)


def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path):
    """With dropout on: each rank restores its own RNG state from the checkpoint rank 0 wrote."""
    data = write_tiny_dataset(tmp_path / "data")
    config = tiny_config(epochs=2, lcenet=True, checkpoint_every_steps=1, keep_checkpoints=True)
    common = {"config": config, "data": data, "cache": tmp_path / "cache"}
    train_in_processes(2, [{**common, "output": tmp_path / "straight"},
                           {**common, "output": tmp_path / "killed", "die_at_step": 10}])  # 8 steps per epoch
    assert not (tmp_path / "killed" / "metrics.json").exists()
    train_in_processes(2, [{**common, "output": tmp_path / "killed", "resume": True}])
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    checkpoint, _ = load_tensors(tmp_path / "killed" / CHECKPOINT_FILE)
    assert not torch.equal(checkpoint["rng.rank0.torch"], checkpoint["rng.rank1.torch"])  # ranks' own dropout


def test_the_time_limit_stops_every_rank_at_the_same_step(ddp_run):
    steps = [json.loads((ddp_run / "time_limit" / f"rank{r}.json").read_text())["step"] for r in (0, 1)]
    assert steps[0] == steps[1] > 1  # rank 1's fast clock alone would have stopped it after one step


def test_shards_cover_every_global_batch_once():
    order = np.random.default_rng(0).permutation(21)
    shards = [shard_epoch(order, 8, rank, 2) for rank in range(2)]
    assert [list(counts) for _, counts in shards] == [[4, 4, 3], [4, 4, 2]]
    for batch in range(3):
        rows = np.concatenate([local[batch * 4:batch * 4 + counts[batch]] for local, counts in shards])
        assert sorted(rows) == sorted(order[batch * 8:batch * 8 + 8])
    local, counts = shard_epoch(order[:17], 8, 1, 2)  # the last batch has 1 row: rank 1 pads with it
    assert list(counts) == [4, 4, 0] and len(local) == 9 and local[-1] == order[16]
    single, sizes = shard_epoch(order, 8, 0, 1)
    assert single is order and list(sizes) == [8, 8, 5]


def test_a_global_batch_that_does_not_split_is_refused():
    from lcenet.distributed import local_batch_size

    with pytest.raises(UserError, match="divisible by the number of processes"):
        local_batch_size(10, 4)


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's c10d rendezvous")
def test_torchrun_runs_the_cli(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(epochs=1).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
         "-m", "lcenet", "train", "--data", str(data), "--output", str(tmp_path / "run"), "--config", str(config),
         "--cache-dir", str(tmp_path / "cache"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["processes"] == 2
    assert result.stderr.count("best at") == 1  # one summary, printed by rank 0
