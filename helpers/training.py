"""Training and evaluation (introduced in notebook 01).

`train` runs SGD with Nesterov momentum, label smoothing and a one-cycle learning-rate schedule
(linear warm-up, then linear decay to zero) over tensor-resident, batch-augmented data. It returns
a `History` rather than printing. On the CPU the same seed gives bit-identical weights.

Precision: `precision="auto"` uses bfloat16 autocast where the hardware does it natively (CUDA
with bf16; CPUs with AMX or AVX-512 BF16, via oneDNN), which is several times faster there, and
float32 elsewhere (on a CPU without bf16 units, bf16 would be emulated and slower).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from helpers.data import TensorData, iterate_batches, num_batches
from helpers.repro import pick_device


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
    augment: bool = True             # random crop (reflect pad 4) + horizontal flip
    precision: str = "auto"          # "auto" | "bf16" | "fp32" (see module docstring)

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        if self.num_epochs < 1 or self.batch_size < 1:
            raise ValueError("num_epochs and batch_size must be >= 1")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the hardware runs bfloat16 natively, else 'fp32'."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        try:  # private but stable helpers; any failure means "no native bf16"
            native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
        except Exception:  # noqa: BLE001
            native = False
        return "bf16" if native else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for `precision == 'bf16'`, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_at(step: int, total_steps: int, peak: float, warmup: float) -> float:
    """One-cycle schedule: linear 0 -> peak over `warmup * total_steps`, then linear -> 0."""
    warm = max(1, round(warmup * total_steps))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warm))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
    )


def train(model: nn.Module, data: TensorData, *, config: TrainConfig, seed: int = 0,
          test_data: TensorData | None = None, device: torch.device | str | None = None,
          start_epoch: int = 0, stop_epoch: int | None = None, progress: bool = True,
          desc: str = "train", loss_fn=None, part: tuple[int, int] = (0, 1),
          optimizer_state: dict | None = None) -> History:
    """Train `model` in place on `data` and return its `History`.

    seed: fixes the data order and augmentation (not the initial weights: seed before building
        the model for that). start_epoch / stop_epoch: run only part of the schedule, keeping the
        learning rate where the full `config.num_epochs` schedule would have it (spawned children).
    test_data: evaluated after every epoch (not counted in the training time).
    loss_fn: `loss_fn(logits, x, y) -> loss` replaces cross-entropy (distillation uses it).
    part: `(i, k)` runs only the i-th of k equal slices of each epoch's batches, with the batches and
        learning rates a full run has there (federated rounds shorter than an epoch use it). Each call
        starts a fresh optimiser, so k calls i = 0..k-1 equal one full epoch only without momentum.
    optimizer_state: a dict to carry the optimiser's state (momentum) across calls: loaded from if
        it holds a state, and refilled with the state at the end. With it, k calls i = 0..k-1 equal
        one full epoch exactly.
    """
    device = torch.device(device) if device is not None else pick_device()
    precision = resolve_precision(config.precision, device)
    stop_epoch = config.num_epochs if stop_epoch is None else stop_epoch
    if not 0 <= start_epoch < stop_epoch <= config.num_epochs:
        raise ValueError(f"need 0 <= start_epoch < stop_epoch <= num_epochs, got {start_epoch}, {stop_epoch}, "
                         f"{config.num_epochs}")
    if len(data) < config.batch_size:
        raise ValueError(f"the training set ({len(data)} images) is smaller than one batch ({config.batch_size})")
    model.to(device=device, memory_format=torch.channels_last)
    data_on_device = data.to(device)
    optimizer = make_optimizer(model, config)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    steps_per_epoch = num_batches(len(data), config.batch_size, drop_last=True)
    total_steps = steps_per_epoch * config.num_epochs
    index, slices = part
    if not 0 <= index < slices <= steps_per_epoch:
        raise ValueError(f"part must be (i, k) with 0 <= i < k <= {steps_per_epoch} (batches per epoch), got {part}")
    first, last = index * steps_per_epoch // slices, (index + 1) * steps_per_epoch // slices
    # One stream per (seed, epoch): a child resumed at epoch k sees what a full run would from epoch k.
    history = History(precision=precision, device=str(device))
    elapsed = 0.0
    bar = tqdm(total=(last - first) * (stop_epoch - start_epoch), desc=desc, unit="step",
               disable=not progress, mininterval=0.5, leave=False)
    try:
        for epoch in range(start_epoch, stop_epoch):
            generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            batches = iterate_batches(data_on_device, config.batch_size, shuffle=True, augment_images=config.augment,
                                      generator=generator, device=device, drop_last=True,
                                      start_batch=first, stop_batch=last)
            for i, (x, y) in enumerate(batches, start=first):
                lr = lr_at(epoch * steps_per_epoch + i, total_steps, config.lr, config.warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast(device, precision):
                    logits = model(x)
                    if loss_fn is None:
                        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
                    else:
                        loss = loss_fn(logits.float(), x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                bar.update()
            elapsed += time.perf_counter() - t0
            history.epoch.append(epoch + 1)
            history.train_loss.append(float(loss_sum) / seen)
            history.train_accuracy.append(float(correct) / seen)
            history.lr.append(lr)
            history.seconds.append(elapsed)
            history.images_seen += seen
            postfix = {"epoch": epoch + 1, "loss": f"{history.train_loss[-1]:.3f}"}
            if test_data is not None:
                metrics = evaluate(model, test_data, device=device, precision=precision)
                history.test_loss.append(metrics["loss"])
                history.test_accuracy.append(metrics["accuracy"])
                postfix["test_acc"] = f"{metrics['accuracy']:.3f}"
            bar.set_postfix(postfix)
    finally:
        bar.close()
    if optimizer_state is not None:
        optimizer_state.clear()
        optimizer_state.update(optimizer.state_dict())  # this optimiser is discarded: no copy needed
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, data: TensorData, *, batch_size: int = 1000,
                   device: torch.device | str | None = None, precision: str = "auto") -> torch.Tensor:
    """Logits (N, C) as float32 on the CPU, in eval mode (the model's mode is restored after).
    `device`: where to run (the model is moved there); default: where the model's parameters are."""
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    try:
        out = []
        for x, _ in iterate_batches(data, batch_size, device=device):
            with autocast(device, precision):
                out.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def evaluate(model: nn.Module, data: TensorData, *, batch_size: int = 1000,
             device: torch.device | str | None = None, precision: str = "auto") -> dict[str, float]:
    """Test accuracy (0-1) and mean cross-entropy loss of `model` on `data`, as plain floats."""
    logits = predict_logits(model, data, batch_size=batch_size, device=device, precision=precision)
    labels = data.labels.cpu()
    return {
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
    }


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

