"""Training speed of the course loop vs the standard torchvision recipe, in one run.

1. Trains the preset's model (`--seeds` of them; `long`: airbench's network and recipe) with
   `helpers.training.train` for the preset's full schedule on real CIFAR-10 and evaluates each, without
   and with test-time augmentation (`tta=2`: 6 views) — test accuracy, training seconds, images/s, and
   the mean and standard deviation over seeds.
2. Times the same model, optimiser and precision for a fixed number of steps under the standard
   recipe: a torchvision dataset with RandomCrop / RandomHorizontalFlip / ToTensor / Normalize
   transforms and a `DataLoader` (shuffle, `num_workers` = CPU count, at most 4), and the course loop
   for the same number of steps, so the two images/s figures differ only by the input pipeline.
3. Times the student CNN in the course loop over the same steps: `student_vs_course` is its images/s
   over the course model's (the student has several times fewer FLOPs; when the ratio stays near 1,
   the batch pipeline, not the convolutions, sets the pace).

Usage (from the project root):
    CIFAR10_DIR=../shared/data/cifar10-jpg .venv/bin/python benchmarks/train_speed.py [--preset cpu]
    CIFAR10_DIR=... .venv/bin/python benchmarks/train_speed.py --preset long --seeds 3 --skip-pipeline

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from helpers.data import MEAN, STD, DataNotFoundError, data_dir, iterate_batches, load_cifar10
from helpers.devices import autocast, pick_device, resolve_precision
from helpers.evaluation import evaluate
from helpers.models import build_model, student_cnn
from helpers.presets import get_preset
from helpers.repro import device_name, seed_everything
from helpers.training import make_optimizer, train
from helpers.zoo import new_model


def standard_loader(batch_size: int, num_workers: int):
    """The textbook CIFAR-10 input pipeline (per-image PIL transforms in DataLoader workers)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD]),
    ])
    folder = os.environ.get("CIFAR10_DIR")
    if folder:
        dataset = datasets.ImageFolder(os.path.join(folder, "train"), transform=tf)
    else:
        dataset = datasets.CIFAR10(str(data_dir()), train=True, transform=tf, download=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True,
                      persistent_workers=num_workers > 0, pin_memory=False)


def time_steps(model, batches, *, steps: int, warmup: int, config, device, precision) -> float:
    """Images/s of `steps` SGD steps drawn from `batches` (after `warmup` untimed steps)."""
    optimizer = make_optimizer(model, config)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            start = time.perf_counter()
        x = x.to(device, memory_format=torch.channels_last)
        y = y.to(device)
        with autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            seen += len(y)
    return seen / (time.perf_counter() - start)


