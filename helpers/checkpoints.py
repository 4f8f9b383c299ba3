"""Cached training: `train_or_load` (introduced in notebook 02).

A checkpoint file is named after a hash of its config and holds that config, the weights and the
training history. It is written atomically (temp file + rename) and read with
`torch.load(weights_only=True)`, which refuses pickled code. A file whose stored config, format or
weight shapes do not match what is asked for is *stale*; a file that cannot be read is *corrupt*.
Both are reported and retrained, never silently used.

A checkpoint also records the code that trained it (`training_code()`: one digest per module of
`TRAINING_MODULES`, read from the module's syntax tree, so comments, docstrings and formatting do not
count). A file trained by other code — a fixed augmentation, a changed schedule — is reported as such,
naming the modules that differ, and retrained: the cache key is still the config alone, so the retrained
model replaces the old file under the same name. `HELPERS_ACCEPT_OTHER_CODE=1` serves such files anyway,
with a warning each (an instructor's archive made at an older commit whose changes you have checked do
not touch training). Files written before this record existed count as other code.

A cache travels as an archive (an instructor's pre-trained models, a second machine):
`python -m helpers.checkpoints export ARCHIVE [--preset P]` and `python -m helpers.checkpoints import
ARCHIVE`. The archive lists every file with its SHA-256; import verifies all of them, refuses
members with a path, `..` or an unexpected name, loads each with `weights_only=True` (no pickled
code), and writes nothing unless every file passes. Cache keys hold the data's content fingerprint,
not its path, so imported checkpoints are used wherever the same images are.

The archive also carries the stored evaluations of the exported presets (`predictions/<preset>/`, what
`make run` keeps: `helpers.evaluation.cache_predictions`), those of the current code version only, so a
room that imports it is served the instructor's logits of the same models instead of computing them
again (`--no-predictions` leaves them out). Each is checked the same way: listed with its SHA-256, a
name of the expected form, loaded with `weights_only=True`, tensors only.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from helpers._paths import atomic_write, project_root, resolve_user_path
from helpers._prediction_cache import check_entry, code_version
from helpers.training import History

CHECKPOINT_FORMAT = 1

# The modules whose code determines a trained model: the data stream and augmentation, the architectures
# and their initialisation, the training loop and its objectives (cross-entropy, distillation, FedAvg, SWA),
# precision and seeding, and the recipes that call them. Evaluation, alignment, merging and reporting are not
# here: they never change a trained model.
TRAINING_MODULES = ("data", "devices", "models", "training", "distillation", "federated", "swa", "averaging",
                    "ensembling", "repro", "zoo")
ENV_ACCEPT_OTHER_CODE = "HELPERS_ACCEPT_OTHER_CODE"


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=1)
def training_code() -> dict[str, str]:
    """`{module: 12 hex digits}` for each of `TRAINING_MODULES` (and torch's version under "torch"): a digest
    of the module's syntax tree without docstrings, so an edit to code changes it and an edit to a comment
    or docstring does not."""
    here = Path(__file__).resolve().parent
    out = {"torch": str(torch.__version__)}
    for name in TRAINING_MODULES:
        path = here / f"{name}.py"
        if path.is_file():
            tree = _strip_docstrings(ast.parse(path.read_text(encoding="utf-8")))
            out[name] = hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:12]
    return out


def _code_difference(stored: Any) -> str | None:
    """None when `stored` (a checkpoint's "code" record) is this code's, else what differs, for people."""
    current = training_code()
    if not isinstance(stored, dict):
        return "it records no training code (written before checkpoints did)"
    changed = sorted(k for k in set(current) | set(stored) if current.get(k) != stored.get(k))
    if not changed:
        return None
    return "trained by other code: " + ", ".join(
        f"torch {stored.get('torch')} -> {current['torch']}" if k == "torch" else f"helpers/{k}.py" for k in changed)


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
    """`<folder>/<name>-<hash of config>.pt`, the readable `name` reduced to letters, digits, '.', '_'
    and '-' (anything else becomes '-'): a file name every file system, shell and archive accepts
    ("owners' ensemble" -> "owners--ensemble")."""
    folder = Path(directory) if directory is not None else checkpoint_dir()
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("-.") or "checkpoint"
    return folder / f"{safe}-{config_hash(config)}.pt"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: Any, history: History | None = None) -> Path:
    """Write weights + config + history to `path` atomically."""
    blob = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(to_plain(config), sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": json.dumps(history.to_dict() if history is not None else None),
        "torch": str(torch.__version__),
        "code": json.dumps(training_code(), sort_keys=True),
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
    difference = _code_difference(json.loads(blob["code"]) if isinstance(blob.get("code"), str) else None)
    if difference is not None:
        if os.environ.get(ENV_ACCEPT_OTHER_CODE) != "1":
            print(f"Checkpoint {path.name} was {difference}; retraining (delete the file to retrain it without "
                  f"this message, or set {ENV_ACCEPT_OTHER_CODE}=1 to use it anyway).")
            return None
        warnings.warn(f"Checkpoint {path.name} was {difference}; used anyway because {ENV_ACCEPT_OTHER_CODE}=1.",
                      stacklevel=2)
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


# ----------------------------------------------------------------------------------------------
# Portable archives of the cache

ARCHIVE_FORMAT = 1
MANIFEST = "MANIFEST.json"
PREDICTIONS = "predictions"   # <checkpoint cache>/predictions/<preset>/: stored evaluations (coursetools.runner)
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.pt$")
_PREDICTION_MEMBER = re.compile(rf"^{PREDICTIONS}/[A-Za-z0-9][A-Za-z0-9_-]*/[0-9a-f]{{12}}-[0-9a-f]{{40}}\.pt$")


class ArchiveError(ValueError):
    """An archive that must not be imported; the message names the offending member."""


def export_archive(archive: str | os.PathLike, *, preset: str | None = None,
                   directory: str | os.PathLike | None = None, predictions: bool = True) -> list[str]:
    """Write the cached checkpoints (those of `preset` only, if given) to a `.tar.gz` at `archive`
    with a manifest of SHA-256 sums; returns the names exported. Written atomically.
    predictions: also the stored evaluations of this code version (`predictions/<preset>/`)."""
    folder = Path(directory) if directory is not None else checkpoint_dir()
    files = sorted(p for p in folder.glob("*.pt") if preset is None or p.name.startswith(f"{preset}-"))
    unfit = [p.name for p in files if not _MEMBER.match(p.name)]
    if unfit:   # import would refuse them: say so now rather than leave them out and retrain them later
        raise ArchiveError(f"{', '.join(repr(n) for n in unfit)} in {folder}: an archive member's name may hold only "
                           "letters, digits, '.', '_' and '-'; rename or delete the file (caches written by "
                           "this version name their files that way) and export again")
    if not files:
        raise FileNotFoundError(f"no checkpoints{f' of preset {preset!r}' if preset else ''} in {folder} to export")
    members = {p.name: p for p in files}
    if predictions:
        for p in sorted((folder / PREDICTIONS).glob(f"{preset or '*'}/{code_version()}-*.pt")):
            name = f"{PREDICTIONS}/{p.parent.name}/{p.name}"
            if _PREDICTION_MEMBER.match(name):
                members[name] = p
    manifest = {"format": ARCHIVE_FORMAT,
                "files": {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in members.items()}}

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for name, p in members.items():
                tar.add(p, arcname=name, recursive=False)

    atomic_write(Path(archive), write)
    return list(members)


def _read_members(archive: Path) -> dict[str, bytes]:
    """Every member's bytes, after checking that each is a plain file with an allowed name."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                name = member.name
                if name.startswith("/") or os.path.isabs(name):
                    raise ArchiveError(f"{archive.name}: member {name!r} has an absolute path; refused")
                if ".." in Path(name).parts or "\\" in name:
                    raise ArchiveError(f"{archive.name}: member {name!r} points outside the cache folder; refused")
                if "/" in name and not _PREDICTION_MEMBER.match(name):
                    raise ArchiveError(f"{archive.name}: unexpected member {name!r} (a folder holds only stored "
                                       f"evaluations, named {PREDICTIONS}/<preset>/<12 hex digits>-<40 hex "
                                       "digits>.pt); refused")
                if not member.isfile():
                    raise ArchiveError(f"{archive.name}: member {name!r} is not a regular file (link or folder); refused")
                if name != MANIFEST and not _MEMBER.match(name) and not _PREDICTION_MEMBER.match(name):
                    raise ArchiveError(f"{archive.name}: unexpected member {name!r} (only checkpoint .pt files, "
                                       f"{PREDICTIONS}/<preset>/ entries and {MANIFEST}); refused")
                if name in out:
                    raise ArchiveError(f"{archive.name}: member {name!r} appears twice; refused")
                out[name] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise ArchiveError(f"{archive.name} is not a readable checkpoint archive ({exc})") from None
    return out


def import_archive(archive: str | os.PathLike, *, directory: str | os.PathLike | None = None) -> list[str]:
    """Verify `archive` (see the module docstring) and copy its checkpoints (and stored evaluations)
    into the cache; returns their names. Raises `ArchiveError` naming the first bad member, and then writes nothing."""
    archive = Path(archive)
    members = _read_members(archive)
    if MANIFEST not in members:
        raise ArchiveError(f"{archive.name} has no {MANIFEST}; refused")
    try:
        manifest = json.loads(members.pop(MANIFEST))
        listed = dict(manifest["files"])
        if manifest.get("format") != ARCHIVE_FORMAT:
            raise ArchiveError(f"{archive.name}: archive format {manifest.get('format')!r}, expected {ARCHIVE_FORMAT}")
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"{archive.name}: {MANIFEST} is unreadable ({exc}); refused") from None
    for name in sorted(set(members) | set(listed)):
        if name not in listed:
            raise ArchiveError(f"{archive.name}: member {name!r} is not listed in {MANIFEST}; refused")
        if name not in members:
            raise ArchiveError(f"{archive.name}: {name!r} is listed in {MANIFEST} but missing; refused")
        if hashlib.sha256(members[name]).hexdigest() != listed[name]:
            raise ArchiveError(f"{archive.name}: {name!r} does not match its SHA-256 in {MANIFEST} "
                               "(corrupted or tampered with); refused")
        is_prediction = bool(_PREDICTION_MEMBER.match(name))
        try:
            blob = torch.load(io.BytesIO(members[name]), map_location="cpu", weights_only=True)
            if is_prediction:
                check_entry(blob)
            elif blob["format"] != CHECKPOINT_FORMAT or not isinstance(blob["state_dict"], dict):
                raise ValueError("not a checkpoint of this course's format")
        except Exception as exc:  # noqa: BLE001 - anything unloadable is refused, with the reason
            raise ArchiveError(f"{archive.name}: {name!r} is not a loadable "
                               f"{'stored evaluation' if is_prediction else 'checkpoint'} "
                               f"({type(exc).__name__}: {str(exc)[:200]}); refused") from None
    folder = Path(directory) if directory is not None else checkpoint_dir()
    for name, data in sorted(members.items()):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / name, lambda tmp, data=data: tmp.write_bytes(data))
    return sorted(members)


def _count(names: Sequence[str]) -> str:
    evaluations = sum(1 for n in names if n.startswith(f"{PREDICTIONS}/"))
    return f"{len(names) - evaluations} checkpoints and {evaluations} stored evaluations"


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m helpers.checkpoints export ARCHIVE [--preset P]` | `import ARCHIVE`."""
    parser = argparse.ArgumentParser(prog="python -m helpers.checkpoints",
                                     description="Move the checkpoint cache between machines, verified.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write the cache (or one preset's part of it) to a .tar.gz archive")
    exp.add_argument("archive", type=Path)
    exp.add_argument("--preset", default=None)
    exp.add_argument("--no-predictions", action="store_true",
                     help="leave out the stored evaluations (predictions/<preset>/): the room computes them again")
    imp = sub.add_parser("import", help="verify an archive and copy its checkpoints (and stored evaluations) "
                                        "into the cache")
    imp.add_argument("archive", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            names = export_archive(args.archive, preset=args.preset, predictions=not args.no_predictions)
            print(f"exported {_count(names)} from {checkpoint_dir()} to {args.archive}")
        else:
            names = import_archive(args.archive)
            print(f"imported {_count(names)} into {checkpoint_dir()} (every SHA-256 verified)")
    except (ArchiveError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
