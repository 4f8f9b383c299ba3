"""Evaluation speed by batch size: `helpers.evaluation.evaluate` on the preset's test set, in one run.

Evaluation is what a warm run (every model loaded from the checkpoint cache) spends its time on:
notebooks 03, 04, 05, 08 and 09 merge, recalibrate and evaluate models on the 10,000 test images
dozens of times. This times `evaluate` for the course model of the preset at several batch sizes in
the active precision and compares each with the former default of 500 images per batch (the
baseline, measured in the same run). The model's weights are random: speed does not depend on them.

Usage (from the project root):
    CIFAR10_DIR=../shared/data/cifar10-jpg .venv/bin/python benchmarks/eval_speed.py [--preset cpu]
Without CIFAR10_DIR (or with --synthetic), 10,000 synthetic CIFAR-shaped images are used.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from helpers.data import DataNotFoundError, synthetic_cifar
from helpers.devices import pick_device, resolve_precision
from helpers.evaluation import EVAL_BATCH_SIZE, evaluate
from helpers.models import course_cnn
from helpers.presets import get_preset
from helpers.repro import device_name, seed_everything

BASELINE = 500  # the default before this benchmark


def seconds_per_pass(model, data, batch_size: int, repeats: int, device) -> float:
    """Best of `repeats` full passes (after one warm-up pass)."""
    evaluate(model, data, batch_size=batch_size, device=device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(model, data, batch_size=batch_size, device=device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="smoke | workshop | cpu | gpu (default: HELPERS_PRESET, else cpu)")
    parser.add_argument("--sizes", default="100,200,250,500,1000", help="batch sizes to time, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true", help="synthetic images instead of CIFAR-10")
    args = parser.parse_args()
    preset = get_preset(args.preset or os.environ.get("HELPERS_PRESET") or "cpu")
    seed_everything(0)
    device = pick_device()
    if args.synthetic or not os.environ.get("CIFAR10_DIR"):
        test, source = synthetic_cifar(16, 10_000, seed=0).test, "synthetic"
    else:
        try:
            data = preset.load_data()
        except DataNotFoundError as exc:
            raise SystemExit(str(exc)) from None
        test, source = data.test, data.source
    model = course_cnn(preset.width).to(device).eval()
    sizes = sorted({int(s) for s in args.sizes.split(",")} | {BASELINE, EVAL_BATCH_SIZE})
    images_per_second = {}
    for size in sizes:
        seconds = seconds_per_pass(model, test, size, args.repeats, device)
        images_per_second[size] = len(test) / seconds
        print(f"batch {size:>5}: {seconds:.2f} s per pass over {len(test):,} images, {images_per_second[size]:,.0f} images/s")
    best = max(images_per_second, key=images_per_second.get)
    result = {
        "preset": preset.name, "data_source": source, "device": device_name(device), "torch": torch.__version__,
        "precision": resolve_precision("auto", device), "images": len(test), "width": preset.width,
        "images_per_second": {str(k): round(v) for k, v in images_per_second.items()},
        "baseline_batch": BASELINE, "default_batch": EVAL_BATCH_SIZE, "best_batch": best,
        "default_vs_baseline": round(images_per_second[EVAL_BATCH_SIZE] / images_per_second[BASELINE], 3),
        "best_vs_baseline": round(images_per_second[best] / images_per_second[BASELINE], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
