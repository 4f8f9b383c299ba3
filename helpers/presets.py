"""The budgets every notebook reads: `smoke`, `workshop`, `cpu`, `long`, `gpu` (introduced in notebook 01).

Pick one with the `HELPERS_PRESET` environment variable; the default is `gpu` when CUDA is
available, else `cpu`.

- `smoke`: hermetic, for tests: synthetic CIFAR-shaped data, tiny widths, one short epoch.
- `workshop`: real CIFAR-10, small: a class-balanced 6,000-image training subset, a 2,000-image
  test subset, narrow models, 3 epochs: the whole course in minutes on a laptop in float32.
- `cpu`:   real CIFAR-10, sized for a laptop CPU (what the committed results use).
- `long`:  real CIFAR-10, well-trained models on a CPU: airbench's network and recipe (no committed run yet).
- `gpu`:   real CIFAR-10, wider models and more epochs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace

import torch

from helpers.data import (DataNotFoundError, DataSplits, balanced_subset, load_cifar10, synthetic_cifar,
                          train_val_split)
from helpers.training import TrainConfig, airbench_config


@dataclass(frozen=True)
class Preset:
    """A budget: data, model sizes and training schedule."""

    name: str
    data: str                        # "synthetic" | "cifar10"
    width: float                     # course CNN width multiplier (1.0 = 32/64/128/256 channels)
    student_width: float             # student CNN width multiplier (1.0 = 16/32/64/128 channels)
    train: TrainConfig               # schedule for one model
    spawn_epoch: int                 # epochs the parent trains before it is forked (notebook 02)
    num_seeds: int                   # seeds for mean +/- std claims
    soup_size: int                   # spawned children averaged into one "soup" (notebook 03)
    kd_seeds: int                    # seeds of each student recipe in notebook 06 (may exceed num_seeds)
    arch: str = "course"             # the course model: "course" (`course_cnn`) or "fast" (airbench's, `fast_cnn`)
    recal_images: int = 5000         # training images that recompute BatchNorm statistics after a merge (03-05, 08, 09)
    val_fraction: float = 0.1        # share of each class's training images held out for validation
    train_subset: int = 0            # class-balanced training images kept after the split (0 = all)
    test_subset: int = 0             # class-balanced test images kept (0 = all 10,000)
    distil_four_owners: bool = True  # notebook 09 distils the four owners' ensemble (about one more joint training)
    # What the notebooks sweep or repeat; set per preset below where it differs from these (the `gpu` values).
    interpolation_alphas: tuple[float, ...] = (0, 0.2, 0.4, 0.5, 0.6, 0.8, 1)  # model b's weight along a line (03)
    alignment_alphas: tuple[float, ...] = (0, 0.2, 0.4, 0.5, 0.6, 0.8, 1)      # the same, aligned or not (04)
    width_trend: tuple[float, ...] = (0.5, 1.0, 2.0)  # width multipliers of notebook 04's width trend (() = left out)
    ensemble_models: int = 4         # independently trained course models in notebook 05: N(N-1)/2 pairs
    timing_repeats: int = 5          # repeats of each inference timing in notebook 05 (the fastest is kept)
    kd_temperatures: tuple[float, ...] = (1.0, 2.0, 4.0)  # KL temperatures swept on seed 0, chosen on data.val (06)
    fed_clients: int = 4             # FedAvg clients in notebook 07
    fed_averages_per_epoch: int = 16  # FedAvg rounds per epoch of client training (07, 09)
    swa_runs: int = 3                # seeds of notebook 08's SWA/EMA comparison
    synthetic_train: int = 2048      # synthetic images (smoke only)
    synthetic_test: int = 512

    def load_data(self) -> DataSplits:
        """The preset's data: synthetic for `smoke`, real CIFAR-10 otherwise, with a stratified
        validation split (`val_fraction`, seed 0) held out of the training images, and the
        class-balanced subsets `train_subset` / `test_subset` where set. Every model in the course
        trains on `data.train` only; `data.val` is for choices, `data.test` for reporting."""
        full = (synthetic_cifar(self.synthetic_train, self.synthetic_test, seed=0) if self.data == "synthetic"
                else load_cifar10())
        train, val = train_val_split(full.train, self.val_fraction, seed=0)
        test = full.test
        if self.train_subset:
            train = balanced_subset(train, self.train_subset, seed=0)
        if self.test_subset:
            test = balanced_subset(test, self.test_subset, seed=0)
        return DataSplits(train=train, test=test, source=full.source, val=val,
                          fingerprint=f"{full.fingerprint}-val{self.val_fraction:g}-n{self.train_subset}-{self.test_subset}")


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", data="synthetic", width=0.25, student_width=0.5,
        train=TrainConfig(num_epochs=2, batch_size=128, lr=0.1, label_smoothing=0.1),
        spawn_epoch=1, num_seeds=2, soup_size=3, kd_seeds=2, recal_images=512,
        interpolation_alphas=(0, 0.25, 0.5, 0.75, 1), alignment_alphas=(0, 0.5, 1), width_trend=(0.25, 0.5),
        ensemble_models=3, timing_repeats=2, fed_clients=2, fed_averages_per_epoch=2, swa_runs=2,
    ),
    # Sized so that `make run` (every notebook, cold cache) fits in 12 minutes on 2 CPU cores in float32
    # (no bf16 units needed), with every lesson of the course still visible (tests/test_real_data.py).
    # 6,000 training images since the course has ten notebooks (10,000 took 1,136 s; models there reached
    # 55-60%, here about 48-52%).
    "workshop": Preset(
        name="workshop", data="cifar10", width=0.25, student_width=0.25,
        train=TrainConfig(num_epochs=3, batch_size=128, lr=0.1),
        spawn_epoch=1, num_seeds=2, soup_size=3, val_fraction=0.04, train_subset=6_000, test_subset=2_000,
        recal_images=1000, distil_four_owners=False,
        # Students are cheap, and at this budget the scratch student's accuracy spreads over several points
        # from seed to seed: two seeds cannot tell distillation from scratch, so notebook 06 trains four.
        # No width trend in notebook 04 (3 more models, 3 aligned pairs per width), to stay within the budget.
        kd_seeds=4, kd_temperatures=(1.0, 4.0), width_trend=(),
        interpolation_alphas=(0, 0.25, 0.5, 0.75, 1), alignment_alphas=(0, 0.25, 0.5, 0.75, 1), swa_runs=2,
    ),
    # Sized for a `make run` (every notebook, cold cache) of 45 minutes on 2 cores of a Xeon (Sapphire
    # Rapids, bf16 via AMX); results/cpu/timings.json has what the committed run took and the machine's
    # speed (41.5 minutes at 2,274 training images/s; 57.5 on a slower host of that kind at an earlier
    # commit), benchmarks/train_speed.py the per-model figure. Two epochs: the course asks for >= 3 runs
    # per compared method (about 40 trainings in all), and on the slower host (profiled at 1,900 images/s)
    # one model of 6 epochs took 140 s (82-83%), of 3 epochs 77 s (78.6%), of 2 epochs 46 s (73.8%);
    # six epochs made the ten-notebook run 129 minutes there.
    "cpu": Preset(
        name="cpu", data="cifar10", width=0.5, student_width=0.5,
        train=TrainConfig(num_epochs=2, batch_size=256, lr=0.2),
        spawn_epoch=1, num_seeds=3, soup_size=3, kd_seeds=3, recal_images=2000, distil_four_owners=False,
        interpolation_alphas=(0, 0.25, 0.5, 0.75, 1), alignment_alphas=(0, 0.25, 0.5, 0.75, 1),
        width_trend=(0.25, 0.5),
    ),
    # Well-trained models on 2 CPU cores (issue 32): airbench's network at half width (32/128/128 channels
    # after the whitening stem) and its recipe (`airbench_config`: Nesterov SGD at momentum 0.85 with
    # decoupled lr / weight decay, 64x lr for BatchNorm biases, triangular schedule, lookahead EMA, +-2 px
    # shifts with alternating flips). For the comparisons that change sign with model quality (issue 33).
    # benchmarks/train_speed.py --preset long --seeds 3 (all 50,000 training images, JPEG copy, 2-core Xeon with
    # AMX, bf16): 8 epochs 86.75 +- 0.22% in 175 s per model, 12 epochs 87.95 +- 0.22% in 253 s, 16 epochs
    # 88.18 +- 0.10% in 338 s (89.46% with 6-view TTA): 16, the fewest measured that reach 88%.
    "long": Preset(
        name="long", data="cifar10", arch="fast", width=0.5, student_width=0.5,
        train=airbench_config(num_epochs=16, batch_size=512),
        spawn_epoch=1, num_seeds=3, soup_size=3, kd_seeds=3, recal_images=2000, distil_four_owners=False,
        interpolation_alphas=(0, 0.25, 0.5, 0.75, 1), alignment_alphas=(0, 0.25, 0.5, 0.75, 1),
        width_trend=(),
    ),
    "gpu": Preset(
        name="gpu", data="cifar10", width=2.0, student_width=1.0,
        train=TrainConfig(num_epochs=20, batch_size=512, lr=0.2),
        spawn_epoch=4, num_seeds=5, soup_size=6, kd_seeds=5,
    ),
}


def get_preset(name: str | None = None, **overrides) -> Preset:
    """The preset called `name`, else `$HELPERS_PRESET`, else `gpu` if CUDA is available, else `cpu`.

    `overrides` replace fields (e.g. `get_preset("cpu", num_seeds=1)`). An unknown name is a
    `ValueError` listing the valid ones."""
    name = name or os.environ.get("HELPERS_PRESET") or ("gpu" if torch.cuda.is_available() else "cpu")
    key = name.strip().lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (from HELPERS_PRESET or the name given); "
                         f"valid presets: {', '.join(PRESETS)}")
    preset = PRESETS[key]
    return replace(preset, **overrides) if overrides else preset


def main() -> None:
    """`python -m helpers.presets`: print the active preset and make sure its data is ready
    (used by `make run` so that a missing dataset fails early with one clear message)."""
    try:
        preset = get_preset()
        print(f"preset: {preset.name} ({preset.data} data, width {preset.width}, {preset.train.num_epochs} epochs)")
        data = preset.load_data()
    except (DataNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    print(f"data ready: {len(data.train)} train / {len(data.val)} validation / {len(data.test)} test images "
          f"from {data.source}")


if __name__ == "__main__":
    main()
