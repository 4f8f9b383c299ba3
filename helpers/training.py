"""Training (introduced in notebook 01; evaluation is in `helpers.evaluation`).

`train` runs SGD with Nesterov momentum, label smoothing and a one-cycle learning-rate schedule
(linear warm-up, then linear decay to zero) over tensor-resident, batch-augmented data. It returns
a `History` rather than printing. On the CPU the same seed gives bit-identical weights.

The pieces, smallest first:
- `run_steps(model, batches, lrs, optimizer=, loss_fn=)`: the core, one optimiser step per batch;
- `run_epoch(...)`: one epoch of the schedule (or a slice of one), with its batches and learning rates;
- entry points: `train` (a whole run), `train_epochs` (epochs [start, stop) of a schedule: spawned
  children, distillation via `loss_fn`), `train_part` (a slice of an epoch with the caller's
  optimiser: federated rounds) and `train_steps` (a run of any number of steps, e.g. a quarter-epoch
  fine-tune, with an optional learning-rate schedule and a callback after every step: SWA, EMA).
Precision (`config.precision`, "auto" by default) is resolved by `helpers.devices.resolve_precision`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from helpers.data import AUGMENT_PAD, Batches, DataLike, TensorData, alternating_flips, as_data, iterate_batches, num_batches
from helpers.devices import PRECISIONS, autocast, grad_scaler, model_device, pick_device, resolve_precision
from helpers.evaluation import evaluate


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (stored inside every checkpoint)."""

    num_epochs: int = 10             # passes over the training set
    batch_size: int = 256            # images per optimiser step
    lr: float = 0.2                  # peak learning rate of the one-cycle schedule (per step)
    momentum: float = 0.9            # Nesterov momentum
    weight_decay: float = 5e-4       # L2 on conv/linear weights only (not BatchNorm, not biases)
    label_smoothing: float = 0.2     # cross-entropy label smoothing
    warmup: float = 0.2              # fraction of all steps spent warming up linearly from 0
    augment: bool = True             # random crop (reflect pad `crop_pad`) + horizontal flip
    precision: str = "auto"          # "auto" | "bf16" | "fp16" | "fp32" (helpers.devices.resolve_precision)
    # airbench's trainer-side ingredients (Jordan, 2024); the defaults are the course's original recipe.
    crop_pad: int = AUGMENT_PAD      # largest random shift, pixels (airbench: 2)
    flip: str = "random"             # "random": a fresh half per batch; "alternate": each image mirrored every
                                     # other epoch (`helpers.data.alternating_flips`); "none"
    lr_start: float = 0.0            # learning rate at step 0, as a fraction of `lr` (airbench: 0.2)
    lr_end: float = 0.0              # learning rate at the last step, as a fraction of `lr` (airbench: 0.07)
    bias_lr_factor: float = 1.0      # learning-rate multiplier for BatchNorm biases (airbench: 64)
    lookahead_every: int = 0         # steps between lookahead-EMA updates, 0 = off (airbench: 5)
    lookahead_decay: float = 0.95 ** 5   # the EMA's decay at the end of the run (ramped up as (t / T) ** 3)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.num_epochs < 1 or self.batch_size < 1:
            raise ValueError("num_epochs and batch_size must be >= 1")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.flip not in ("random", "alternate", "none"):
            raise ValueError(f"flip must be 'random', 'alternate' or 'none'; got {self.flip!r}")
        if self.crop_pad < 0 or self.lookahead_every < 0 or self.bias_lr_factor <= 0:
            raise ValueError("crop_pad and lookahead_every must be >= 0 and bias_lr_factor > 0")
        if not (0 <= self.lr_start <= 1 and 0 <= self.lr_end <= 1 and 0 <= self.lookahead_decay < 1):
            raise ValueError("lr_start and lr_end must be in [0, 1], lookahead_decay in [0, 1)")


