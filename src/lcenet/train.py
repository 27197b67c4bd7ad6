"""Training loop: mini-batches of model inputs + CSR label rows -> model -> logits -> BCE; dev evaluation,
early stopping on dev nDCG@5, atomic checkpoints that make a killed run resumable bit-for-bit on CPU. A run
knows why it stopped and whether it converged (:mod:`lcenet.stopping`)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lcenet import distributed
from lcenet.allocator import reuse_freed_memory
from lcenet.config import LOSSES, TrainSettings
from lcenet.errors import UserError
from lcenet.inference import Batch, EpochBatches, SplitTensors, autocast, evaluate_model
from lcenet.io import atomic_write_text, load_tensors, save_tensors
from lcenet.lcenet import LCENetWrapped
from lcenet.output import candidate_targets
from lcenet.row_adam import RowAdam, clip_grad_norm_
from lcenet.stopping import converged, stop_reason
from lcenet.weight_average import WeightAverage

log = logging.getLogger("lcenet")

SELECTION_METRIC = "nDCG@5"
CHECKPOINT_FILE = "checkpoint.safetensors"
BEST_FILE = "best.safetensors"
# LCENet's table row order (LCENet.arrange_rows) in a checkpoint: Adam's moments for the tables are in that order.
LCENET_ROWS_KEY = "layout.lcenet_row_labels"
AVERAGE_PREFIX = "average."  # checkpoint keys of the weight average (train.ema_decay)


def resolve_device(name: str = "auto") -> torch.device:
    if distributed.world_size() > 1:
        return distributed.rank_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: CUDA is not available here; use --device cpu or auto")
    return device


def parameter_groups(model: torch.nn.Module, settings: TrainSettings) -> list[dict]:
    """Encoder parameters (names containing 'encoder.') get encoder_lr, LCENet's (names starting 'lcenet.')
    lcenet_lr, the rest lr; no weight decay on biases and norm weights."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = settings.lr
        if settings.encoder_lr is not None and "encoder." in name:
            lr = settings.encoder_lr
        elif settings.lcenet_lr is not None and name.startswith("lcenet."):
            lr = settings.lcenet_lr
        no_decay = name.endswith("bias") or "norm" in name.lower()
        groups.setdefault((lr, 0.0 if no_decay else settings.weight_decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]


def label_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """The batch's mean loss of ``logits`` against 0/1 ``targets`` (both ``[B, n]``: all labels, or candidates);
    ``kind`` is one of ``config.LOSSES``, checked once by the Trainer rather than every batch.

    - ``bce``: binary cross-entropy averaged over every (document, label) entry.
    - ``softmax``: the pick-all-labels reduction (Menon et al., NeurIPS 2019, "Multilabel reductions"): for each
      document, the mean over its true labels y of −log softmax(logits)_y; a document without true labels adds 0.
      Padded candidates (``PADDING_LOGIT``) get no probability, so they add nothing either.
    """
    logits = logits.float()
    if kind == "softmax":
        per_document = -(targets * F.log_softmax(logits, dim=1)).sum(1) / targets.sum(1).clamp(min=1)
        return per_document.mean()
    return F.binary_cross_entropy_with_logits(logits, targets)


def training_loss(model: torch.nn.Module, inputs: Batch, targets: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """:func:`label_loss` of the model's logits against ``targets`` (plus the weighted same loss of the base logits
    with LCENet's aux loss, and any loss the model adds, such as a shortlist's cluster scorer).

    ``targets``: dense ``[B, L]`` 0/1 for a model that scores every label; for one that scores candidates
    (``model.scores_candidates``), the true label ids ``[B, T]`` (-1 padded), from which the candidates' targets
    are built on the device (O(B·K·T), never O(L) per document). Padded candidates carry ``PADDING_LOGIT`` and
    target 0, so they add nothing."""
    if model.scores_candidates:
        output = model.score(*inputs, true_labels=targets)
        targets = candidate_targets(output.label_ids, targets)
    else:
        output = model.score(*inputs)
    loss = label_loss(output.logits, targets, kind)
    if output.aux_loss_weight > 0:
        loss = loss + output.aux_loss_weight * label_loss(output.base_logits, targets, kind)
    if output.extra_loss is not None:
        loss = loss + output.extra_loss
    return loss


class TrainingLoss(torch.nn.Module):
    """The loss as a module's forward, for DistributedDataParallel: DDP prepares its gradient all-reduce in
    forward, so the whole loss (with aux loss, both calls of the model) must run inside one DDP forward."""

    def __init__(self, model: torch.nn.Module, kind: str = "bce"):
        super().__init__()
        self.model = model
        self.kind = kind

    def forward(self, inputs: Batch, targets: torch.Tensor) -> torch.Tensor:
        return training_loss(self.model, inputs, targets, self.kind)


class Trainer:
    """Trains ``model`` on ``train`` and selects the best dev checkpoint by nDCG@5 (never looks at test).

    Everything needed to continue after a kill lives in ``run_dir/checkpoint.safetensors``: weights,
    optimizer and scheduler state, RNG states and the position in the epoch.

    Under torchrun (:mod:`lcenet.distributed`) every rank trains on its shard of each global batch through
    DistributedDataParallel; ``self.model`` stays the plain module (its state_dict has no ``module.`` prefix),
    rank 0 alone evaluates dev and writes files, and every rank takes rank 0's decisions to stop.
    """

    def __init__(self, model: torch.nn.Module, settings: TrainSettings, train: SplitTensors, dev: SplitTensors,
                 num_labels: int, run_dir: str | Path, inv_propensity: np.ndarray | None = None,
                 progress: bool = True):
        self.settings = settings
        if settings.reuse_freed_memory:
            reuse_freed_memory()
        self.device = resolve_device(settings.device)
        self.model = model.to(self.device)
        self.train, self.dev = train, dev
        self.num_labels = num_labels
        # On a GPU the split lives on the device and batches are gathered there (no per-step host work).
        resident = settings.resident_batches if settings.resident_batches is not None else self.device.type == "cuda"
        self.world_size, self.rank = distributed.world_size(), distributed.rank()
        local_batch = distributed.local_batch_size(settings.batch_size, self.world_size)
        self.batches = EpochBatches(train, num_labels, local_batch, self.device, resident,
                                    label_ids=model.scores_candidates)
        self.rows_per_batch = np.zeros(0, dtype=np.int64)  # this rank's real rows in each global batch
        # The DDP module computes the loss (gradients averaged over ranks); one process calls the loss directly.
        if settings.loss not in LOSSES:
            raise UserError(f"train.loss must be one of {', '.join(LOSSES)} (got {settings.loss!r})")
        self.loss = (TrainingLoss(self.model, settings.loss) if self.world_size == 1
                     else distributed.wrap(TrainingLoss(self.model, settings.loss), self.device))
        if settings.compile:
            self.loss = torch.compile(self.loss, mode=settings.compile)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.inv_propensity = inv_propensity
        self.progress = progress
        self.log_path = self.run_dir / "log.jsonl"
        self.steps_per_epoch = math.ceil(len(train) / settings.batch_size / settings.grad_accum_steps)
        self.total_steps = settings.epochs * self.steps_per_epoch
        if settings.max_steps is not None:
            self.total_steps = min(self.total_steps, settings.max_steps)
        if settings.optimizer not in ("adam", "adamw"):
            raise UserError(f"train.optimizer must be adam or adamw (got {settings.optimizer!r})")
        groups = parameter_groups(self.model, settings)
        if model.scores_candidates:
            # A shortlist's label tables may get row-sparse gradients: RowAdam updates just their touched rows
            # (and every dense parameter as AdamW does; plain Adam's L2 decay has no row-sparse form).
            self.optimizer = RowAdam(groups, lr=settings.lr)
            self.clip_grad_norm = clip_grad_norm_
        else:
            optimizer_class = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
            # fused: one kernel for all parameters; about 2x faster than the default on CPU, same results.
            self.optimizer = optimizer_class(groups, lr=settings.lr, fused=True)
            self.clip_grad_norm = torch.nn.utils.clip_grad_norm_
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.average = WeightAverage(self.model, settings.ema_decay) if settings.ema_decay else None
        self.state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_score": -1.0, "best_step": 0,
                      "patience_best": -1.0, "evals_without_improvement": 0, "train_seconds": 0.0,
                      "stopped_early": False, "stopped_by_time": False, "dev_scores": [], "resumed_at_steps": []}

    def _lr_factor(self, step: int) -> float:
        settings = self.settings
        if settings.schedule == "constant":
            return 1.0
        if settings.schedule != "linear":
            raise UserError(f"train.schedule must be constant or linear (got {settings.schedule!r})")
        if step < settings.warmup_steps:
            return (step + 1) / (settings.warmup_steps + 1)
        remaining = max(self.total_steps - settings.warmup_steps, 1)
        return max(0.0, 1.0 - (step - settings.warmup_steps) / remaining)

    # ---- the loop -------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, on_step: Callable[[int], None] | None = None) -> dict:
        """Train to the end (or early stop). ``on_step(step)`` is called after each optimizer step."""
        settings = self.settings
        if resume and (self.run_dir / CHECKPOINT_FILE).exists():
            self._load_checkpoint()
            # Where each earlier process stopped: a record's wall time is its last process's alone.
            self.state.setdefault("resumed_at_steps", []).append(self.state["step"])
            log.info("resumed at step %d (epoch %d)", self.state["step"], self.state["epoch"] + 1)
        else:
            torch.manual_seed(self._rank_seed())
            if distributed.is_main():
                self.log_path.unlink(missing_ok=True)
            if settings.init_from:
                # A trained model's weights (train.init_from) are a candidate too: dev selection keeps them
                # unless training on beats them. Patience does not count from them: the first steps with a new
                # head and a fresh optimizer state dip below the start (Cooking: below it for 3 evaluations, then
                # +0.9 dev nDCG@5 above it), so it compares the later evaluations with each other only.
                self._evaluate_dev(start=True)
        # Only on a terminal: in logs a bar floods; there the per-evaluation log lines tell progress.
        bar = tqdm(total=self.total_steps, initial=self.state["step"], desc="train", unit="step",
                   disable=not (self.progress and sys.stderr.isatty() and distributed.is_main()),
                   dynamic_ncols=True, mininterval=0.5)
        # The loss of the current log window, carried in checkpoints so a resumed run logs the same means.
        loss_sum, loss_count = self.state.get("loss_sum", 0.0), self.state.get("loss_count", 0)
        while not self._finished():
            order = np.random.default_rng([settings.seed, self.state["epoch"]]).permutation(len(self.train))
            self.start_epoch(order)
            per_step = settings.batch_size * settings.grad_accum_steps
            self.model.train()
            for batch_start in range(self.state["batch_in_epoch"] * per_step, len(order), per_step):
                step_started = time.perf_counter()
                loss = self.optimizer_step(batch_start, min(batch_start + per_step, len(order)))
                # Training time only: dev evaluations and checkpoint writes are not counted.
                self.state["train_seconds"] += time.perf_counter() - step_started
                loss_sum, loss_count = loss_sum + loss, loss_count + 1
                self.state["step"] += 1
                self.state["batch_in_epoch"] += 1
                bar.update(1)
                step = self.state["step"]
                if step % settings.log_every_steps == 0:
                    # the only host sync of the loss; summed over ranks / world_size: the global batches' mean
                    mean_loss = float(distributed.all_sum(loss_sum)) / self.world_size / loss_count
                    bar.set_postfix(epoch=self.state["epoch"] + 1, loss=f"{mean_loss:.4f}")
                    self._log({"event": "train", "step": step, "epoch": self._epochs_done(),
                               "loss": mean_loss, "lr": self.scheduler.get_last_lr()[0],
                               "seconds": self.state["train_seconds"]})
                    loss_sum, loss_count = 0.0, 0
                if settings.eval_every_steps and step % settings.eval_every_steps == 0:
                    self._evaluate_dev()
                    self.model.train()
                # Not at a step that ends the epoch or the run: the checkpoint after the loop follows at once, and one
                # here would let a kill in between resume past that epoch's end (its dev evaluation, its epoch count).
                ends_loop = batch_start + per_step >= len(order) or self._finished()
                if settings.checkpoint_every_steps and step % settings.checkpoint_every_steps == 0 and not ends_loop:
                    self.state.update(loss_sum=float(loss_sum), loss_count=loss_count)
                    self._save_checkpoint()
                if on_step is not None:
                    on_step(step)
                if self._finished():
                    break
            if self.state["batch_in_epoch"] * per_step >= len(order):
                self.state["epoch"] += 1
                self.state["batch_in_epoch"] = 0
            if not (settings.eval_every_steps and self.state["step"] % settings.eval_every_steps == 0):
                self._evaluate_dev()
            self.state.update(loss_sum=float(loss_sum), loss_count=loss_count)
            self._save_checkpoint()
        bar.close()
        state = self.state
        reason = stop_reason(state["stopped_early"], state["stopped_by_time"], state["step"], self.settings.max_steps)
        return {**state, "stop_reason": reason, "converged": converged(state["dev_scores"], reason)}

    def start_epoch(self, order: np.ndarray) -> None:
        """Make ``order`` (the epoch's global row order) the rows ``optimizer_step`` slices: this rank's share."""
        local_order, self.rows_per_batch = distributed.shard_epoch(order, self.settings.batch_size, self.rank,
                                                                   self.world_size)
        self.batches.start_epoch(local_order)

    def _epochs_done(self) -> float:
        """Epochs completed, fractional inside an epoch (the same clock for train and eval records)."""
        return round(self.state["epoch"] + self.state["batch_in_epoch"] / self.steps_per_epoch, 4)

    def _rank_seed(self) -> int:
        """The dropout seed of this rank: ``train.seed`` in rank 0 (and in a single process); others draw
        different masks, as different rows of a single-process batch would."""
        if self.rank == 0:
            return self.settings.seed
        return int(np.random.SeedSequence([self.settings.seed, self.rank]).generate_state(1)[0])

    def _finished(self) -> bool:
        state, settings = self.state, self.settings
        # Ranks' clocks differ: rank 0's decides, so all stop after the same step.
        if settings.max_seconds is not None:
            if distributed.main_decides(state["train_seconds"] >= settings.max_seconds):
                state["stopped_by_time"] = True
        return (state["stopped_early"] or state["stopped_by_time"] or state["epoch"] >= settings.epochs
                or state["step"] >= self.total_steps)

    def optimizer_step(self, start: int, stop: int) -> torch.Tensor:
        """One optimizer step over the epoch's rows ``start:stop`` (micro-batches of ``batch_size``); returns the
        loss as a tensor, so that the GPU is not waited for (reading it every step would stall the launch queue
        of small, latency-bound models).

        Each micro-batch's mean BCE is weighted by its share of the step's rows, so the gradient is that of the
        mean over all ``stop - start`` rows. Under DDP a rank holds ``rows`` of them and DDP averages gradients
        over ranks, hence the factor ``world_size``: the all-reduced mean is again the mean over all rows, also
        when the epoch's last batch splits unevenly (a rank with no rows has weight 0). The returned loss is
        this rank's weighted loss: summed over ranks and divided by ``world_size``, the step's mean BCE."""
        settings = self.settings
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro_start in range(start, stop, settings.batch_size):
            index = micro_start // settings.batch_size
            inputs, targets = self.batches.get(index * self.batches.batch_size)
            share = int(self.rows_per_batch[index]) / (stop - start) * self.world_size
            with distributed.gradient_sync(self.loss, micro_start + settings.batch_size >= stop):
                with autocast(self.device, settings.bf16, settings.bf16_cpu):
                    loss = self.loss(inputs, targets) * share
                loss.backward()
            total += loss.detach()
        if settings.grad_clip:
            self.clip_grad_norm(self.model.parameters(), settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.average is not None:
            self.average.update()
        return total

    def _evaluate_dev(self, start: bool = False) -> None:
        """Rank 0 scores dev (the other ranks wait) and every rank takes its trainer state: the best score, the
        early-stopping decision and rank 0's train clock, so all ranks stop together. ``start``: the starting
        weights of a warm start, a candidate for selection that patience does not count from."""
        if distributed.is_main():
            self._score_dev(start)
        self.state = distributed.broadcast_object(self.state)

    def _score_dev(self, start: bool) -> None:
        started = time.perf_counter()
        state = self.state
        with self._selected_weights():
            scores = evaluate_model(self.model, self.dev, self.device, self.inv_propensity,
                                    self.settings.eval_batch_size, self.settings.bf16)
            score, previous_best = scores[SELECTION_METRIC], state["best_score"]
            state["dev_scores"].append(score)
            improved = score > previous_best
            if improved:
                state.update(best_score=score, best_step=state["step"])
                save_tensors(self.run_dir / BEST_FILE, self.model.state_dict())
        if not start:
            self._count_patience(score, previous_best)
        self._log({"event": "eval", "split": "dev", "step": state["step"], "epoch": self._epochs_done(),
                   "metrics": scores, "improved": improved, "seconds": state["train_seconds"],
                   "eval_seconds": time.perf_counter() - started})
        log.info("step %d: dev P@1 %.4f nDCG@5 %.4f%s", state["step"], scores["P@1"], scores[SELECTION_METRIC],
                 " (best)" if improved else "")

    def _count_patience(self, score: float, previous_best: float) -> None:
        """Patience compares with the best of the evaluations it counts: all but a warm start's first (checkpoints
        written before patience_best existed had no such evaluation, so their best score is that best)."""
        state = self.state
        if score > state.get("patience_best", previous_best):
            state.update(patience_best=score, evals_without_improvement=0)
            return
        state["evals_without_improvement"] += 1
        if self.settings.patience is not None and state["evals_without_improvement"] >= self.settings.patience:
            state["stopped_early"] = True

    def _selected_weights(self) -> contextlib.AbstractContextManager:
        """The weights dev scores and selects: the weight average's under ``train.ema_decay``, else the model's."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def load_best(self) -> None:
        """Load the weights that scored best on dev (the last weights, or their average under
        ``train.ema_decay``, if dev was never evaluated)."""
        if (self.run_dir / BEST_FILE).exists():
            state, _ = load_tensors(self.run_dir / BEST_FILE)
            self.model.load_state_dict(state)
        elif self.average is not None:
            self.average.copy_to_model()

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        """Rank 0 writes the checkpoint (weights and optimizer state are the same on every rank). RNG states
        differ per rank (dropout): under DDP each rank's CPU generator and its own GPU's generator are gathered
        and saved as ``rng.rank{R}.torch`` / ``rng.rank{R}.cuda``, beside rank 0's as ``rng.torch``."""
        rng_states = distributed.all_gather_object(self._rank_rng_states()) if self.world_size > 1 else []
        if not distributed.is_main():
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.average is not None:
            tensors.update({f"{AVERAGE_PREFIX}{k}": v for k, v in self.average.state_dict().items()})
        optimizer_state = self.optimizer.state_dict()
        plain_state: dict[str, dict] = {}
        for index, values in optimizer_state["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{index}.{key}"] = value
                else:
                    plain_state.setdefault(str(index), {})[key] = value
        rows = _lcenet_row_order(self.model)
        if rows is not None:
            tensors[LCENET_ROWS_KEY] = rows
        tensors["rng.torch"] = torch.get_rng_state()
        if self.world_size > 1:
            for rank, states in enumerate(rng_states):
                tensors.update({f"rng.rank{rank}.{kind}": state for kind, state in states.items()})
        elif torch.cuda.is_available():
            for index, rng in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{index}"] = rng
        metadata = {
            "trainer": json.dumps(self.state),
            "optimizer_param_groups": json.dumps(optimizer_state["param_groups"]),
            "optimizer_plain_state": json.dumps(plain_state),
            "scheduler": json.dumps(self.scheduler.state_dict()),
        }
        save_tensors(self.run_dir / CHECKPOINT_FILE, tensors, metadata)

    def _load_checkpoint(self) -> None:
        tensors, metadata = load_tensors(self.run_dir / CHECKPOINT_FILE)
        rows, saved_rows = _lcenet_row_order(self.model), tensors.get(LCENET_ROWS_KEY)
        if (rows is None) != (saved_rows is None) or (rows is not None and not torch.equal(rows.cpu(), saved_rows)):
            raise UserError(f"{self.run_dir / CHECKPOINT_FILE}: its optimizer state holds LCENet's label tables in "
                            "another row order than this model's (written before lcenet stored them in the "
                            "shortlist's cluster order?); train afresh instead of resuming")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if self.average is not None:
            averages = {k[len(AVERAGE_PREFIX):]: v for k, v in tensors.items() if k.startswith(AVERAGE_PREFIX)}
            try:
                self.average.load_state_dict(averages)
            except KeyError as error:
                raise UserError(f"{self.run_dir / CHECKPOINT_FILE}: train.ema_decay is set but the checkpoint has "
                                f"{error.args[0]} (it was written without it); resume with the run's own "
                                "settings or train afresh") from None
        optimizer_state: dict[int, dict] = {}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                optimizer_state.setdefault(int(index), {})[key] = value
        for index, values in json.loads(metadata["optimizer_plain_state"]).items():
            optimizer_state.setdefault(int(index), {}).update(values)
        self.optimizer.load_state_dict({"state": optimizer_state,
                                        "param_groups": json.loads(metadata["optimizer_param_groups"])})
        self.scheduler.load_state_dict(json.loads(metadata["scheduler"]))
        self.state = {"dev_scores": [], **json.loads(metadata["trainer"])}  # checkpoints before dev_scores
        if self.world_size > 1:
            self._restore_rank_rng_states(tensors)
        else:
            torch.set_rng_state(tensors["rng.torch"])
            cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count())
                           if f"rng.cuda.{i}" in tensors]
            if cuda_states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda_states)
        if distributed.is_main():
            self._truncate_log(self.state["step"])

    def _rank_rng_states(self) -> dict[str, torch.Tensor]:
        states = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def _restore_rank_rng_states(self, tensors: dict[str, torch.Tensor]) -> None:
        """Each rank restores the generators it saved (rank 0 those of a single-process checkpoint). A rank the
        checkpoint has none for (it was written by fewer processes) reseeds from (seed, rank, step): training
        continues correctly, but its dropout masks differ from those of an uninterrupted run."""
        prefix = f"rng.rank{self.rank}."
        if self.rank == 0 and prefix + "torch" not in tensors and "rng.torch" in tensors:
            prefix = "rng."  # a single-process checkpoint: its generators continue in rank 0
        if prefix + "torch" not in tensors:
            log.warning("rank %d: the checkpoint holds no RNG state for this rank (it was written by fewer "
                        "processes); dropout masks will differ from an uninterrupted run", self.rank)
            seed = np.random.SeedSequence([self.settings.seed, self.rank, self.state["step"]]).generate_state(1)[0]
            torch.manual_seed(int(seed))
            return
        torch.set_rng_state(tensors[prefix + "torch"])
        if self.device.type == "cuda" and prefix + "cuda" in tensors:
            torch.cuda.set_rng_state(tensors[prefix + "cuda"], self.device)

    def _truncate_log(self, step: int) -> None:
        """Drop log records written after the checkpoint, so a resumed run's log has no repeats; and a last
        line torn by a kill in the middle of writing it."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        atomic_write_text(self.log_path, "".join(kept))

    def _log(self, record: dict) -> None:
        if not distributed.is_main():
            return
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _lcenet_row_order(model: torch.nn.Module) -> torch.Tensor | None:
    return model.lcenet.row_labels if isinstance(model, LCENetWrapped) else None
