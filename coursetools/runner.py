"""`python -m coursetools.runner`: execute the course notebooks in order in one process (what `make run` calls).

Each notebook runs in a fresh Jupyter kernel through `nbclient` (the library `jupyter nbconvert
--execute` uses), with its own folder as the working directory. The executed copy goes to
`build/<preset>/<name>.ipynb` (written atomically: an interrupted run leaves the previous file or
none, never half of one), each notebook's wall time is printed as it finishes, and after the last
one `results/<preset>/timings.json` is written (`save_timings`). The runner also
measures the machine's speed on the course model before the first notebook and after the last
(`coursetools.speed.measure`, about 10 s each; stored in timings.json as `host_speed`, so a time says
what machine it was measured on), and counts the checkpoints each notebook writes into the
checkpoint cache (`helpers.checkpoints.checkpoint_dir`):
a run from a complete cache (for instance one imported with `python -m helpers.checkpoints import`)
says "0 checkpoint(s) written", i.e. no model was retrained. Every kernel it starts has the prediction
cache on (`HELPERS_CACHE_PREDICTIONS=1` in its environment), and the notebooks of one run share a folder
of evaluated models' logits (`helpers.evaluation.cache_predictions`, keyed by each model's content and
the code that evaluated it), so a model evaluated in notebook 03 is not evaluated again in 04, 05 or 09.
The folder is `<checkpoint cache>/predictions/<preset>/`: it stays for the next run of the same code
(entries of other code versions are removed when a run starts), travels in a checkpoint archive, and
`--no-shared-predictions` leaves each notebook on its own. Each notebook's line says how many
evaluations it stored (what it computed); a run that reuses an archive's says how many it found.

One process for all notebooks instead of one `jupyter nbconvert` per notebook saves about 4 s per
notebook on a 2-core laptop CPU: nbconvert's own start (importing its exporters and templates) is
paid once, not ten times. The kernels and what they compute are the same. On Linux and macOS the
runner talks to each kernel over local IPC sockets in a private temporary folder rather than TCP
ports on localhost (so no port is opened, and ipykernel has no unencrypted-TCP warning to print).

Usage (from the project root; the preset comes from `HELPERS_PRESET`, see `helpers.presets`):
    .venv/bin/python -m coursetools.runner                      # every notebooks/NN_*.ipynb
    .venv/bin/python -m coursetools.runner notebooks/03_weight_averaging.ipynb   # some of them (no timings.json)
    .venv/bin/python -m coursetools.runner --label "warm, from an imported archive"   # timings-warm.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

from coursetools.speed import measure
from helpers._paths import atomic_write, project_root
from helpers.checkpoints import PREDICTIONS, checkpoint_dir
from helpers.devices import pick_device, resolve_precision
from helpers._prediction_cache import code_version
from helpers.presets import get_preset
from helpers.repro import environment
from helpers.results import results_dir, save_text


def course_notebooks(root: Path | None = None) -> list[Path]:
    """The course's notebooks, `notebooks/NN_*.ipynb`, in run order."""
    root = root or project_root()
    return sorted(p for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def execute_notebook(path: Path, out_dir: Path) -> float:
    """Execute `path` in a fresh kernel (cwd: its folder), write the executed copy to `out_dir`, and
    return the wall seconds (kernel start included). On a failing cell the partly executed copy,
    with the traceback in its outputs, is still written, then the error is raised."""
    import nbformat
    from nbclient import NotebookClient

    start = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    sockets = tempfile.mkdtemp(prefix="nb-") if os.name == "posix" else None
    km = None   # elsewhere nbclient starts its own (TCP) kernel
    if sockets:   # IPC transport: socket files in a private folder (short path: sockets allow ~100 characters)
        from jupyter_client.manager import KernelManager
        kernel_name = nb.metadata.get("kernelspec", {}).get("name") or "python3"
        km = KernelManager(kernel_name=kernel_name, transport="ipc", ip=os.path.join(sockets, "kernel"))
    client = NotebookClient(nb, km=km, timeout=None, resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        atomic_write(out_dir / path.name, lambda tmp: nbformat.write(nb, str(tmp)))
        if km is not None and km.has_kernel:   # nbclient shuts down only kernels it started itself
            km.shutdown_kernel(now=False)
        if sockets:
            shutil.rmtree(sockets, ignore_errors=True)
    return time.perf_counter() - start


def _cache_state(directory: Path) -> dict[str, tuple[int, int]]:
    """{file name: (size, mtime in ns)} of the checkpoints (`*.pt`) in `directory` (empty if it does not exist)."""
    if not directory.is_dir():
        return {}
    return {p.name: (st.st_size, st.st_mtime_ns) for p in directory.glob("*.pt") for st in [p.stat()]}


def written_checkpoints(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Checkpoints new or rewritten between two `_cache_state`s: the models a run trained rather than loaded."""
    return sorted(name for name, state in after.items() if before.get(name) != state)


def prediction_folder(cache: Path, preset: str) -> Path:
    """Where a run keeps its notebooks' evaluations: `<checkpoint cache>/predictions/<preset>/`."""
    return cache / PREDICTIONS / preset


def prepare_prediction_folder(folder: Path) -> tuple[int, int]:
    """Create `folder` and remove the entries other code versions wrote (they can never be served);
    returns (entries kept, entries removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = removed = 0
    for p in folder.glob("*.pt"):
        if p.name.startswith(f"{code_version()}-"):
            kept += 1
        else:
            p.unlink(missing_ok=True)
            removed += 1
    return kept, removed


def run(notebooks: Sequence[Path], preset: str, out_dir: Path, *, cache: Path | None = None,
        written: dict[str, list[str]] | None = None, share_predictions: bool = True,
        evaluations: dict[str, int] | None = None) -> dict[str, float]:
    """Execute `notebooks` in order; returns {stem: seconds}. Stops at the first failing notebook.
    After each one, prints its seconds, how many checkpoints it wrote into `cache` (default:
    `helpers.checkpoints.checkpoint_dir()`) and how many evaluations it stored; `written`, if given,
    receives {stem: the checkpoints' file names}, `evaluations` {"found": entries of this code version
    at the start, "stored": entries the run added}.
    The kernels get `HELPERS_CACHE_PREDICTIONS=1` (the prediction cache on, `helpers.evaluation.cache_predictions`);
    share_predictions: the notebooks also share the folder `prediction_folder(cache, preset)` of evaluated
    models' logits (`$HELPERS_PREDICTION_CACHE_DIR`), kept for later runs of the same code."""
    cache = cache or checkpoint_dir()
    missing = [str(p) for p in notebooks if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such notebook: {', '.join(missing)}")
    seconds: dict[str, float] = {}
    shared = prediction_folder(cache, preset) if share_predictions else None
    previous = {name: os.environ.get(name) for name in ("HELPERS_PREDICTION_CACHE_DIR", "HELPERS_CACHE_PREDICTIONS")}
    if shared:   # the kernels inherit it: a model evaluated in one notebook is not evaluated again in the next
        kept, removed = prepare_prediction_folder(shared)
        print(f"== stored evaluations in {shared}: {kept} of this code version"
              + (f" ({removed} of other versions removed)" if removed else ""), flush=True)
        os.environ["HELPERS_PREDICTION_CACHE_DIR"] = str(shared)
        if evaluations is not None:
            evaluations.update(found=kept, stored=0)
    else:
        os.environ.pop("HELPERS_PREDICTION_CACHE_DIR", None)
    os.environ["HELPERS_CACHE_PREDICTIONS"] = "1"   # inherited too: the prediction cache is on in every kernel
    try:
        for path in notebooks:
            path = Path(path)
            print(f"== {path.stem} ({preset})", flush=True)
            before = _cache_state(cache)
            stored_before = _cache_state(shared) if shared else {}
            seconds[path.stem] = round(execute_notebook(path, out_dir), 1)
            new = written_checkpoints(before, _cache_state(cache))
            if written is not None:
                written[path.stem] = new
            added = len(written_checkpoints(stored_before, _cache_state(shared))) if shared else 0
            if shared and evaluations is not None:
                evaluations["stored"] += added
            stored = f", {added} evaluation(s) stored" if shared else ""
            print(f"   {seconds[path.stem]:.1f} s, {len(new)} checkpoint(s) written{stored}", flush=True)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return seconds


def save_timings(preset: str, seconds: Mapping[str, float], *, checkpoints_written: int | None = None,
                 label: str | None = None, name: str = "timings.json",
                 host_speed: Mapping[str, Mapping] | None = None,
                 evaluations: Mapping[str, int] | None = None) -> Path:
    """Write `results/<preset>/<name>`: seconds per notebook (in run order), their total, and what they
    ran on (preset, precision, device and CPU/GPU model, torch version, git commit, date); optionally how
    many checkpoints the run wrote (0: every model came from the cache) and a `label` saying what kind
    of run it was (for instance "warm, from an imported checkpoint archive"), and `host_speed`: the
    machine's speed measured around the run, {"before": coursetools.speed.measure(), "after": ...}, and
    `evaluations`: {"found": stored evaluations there at the start, "stored": those the run computed and
    stored} (`helpers.evaluation.cache_predictions`; found > 0 means some results were served, not computed)."""
    device = pick_device()
    env = environment(device)
    blob = {"preset": preset, "precision": resolve_precision(get_preset(preset).train.precision, device),
            "device": env["device"], "device_name": env["device_name"], "torch": env["torch"],
            "git_commit": env["git_commit"], "date": env["date"],
            "seconds": {name: float(s) for name, s in seconds.items()},
            "total_seconds": float(sum(seconds.values()))}
    if checkpoints_written is not None:
        blob["checkpoints_written"] = int(checkpoints_written)
    if label:
        blob["label"] = label
    if evaluations is not None:
        blob["evaluations"] = {"found": int(evaluations["found"]), "stored": int(evaluations["stored"])}
    if host_speed:
        blob["host_speed"] = {when: dict(speed) for when, speed in host_speed.items()}
    return save_text(name, json.dumps(blob, indent=2, allow_nan=False) + "\n", preset=preset)   # finite numbers only


def _slug(label: str) -> str:
    """The first word of `label`, lower case, letters and digits only: 'Warm, from …' -> 'warm'."""
    word = "".join(c for c in label.split()[0].lower() if c.isalnum()) if label.split() else ""
    return word or "other"


def _speed(when: str) -> dict | None:
    """`coursetools.speed.measure()` for the active preset, printed (not counted in any notebook's time). A
    measurement that fails (an unusual device or build) is reported and skipped: it never stops the run."""
    try:
        speed = measure()
    except Exception as err:  # noqa: BLE001 - the timing is a courtesy; the notebooks are the run
        print(f"== machine speed {when}: not measured ({type(err).__name__}: {err})", flush=True)
        return None
    print(f"== machine speed {when}: course model training {speed['train_images_per_second']:,.0f} images/s, "
          f"evaluation {speed['eval_images_per_second']:,.0f} images/s ({speed['precision']})", flush=True)
    return speed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursetools.runner", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run, in this order (default: every notebooks/NN_*.ipynb; "
                             "timings.json is written only for the full course)")
    parser.add_argument("--out-dir", type=Path, help="where executed copies go (default: build/<preset>)")
    parser.add_argument("--label", help="what kind of run this is, stored in the timings file (for instance "
                                        "'warm, from an imported checkpoint archive'); the file is then "
                                        "results/<preset>/timings-<label's first word>.json, not timings.json")
    parser.add_argument("--no-speed", action="store_true",
                        help="do not measure the machine's speed before and after the run (about 20 s)")
    parser.add_argument("--no-shared-predictions", action="store_true",
                        help="each notebook evaluates its models itself, even those an earlier notebook or run "
                             "evaluated (by default the notebooks share <checkpoint cache>/predictions/<preset>/)")
    args = parser.parse_args(argv)
    preset = get_preset().name
    notebooks = args.notebooks or course_notebooks()
    out_dir = args.out_dir or project_root() / "build" / preset
    start = time.perf_counter()
    written: dict[str, list[str]] = {}
    host_speed = {}
    evaluations: dict[str, int] = {}
    if not args.notebooks and not args.no_speed:
        host_speed["before"] = _speed("before the first notebook")
    try:
        seconds = run(notebooks, preset, out_dir, written=written, share_predictions=not args.no_shared_predictions,
                      evaluations=evaluations)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a cell failed: nbclient's message names the cell and its traceback
        print(f"\nmake run stopped: {type(err).__name__}: {err}\n"
              f"the partly executed notebook is in {out_dir}/", file=sys.stderr)
        return 1
    total = sum(len(v) for v in written.values())
    if not args.notebooks:
        if not args.no_speed:
            host_speed["after"] = _speed("after the last notebook")
        host_speed = {when: speed for when, speed in host_speed.items() if speed is not None}
        name = "timings.json" if not args.label else f"timings-{_slug(args.label)}.json"
        path = save_timings(preset, seconds, checkpoints_written=total, label=args.label, name=name,
                            host_speed=host_speed, evaluations=evaluations or None)
        print(f"wrote {path}")
    print(f"{len(seconds)} notebooks ({preset}) in {time.perf_counter() - start:.0f} s; results in {results_dir(preset)}/")
    print(f"checkpoint cache {checkpoint_dir()}: {total} checkpoint(s) written by this run"
          + (" (no cached model was retrained)" if total == 0 else ""))
    if evaluations:
        print(f"stored evaluations: {evaluations['found']} found at the start (served instead of computed when "
              f"a notebook asked for them), {evaluations['stored']} computed and stored by this run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
