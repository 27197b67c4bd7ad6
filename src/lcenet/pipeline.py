"""The straight path: data -> tokens -> model (-> LCENet) -> trainer -> saved model directory + metrics.

``run_training`` is what ``lcenet train`` calls; ``load_model`` is what ``predict`` and ``evaluate`` call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from lcenet import data, distributed, metrics, text
from lcenet.candidates import LabelClusters
from lcenet.config import RunConfig, TrainSettings
from lcenet.encoders import Encoder, PairedEncoder, TfidfEncoder, TokenEncoder, load_encoder
from lcenet.ensemble import DEFAULT_COMBINE, check_combine, check_same_labels
from lcenet.errors import UserError
from lcenet.features import fit_cached
from lcenet.inference import SplitTensors, ensemble_top_k, evaluate_model, predict_top_k
from lcenet.io import atomic_write_json, exclusive_run_directory, read_model_config, read_model_dir, write_model_dir
from lcenet.lcenet import LCENet, LCENetWrapped, cooccurrence_init_, with_lcenet
from lcenet.models import XMTCModel, build_model, model_class
from lcenet.provenance import provenance
from lcenet.shortlist import ShortlistModel, build_clusters, shortlist_args, shortlist_recall
from lcenet.train import BEST_FILE, CHECKPOINT_FILE, Trainer, resolve_device

log = logging.getLogger("lcenet")

FEATURE_CACHE = "frozen_features"  # under the cache directory: lcenet.models.feature_store's stores


def build(model: str, model_args: dict, lcenet: dict | None, num_labels: int, vocab_size: int,
          shortlist: dict | None = None, clusters: LabelClusters | None = None) -> torch.nn.Module:
    """The base model from the registry, in shortlist mode when ``shortlist`` (ShortlistModel's arguments, as
    its ``describe`` gives them) is set, then wrapped with LCENet when ``lcenet`` (its keyword arguments) is set.
    ``clusters``: the shortlist's label clusters, for a new model (a saved model's arrive with its weights:
    load them, then call :func:`arrange_lcenet_rows`)."""
    network = build_model(model, num_labels, vocab_size, **model_args)
    if shortlist is not None:
        network = ShortlistModel(network, num_labels, **shortlist)
    if lcenet is not None:
        network = with_lcenet(network, num_labels, **lcenet)
    if clusters is not None:
        shortlist_of(network).use_clusters(clusters)
        arrange_lcenet_rows(network)
    return network


def effective_model_args(config: RunConfig, num_labels: int, vocab_size: int) -> dict:
    """The model arguments to build with: the config's, widened by the family's ``widened_args`` to hold as
    many extra parameters as LCENet with ``capacity_control``'s settings would add (an equal-parameter base)."""
    if config.capacity_control is None:
        return dict(config.model_args)
    with torch.device("meta"):  # count parameters without allocating them
        extra = LCENet(num_labels, **config.capacity_control.kwargs()).num_parameters()
    base = build_model(config.model, num_labels, vocab_size, **config.model_args)
    return {**config.model_args, **base.widened_args(extra)}


def base_of(model: torch.nn.Module) -> XMTCModel:
    """The family model inside LCENet and shortlist wrappers."""
    while not isinstance(model, XMTCModel):
        model = model.base
    return model


def shortlist_of(model: torch.nn.Module) -> ShortlistModel | None:
    return next((module for module in model.modules() if isinstance(module, ShortlistModel)), None)


def arrange_lcenet_rows(model: torch.nn.Module) -> None:
    """LCENet after a shortlist stores its tables in the shortlist's cluster order (once the clusters are loaded),
    so that on the CPU each cluster's rows are a slice (lcenet.cluster_products); model files keep label order."""
    shortlist = shortlist_of(model)
    if shortlist is not None and isinstance(model, LCENetWrapped) and model.lcenet.config["bottleneck"]:
        model.lcenet.arrange_rows(shortlist.members[shortlist.members >= 0].cpu())


