import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import tiny_config
from lcenet.config import LCENetSettings
from lcenet.io import load_tensors, save_tensors
from lcenet.pipeline import load_model, run_training
from lcenet.predict import Predictor
from lcenet.train import AVERAGE_PREFIX, BEST_FILE, CHECKPOINT_FILE


def weights(run_dir):
    tensors, _ = load_tensors(run_dir / CHECKPOINT_FILE)
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optimizer.", AVERAGE_PREFIX))}


def test_training_learns_and_writes_everything(tiny_data, tmp_path):
    summary = run_training(tiny_config(epochs=8, lr=2e-2), tiny_data, tmp_path / "run", cache_dir=tmp_path / "cache",
                           progress=False)
    run = tmp_path / "run"
    assert {p.name for p in (run / "model").iterdir()} == {"model.safetensors", "config.json", "tokenizer.json",
                                                           "labels.tsv"}
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("dev", "test"):
        for key in ("P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5"):
            assert 0.0 <= metrics[split][key] <= 1.0
    assert metrics["test"]["P@1"] > 0.5  # topics are given away by their words: a working model learns them
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert len(evals) == 8 and all("nDCG@5" in r["metrics"] for r in evals)
    assert any(r["event"] == "train" and "loss" in r for r in records)
    assert summary["best_step"] == max(evals, key=lambda r: r["metrics"]["nDCG@5"])["step"]


@pytest.mark.parametrize("shortlist, ema_decay", [(False, None), (True, None), (True, 0.9)])
def test_kill_and_resume_gives_identical_weights(tiny_data, tmp_path, shortlist, ema_decay):
    """Also in shortlist mode, whose label tables train with row-sparse gradients and RowAdam (and are stored in
    the clusters' row order), and with a weight average, which the checkpoint carries."""
    from lcenet.config import ShortlistSettings

    def config_with(**train):
        config = tiny_config(epochs=2, lcenet=True, keep_checkpoints=True, ema_decay=ema_decay, **train)
        config.shortlist = ShortlistSettings(cluster_size=2, top_clusters=4) if shortlist else None
        return config

    straight = tmp_path / "straight"
    run_training(config_with(), tiny_data, straight, cache_dir=tmp_path / "c", progress=False)

    # 1 epoch, then "kill" in the middle of epoch 2 (after a mid-epoch checkpoint), then resume.
    killed = tmp_path / "killed"
    config = config_with(checkpoint_every_steps=1)
    import lcenet.train as train_module

    original = train_module.Trainer.fit

    def fit_then_die(self, resume=False, on_step=None):
        def die(step):
            if step == 10:  # 8 steps per epoch: step 10 is inside epoch 2
                raise KeyboardInterrupt
        return original(self, resume=resume, on_step=die)

    train_module.Trainer.fit = fit_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(config, tiny_data, killed, cache_dir=tmp_path / "c", progress=False)
    finally:
        train_module.Trainer.fit = original
    assert not (killed / "model").exists()  # nothing half-written
    run_training(config, tiny_data, killed, resume=True, cache_dir=tmp_path / "c", progress=False)

    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    assert any(name.startswith(AVERAGE_PREFIX) for name in a) == (ema_decay is not None)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == sorted(set(steps))  # the resumed log has no repeated records
    resumed = json.loads((killed / "metrics.json").read_text())["resumed_at_steps"]
    assert resumed == [10] and json.loads((straight / "metrics.json").read_text())["resumed_at_steps"] == []


