"""Results files: numbers + provenance, and figures (every notebook ends by writing one).

`save_results("02_train_paired_models", {...}, preset=preset, data_source=...)` writes
`results/<preset>/02_train_paired_models.json` atomically with the preset, data source, torch
version, device, git commit and date beside the numbers. Values must be plain Python numbers,
strings, lists and dicts (tensors are refused, so nothing un-reviewable ends up in a file).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from helpers._paths import atomic_write, project_root, resolve_user_path
from helpers.repro import environment


def results_dir(preset_name: str) -> Path:
    """`$HELPERS_RESULTS_DIR/<preset>`, else `<project>/results/<preset>`."""
    base = os.environ.get("HELPERS_RESULTS_DIR") or project_root() / "results"
    return resolve_user_path(base) / preset_name


def _check_plain(value: Any, where: str = "results") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}; results must be finite numbers")
    elif not (value is None or isinstance(value, (str, int, bool))):
        raise TypeError(f"{where} is a {type(value).__name__}; convert it to a plain number first (e.g. float(x))")


def save_results(notebook: str, results: dict, *, preset: str, data_source: str, device: Any = None) -> Path:
    """Write `results/<preset>/<notebook>.json` = {"provenance": {...}, "results": results}."""
    _check_plain(results)
    provenance = {"notebook": notebook, "preset": preset, "data_source": data_source, **environment(device)}
    path = results_dir(preset) / f"{notebook}.json"
    text = json.dumps({"provenance": provenance, "results": results}, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def load_results(notebook: str, *, preset: str) -> dict:
    """The dict written by `save_results` (provenance + results)."""
    return json.loads((results_dir(preset) / f"{notebook}.json").read_text())


def save_figure(fig, name: str, *, preset: str, dpi: int = 120) -> Path:
    """Save a matplotlib figure as `results/<preset>/<name>.png` (atomically)."""
    path = results_dir(preset) / f"{name}.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    return path