def train_tfidf(config: RunConfig, train_texts: Sequence[str], cache_dir: Path, source_hash: str) -> TfidfEncoder:
    """TF-IDF fitted on the train texts with the data settings (cached): the sparse family's inputs."""
    settings = config.data
    tfidf = {"ngram_max": settings.tfidf_ngram_max, "min_df": settings.tfidf_min_df,
             "max_features": settings.tfidf_max_features, "lowercase": settings.lowercase,
             "fit_max_docs": settings.tfidf_fit_max_docs}
    key = text.cache_key(source_hash, "tfidf", *(f"{k}={v}" for k, v in sorted(tfidf.items())))
    return TfidfEncoder(fit_cached(train_texts, cache_dir, key, **tfidf))


def make_encoder(config: RunConfig, train_texts: Sequence[str], cache_dir: Path, source_hash: str) -> Encoder:
    """The family's encoder: TF-IDF features or a word tokenizer fitted on train (cached), or a pretrained
    checkpoint's tokenizer; both a tokenizer and TF-IDF for a family that reads both."""
    cls = model_class(config.model)
    settings = config.data
    if cls.input_kind == "tfidf":
        return train_tfidf(config, train_texts, cache_dir, source_hash)
    if cls.uses_pretrained_tokenizer:
        pretrained = config.model_args.get("pretrained")
        if not pretrained:
            raise UserError(f"model {config.model!r} needs model_args.pretrained (a local checkpoint directory)")
        tokenizer = text.load_tokenizer(cls.tokenizer_file(pretrained))
    else:
        key = text.cache_key(source_hash, "word", str(settings.vocab_size), str(settings.min_frequency),
                             str(settings.lowercase))
        tokenizer = text.word_tokenizer_cached(train_texts, cache_dir, key, vocab_size=settings.vocab_size,
                                               min_frequency=settings.min_frequency, lowercase=settings.lowercase)
    tokens = TokenEncoder(tokenizer, settings.max_length)
    if cls.input_kind == "tokens+tfidf":
        return PairedEncoder(tokens, train_tfidf(config, train_texts, cache_dir, source_hash))
    return tokens


def inverse_propensity_for(truth_columns: int, label_frequency: np.ndarray, num_train_docs: int,
                           a: float, b: float) -> np.ndarray:
    """Inverse propensities for every truth column; labels unseen in train have frequency 0."""
    frequency = np.zeros(truth_columns, dtype=np.float64)
    frequency[:len(label_frequency)] = label_frequency
    return metrics.inverse_propensity(frequency, num_train_docs, a, b)


def prepare(config: RunConfig, data_dir: str | Path, cache_dir: Path, init_from: LoadedModel | None = None
            ) -> tuple[data.Dataset, Encoder, dict[str, SplitTensors]]:
    """Read the data set and encode every split (both cached on disk, keyed by data + settings), with the
    encoder of the model to start from (``init_from``, whose labels the data must have) if there is one."""
    dataset = data.load_dataset(data_dir, dev_fraction=config.data.dev_fraction, dev_seed=config.data.dev_seed,
                                max_docs=config.data.max_docs, sample_seed=config.data.sample_seed)
    if init_from is None:
        encoder = make_encoder(config, dataset.train.texts, cache_dir, dataset.source_hash)
    else:
        check_same_labels([init_from.label_names, dataset.label_names], [config.train.init_from, str(data_dir)],
                          "train.init_from needs a model trained on the same labels")
        encoder = load_encoder(model_class(config.model).input_kind, Path(config.train.init_from),
                               {**init_from.config, "max_length": config.data.max_length})
    splits = {name: SplitTensors(encoder.encode_cached(split.texts, cache_dir, dataset.source_hash, name),
                                 split.labels)
              for name, split in (("train", dataset.train), ("dev", dataset.dev), ("test", dataset.test))}
    return dataset, encoder, splits


