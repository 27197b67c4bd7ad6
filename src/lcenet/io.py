"""Files that must never be half-written or unsafe: atomic writes, the pickle-free model directory.

A model directory holds exactly:
  model.safetensors   weights (safetensors; no pickle anywhere)
  config.json         architecture, LCENet settings, training settings, data settings, versions,
                      ``format_version`` and the sha256 of each other file (``files``)
  labels.tsv          one label per line (index order) with its training frequency: ``name<TAB>count``
and the files of the encoder that turns text into the model's inputs (:mod:`lcenet.encoders`):
  tokenizer.json      the HF `tokenizers` tokenizer that produced the ids (token families), or
  features.json + features_idf.safetensors   TF-IDF vocabulary and idf (the sparse family)

Format versions: 1 had no ``format_version`` key and no checksums (still read); 2 adds both, so a file
corrupted or edited after saving is refused instead of silently giving wrong predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from lcenet.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: runs there are not locked
    fcntl = None

MODEL_FILES = ("model.safetensors", "config.json", "labels.tsv")
CHECKSUMMED_FILES = ("model.safetensors", "labels.tsv")  # at least; config.json holds every other file's sha256
VERSION_1_FILES = ("tokenizer.json",)  # format 1 had token families only
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
FORMAT_VERSION = 2
SAFETENSORS_MAX_HEADER = 100 * 2**20  # the safetensors format's own limit on its JSON header
RUN_LOCK_FILE = ".lock"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def exclusive_run_directory(directory: str | Path) -> Iterator[None]:
    """Hold ``directory/.lock`` while a run trains there, so that a second process writing the same checkpoint and
    log (a grid launched twice, a resume while the first run still trains) is refused with one line instead.

    An OS file lock (flock), so the kernel releases it however the holder ends, SIGKILL included: a killed run
    leaves no stale lock to clear by hand. Creates the directory; if it created it and nothing else was written
    there when the block ends (e.g. the data failed to load), removes it again, so bad input leaves nothing."""
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RUN_LOCK_FILE
    handle = _lock(path) if fcntl is not None else None
    try:
        yield
    finally:
        if handle is not None:
            path.unlink(missing_ok=True)  # while still held: whoever locks next finds a new file (see _lock)
            handle.close()
        if created and not any(directory.iterdir()):
            directory.rmdir()


def _lock(path: Path):
    for _ in range(3):
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(f"{path.parent}: another lcenet process (pid {holder}) is training in this directory; "
                            "wait for it to end or stop it") from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()  # the holder released and removed this file between our open and lock: take the new one
    raise UserError(f"{path.parent}: could not lock the run directory (other processes keep taking it)")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            return {name: handle.get_tensor(name) for name in handle.keys()}, metadata
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path}: {_truncation(path) or 'not a valid safetensors file'} ({error})") from None


def _truncation(path: Path) -> str | None:
    """'truncated: ...' when the header is readable but the file ends before the tensor data it lists."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if header_size > size - 8:  # not even a whole header: cut inside it (it starts a JSON object), or garbage
                plausible = header_size < SAFETENSORS_MAX_HEADER and handle.read(1) == b"{"
                return f"truncated ({size} bytes, its header alone needs {8 + header_size})" if plausible else None
            header = json.loads(handle.read(header_size))
        needed = 8 + header_size + max((entry["data_offsets"][1] for name, entry in header.items()
                                        if name != "__metadata__"), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return None
    return f"truncated ({size} bytes, its header needs {needed})" if size < needed else None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    import lcenet
    return {"lcenet": lcenet.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "format": str(FORMAT_VERSION)}


def write_model_dir(directory: str | Path, model: torch.nn.Module, config: dict[str, Any],
                    write_encoder: Callable[[Path], None], label_names: list[str], label_frequency: np.ndarray) -> None:
    """Write all files (``write_encoder(folder)`` adds the encoder's) into a temp dir beside ``directory``,
    then swap it into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        write_encoder(tmp)
        atomic_write_text(tmp / "labels.tsv", "".join(
            f"{name}\t{int(count)}\n" for name, count in zip(label_names, label_frequency)))
        files = {path.name: sha256_file(path) for path in sorted(tmp.iterdir()) if path.name != "config.json"}
        atomic_write_json(tmp / "config.json", {**config, "format_version": FORMAT_VERSION, "files": files,
                                                "versions": versions()})
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """A model directory's config.json, checked to be an lcenet model config (its files are not checked: that
    is :func:`read_model_dir`'s work)."""
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        raise UserError(f"{config_path}: missing (not an lcenet model directory)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{config_path}: malformed JSON ({error})") from None
    if not isinstance(config, dict) or "model" not in config or "num_labels" not in config:
        raise UserError(f"{config_path}: not an lcenet model config (needs 'model' and 'num_labels')")
    return config


def read_model_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str], np.ndarray]:
    """Return (config, state_dict, label_names, label_frequency) after checking every file (the encoder's
    files are checked here and loaded by :mod:`lcenet.encoders`); refuse anything unsafe."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: model directory not found")
    for file in directory.iterdir():
        if file.suffix.lower() in PICKLE_SUFFIXES:
            raise UserError(f"{file}: refusing to load a pickle-based file; lcenet model directories hold only "
                            "safetensors, JSON and text")
    for name in MODEL_FILES:
        if not (directory / name).is_file():
            raise UserError(f"{directory / name}: missing (a model directory needs {', '.join(MODEL_FILES)})")
    config = read_model_config(directory)
    check_files(directory, config)
    state, _ = load_tensors(directory / "model.safetensors")
    names, counts = [], []
    labels_path = directory / "labels.tsv"
    for number, line in enumerate(labels_path.read_text(encoding="utf-8").splitlines(), start=1):
        name, tab, count = line.rpartition("\t")
        if not tab or not count.isdigit():
            raise UserError(f"{labels_path}:{number}: expected 'label<TAB>count'")
        names.append(name)
        counts.append(int(count))
    if len(names) != config["num_labels"]:
        raise UserError(f"{labels_path}: {len(names)} labels, but config.json says {config['num_labels']}")
    return config, state, names, np.asarray(counts, dtype=np.int64)


def check_files(directory: Path, config: dict[str, Any]) -> None:
    """Refuse a format version this lcenet cannot read, and any file whose sha256 differs from config.json's."""
    import lcenet

    config_path = directory / "config.json"
    version = config.get("format_version", 1)  # version 1 wrote no format_version
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise UserError(f"{config_path}: model format version {version} is not supported by lcenet "
                        f"{lcenet.__version__} (supports ≤ {FORMAT_VERSION})")
    if version == 1:
        for name in VERSION_1_FILES:
            if not (directory / name).is_file():
                raise UserError(f"{directory / name}: missing (a version-1 model directory needs it)")
        return
    files = config.get("files")
    if (not isinstance(files, dict) or any(not isinstance(files.get(name), str) for name in CHECKSUMMED_FILES)
            or not all(isinstance(name, str) and isinstance(digest, str) and "/" not in name
                       for name, digest in files.items())):
        raise UserError(f"{config_path}: 'files' must give the sha256 of {', '.join(CHECKSUMMED_FILES)} and of "
                        "every other file")
    for name in files:
        if not (directory / name).is_file():
            raise UserError(f"{directory / name}: missing (config.json lists it)")
        if sha256_file(directory / name) != files[name]:
            if name.endswith(".safetensors") and (truncation := _truncation(directory / name)):
                raise UserError(f"{directory / name}: not a valid safetensors file: {truncation}")
            raise UserError(f"{directory / name}: sha256 mismatch (the file is corrupt or was changed after saving)")