@pytest.mark.parametrize("change", ["another order", "no order (an older checkpoint)"])
def test_a_checkpoint_with_lcenets_tables_in_another_row_order_is_not_resumed(tiny_data, tmp_path, monkeypatch,
                                                                              change):
    """Adam's moments for LCENet's tables are stored in the tables' row order (cluster order after a shortlist):
    a checkpoint that holds them in another order is refused with one line, not resumed with other labels'
    moments."""
    import lcenet.train as train_module
    from lcenet.config import ShortlistSettings
    from lcenet.errors import UserError

    config = tiny_config(epochs=2, lcenet=True, checkpoint_every_steps=1)
    config.shortlist = ShortlistSettings(cluster_size=2, top_clusters=4)
    original = train_module.Trainer.fit

    def fit_then_die(self, resume=False, on_step=None):
        def die(step):
            if step == 3:
                raise KeyboardInterrupt
        return original(self, resume=resume, on_step=die)

    monkeypatch.setattr(train_module.Trainer, "fit", fit_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, tiny_data, tmp_path / "run", cache_dir=tmp_path / "c", progress=False)
    monkeypatch.setattr(train_module.Trainer, "fit", original)
    checkpoint = tmp_path / "run" / CHECKPOINT_FILE
    tensors, metadata = load_tensors(checkpoint)
    rows = tensors.pop("layout.lcenet_row_labels")
    if change == "another order":
        tensors["layout.lcenet_row_labels"] = rows.flip(0)
    save_tensors(checkpoint, tensors, metadata)
    with pytest.raises(UserError, match="another row order"):
        run_training(config, tiny_data, tmp_path / "run", resume=True, cache_dir=tmp_path / "c", progress=False)


@pytest.mark.parametrize("epoch_end", [1, 2])
def test_a_kill_just_before_an_epoch_end_checkpoint_resumes_identically(tiny_data, tmp_path, epoch_end):
    """Killed after the epoch's last step and dev evaluation but before its checkpoint: the resumed run must not
    repeat the evaluation in the log, nor skip it (and the epoch count) at the end of the run."""
    config = tiny_config(epochs=2, lcenet=True, checkpoint_every_steps=1, log_every_steps=3, keep_checkpoints=True)
    straight = tmp_path / "straight"
    run_training(config, tiny_data, straight, cache_dir=tmp_path / "c", progress=False)
    import lcenet.train as train_module

    original = train_module.Trainer._save_checkpoint

    def die_at_epoch_end(self):
        if self.state["epoch"] == epoch_end and self.state["batch_in_epoch"] == 0:
            raise KeyboardInterrupt
        original(self)

    killed = tmp_path / "killed"
    train_module.Trainer._save_checkpoint = die_at_epoch_end
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(config, tiny_data, killed, cache_dir=tmp_path / "c", progress=False)
    finally:
        train_module.Trainer._save_checkpoint = original
    run_training(config, tiny_data, killed, resume=True, cache_dir=tmp_path / "c", progress=False)

    def log(run):
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                for line in (run / "log.jsonl").read_text().splitlines()]

    assert log(killed) == log(straight)
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (straight, killed))
    assert (a["epochs_completed"], a["best_step"], a["test"]) == (b["epochs_completed"], b["best_step"], b["test"])
    assert all(torch.equal(x, y) for x, y in zip(weights(straight).values(), weights(killed).values()))


def test_an_unfinished_run_is_not_overwritten_without_resume(tiny_data, tmp_path):
    from lcenet.errors import UserError

    run = tmp_path / "run"
    config = tiny_config(epochs=2, keep_checkpoints=True)
    run_training(config, tiny_data, run, cache_dir=tmp_path / "c", progress=False)
    (run / "metrics.json").unlink()  # as a kill before the end leaves it
    with pytest.raises(UserError, match="--resume"):
        run_training(config, tiny_data, run, cache_dir=tmp_path / "c", progress=False)


