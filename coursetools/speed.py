"""How fast this machine runs the course model, measured in about ten seconds (see docs/workshop.md).

The same `make run` took 43 minutes on one 2-core cloud machine and 72 on another of the same kind:
a time in seconds says little without the speed of the machine it was measured on. `measure()` times
the preset's course model on synthetic images, in the precision the course would use here:
training steps (the preset's batch size and optimiser) and evaluation batches (`EVAL_BATCH_SIZE`).
`make run` records it in `results/<preset>/timings.json` (`host_speed`) before its first notebook
and after its last, so every committed time comes with the speed of its machine.

`python -m coursetools.speed [--preset P]` prints this machine's speed and, for each committed run of the
preset, a rough estimate of its time here: its seconds scaled by the ratio of the two speeds (training
speed for a cold run, evaluation speed for a warm one, which only evaluates). A rough estimate: the
notebooks also read files, decode images and fit small things that do not scale with the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from helpers.devices import autocast, eval_mode, pick_device, resolve_precision
from helpers.evaluation import EVAL_BATCH_SIZE
from helpers.models import course_cnn
from helpers.presets import Preset, get_preset
from helpers.repro import device_name
from helpers.results import results_dir
from helpers.training import make_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _rate(step, images: int, device: torch.device, *, seconds: float, warmup: int = 2, min_steps: int = 3) -> float:
    """Images/s of `step()` (each call handles `images` images): `warmup` untimed calls, then calls
    until `seconds` have passed (at least `min_steps` of them)."""
    for _ in range(warmup):
        step()
    _sync(device)
    done, start = 0, time.perf_counter()
    while done < min_steps or time.perf_counter() - start < seconds:
        step()
        done += 1
        if done % 4 == 0:
            _sync(device)
    _sync(device)
    return done * images / (time.perf_counter() - start)


def measure(preset: Preset | None = None, *, seconds: float = 4.0, device: torch.device | str | None = None) -> dict:
    """This machine's speed on the course model of `preset` (default: the active one): training and
    evaluation images/s, each timed for about `seconds` after a short warm-up, with the precision,
    device, width and batch sizes they were measured at. Synthetic images: the speed does not
    depend on what the pictures show. The global random state is left as it was."""
    preset = preset or get_preset()
    device = torch.device(device) if device is not None else pick_device()
    precision = resolve_precision(preset.train.precision, device)
    generator = torch.Generator().manual_seed(0)
    batch = preset.train.batch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = course_cnn(preset.width).to(device)
    x = torch.randn(batch, 3, 32, 32, generator=generator).to(device, memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    optimizer = make_optimizer(model, preset.train)   # the course's own optimiser and loss, as in training

    def train_step():
        with autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=preset.train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train_ips = _rate(train_step, batch, device, seconds=seconds)
    xe = torch.randn(EVAL_BATCH_SIZE, 3, 32, 32, generator=generator).to(device, memory_format=torch.channels_last)

    @torch.no_grad()
    def eval_step():
        with autocast(device, precision):
            model(xe).float()

    with eval_mode(model):
        eval_ips = _rate(eval_step, EVAL_BATCH_SIZE, device, seconds=seconds / 2)
    return {"train_images_per_second": round(train_ips, 1), "eval_images_per_second": round(eval_ips, 1),
            "precision": precision, "device_name": device_name(device), "width": preset.width,
            "train_batch": batch, "eval_batch": EVAL_BATCH_SIZE, "torch": torch.__version__}


def run_speed(timings: Mapping) -> dict | None:
    """The machine speed a `timings.json` records: the mean of its `host_speed` measurements (before
    and after the run) as {"train_images_per_second", "eval_images_per_second"}, or None for a file
    written before the runner measured it."""
    samples = [s for s in (timings.get("host_speed") or {}).values() if isinstance(s, Mapping)]
    if not samples:
        return None
    return {key: statistics.fmean(float(s[key]) for s in samples)
            for key in ("train_images_per_second", "eval_images_per_second")}


def estimate_seconds(timings: Mapping, here: Mapping) -> float | None:
    """A rough estimate of the run `timings` describes, on a machine of speed `here` (`measure()`):
    its total seconds times (its machine's speed / this one's). Training speed for a run that trained
    models; evaluation speed for one that wrote no checkpoint (a warm run only evaluates). None when
    `timings` has no recorded machine speed. Both speeds are the course model run as the course runs it
    on each machine, so a different precision (bf16 there, fp32 here) is part of the ratio."""
    there = run_speed(timings)
    if there is None:
        return None
    key = "eval_images_per_second" if timings.get("checkpoints_written") == 0 else "train_images_per_second"
    return float(timings["total_seconds"]) * there[key] / float(here[key])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursetools.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="smoke | workshop | cpu | gpu (default: HELPERS_PRESET, else by device)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds to time training (evaluation: half)")
    args = parser.parse_args(argv)
    preset = get_preset(args.preset)
    here = measure(preset, seconds=args.seconds)
    print(f"{here['device_name']}, {here['precision']}, course model ×{preset.width:g} ({preset.name} preset): "
          f"training {here['train_images_per_second']:,.0f} images/s, evaluation {here['eval_images_per_second']:,.0f} images/s")
    folder = results_dir(preset.name)
    for path in sorted(folder.glob("timings*.json")):
        timings = json.loads(path.read_text())
        there = run_speed(timings)
        what = timings.get("label") or "cold"
        if there is None:
            print(f"  {path.name} ({what}): {timings['total_seconds'] / 60:.1f} min measured, machine speed not recorded")
            continue
        estimate = estimate_seconds(timings, here)
        print(f"  {path.name} ({what}): {timings['total_seconds'] / 60:.1f} min on a machine at "
              f"{there['train_images_per_second']:,.0f} / {there['eval_images_per_second']:,.0f} images/s "
              f"(train / eval, {timings['precision']}); roughly {estimate / 60:.0f} min here")
    print(json.dumps(here))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
