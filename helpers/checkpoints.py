"""Cached training: `train_or_load` (introduced in notebook 02).

A checkpoint file is named after a hash of its config and holds that config, the weights and the
training history. It is written atomically (temp file + rename) and read with
`torch.load(weights_only=True)`, which refuses pickled code. A file whose stored config, format or
weight shapes do not match what is asked for is *stale*; a file that cannot be read is *corrupt*.
Both are reported and retrained, never silently used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from helpers._paths import atomic_write, project_root, resolve_user_path
from helpers.training import History

CHECKPOINT_FORMAT = 1


def to_plain(config: Any) -> Any:
    """A dataclass / dict / list config as plain JSON-able values (nested dataclasses included)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): to_plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_plain(v) for v in config]
    if isinstance(config, (str, int, float, bool)) or config is None:
        return config
    raise TypeError(f"config values must be plain data or dataclasses, got {type(config).__name__}: {config!r}")


def config_hash(config: Any) -> str:
    """A stable 12-hex-digit hash of the config's JSON form."""
    text = json.dumps(to_plain(config), sort_keys=True)
    return hashlib.sha256(f"{CHECKPOINT_FORMAT}:{text}".encode()).hexdigest()[:12]


def checkpoint_dir() -> Path:
    """`HELPERS_CHECKPOINT_DIR`, else `<project>/checkpoints`."""
    return resolve_user_path(os.environ.get("HELPERS_CHECKPOINT_DIR") or project_root() / "checkpoints")


def checkpoint_path(name: str, config: Any, directory: str | os.PathLike | None = None) -> Path:
    folder = Path(directory) if directory is not None else checkpoint_dir()
    return folder / f"{name}-{config_hash(config)}.pt"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: Any, history: History | None = None) -> Path:
    """Write weights + config + history to `path` atomically."""
    blob = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(to_plain(config), sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": json.dumps(history.to_dict() if history is not None else None),
        "torch": str(torch.__version__),
    }
    return atomic_write(Path(path), lambda tmp: torch.save(blob, tmp))


def load_checkpoint(path: str | os.PathLike, model: nn.Module, config: Any) -> History | None:
    """Load weights from `path` into `model` and return the stored history, or return None after
    printing why the file cannot be used (missing files are silent). `model` is unchanged then."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        stored_config = json.loads(blob["config"])
        fmt = blob["format"]
        state = blob["state_dict"]
        history_dict = json.loads(blob["history"])
        history = History.from_dict(history_dict) if history_dict is not None else History()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is retrained; the reason is shown
        print(f"Checkpoint {path.name} is corrupt ({type(exc).__name__}: {str(exc)[:200]}); retraining.")
        return None
    expected = json.loads(json.dumps(to_plain(config), sort_keys=True))
    if fmt != CHECKPOINT_FORMAT or stored_config != expected:
        print(f"Checkpoint {path.name} is stale (it was made for a different config or format); retraining.")
        return None
    own = model.state_dict()
    mismatch = next((k for k in own if k not in state or state[k].shape != own[k].shape), None)
    if mismatch is not None or set(state) != set(own):
        what = mismatch or next(iter(set(state) ^ set(own)))
        print(f"Checkpoint {path.name} is stale (its weights do not fit the model at {what!r}); retraining.")
        return None
    model.load_state_dict(state)
    return history


def train_or_load(name: str, config: Any, build: Callable[[], nn.Module], fit: Callable[[nn.Module], History], *,
                  directory: str | os.PathLike | None = None, retrain: bool = False,
                  verbose: bool = True) -> tuple[nn.Module, History]:
    """The trained model for `config`: loaded from the cache, or built with `build()`, trained
    with `fit(model) -> History` and saved.

    name: a readable prefix for the file (`<name>-<hash of config>.pt`).
    config: everything that determines the result (plain data / dataclasses). Two calls with the
        same config share one file, so list seeds, data subset and schedule in it.
    """
    path = checkpoint_path(name, config, directory)
    model = build()
    if not retrain:
        history = load_checkpoint(path, model, config)
        if history is not None:
            if verbose:
                print(f"Loaded {path.name} from the checkpoint cache.")
            return model, history
    history = fit(model)
    save_checkpoint(path, model, config, history)
    return model, history