def test_a_finished_run_drops_its_checkpoints_and_is_not_overwritten(tiny_data, tmp_path):
    from lcenet.errors import UserError

    run = tmp_path / "run"
    summary = run_training(tiny_config(epochs=1), tiny_data, run, cache_dir=tmp_path / "c", progress=False)
    assert not (run / CHECKPOINT_FILE).exists() and not (run / BEST_FILE).exists()
    assert (run / "model" / "model.safetensors").exists()
    with pytest.raises(UserError, match="finished run"):
        run_training(tiny_config(epochs=1), tiny_data, run, cache_dir=tmp_path / "c", progress=False)
    # --resume of a finished run (a kill after metrics.json, before the clean-up) returns its summary
    save_tensors(run / CHECKPOINT_FILE, {"x": torch.zeros(1)})
    assert run_training(tiny_config(epochs=1), tiny_data, run, resume=True, cache_dir=tmp_path / "c",
                        progress=False) == summary
    assert not (run / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize("lcenet", [False, True])
def test_save_load_gives_identical_predictions(tiny_data, tmp_path, lcenet):
    run = tmp_path / "run"
    run_training(tiny_config(epochs=1, lcenet=lcenet), tiny_data, run, cache_dir=tmp_path / "c", progress=False)
    loaded = load_model(run / "model", device="cpu")
    texts = ["milk cheese cow", "fishing quota sea tax", "nothing known here", ""]
    first = Predictor([loaded]).predict(texts, k=3)
    again = Predictor.load(run / "model", device="cpu").predict(texts, k=3)
    assert first == again
    assert all(len(r["labels"]) == 3 and r["scores"] == sorted(r["scores"], reverse=True) for r in first)
    # the same logits as the in-memory model that produced the checkpoint
    state, _ = load_tensors(run / "model" / "model.safetensors")
    assert all(torch.equal(state[k], v) for k, v in loaded.model.state_dict().items())


def test_aux_loss_supervises_the_base_logits(tiny_data, tmp_path):
    from lcenet.inference import SplitTensors, TokenInputs
    from lcenet.pipeline import build
    from lcenet.train import Trainer

    torch.manual_seed(0)
    config = tiny_config(lcenet=True)
    config.lcenet.aux_loss_weight = 0.5
    model = build(config.model, config.model_args, config.lcenet.kwargs(), num_labels=6, vocab_size=30)
    ids = np.random.default_rng(0).integers(1, 30, size=(8, 10))
    labels = sp.csr_matrix(np.eye(6, dtype=np.float32)[np.arange(8) % 6])
    split = SplitTensors(TokenInputs(ids, 0), labels)
    trainer = Trainer(model, config.train, split, split, 6, tmp_path / "aux", progress=False)
    model.eval()  # no dropout: the three forward passes must see the same network
    input_ids, mask = torch.from_numpy(ids), torch.from_numpy(ids != 0)
    targets = torch.from_numpy(labels.toarray())
    with_aux = trainer.loss((input_ids, mask), targets)
    model.lcenet.aux_loss_weight = 0.0
    without = trainer.loss((input_ids, mask), targets)
    base_loss = torch.nn.functional.binary_cross_entropy_with_logits(model.base(input_ids, mask), targets)
    assert torch.allclose(with_aux, without + 0.5 * base_loss, atol=1e-6)


def test_softmax_loss_is_the_mean_over_true_labels_of_their_negative_log_probability():
    from lcenet.output import PADDING_LOGIT
    from lcenet.train import label_loss

    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0]])
    targets = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]])  # the third document has no true label
    log_p = [row - torch.logsumexp(row, 0) for row in logits]
    expected = (-(log_p[0][0] + log_p[0][3]) / 2 - log_p[1][1] + 0) / 3
    assert torch.allclose(label_loss(logits, targets, "softmax"), expected)
    # Padded candidates take no probability and change nothing.
    padded = torch.cat([logits, torch.full((3, 2), PADDING_LOGIT)], 1)
    assert torch.allclose(label_loss(padded, torch.cat([targets, torch.zeros(3, 2)], 1), "softmax"), expected)
    assert torch.allclose(label_loss(logits, targets),
                          torch.nn.functional.binary_cross_entropy_with_logits(logits, targets))


