"""How long a notebook took in the committed runs, read from `results/<preset>/timings.json`.

`make run` writes one `timings.json` per preset it runs the whole course for (`coursetools.runner`):
each notebook's wall-clock seconds with a cold cache, the machine (`device_name`, `precision`),
the commit it ran at and, for newer runs, the machine's measured speed (`host_speed`). Every
notebook's parameters cell prints its line of those files with `notebook_times`, so the time a
notebook needs is never typed by hand into its text (where it would go stale).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from helpers._paths import project_root
from helpers.presets import PRESETS


def _committed_presets(results: Path) -> list[str]:
    """The preset names, in `PRESETS` order, then any other folder of `results/` with a timings.json."""
    others = sorted(p.parent.name for p in results.glob("*/timings.json") if p.parent.name not in PRESETS)
    return [*PRESETS, *others]


def _describe(path: Path, notebook: str) -> str | None:
    """`327 s (5.4 min) on <machine>, <precision>, commit <sha>[, host <n> training images/s]`, or None
    when the file is missing, unreadable or has no plain number of seconds for `notebook`."""
    try:
        timings = json.loads(path.read_text())
        seconds = timings["seconds"][notebook]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return None
    text = f"{seconds:.0f} s" + (f" ({seconds / 60:.1f} min)" if seconds >= 60 else "")
    machine = [str(timings[key]) for key in ("device_name", "precision") if isinstance(timings.get(key), str)]
    if isinstance(timings.get("git_commit"), str):
        machine.append(f"commit {timings['git_commit']}")
    speed = timings.get("host_speed")
    before = speed.get("before") if isinstance(speed, dict) else None
    images = before.get("train_images_per_second") if isinstance(before, dict) else None
    if isinstance(images, (int, float)) and not isinstance(images, bool) and math.isfinite(images):
        machine.append(f"host {images:,.0f} training images/s")
    if machine:
        text += f" on {machine[0]}" + "".join(f", {m}" for m in machine[1:])
    return text


def notebook_times(notebook: str, root: str | Path | None = None) -> str:
    """What `notebook` (a stem, e.g. `"02_train_paired_models"`) took in each committed run, one
    preset per line, e.g.::

        Time with a cold cache in the committed runs (results/<preset>/timings.json):
          cpu: 327 s (5.4 min) on cpu (2 threads, Intel(R) Xeon(R) Processor, AMX), bf16, commit 7d2aeb44db1a, ...
          workshop: 53 s on cpu (2 threads, AMD EPYC, ...), fp32, commit 82142e5e1218
          smoke, gpu: not measured

    A run with a warm checkpoint cache takes a fraction of these. `root` is the project folder
    (default `helpers._paths.project_root()`); a missing or corrupt file counts as not measured."""
    results = Path(root if root is not None else project_root()) / "results"
    lines, unmeasured = [], []
    for name in _committed_presets(results):
        described = _describe(results / name / "timings.json", notebook)
        if described is None:
            unmeasured.append(name)
        else:
            lines.append(f"  {name}: {described}")
    if unmeasured:
        lines.append(f"  {', '.join(unmeasured)}: not measured")
    return "\n".join(["Time with a cold cache in the committed runs (results/<preset>/timings.json):", *lines])
