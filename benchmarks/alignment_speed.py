"""Time `helpers.alignment.weight_matching` on two course models of the preset's width.

By default aligns the trained independent pair of notebook 02 (loaded from the checkpoint cache, or
trained first: needs real CIFAR-10 for the cpu/gpu presets); `--random` aligns two freshly
initialised models instead (no data needed); `--resnet18` aligns two freshly initialised torchvision
ResNet-18s with a CIFAR stem (permutation groups traced with torch.fx: residual streams tied).
Repeats the alignment and reports the median.

Usage: CIFAR10_DIR=... .venv/bin/python benchmarks/alignment_speed.py [--preset cpu] [--random | --resnet18]
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchvision

from helpers.alignment import permutation_spec, weight_matching
from helpers.models import course_cnn
from helpers.presets import get_preset
from helpers.repro import device_name, seed_everything
from helpers.zoo import get_pair


def resnet18_cifar(seed: int) -> torch.nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 first conv, no max-pool), eval mode."""
    seed_everything(seed)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--random", action="store_true", help="align two untrained models (no data needed)")
    parser.add_argument("--resnet18", action="store_true", help="align two untrained ResNet-18s (CIFAR stem)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    if args.resnet18:
        model_a, model_b = (resnet18_cifar(seed) for seed in (0, 1))
        source = "torchvision resnet18, CIFAR stem, random init"
    elif args.random:
        seed_everything(0)
        model_a, model_b = course_cnn(preset.width), course_cnn(preset.width)
        source = "random init"
    else:
        data = preset.load_data()
        pair = get_pair("independent", preset, data)
        model_a, model_b = pair.model_a, pair.model_b
        source = f"independent pair, {data.source}"
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        weight_matching(model_a, model_b)
        times.append(time.perf_counter() - start)
    target = 10.0 if args.resnet18 else 5.0
    result = {"preset": preset.name, "width": None if args.resnet18 else preset.width, "models": source,
              "groups": [g.size for g in permutation_spec(model_a)], "repeats": args.repeats,
              "median_seconds": statistics.median(times), "max_seconds": max(times),
              "device": device_name(torch.device("cpu")), "torch": torch.__version__,
              "target_seconds": target, "meets_target": statistics.median(times) <= target}
    print(f"weight_matching: median {result['median_seconds']:.2f} s over {args.repeats} runs ({source})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