def airbench_config(*, num_epochs: int, batch_size: int = 1024, lr_per_1024: float = 11.5,
                    weight_decay_per_1024: float = 0.0153, momentum: float = 0.85, **overrides) -> TrainConfig:
    """airbench94's optimiser and schedule (Jordan, 2024) as a `TrainConfig` for this trainer.

    airbench states its learning rate and weight decay per 1,024 examples of a summed loss, decoupled
    from momentum: a step of the mean loss over a batch of B then has lr = lr_per_1024 * (B / 1024) *
    (1 - momentum) / (2 - momentum) (its "kilostep" scale, 1 + 1 / (1 - momentum) steps per 1,024
    examples) and weight decay `weight_decay_per_1024 / lr_per_1024`, so that lr x weight decay per step
    is as in airbench whatever B is. The rest: label smoothing 0.2; a triangular schedule from 0.2 x peak
    up to the peak at 23% of the steps and down to 0.07 x peak; BatchNorm biases at 64x the learning rate;
    a lookahead EMA every 5 steps; shifts of up to 2 pixels and alternating flips. `overrides` replace any
    field. Credit: github.com/KellerJordan/cifar10-airbench (MIT)."""
    kilostep = 1 + 1 / (1 - momentum)
    fields = dict(num_epochs=num_epochs, batch_size=batch_size, lr=lr_per_1024 * batch_size / 1024 / kilostep,
                  momentum=momentum, weight_decay=weight_decay_per_1024 / lr_per_1024, label_smoothing=0.2,
                  warmup=0.23, lr_start=0.2, lr_end=0.07, bias_lr_factor=64.0, lookahead_every=5,
                  crop_pad=2, flip="alternate")
    return TrainConfig(**(fields | overrides))


@dataclass
class History:
    """Per-epoch record of a run. `seconds` is cumulative training time (evaluation excluded)."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images_seen: int = 0
    precision: str = ""
    device: str = ""

    @property
    def train_seconds(self) -> float:
        return self.seconds[-1] if self.seconds else 0.0

    @property
    def final_test_accuracy(self) -> float | None:
        return self.test_accuracy[-1] if self.test_accuracy else None

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds else 0.0

    def record(self, epoch: int, stats: "StepStats") -> dict[str, str]:
        """Append one epoch's training numbers; returns them formatted for a progress bar."""
        self.epoch.append(epoch)
        self.train_loss.append(stats.loss_sum / stats.seen)
        self.train_accuracy.append(stats.correct / stats.seen)
        self.lr.append(stats.lr)
        self.seconds.append(self.train_seconds + stats.seconds)
        self.images_seen += stats.seen
        return {"epoch": str(epoch), "loss": f"{self.train_loss[-1]:.3f}"}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)

    def then(self, later: "History") -> "History":
        """This run followed by `later` (e.g. a spawned child after its parent): epochs and
        seconds continue from where this one stopped."""
        offset = self.train_seconds
        return History(
            epoch=self.epoch + later.epoch,
            train_loss=self.train_loss + later.train_loss,
            train_accuracy=self.train_accuracy + later.train_accuracy,
            test_loss=self.test_loss + later.test_loss,
            test_accuracy=self.test_accuracy + later.test_accuracy,
            lr=self.lr + later.lr,
            seconds=self.seconds + [offset + s for s in later.seconds],
            images_seen=self.images_seen + later.images_seen,
            precision=later.precision or self.precision,
            device=later.device or self.device,
        )


def lr_at(step: int, total_steps: int, peak: float, warmup: float, *, start: float = 0.0,
          end: float = 0.0) -> float:
    """One-cycle schedule: linear 0 -> peak over `warmup * total_steps`, then linear -> 0. With `start` /
    `end` (fractions of the peak; airbench's "triangle" uses 0.2 and 0.07) the line runs from
    `start * peak` up to the peak and down to `end * peak` instead of from and to 0."""
    warm = max(1, round(warmup * total_steps))
    if step < warm:
        if start:
            return peak * (start + (1 - start) * (step + 1) / warm)
        return peak * (step + 1) / warm
    down = max(0.0, (total_steps - step) / max(1, total_steps - warm))
    return peak * (end + (1 - end) * down) if end else peak * down


