"""Where the project keeps data, checkpoints and results (internal)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def project_root() -> Path:
    """The course checkout: `HELPERS_ROOT`, else the folder above this package when it is a
    source checkout (editable install), else the nearest folder above the working directory
    that has `notebooks/` and `helpers/`, else the working directory."""
    env = os.environ.get("HELPERS_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").is_file() and (here / "helpers").is_dir():
        return here
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "notebooks").is_dir() and (folder / "helpers").is_dir():
            return folder
    return cwd


def resolve_user_path(path: str | os.PathLike) -> Path:
    """A path given by the user: absolute, or relative to the working directory if it exists
    there, else relative to the project root (notebooks run from `notebooks/`)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (project_root() / p).resolve()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, then rename it into place.

    The rename is atomic on one file system, so an interrupted run leaves either the old file or
    the new one, never half of one. The temp file is removed if `write` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        umask = os.umask(0)   # mkstemp makes the file private (0600); give it the usual permissions
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
