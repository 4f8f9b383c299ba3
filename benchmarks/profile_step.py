"""Where a training step's time goes: `torch.profiler` over the course loop on the CPU.

For the course model and the student of a preset, runs `--steps` optimiser steps of the course loop
(`helpers.data.iterate_batches` + the same step as `helpers.training.run_steps`) under the profiler,
with each phase labelled — batch (gather, crop + flip, normalise), forward, loss, backward, optimiser —
and prints, per model, the share of wall time per phase and the most expensive operators.

Usage (from the project root):
    CIFAR10_DIR=../shared/data/cifar10-jpg .venv/bin/python benchmarks/profile_step.py [--preset cpu]
Without CIFAR10_DIR, synthetic CIFAR-shaped images of the same size are used (speed does not depend
on the pixels). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from helpers.data import iterate_batches, load_cifar10, synthetic_cifar
from helpers.devices import autocast, pick_device, resolve_precision
from helpers.models import count_flops, course_cnn, student_cnn
from helpers.presets import get_preset
from helpers.repro import device_name, seed_everything
from helpers.training import make_optimizer

PHASES = ("batch", "forward", "loss", "backward", "optimizer")


def profile_model(model, data, *, config, device, precision, steps: int, warmup: int = 3) -> dict:
    model.to(device, memory_format=torch.channels_last).train()
    optimizer = make_optimizer(model, config)
    g = torch.Generator().manual_seed(0)
    batches = iterate_batches(data, config.batch_size, shuffle=True, augment_images=True, generator=g,
                              device=device, drop_last=True)

    def step(record: bool) -> None:
        ctx = record_function if record else (lambda name: torch.autograd.profiler.record_function(name))
        with ctx("batch"):
            x, y = next(batches)
        with ctx("forward"), autocast(device, precision):
            logits = model(x)
        with ctx("loss"):
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        with ctx("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with ctx("optimizer"):
            optimizer.step()

    for _ in range(warmup):
        step(False)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(True)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    phase_us = {p: next((e.cpu_time_total for e in events if e.key == p), 0.0) for p in PHASES}
    total = sum(phase_us.values())
    ops = sorted((e for e in events if e.key not in PHASES and not e.key.startswith("ProfilerStep")),
                 key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "images_per_second_profiled": steps * config.batch_size / wall,
        "phase_share": {p: phase_us[p] / total for p in PHASES},
        "phase_ms_per_step": {p: phase_us[p] / 1000 / steps for p in PHASES},
        "top_ops_ms_per_step": {e.key: e.self_cpu_time_total / 1000 / steps for e in ops[:12]},
        "gflops_per_step": 3 * count_flops(model) * config.batch_size / 1e9,  # forward + ~2x for backward
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="smoke | cpu | gpu (default: HELPERS_PRESET, else cpu)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    preset = get_preset(args.preset or os.environ.get("HELPERS_PRESET") or "cpu")
    data = load_cifar10() if os.environ.get("CIFAR10_DIR") else synthetic_cifar(10_000, 16, seed=0)
    device = pick_device()
    precision = resolve_precision(preset.train.precision, device)
    result = {"preset": preset.name, "device": device_name(device), "torch": torch.__version__,
              "precision": precision, "data_source": data.source, "batch_size": preset.train.batch_size,
              "threads": torch.get_num_threads()}
    train = data.train.to(device)
    for name, build, width in (("course", course_cnn, preset.width), ("student", student_cnn, preset.student_width)):
        seed_everything(0)
        r = profile_model(build(width), train, config=preset.train, device=device, precision=precision,
                          steps=args.steps)
        result[name] = r
        print(f"\n{name} x{width}: {r['images_per_second_profiled']:,.0f} images/s under the profiler")
        for p in PHASES:
            print(f"  {p:<10}{100 * r['phase_share'][p]:6.1f}%  {r['phase_ms_per_step'][p]:8.2f} ms/step")
        print("  top operators (self time, ms/step):")
        for op, ms in list(r["top_ops_ms_per_step"].items())[:8]:
            print(f"    {op:<44}{ms:8.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