def _meets_accuracy(preset: str, result: dict) -> bool:
    """The accuracy targets: `long` >= 88% mean test accuracy (issue 32; TTA not counted); any other preset
    the original check for one course model, >= 80% in <= 300 s of training."""
    if preset == "long":
        return result["test_accuracy"] >= 0.88
    return result["test_accuracy"] >= 0.80 and result["train_seconds"] <= 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="smoke | cpu | gpu (default: HELPERS_PRESET, else by device)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps for the pipeline comparison")
    parser.add_argument("--skip-full", action="store_true", help="only the pipeline comparison")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the full-schedule run(s)")
    parser.add_argument("--seeds", type=int, default=1, help="full-schedule runs (seeds 0..N-1): mean and std")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the full-schedule run (default: the preset's). The accuracy check "
                             "(>= 80%% in <= 300 s of training) was set for one course model, not for a preset: "
                             "the cpu preset trains 2 epochs (about 75%%), so run it with --epochs 6")
    args = parser.parse_args()

    preset = get_preset(args.preset or os.environ.get("HELPERS_PRESET") or "cpu")
    if preset.data != "cifar10":
        sys.exit(f"this benchmark needs real CIFAR-10; preset {preset.name!r} uses {preset.data} data")
    try:
        data = load_cifar10()
    except DataNotFoundError as exc:
        sys.exit(str(exc))
    device = pick_device()
    config = preset.train if args.epochs is None else replace(preset.train, num_epochs=args.epochs)
    precision = resolve_precision(config.precision, device)
    result = {"preset": preset.name, "data_source": data.source, "device": device_name(device),
              "torch": torch.__version__, "precision": precision, "arch": preset.arch, "width": preset.width,
              "num_epochs": config.num_epochs, "batch_size": config.batch_size, "train_config": config.__dict__}

    if not args.skip_full:
        runs = []
        for seed in range(args.seeds):
            model = new_model(preset.arch, preset.width, seed, data.train)   # a whitening stem is fitted here
            history = train(model, data.train, config=config, seed=seed, device=device, desc=f"full schedule s{seed}")
            plain = evaluate(model, data.test, device=device)
            tta = evaluate(model, data.test, device=device, tta=2)
            runs.append({"seed": seed, "test_accuracy": plain["accuracy"], "test_loss": plain["loss"],
                         "test_accuracy_tta": tta["accuracy"], "train_seconds": history.train_seconds,
                         "images_per_second": history.images_per_second})
            print(f"{preset.arch} model, full schedule, seed {seed}: {plain['accuracy']:.2%} test accuracy "
                  f"({tta['accuracy']:.2%} with 6-view TTA), {history.train_seconds:.1f} s, "
                  f"{history.images_per_second:,.0f} images/s", flush=True)

        def mean_std(key):
            values = [r[key] for r in runs]
            return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

        result["runs"] = runs
        for key in ("test_accuracy", "test_accuracy_tta", "train_seconds", "images_per_second"):
            result[key], result[f"{key}_std"] = mean_std(key)
        result["test_loss"] = mean_std("test_loss")[0]

    if args.skip_pipeline:
        if "test_accuracy" in result:
            result["meets_accuracy_target"] = _meets_accuracy(preset.name, result)
        print(json.dumps(result))
        return
    # Same model / optimiser / precision, fixed steps: only the input pipeline differs.
    num_workers = min(4, os.cpu_count() or 1)
    warmup = 5
    seed_everything(1)
    model = build_model(preset.arch, preset.width, 1).to(device, memory_format=torch.channels_last)
    loader = standard_loader(config.batch_size, num_workers)
    baseline = time_steps(model, iter(loader), steps=args.steps, warmup=warmup, config=config, device=device,
                          precision=precision)
    del loader
    seed_everything(1)
    model = build_model(preset.arch, preset.width, 1).to(device, memory_format=torch.channels_last)
    train_on_device = data.train.to(device)
    g = torch.Generator().manual_seed(0)
    ours = time_steps(model, iterate_batches(train_on_device, config.batch_size, shuffle=True, augment_images=True,
                                             generator=g, device=device, drop_last=True),
                      steps=args.steps, warmup=warmup, config=config, device=device, precision=precision)
    seed_everything(1)
    student = student_cnn(preset.student_width).to(device, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    student_ips = time_steps(student, iterate_batches(train_on_device, config.batch_size, shuffle=True,
                                                      augment_images=True, generator=g, device=device, drop_last=True),
                             steps=args.steps, warmup=warmup, config=config, device=device, precision=precision)
    print(f"fixed {args.steps} steps: standard recipe {baseline:,.0f} images/s (DataLoader, {num_workers} workers), "
          f"course loop {ours:,.0f} images/s ({ours / baseline:.2f}x); student in the course loop "
          f"{student_ips:,.0f} images/s ({student_ips / ours:.2f}x the course model)", flush=True)
    result.update(baseline_images_per_second=baseline, fixed_steps_images_per_second=ours,
                  speedup_vs_baseline=ours / baseline, baseline_num_workers=num_workers, timed_steps=args.steps,
                  student_width=preset.student_width, student_images_per_second=student_ips,
                  student_vs_course=student_ips / ours)
    if "images_per_second" not in result:
        result["images_per_second"] = ours
    if "test_accuracy" in result:
        result["meets_accuracy_target"] = _meets_accuracy(preset.name, result)
    result["meets_speed_target"] = result["images_per_second"] >= 1.5 * baseline
    print(json.dumps(result))


if __name__ == "__main__":
    main()