def test_a_weight_average_is_what_dev_scores_and_the_model_keeps(tiny_data, tmp_path):
    """Under train.ema_decay dev selects among averaged weights: the one evaluation (the end of the only epoch)
    scores and saves the average, not the weights the optimizer left, and the model directory holds it."""
    config = tiny_config(epochs=1, lr=2e-2, keep_checkpoints=True, ema_decay=0.8)
    run_training(config, tiny_data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    checkpoint, _ = load_tensors(tmp_path / "run" / CHECKPOINT_FILE)
    best, _ = load_tensors(tmp_path / "run" / BEST_FILE)
    saved, _ = load_tensors(tmp_path / "run" / "model" / "model.safetensors")
    averaged = {k[len(AVERAGE_PREFIX):]: v for k, v in checkpoint.items() if k.startswith(AVERAGE_PREFIX)}
    assert averaged and averaged.keys() <= best.keys()
    for name, average in averaged.items():
        assert torch.equal(best[name], average), name
        assert torch.equal(saved[name], average), name
    trained = {k[len("model."):]: v for k, v in checkpoint.items() if k.startswith("model.")}
    assert any(not torch.equal(trained[name], average) for name, average in averaged.items())


def test_resuming_with_a_weight_average_needs_a_checkpoint_that_has_one(tiny_data, tmp_path):
    from lcenet.errors import UserError

    run = tmp_path / "run"
    run_training(tiny_config(epochs=1, keep_checkpoints=True), tiny_data, run, cache_dir=tmp_path / "c",
                 progress=False)
    (run / "metrics.json").unlink()  # an unfinished run: its checkpoint is resumed
    with pytest.raises(UserError, match="train.ema_decay is set but the checkpoint has no average"):
        run_training(tiny_config(epochs=2, keep_checkpoints=True, ema_decay=0.9), tiny_data, run, resume=True,
                     cache_dir=tmp_path / "c", progress=False)


def test_softmax_loss_trains_and_an_unknown_loss_is_refused(tiny_data, tmp_path):
    from lcenet.errors import UserError

    config = tiny_config(epochs=8, lr=2e-2)
    config.train.loss = "softmax"
    run_training(config, tiny_data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["P@1"] > 0.5
    config.train.loss = "hinge"
    with pytest.raises(UserError, match="train.loss must be one of bce, softmax"):
        run_training(config, tiny_data, tmp_path / "bad", cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.parametrize("scores, reason, expected", [
    ([0.1, 0.2, 0.3], "patience", True),  # early stopping fired
    ([0.1, 0.3, 0.3005, 0.3008], "epochs", True),  # the last two evaluations gained < 0.1 points
    ([0.1, 0.3, 0.3005, 0.302], "epochs", False),  # still improving by 0.15 points
    ([0.1, 0.2], "max_seconds", False),  # too few evaluations to tell
])
def test_convergence_rule(scores, reason, expected):
    from lcenet.stopping import converged

    assert converged(scores, reason) is expected


def test_runs_record_why_they_stopped_and_where_they_came_from(tiny_data, tmp_path):
    patient = run_training(tiny_config(epochs=30, lr=5e-2, patience=1), tiny_data, tmp_path / "p",
                           cache_dir=tmp_path / "c", progress=False)
    assert patient["stop_reason"] == "patience" and patient["converged"] is True and patient["steps"] < 30 * 8
    capped = run_training(tiny_config(epochs=3, max_steps=5), tiny_data, tmp_path / "s", cache_dir=tmp_path / "c",
                          progress=False)
    assert capped["stop_reason"] == "max_steps" and capped["converged"] is False  # one evaluation only
    full = run_training(tiny_config(epochs=1), tiny_data, tmp_path / "e", cache_dir=tmp_path / "c", progress=False)
    assert full["stop_reason"] == "epochs"
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["torch_version"] == torch.__version__ and metrics["date"].startswith("20")
    assert metrics["git_commit"] is None or len(metrics["git_commit"]) == 40
    assert metrics["data_restrictions"] == {"max_docs": None, "sample_seed": None}


@pytest.mark.parametrize("model", ["xmlcnn", "attentionxml", "bert"])
def test_capacity_control_adds_as_many_parameters_as_lcenet(model, tiny_bert):
    from lcenet.lcenet import LCENet
    from lcenet.pipeline import build, effective_model_args

    config = tiny_config(model)
    if model == "bert":
        config.model_args = {"pretrained": str(tiny_bert), "num_cls_layers": 2}
    num_labels, vocab = 40, 50
    base = build(config.model, config.model_args, None, num_labels, vocab)
    config.capacity_control = LCENetSettings(rank=30, blocks=2)
    wide = build(config.model, effective_model_args(config, num_labels, vocab), None, num_labels, vocab)
    extra = LCENet(num_labels, rank=30, blocks=2).num_parameters()
    added = sum(p.numel() for p in wide.parameters()) - sum(p.numel() for p in base.parameters())
    # within one hidden unit: each costs (its inputs + 1 + L) for xmlcnn/bert, (inputs + 2) for attentionxml
    per_unit = {"xmlcnn": 2 * 8 * 2 + 1 + num_labels, "attentionxml": 8 + 2, "bert": 32 + 1 + num_labels}[model]
    assert abs(added - extra) <= per_unit


def test_resume_drops_a_log_line_torn_by_a_kill(tmp_path):
    from lcenet.inference import SplitTensors, TokenInputs
    from lcenet.pipeline import build
    from lcenet.train import Trainer

    config = tiny_config()
    model = build(config.model, config.model_args, None, num_labels=2, vocab_size=10)
    split = SplitTensors(TokenInputs(np.ones((2, 4), dtype=np.int64), 0), sp.csr_matrix(np.eye(2, dtype=np.float32)))
    trainer = Trainer(model, config.train, split, split, 2, tmp_path, progress=False)
    records = [{"event": "train", "step": 1}, {"event": "train", "step": 2}, {"event": "eval", "step": 3}]
    trainer.log_path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "tr')
    trainer._truncate_log(2)  # as a resume from the step-2 checkpoint does
    assert trainer.log_path.read_text() == "".join(json.dumps(r) + "\n" for r in records[:2])
    trainer.log_path.write_text(json.dumps(records[0]))  # complete, but killed before its newline
    trainer._truncate_log(2)
    trainer._log(records[1])
    assert [json.loads(line) for line in trainer.log_path.read_text().splitlines()] == records[:2]


def test_bf16_cpu_trains_in_bf16_on_the_cpu_only_when_asked(tiny_data, tmp_path):
    from lcenet.inference import autocast

    cpu = torch.device("cpu")
    with autocast(cpu, True):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32  # bf16 alone: CUDA only
    with autocast(cpu, True, on_cpu=True):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    fp32 = run_training(tiny_config(epochs=2), tiny_data, tmp_path / "a", cache_dir=tmp_path / "c", progress=False)
    bf16 = run_training(tiny_config(epochs=2, bf16_cpu=True), tiny_data, tmp_path / "b", cache_dir=tmp_path / "c",
                        progress=False)
    assert bf16["config"]["train"]["bf16_cpu"] is True
    first, second = (load_tensors(run / "model" / "model.safetensors")[0] for run in (tmp_path / "a", tmp_path / "b"))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the steps really ran in bf16
    assert 0 <= bf16["test"]["P@1"] <= 1 and 0 <= fp32["test"]["P@1"] <= 1


def test_compiled_training_step_matches_eager(tmp_path, monkeypatch):
    """``train.compile`` changes how the step runs, not what it computes: the same loss and parameters after
    two optimizer steps as the eager trainer (LCENet with its auxiliary loss on, so both model calls compile).
    The graphs are captured (TorchDynamo + AOTAutograd) but run without Inductor's code generation, which would
    take most of a minute here; benchmarks/step_time.py --compile runs the real thing."""
    compile_graphs, modes = torch.compile, []

    def capture(module, mode):
        modes.append(mode)
        return compile_graphs(module, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", capture)
    from lcenet.inference import SplitTensors, TokenInputs
    from lcenet.pipeline import build
    from lcenet.train import Trainer

    ids = np.random.default_rng(0).integers(1, 30, size=(16, 10))
    labels = sp.csr_matrix(np.eye(6, dtype=np.float32)[np.arange(16) % 6])
    split = SplitTensors(TokenInputs(ids, 0), labels)
    runs = {}
    for mode in (None, "default"):
        config = tiny_config(lcenet=True, compile=mode, grad_clip=1.0)
        config.lcenet.aux_loss_weight = 0.5
        torch.manual_seed(0)
        model = build(config.model, config.model_args, config.lcenet.kwargs(), num_labels=6, vocab_size=30).eval()
        trainer = Trainer(model, config.train, split, split, 6, tmp_path / str(mode), progress=False)
        trainer.start_epoch(np.arange(16))
        losses = [float(trainer.optimizer_step(start, start + 8)) for start in (0, 8)]
        runs[mode] = losses, torch.cat([p.detach().flatten() for p in model.parameters()])
    assert modes == ["default"]
    assert runs["default"][0] == pytest.approx(runs[None][0], rel=1e-5)
    assert torch.allclose(runs["default"][1], runs[None][1], atol=1e-5)