def schedule_lr(config: "TrainConfig", step: int, total_steps: int) -> float:
    """The config's learning rate at `step` of `total_steps` (`lr_at` with its peak, warmup, start, end)."""
    return lr_at(step, total_steps, config.lr, config.warmup, start=config.lr_start, end=config.lr_end)


class Lookahead:
    """airbench's lookahead EMA: every `config.lookahead_every` steps the weights move to an exponential
    average of themselves, `ema <- ema + (1 - decay) (w - ema); w <- ema`, with `decay` ramped from 0 to
    `config.lookahead_decay` as (step / total) ** 3, so it smooths mostly the end of the run. Floating-point
    buffers (BatchNorm statistics) are averaged too. A run continued from a checkpoint restarts the average
    from the weights it starts with."""

    def __init__(self, model: nn.Module, config: "TrainConfig", total_steps: int) -> None:
        self.every, self.decay, self.total = config.lookahead_every, config.lookahead_decay, total_steps
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for key, value in model.state_dict().items():
            if key in self.state:
                self.state[key].lerp_(value, 1 - decay)
                value.copy_(self.state[key])

    def after_step(self, model: nn.Module, step: int) -> None:
        """Call after optimiser step `step` (0-based)."""
        if (step + 1) % self.every == 0:
            self.update(model, self.decay * ((step + 1) / self.total) ** 3)

    def finish(self, model: nn.Module) -> None:
        """The weights become the average (what the run returns)."""
        self.update(model, 1.0)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """Nesterov SGD: weight decay on conv / linear weights only; with `config.bias_lr_factor` != 1 the
    BatchNorm biases form a third group whose learning rate is that many times the others' (each group's
    "lr_factor"; `run_steps` sets every group's lr to the schedule's value times it)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if config.bias_lr_factor != 1.0:
        bn_biases = {id(m.bias) for m in model.modules()
                     if isinstance(m, nn.modules.batchnorm._NormBase) and m.bias is not None and m.bias.requires_grad}
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1 and id(p) not in bn_biases]
        biases = [p for p in model.parameters() if id(p) in bn_biases]
        groups += [{"params": no_decay, "weight_decay": 0.0},
                   {"params": biases, "weight_decay": 0.0, "lr_factor": config.bias_lr_factor}]
    else:
        groups.append({"params": [p for p in model.parameters() if p.requires_grad and p.ndim <= 1],
                       "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`loss_fn(logits, x, y) -> loss`: logits (B, C) float32, x the (augmented) input batch, y (B,) labels."""


