"""Training in several processes under ``torchrun``: DistributedDataParallel, gloo on CPU, NCCL on GPUs.

``torchrun --nproc-per-node N -m lcenet train ...`` starts N copies of ``lcenet train`` with WORLD_SIZE, RANK
and LOCAL_RANK set; :func:`process_group` joins them into one process group (each rank on ``cuda:LOCAL_RANK``
when training on GPUs). Without torchrun, or with one process, nothing here does anything: every helper
returns its input, so the single-process trainer runs exactly as before (no DDP wrapper, no collectives).

How the work is split (see :class:`lcenet.train.Trainer`):

- ``train.batch_size`` stays the *global* batch: every rank takes ``batch_size / world_size`` rows of each
  global batch of the same seeded epoch order (:func:`shard_epoch`), so 1 and N processes take the same
  optimizer steps on the same global batches;
- rank 0 alone evaluates dev, writes logs, checkpoints and the model directory; the others wait, then take
  rank 0's trainer state (best score, early-stopping and time-limit decisions), so all stop together.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lcenet.errors import UserError

# Ranks wait for rank 0 while it evaluates dev or test alone; a large dev set on a slow device can take long.
TIMEOUT = timedelta(hours=1)


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True in the process that writes files and logs: rank 0, or the only process."""
    return rank() == 0


def rank_device(name: str) -> torch.device:
    """This rank's device: under torchrun each process drives one GPU, ``cuda:LOCAL_RANK``; ``cpu`` stays cpu."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise UserError(f"device {name!r}: under torchrun every process uses cuda:LOCAL_RANK; use --device auto, "
                        "cuda or cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device {name!r}: CUDA is not available here; use --device cpu or auto")
    return torch.device("cuda", local_rank())


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Inside: the torchrun processes form one group (NCCL when they train on GPUs, else gloo). Does nothing in
    a plain process, with one process, or when a group already exists (whoever made it tears it down)."""
    if launched_world_size() <= 1 or active():
        yield
        return
    on_gpu = rank_device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(local_rank())  # NCCL and the object collectives use the current device
    dist.init_process_group("nccl" if on_gpu else "gloo", timeout=TIMEOUT)
    logger = logging.getLogger("lcenet")
    level = logger.level
    if not is_main():
        logger.setLevel(logging.WARNING)  # one copy of the progress lines, from rank 0
    try:
        yield
    finally:
        logger.setLevel(level)
        # The trainer's DDP wrapper sits in reference cycles, so it outlives the training call and its reducer
        # keeps the process group alive past destroy_process_group; gloo's threads were then torn down at the
        # interpreter's exit, which aborted the process (SIGABRT) after a finished run. Collect it first.
        gc.collect()
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. filling the tokenization cache), then the others (reading it)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_object(value):
    """Rank 0's ``value`` on every rank (picklable objects)."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def main_decides(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank: one tiny broadcast, cheap enough to call every step."""
    if not active():
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def all_gather_object(value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor; ``tensor`` itself in a single process)."""
    if not active():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over ranks), or itself in a single process."""
    if not active():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def gradient_sync(module: torch.nn.Module, now: bool):
    """A context for one backward pass: DDP's ``no_sync`` unless ``now`` (the last micro-batch of a step), so
    gradient accumulation all-reduces once per optimizer step."""
    return module.no_sync() if not now and isinstance(module, DistributedDataParallel) else contextlib.nullcontext()


def local_batch_size(global_batch: int, world: int) -> int:
    if global_batch % world:
        raise UserError(f"train.batch_size {global_batch} is the global batch and must be divisible by the "
                        f"number of processes ({world})")
    return global_batch // world


def shard_epoch(order: np.ndarray, global_batch: int, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's share of each consecutive ``global_batch`` slice of ``order``, and how many real rows it has
    in each. A full batch gives every rank ``global_batch / world`` rows; the epoch's final partial batch is
    split as evenly as possible (``np.array_split``). A rank left with none of its rows takes the batch's first
    row as padding, with a count of 0 (its loss is weighted by 0): DDP needs every rank in every backward pass.

    With one process this is ``order`` itself and the batch sizes."""
    starts = np.arange(0, len(order), global_batch)
    if world == 1:
        return order, np.minimum(global_batch, len(order) - starts)
    parts, counts = [], []
    for start in starts:
        batch = order[start:start + global_batch]
        mine = np.array_split(batch, world)[rank]
        counts.append(len(mine))
        parts.append(mine if len(mine) else batch[:1])
    return (np.concatenate(parts) if parts else order), np.asarray(counts, dtype=np.int64)