def run_training(config: RunConfig, data_dir: str | Path, output: str | Path, resume: bool = False,
                 cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train, select on dev, evaluate on dev and test; write ``output/{model/, log.jsonl, metrics.json}``.

    Under torchrun every process calls this: all train (:mod:`lcenet.distributed`), rank 0 alone evaluates
    and writes (holding the directory's lock: :func:`lcenet.io.exclusive_run_directory`), and every rank
    returns rank 0's summary."""
    with distributed.process_group(config.train.device):
        with exclusive_run_directory(output) if distributed.is_main() else contextlib.nullcontext():
            return _run_training(config, data_dir, output, resume, cache_dir, progress)


def _run_training(config: RunConfig, data_dir: str | Path, output: str | Path, resume: bool,
                  cache_dir: str | Path | None, progress: bool) -> dict:
    output = Path(output)
    cache_dir = Path(cache_dir) if cache_dir else text.default_cache_dir()
    started = time.perf_counter()
    origin = provenance()  # the code that trains, even if the checkout changes before the run ends
    if (output / "metrics.json").exists():
        if not resume:
            raise UserError(f"{output}: holds a finished run (metrics.json); choose a new --output")
        # A kill can land between metrics.json and the clean-up below: the run is done, so finish only that.
        log.info("%s: the run has finished; nothing to resume", output)
        if distributed.is_main() and not config.train.keep_checkpoints:
            remove_checkpoints(output)
        return json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    if not resume and (output / CHECKPOINT_FILE).exists():
        raise UserError(f"{output}: holds an unfinished run; pass --resume to continue it or choose a new --output")
    if resume:
        remove_partial_writes(output)
    init_from = load_init_from(config) if config.train.init_from else None
    with distributed.main_first():  # the others read the tokenization cache rank 0 filled
        dataset, encoder, splits = prepare(config, data_dir, cache_dir, init_from)
    preprocess_seconds = time.perf_counter() - started

    num_labels = dataset.num_labels
    model_args = effective_model_args(config, num_labels, encoder.vocab_size)
    clusters = None
    if config.shortlist is not None:  # label clusters from TF-IDF label centroids; the same for every seed
        # The train inputs of a family that reads TF-IDF hold these features already; others fit them (cached).
        inputs = splits["train"].inputs
        tfidf = (inputs if isinstance(encoder, TfidfEncoder) else inputs.features if isinstance(encoder, PairedEncoder)
                 else train_tfidf(config, dataset.train.texts, cache_dir, dataset.source_hash).encode_cached(
                     dataset.train.texts, cache_dir, dataset.source_hash, "train"))
        clusters = build_clusters(splits["train"].labels[:, :num_labels], tfidf.features, config.shortlist)
    # Row-sparse gradients for the label tables in shortlist mode; DDP all-reduces dense gradients only, and a
    # full-rank LCENet block (bottleneck false) has no label rows to gather.
    sparse = clusters is not None and distributed.world_size() == 1
    lcenet_args = None if config.lcenet is None else config.lcenet.kwargs()
    if lcenet_args is not None and sparse and lcenet_args["bottleneck"]:
        lcenet_args["sparse_gradients"] = True
    torch.manual_seed(config.train.seed)  # initial weights depend on the seed alone
    model = build(config.model, model_args, lcenet_args, num_labels, encoder.vocab_size,
                  shortlist_args(clusters, config.shortlist, sparse) if clusters is not None else None, clusters)
    if config.lcenet is not None and model.lcenet.config["init"] == "cooccurrence":
        cooccurrence_init_(model.lcenet, splits["train"].labels[:, :num_labels], seed=config.train.seed)
    embedding_stats = (load_embeddings_into(base_of(model), config.train.embeddings, encoder)
                       if config.train.embeddings and init_from is None else None)
    warm = None if init_from is None else {"model_dir": config.train.init_from,
                                           **warm_start(model, init_from.model, config.train.init_from)}
    inv_propensity = inverse_propensity_for(dataset.num_truth_columns, dataset.label_frequency,
                                            len(dataset.train), config.train.propensity_a, config.train.propensity_b)
    trainer = Trainer(model, config.train, splits["train"], splits["dev"], num_labels, output,
                      inv_propensity=inv_propensity, progress=progress)
    with base_of(model).feature_cache(cache_dir / FEATURE_CACHE):
        state = trainer.fit(resume=resume)
        if not distributed.is_main():
            return distributed.broadcast_object(None)
        trainer.load_best()

        results = {"dev": evaluate_model(trainer.model, splits["dev"], trainer.device, inv_propensity,
                                         config.train.eval_batch_size, config.train.bf16)}
        top, _ = predict_top_k(trainer.model, splits["test"].inputs, max(metrics.DEFAULT_KS), trainer.device,
                               config.train.eval_batch_size, config.train.bf16)
    results["test"] = metrics.evaluate(top, splits["test"].labels, inv_propensity=inv_propensity)
    atomic_write_json(output / "test_documents.json", document_hits(top, splits["test"].labels))
    base = base_of(model)
    shortlist = shortlist_of(model)
    saved_config = {
        "model": config.model,
        "model_args": base.saved_args(),
        "lcenet": model.lcenet.config if config.lcenet is not None else None,
        "shortlist": shortlist.describe() if shortlist is not None else None,
        "num_labels": num_labels,
        "vocab_size": encoder.vocab_size,
        "max_length": config.data.max_length,
        "num_train_docs": len(dataset.train),
        "run_config": config.to_dict(),
    }
    write_model_dir(output / "model", model, saved_config, encoder.save, dataset.label_names,
                    dataset.label_frequency)
    summary = {
        "dev": results["dev"], "test": results["test"],
        "best_step": state["best_step"], "steps": state["step"], "epochs_completed": state["epoch"],
        "stopped_early": state["stopped_early"], "stopped_by_time": state["stopped_by_time"],
        "stop_reason": state["stop_reason"], "converged": state["converged"],
        # What the data was cut to: the whole split unless data.max_docs says otherwise.
        "data_restrictions": {"max_docs": config.data.max_docs, "sample_seed": config.data.sample_seed},
        "train_seconds": state["train_seconds"],
        "preprocess_seconds": preprocess_seconds, "wall_seconds": time.perf_counter() - started,  # this process
        "resumed_at_steps": state.get("resumed_at_steps", []),
        "device": str(trainer.device), "device_name": device_name(trainer.device),
        "processes": trainer.world_size,  # torchrun processes (DDP ranks); rank 0's device is the one named
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_args": model_args,
        "lcenet_parameters": model.lcenet.num_parameters() if config.lcenet is not None else 0,
        "lcenet_settings": model.lcenet.config if config.lcenet is not None else None,  # as built (rank capped)
        "num_labels": num_labels, "unseen_test_labels": len(dataset.unseen_labels),
        # The candidates' recall of the true labels at inference (no true clusters added), dev and test.
        "shortlist": None if shortlist is None else {
            **shortlist.describe(), "candidates_per_document": shortlist.top_clusters * shortlist.members.shape[1],
            **{f"{name}_recall": shortlist_recall(trainer.model, splits[name].inputs, splits[name].labels,
                                                  trainer.device, config.train.eval_batch_size)
               for name in ("dev", "test")}},
        "word_vectors": embedding_stats,
        "init_from": warm,  # the model directory the weights started from, and which parts came from it
        "train_docs": len(dataset.train), "dev_docs": len(dataset.dev), "test_docs": len(dataset.test),
        "config": config.to_dict(),
        **origin,
    }
    atomic_write_json(output / "metrics.json", summary)
    if not config.train.keep_checkpoints:
        remove_checkpoints(output)
    return distributed.broadcast_object(summary)


def remove_checkpoints(run_dir: Path) -> None:
    """A finished run's resume checkpoint and best dev weights: model/ holds the selected weights."""
    for name in (CHECKPOINT_FILE, BEST_FILE):
        (run_dir / name).unlink(missing_ok=True)


def remove_partial_writes(run_dir: Path) -> None:
    """Delete what writes cut short by a kill left in ``run_dir``: atomic-write temp files (``.NAME.*.tmp``),
    the safetensors library's own temp files (``.tmpXXXXXX``) and model directory temp folders (``.model.*``).
    Nothing reads them, but a run killed often (preemptible machines) would otherwise fill the disk with
    checkpoint-sized files. The directory's lock (run_training) keeps any other process from training here, so
    none of them is still being written."""
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        name = path.name
        if name.startswith(".model.") and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif (name.startswith(".") and name.endswith(".tmp")) or (name.startswith(".tmp") and path.is_file()):
            path.unlink(missing_ok=True)


def document_hits(top: np.ndarray, truth: sp.csr_matrix) -> dict:
    """Per test document: a bitmask of which top-k ranks hit (bit i = rank i+1) and the number of true
    labels. Enough to recompute P@k, nDCG@k and R@k per document for paired significance tests."""
    hits = metrics.top_k_hits(top, truth)
    masks = (hits.astype(np.int64) << np.arange(hits.shape[1])).sum(axis=1)
    return {"k": int(hits.shape[1]), "hits": masks.tolist(), "num_true": np.diff(truth.indptr).tolist()}


def load_embeddings_into(model: XMTCModel, source: str, encoder: Encoder) -> dict:
    from lcenet.embeddings import load_word_vectors

    embedding = model.word_embedding()
    if embedding is None or not isinstance(encoder, TokenEncoder):
        raise UserError(f"train.embeddings: model {model.registry_name!r} has no word embedding layer")
    vectors, stats = load_word_vectors(source, encoder.tokenizer.get_vocab())
    if vectors.shape[1] != embedding.weight.shape[1]:
        raise UserError(f"{source}: vectors have dimension {vectors.shape[1]} but the model's embedding_dim is "
                        f"{embedding.weight.shape[1]}; set model_args.embedding_dim={vectors.shape[1]}")
    with torch.no_grad():
        embedding.weight.copy_(torch.from_numpy(vectors))
    return stats


def load_init_from(config: RunConfig) -> LoadedModel:
    """The model directory ``train.init_from`` names, on the CPU, checked to be of the run's family."""
    source = load_model(config.train.init_from, "cpu")
    if source.config["model"] != config.model:
        raise UserError(f"train.init_from {config.train.init_from}: a {source.config['model']} model, but this run "
                        f"trains {config.model}; start from a model of the same family")
    return source


def saved_run_config(model_dir: str | Path) -> RunConfig:
    """The settings a model directory was trained with (its config.json's ``run_config``; for a model saved
    before that was kept, its family and model arguments), to train on from it with the same ones."""
    saved = read_model_config(model_dir)
    raw = saved.get("run_config") or {"model": saved["model"], "model_args": saved.get("model_args") or {}}
    return RunConfig.from_dict(raw, source=str(Path(model_dir) / "config.json"))


def model_parts(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, dict[str, torch.Tensor]] | None]:
    """The parts a warm start copies one by one, each as (module, its own tensors), None where ``model`` has no
    such part: the family model, a shortlist's cluster scorer and clusters, the LCENet head."""
    shortlist = shortlist_of(model)
    return {
        "family model": (base_of(model), base_of(model).state_dict()),
        "shortlist": None if shortlist is None else (shortlist, {
            key: value for key, value in shortlist.state_dict().items() if not key.startswith("base.")}),
        "LCENet": (model.lcenet, model.lcenet.state_dict()) if isinstance(model, LCENetWrapped) else None,
    }


def warm_start(model: torch.nn.Module, source: torch.nn.Module, source_name: str) -> dict[str, list[str]]:
    """Copy ``source``'s weights into ``model`` for every part both have (see :func:`model_parts`); a part only
    ``model`` has keeps its initial weights (an LCENet head with identity init then starts by giving the source's
    predictions unchanged). A part whose tensors differ in name or shape is refused: the settings that size it
    (model_args, shortlist, lcenet, capacity_control) must be the source's."""
    loaded, fresh = [], []
    source_parts = model_parts(source)
    for part, target in model_parts(model).items():
        if target is None:
            if source_parts[part] is not None:
                log.warning("train.init_from %s: its %s is not part of this model (not used)", source_name, part)
            continue
        if source_parts[part] is None:
            fresh.append(part)
            continue
        module, expected = target
        given = source_parts[part][1]
        mismatch = next((f"{key}: {tuple(given[key].shape) if key in given else 'missing'} instead of "
                         f"{tuple(tensor.shape)}" for key, tensor in expected.items()
                         if key not in given or given[key].shape != tensor.shape), None)
        if mismatch or set(given) != set(expected):
            raise UserError(f"train.init_from {source_name}: its {part} does not fit this run's "
                            f"({mismatch or 'different tensors'}); use the settings it was trained with")
        module.load_state_dict(given, strict=part != "shortlist")  # the shortlist's own tensors, not its base's
        loaded.append(part)
    if "shortlist" in loaded:  # the source's clusters, which LCENet's rows follow
        arrange_lcenet_rows(model)
    log.info("train.init_from %s: loaded %s%s", source_name, ", ".join(loaded) or "nothing",
             f"; initialised afresh: {', '.join(fresh)}" if fresh else "")
    return {"loaded": loaded, "fresh": fresh}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()} ({threads} thread{'' if threads == 1 else 's'})"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    encoder: Encoder
    label_names: list[str]
    label_frequency: np.ndarray
    config: dict
    device: torch.device

    @property
    def trained(self) -> dict:
        """The training settings the model was trained with (defaults for keys older models lack)."""
        return {**asdict(TrainSettings()), **(self.config.get("run_config") or {}).get("train", {})}

    @property
    def bf16(self) -> bool:
        return bool(self.trained["bf16"])