def cross_entropy_loss(config: TrainConfig) -> LossFn:
    """The default loss: cross-entropy with the config's label smoothing."""
    def loss_fn(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
    return loss_fn


@dataclass
class StepStats:
    """What `run_steps` measured: summed loss, correct predictions and images, the last lr, seconds."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    lr: float = 0.0
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# The core: optimiser steps over batches


def run_steps(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lrs: Iterable[float], *,
              optimizer: torch.optim.Optimizer, loss_fn: LossFn, device: torch.device, precision: str,
              scaler: torch.amp.GradScaler | None = None, bar: tqdm | None = None,
              after_step: Callable[[int], None] | None = None) -> StepStats:
    """One optimiser step per `(x, y)` in `batches`, with the learning rate from `lrs` (one per batch;
    times a parameter group's "lr_factor" where it has one). after_step(i): called after the i-th step.

    The model must already be on `device` and in train mode. The forward pass runs under the
    precision's autocast; the loss is computed in float32. `scaler` (fp16): scales the loss so small
    gradients do not underflow, and skips steps whose gradients overflowed. Returns the summed loss and correct
    predictions (synchronised once, at the end) and the wall-clock seconds spent."""
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, lr = 0, 0.0
    for i, ((x, y), lr) in enumerate(zip(batches, lrs)):
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_factor"] if "lr_factor" in group else lr
        with autocast(device, precision):
            logits = model(x)
            loss = loss_fn(logits.float(), x, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if after_step is not None:
            after_step(i)
        if bar is not None:
            bar.update()
    return StepStats(float(loss_sum), int(correct), seen, lr, time.perf_counter() - t0)


def epoch_steps(n: int, config: TrainConfig) -> int:
    """Optimiser steps in one epoch over `n` images (the last partial batch is dropped)."""
    return num_batches(n, config.batch_size, drop_last=True)


def steps_per_epoch(data: DataLike | Batches, config: TrainConfig) -> int:
    """Optimiser steps in one epoch of `data`: `epoch_steps(len(data), config)` for tensors, one per
    batch of a DataLoader (its own batch size)."""
    return len(data) if isinstance(data, Batches) else epoch_steps(len(data), config)


def epoch_batches(data: DataLike | Batches, config: TrainConfig, *, seed: int, epoch: int,
                  device: torch.device, start_batch: int = 0,
                  stop_batch: int | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches `[start_batch, stop_batch)` of epoch `epoch`: for tensors, the stream of (seed, epoch)
    (shuffled, augmented when `config.augment`, last partial batch dropped), the same batches wherever
    the slice starts; for a DataLoader, its own next pass."""
    if isinstance(data, Batches):
        return itertools.islice(iter(data.to(device)), start_batch, stop_batch)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    flip = None
    if config.augment and config.flip != "random":
        flip = (alternating_flips(len(data), epoch, seed=seed) if config.flip == "alternate"
                else torch.zeros(len(data), dtype=torch.bool))
    return iterate_batches(data, config.batch_size, shuffle=True, augment_images=config.augment,
                           generator=generator, device=device, drop_last=True, start_batch=start_batch,
                           stop_batch=stop_batch, pad=config.crop_pad, flip=flip)


def run_epoch(model: nn.Module, data: DataLike | Batches, *, config: TrainConfig, seed: int, epoch: int,
              optimizer: torch.optim.Optimizer, loss_fn: LossFn | None = None, part: tuple[int, int] = (0, 1),
              device: torch.device, precision: str, scaler: torch.amp.GradScaler | None = None,
              bar: tqdm | None = None, lookahead: Lookahead | None = None) -> StepStats:
    """Epoch `epoch` of the `config` schedule (or the i-th of k equal slices of it, `part=(i, k)`),
    with the batches and learning rates a full run has there. lookahead: updated after each step.

    One random stream per (seed, epoch): a run resumed at epoch e, or a slice of an epoch, sees what
    a full run would. `data` must already be on `device`; the model is put in train mode."""
    steps = steps_per_epoch(data, config)
    index, slices = part
    if not 0 <= index < slices <= steps:
        raise ValueError(f"part must be (i, k) with 0 <= i < k <= {steps} (batches per epoch), got {part}")
    first, last = index * steps // slices, (index + 1) * steps // slices
    batches = epoch_batches(data, config, seed=seed, epoch=epoch, device=device, start_batch=first, stop_batch=last)
    total = steps * config.num_epochs
    lrs = (schedule_lr(config, epoch * steps + i, total) for i in range(first, last))
    after = None if lookahead is None else (lambda i: lookahead.after_step(model, epoch * steps + first + i))
    model.train()
    return run_steps(model, batches, lrs, optimizer=optimizer, loss_fn=loss_fn or cross_entropy_loss(config),
                     device=device, precision=precision, scaler=scaler, bar=bar, after_step=after)


def prepare(model: nn.Module, data, config: TrainConfig,
            device: torch.device | str | None) -> tuple[torch.device, str, TensorData | Batches]:
    """Resolve device and precision, move `model` there (channels_last) and return the data on it.
    `data`: a `TensorData`, `(x, y)` tensors or a DataLoader (`helpers.data.as_data`)."""
    device = torch.device(device) if device is not None else pick_device()
    data = as_data(data, name="training data")
    if isinstance(data, TensorData) and len(data) < config.batch_size:
        raise ValueError(f"the training set ({len(data)} examples) is smaller than one batch ({config.batch_size})")
    if isinstance(data, Batches) and len(data) < 1:
        raise ValueError(f"{data.name}: the DataLoader yields no batches")
    model.to(device=device, memory_format=torch.channels_last)
    return device, resolve_precision(config.precision, device), data.to(device)


# ----------------------------------------------------------------------------------------------
# Entry points


def _end_epoch(history: History, epoch: int, stats: StepStats, model: nn.Module, test_data: DataLike | None, *,
               device: torch.device, precision: str, bar: tqdm) -> None:
    """Record an epoch's numbers, evaluate on `test_data` if given (the model's mode is restored), and
    show them on the progress bar."""
    postfix = history.record(epoch, stats)
    if test_data is not None:
        metrics = evaluate(model, test_data, device=device, precision=precision)
        history.test_loss.append(metrics["loss"])
        history.test_accuracy.append(metrics["accuracy"])
        postfix["test_acc"] = f"{metrics['accuracy']:.3f}"
    bar.set_postfix(postfix)


def train(model: nn.Module, data: DataLike, *, config: TrainConfig, seed: int = 0,
          test_data: DataLike | None = None, device: torch.device | str | None = None,
          progress: bool = True, desc: str = "train") -> History:
    """Train `model` in place on `data` for the whole `config` schedule and return its `History`.

    seed: fixes the data order and augmentation (not the initial weights: seed before building the
        model for that). test_data: evaluated after every epoch (not counted in the training time)."""
    return train_epochs(model, data, config=config, seed=seed, start_epoch=0, stop_epoch=config.num_epochs,
                        test_data=test_data, device=device, progress=progress, desc=desc)


def train_epochs(model: nn.Module, data: DataLike, *, config: TrainConfig, seed: int = 0, start_epoch: int,
                 stop_epoch: int, test_data: DataLike | None = None, loss_fn: LossFn | None = None,
                 device: torch.device | str | None = None, progress: bool = True, desc: str = "train") -> History:
    """Epochs `[start_epoch, stop_epoch)` of the `config` schedule, with the learning rates and
    batches a full run has there: a parent trained to epoch k and a child continued from k together
    equal one full run (spawned children, notebook 02). Starts a fresh optimiser.

    loss_fn: `loss_fn(logits, x, y) -> loss` instead of label-smoothed cross-entropy (distillation)."""
    if not 0 <= start_epoch < stop_epoch <= config.num_epochs:
        raise ValueError(f"need 0 <= start_epoch < stop_epoch <= num_epochs, got {start_epoch}, {stop_epoch}, "
                         f"{config.num_epochs}")
    device, precision, data = prepare(model, data, config, device)
    optimizer = make_optimizer(model, config)
    scaler = grad_scaler(device, precision)
    history = History(precision=precision, device=str(device))
    bar = tqdm(total=steps_per_epoch(data, config) * (stop_epoch - start_epoch), desc=desc, unit="step",
               disable=not progress, mininterval=0.5, leave=False)
    lookahead = (Lookahead(model, config, steps_per_epoch(data, config) * config.num_epochs)
                 if config.lookahead_every else None)
    try:
        for epoch in range(start_epoch, stop_epoch):
            stats = run_epoch(model, data, config=config, seed=seed, epoch=epoch, optimizer=optimizer,
                              loss_fn=loss_fn, device=device, precision=precision, scaler=scaler, bar=bar,
                              lookahead=lookahead)
            if lookahead is not None and epoch + 1 == config.num_epochs:
                lookahead.finish(model)
            _end_epoch(history, epoch + 1, stats, model, test_data, device=device, precision=precision, bar=bar)
    finally:
        bar.close()
    return history


def train_part(model: nn.Module, data: DataLike, *, config: TrainConfig, seed: int, epoch: int,
               part: tuple[int, int], optimizer: torch.optim.Optimizer,
               device: torch.device | str | None = None, scaler: torch.amp.GradScaler | None = None) -> StepStats:
    """Slice `part=(i, k)` of epoch `epoch` of the `config` schedule, stepping `optimizer` (the
    caller's, so that momentum can carry over from one slice to the next; federated rounds shorter
    than an epoch use it). k calls i = 0..k-1 with one optimiser equal one epoch exactly.
    The model must already be on `device` in channels_last (see `prepare`). `scaler`: the caller's
    gradient scaler in fp16 (`helpers.devices.grad_scaler`), kept like the optimiser."""
    device = torch.device(device) if device is not None else model_device(model)
    return run_epoch(model, as_data(data, name="training data").to(device), config=config, seed=seed, epoch=epoch, optimizer=optimizer, part=part,
                     device=device, precision=resolve_precision(config.precision, device), scaler=scaler)


def train_steps(model: nn.Module, data: DataLike, *, config: TrainConfig, num_steps: int, seed: int = 0,
                lr_schedule: Callable[[int], float] | None = None, after_step: Callable[[int], None] | None = None,
                test_data: DataLike | None = None, device: torch.device | str | None = None,
                progress: bool = True, desc: str = "train") -> History:
    """Train `model` in place for exactly `num_steps` optimiser steps (fractions of an epoch allowed:
    fine-tuning for a quarter epoch is `num_steps = epoch_steps(len(data), config) // 4`).

    Batches: the epochs of `seed`'s stream one after another (epoch e is the stream `train` uses for
    epoch e). lr_schedule: `step -> learning rate`; default the one-cycle schedule of `config`
    stretched over `num_steps`. after_step: called with the step index after every optimiser step
    (e.g. to update a `torch.optim.swa_utils.AveragedModel`). One `History` entry per epoch (or
    partial epoch) of batches; `config.num_epochs` is not used. Starts a fresh optimiser; with
    `config.lookahead_every` a fresh `Lookahead` over the `num_steps` (its average is what is returned)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    device, precision, data = prepare(model, data, config, device)
    optimizer = make_optimizer(model, config)
    scaler = grad_scaler(device, precision)
    schedule = lr_schedule or (lambda step: schedule_lr(config, step, num_steps))
    per_epoch = steps_per_epoch(data, config)
    history = History(precision=precision, device=str(device))
    bar = tqdm(total=num_steps, desc=desc, unit="step", disable=not progress, mininterval=0.5, leave=False)
    done, epoch = 0, 0
    lookahead = Lookahead(model, config, num_steps) if config.lookahead_every else None
    try:
        model.train()
        while done < num_steps:
            count = min(per_epoch, num_steps - done)
            batches = epoch_batches(data, config, seed=seed, epoch=epoch, device=device, stop_batch=count)
            if after_step is None:
                after = None if lookahead is None else (lambda i, d=done: lookahead.after_step(model, d + i))
                stats = run_steps(model, batches, (schedule(done + i) for i in range(count)), optimizer=optimizer,
                                  loss_fn=cross_entropy_loss(config), device=device, precision=precision,
                                  scaler=scaler, bar=bar, after_step=after)
            else:   # one step at a time, so the callback sees every step
                stats = StepStats()
                for i, batch in enumerate(batches):
                    one = run_steps(model, [batch], [schedule(done + i)], optimizer=optimizer,
                                    loss_fn=cross_entropy_loss(config), device=device, precision=precision,
                                    scaler=scaler, bar=bar)
                    t0 = time.perf_counter()
                    if lookahead is not None:
                        lookahead.after_step(model, done + i)
                    after_step(done + i)
                    stats = StepStats(stats.loss_sum + one.loss_sum, stats.correct + one.correct,
                                      stats.seen + one.seen, one.lr,
                                      stats.seconds + one.seconds + time.perf_counter() - t0)
                    model.train()
            done += count
            epoch += 1
            if lookahead is not None and done == num_steps:
                lookahead.finish(model)
            _end_epoch(history, epoch, stats, model, test_data, device=device, precision=precision, bar=bar)
    finally:
        bar.close()
    return history
