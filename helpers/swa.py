"""Averaging along one training run: stochastic weight averaging (SWA) and an exponential moving
average (EMA) of the weights, with `torch.optim.swa_utils` (notebook 08).

SWA (Izmailov et al., 2018): train as usual for the first `swa_start` of the steps, then anneal the
learning rate to a constant `swa_lr` (`SWALR`) and average the weights `averages_per_epoch` times per
epoch, and at the last step (`AveragedModel`); the average's BatchNorm statistics are recomputed at the end (`update_bn`),
because averaged weights do not match any iterate's statistics. EMA: every step,
`ema = decay * ema + (1 - decay) * weights` (`get_ema_multi_avg_fn`), BatchNorm buffers included.

`train_with_averages` returns all three from the same run and the same compute: the run's endpoint
(its last iterate), the SWA average and the EMA. The averages cost no extra optimiser steps, only a
weight copy per update and one pass over a few thousand training images for `update_bn`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn

from helpers.data import Batches, DataLike, as_data, iterate_batches
from helpers.training import History, TrainConfig, schedule_lr, steps_per_epoch, train_steps


@dataclass(frozen=True)
class AveragingConfig:
    """When and how a run is averaged (part of a cached run's key)."""

    swa_start: float = 0.75          # fraction of the steps trained before SWA starts averaging
    swa_lr: float = 0.05             # the constant learning rate of the SWA phase
    anneal_fraction: float = 0.25    # share of the SWA phase spent annealing (linearly) to swa_lr
    averages_per_epoch: int = 8      # SWA snapshots per epoch of the SWA phase
    ema_horizon: float = 0.1         # the EMA averages over about this fraction of the run's steps

    def __post_init__(self) -> None:
        if not 0 < self.swa_start < 1:
            raise ValueError(f"swa_start must be in (0, 1), got {self.swa_start}")
        if self.swa_lr <= 0 or not 0 <= self.anneal_fraction < 1 or self.averages_per_epoch < 1:
            raise ValueError("need swa_lr > 0, 0 <= anneal_fraction < 1 and averages_per_epoch >= 1")
        if not 0 < self.ema_horizon <= 1:
            raise ValueError(f"ema_horizon must be in (0, 1], got {self.ema_horizon}")


def swa_schedule(num_steps: int, config: TrainConfig, averaging: AveragingConfig) -> list[float]:
    """The run's learning rate per step: `config`'s one-cycle schedule up to `swa_start`, then SWALR's
    linear anneal to `swa_lr` and constant after (read off a real `SWALR`, stepped once per step)."""
    start = max(1, round(averaging.swa_start * num_steps))
    lrs = [schedule_lr(config, step, num_steps) for step in range(start)]
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lrs[-1])
    anneal = max(1, round(averaging.anneal_fraction * (num_steps - start)))
    scheduler = SWALR(dummy, swa_lr=averaging.swa_lr, anneal_epochs=anneal, anneal_strategy="linear")
    for _ in range(num_steps - start):
        lrs.append(dummy.param_groups[0]["lr"])
        dummy.step()            # no gradients: changes nothing, keeps the optimizer-then-scheduler order
        scheduler.step()
    return lrs


def _bn_inputs(data: "TensorData | Batches", num_images: int, *, seed: int, device: torch.device):
    """Inputs of `num_images` training examples, un-augmented: a random subset of tensors, or the first
    batches of a DataLoader (as it yields them)."""
    if isinstance(data, Batches):
        seen = 0
        for x, _ in data.to(device):
            if seen >= num_images:
                return
            yield x
            seen += len(x)
        return
    bn_data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:num_images])
    yield from (x for x, _ in iterate_batches(bn_data, 500, device=device))


def train_with_averages(model: nn.Module, data: DataLike, *, config: TrainConfig, averaging: AveragingConfig,
                        seed: int = 0, test_data: DataLike | None = None, bn_images: int = 5000,
                        progress: bool = True, desc: str = "SWA run") -> tuple[dict[str, nn.Module], History]:
    """Train `model` in place for `config.num_epochs` epochs with the SWA schedule and return
    `({"endpoint": model, "swa": ..., "ema": ...}, history)`: three models from one run.

    The SWA average's BatchNorm statistics are recomputed on `bn_images` un-augmented training images
    (`update_bn`); the EMA averages BatchNorm buffers with the weights."""
    data = as_data(data, name="training data")
    per_epoch = steps_per_epoch(data, config)
    num_steps = per_epoch * config.num_epochs
    lrs = swa_schedule(num_steps, config, averaging)
    start = max(1, round(averaging.swa_start * num_steps))
    every = max(1, per_epoch // averaging.averages_per_epoch)
    decay = max(0.0, 1.0 - 1.0 / max(1.0, averaging.ema_horizon * num_steps))
    swa = ema = None

    def after_step(step: int) -> None:
        nonlocal swa, ema
        if ema is None:
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        ema.update_parameters(model)
        if step >= start and (step - start + 1) % every == 0 or step == num_steps - 1:
            if swa is None:
                swa = AveragedModel(model)
            swa.update_parameters(model)

    history = train_steps(model, data, config=config, num_steps=num_steps, seed=seed, lr_schedule=lrs.__getitem__,
                          after_step=after_step, test_data=test_data, progress=progress, desc=desc)
    device = next(model.parameters()).device
    update_bn(_bn_inputs(data, bn_images, seed=seed, device=device), swa, device=device)
    out = {"endpoint": model}
    for name, averaged in (("swa", swa), ("ema", ema)):
        plain = copy.deepcopy(model)
        plain.load_state_dict(averaged.module.state_dict())
        out[name] = plain.eval()
    return out, history