def load_model(model_dir: str | Path, device: str = "auto") -> LoadedModel:
    config, state, label_names, label_frequency = read_model_dir(model_dir)
    model = build(config["model"], config["model_args"], config.get("lcenet"), config["num_labels"],
                  config["vocab_size"], config.get("shortlist"))
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        weights = Path(model_dir) / "model.safetensors"
        raise UserError(f"{weights}: weights do not match config.json ({error})") from None
    arrange_lcenet_rows(model)
    resolved = resolve_device(device)
    model.to(resolved).eval()
    encoder = load_encoder(model_class(config["model"]).input_kind, Path(model_dir), config)
    return LoadedModel(model, encoder, label_names, label_frequency, config, resolved)


def load_models(model_dirs: list[str | Path], device: str = "auto") -> list[LoadedModel]:
    """One model, or the members of an ensemble: any families, but the same labels in the same order."""
    if not model_dirs:
        raise UserError("no model directory given")
    members = [load_model(directory, device) for directory in model_dirs]
    check_same_labels([m.label_names for m in members], [str(d) for d in model_dirs])
    return members


def evaluate_directory(model_dirs: str | Path | list[str | Path], data_dir: str | Path, split: str = "test",
                       device: str = "auto", batch_size: int | None = None, propensity_a: float | None = None,
                       propensity_b: float | None = None, cache_dir: str | Path | None = None,
                       combine: str = DEFAULT_COMBINE) -> dict:
    """Score a saved model (or the ensemble of several, combined by ``combine``: lcenet.ensemble) on one split of
    a data set, in its own label space.

    Propensity constants, eval batch size and bf16 default to those the (first) model was trained with (its
    config.json's run_config), so PSP@k matches the run's metrics.json; the arguments override them."""
    check_combine(combine)
    members = load_models([model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs), device)
    first = members[0]
    texts, truth, inv_propensity = labelled_split(first, data_dir, split, propensity_a, propensity_b)
    with feature_caches(members, cache_dir or text.default_cache_dir()):
        top, _ = ensemble_top_k([m.model for m in members], [m.encoder.encode(texts) for m in members],
                                max(metrics.DEFAULT_KS), first.device,
                                batch_size or first.trained["eval_batch_size"], first.trained["bf16"],
                                combine=combine)
    return metrics.evaluate(top, truth, inv_propensity=inv_propensity)


