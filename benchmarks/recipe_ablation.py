"""What each of airbench's ingredients buys at a preset's budget: the `long` recipe, then the same run with
one ingredient taken out at a time (one seed each, same data order and initial-weight seed).

Ingredients (helpers.models.fast_cnn / helpers.training.airbench_config):
    whitening      the frozen 2x2 whitening stem (off: a trained 3x3 conv block of the same 24 channels)
    dirac          identity-initialised convolutions (off: PyTorch's default initialisation)
    bias_lr        64x learning rate for BatchNorm biases (off: 1x)
    lookahead      the lookahead EMA every 5 steps (off: none)
    alternate_flip each image mirrored every other epoch (off: a fresh random half per batch)

Usage (from the project root):
    CIFAR10_DIR=../shared/data/cifar10-jpg .venv/bin/python benchmarks/recipe_ablation.py --preset long --epochs 8

Accuracy is without test-time augmentation. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import torch

from helpers.data import DataNotFoundError, load_cifar10
from helpers.devices import pick_device, resolve_precision
from helpers.evaluation import evaluate
from helpers.models import fast_cnn
from helpers.presets import get_preset
from helpers.repro import device_name, seed_everything
from helpers.training import train
from helpers.zoo import fit_stem

VARIANTS = ("full", "whitening", "dirac", "bias_lr", "lookahead", "alternate_flip")


def build(variant: str, width: float, seed: int, train_data) -> torch.nn.Module:
    """airbench's network at `width`, with the model-side ingredient `variant` taken out."""
    seed_everything(seed)
    return fit_stem(fast_cnn(width, whiten=variant != "whitening", dirac=variant != "dirac"), train_data)


def config_for(variant: str, base):
    """The preset's schedule with the trainer-side ingredient `variant` taken out."""
    return {"bias_lr": replace(base, bias_lr_factor=1.0), "lookahead": replace(base, lookahead_every=0),
            "alternate_flip": replace(base, flip="random")}.get(variant, base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="long")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    if preset.arch != "fast":
        sys.exit(f"preset {preset.name!r} does not use airbench's network (arch={preset.arch!r})")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    try:
        data = load_cifar10()
    except DataNotFoundError as exc:
        sys.exit(str(exc))
    device = pick_device()
    base = preset.train if args.epochs is None else replace(preset.train, num_epochs=args.epochs)
    result = {"preset": preset.name, "data_source": data.source, "device": device_name(device),
              "torch": torch.__version__, "precision": resolve_precision(base.precision, device),
              "width": preset.width, "num_epochs": base.num_epochs, "seed": args.seed, "variants": {}}
    for variant in variants:
        model = build(variant, preset.width, args.seed, data.train)
        history = train(model, data.train, config=config_for(variant, base), seed=args.seed, device=device,
                        desc=f"without {variant}" if variant != "full" else "full recipe")
        accuracy = evaluate(model, data.test, device=device)["accuracy"]
        result["variants"][variant] = {"test_accuracy": accuracy, "train_seconds": history.train_seconds}
        print(f"{'full recipe' if variant == 'full' else 'without ' + variant}: {accuracy:.2%} "
              f"({history.train_seconds:.0f} s)", flush=True)
    if "full" in result["variants"]:
        full = result["variants"]["full"]["test_accuracy"]
        for variant, row in result["variants"].items():
            row["effect_points"] = 100 * (full - row["test_accuracy"])   # what the ingredient adds
    print(json.dumps(result))


if __name__ == "__main__":
    main()