@contextlib.contextmanager
def feature_caches(members: list[LoadedModel], cache_dir: Path) -> Iterator[None]:
    """Every member's ``feature_cache`` under ``cache_dir`` (what frozen encoders compute, kept across runs)."""
    with contextlib.ExitStack() as stack:
        for member in members:
            stack.enter_context(base_of(member.model).feature_cache(Path(cache_dir) / FEATURE_CACHE))
        yield


def labelled_split(model: LoadedModel, data_dir: str | Path, split: str, propensity_a: float | None = None,
                   propensity_b: float | None = None) -> tuple[list[str], sp.csr_matrix, np.ndarray]:
    """A split's texts, its truth in ``model``'s label space (labels the model does not know appended as extra
    columns: misses) and the inverse propensities of those columns (the constants ``model`` was trained with
    unless given)."""
    trained = model.trained
    propensity_a = trained["propensity_a"] if propensity_a is None else propensity_a
    propensity_b = trained["propensity_b"] if propensity_b is None else propensity_b
    label_index = {name: i for i, name in enumerate(model.label_names)}
    texts, label_lists = [], []
    for doc_text, labels in data.iter_split(data_dir, split):
        texts.append(doc_text)
        label_lists.append(labels)
    unseen = sorted({label for labels in label_lists for label in labels if label not in label_index})
    for label in unseen:
        label_index[label] = len(label_index)
    truth = data.labels_to_csr(label_lists, label_index, len(label_index))
    if unseen:
        log.warning("%s: %d labels unknown to the model (kept as misses)", split, len(unseen))
    inv_propensity = inverse_propensity_for(truth.shape[1], model.label_frequency, model.config["num_train_docs"],
                                            propensity_a, propensity_b)
    return texts, sp.csr_matrix(truth), inv_propensity
