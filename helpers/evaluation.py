"""Predictions and accuracy of a trained model (introduced in notebook 01).

Separate from `helpers.training` so that the modules that merge or combine models (`averaging`,
`alignment`, `ensembling`) can evaluate them without importing the training loop.

`predict_logits` and `evaluate` take the course's `TensorData`, a pair of tensors `(x, y)`, or any
iterable of `(x, y)` batches such as a `torch.utils.data.DataLoader` (`helpers.data.as_data`).

`cache_predictions()` switches the prediction cache on for this process (`make run` does it for you;
it is off by default): a model with the same layers and weights as one already evaluated on the same
data gets a copy of the stored logits. The key is read from the tensors' bytes at every call, so an
edited weight is never served stale logits. How it works: `helpers/_prediction_cache.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers._prediction_cache import cache_predictions, memoized, tensor_digest
from helpers.data import Batches, DataLike, as_data, iterate_batches
from helpers.devices import autocast, eval_mode, model_device, resolve_precision

__all__ = ["EVAL_BATCH_SIZE", "cache_predictions", "evaluate", "predict_logits", "predict_logits_and_labels"]

# Images per forward pass when evaluating (benchmarks/eval_speed.py times the choices). 250: on 2 cores
# of a Xeon with AMX (bf16) the course CNN ×0.5 evaluated the 10,000 test images in 1.3-1.4 s at 250
# against 1.5-2.2 s at 500, and with oneDNN capped at AVX2 in fp32 in 4.3 s against 4.7 s; at ×0.25 the
# two are within a few percent. Larger batches lose on CPUs: their activations no longer fit the caches.
EVAL_BATCH_SIZE = 250
TTA_LEVELS = (0, 1, 2)


def tta_forward(model: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    """The model's logits on `x` (B, C, H, W) averaged over test-time views (airbench's levels):
    0: the image itself; 1: it and its mirror image (2 forward passes); 2: half of level 1, plus half
    the mean of level 1 on the image shifted by one pixel up-left and down-right (reflect padding;
    6 passes in all). Every row of a comparison must use the same level."""
    if level == 0:
        return model(x)
    if x.ndim != 4:
        raise ValueError(f"test-time augmentation needs images (B, C, H, W), got {tuple(x.shape)}")

    def mirrored(inputs: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(inputs) + model(inputs.flip(-1)))

    logits = mirrored(x)
    if level == 1:
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2:h + 2, 2:w + 2]]
    return 0.5 * logits + 0.5 * torch.stack([mirrored(v.contiguous(memory_format=torch.channels_last))
                                             for v in shifted]).mean(0)

@torch.no_grad()
def predict_logits_and_labels(model: nn.Module, data: DataLike, *, batch_size: int = EVAL_BATCH_SIZE,
                              device: torch.device | str | None = None, precision: str = "auto",
                              tta: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C) float32, labels (N,) int64), both on the CPU, in eval mode (the model's mode is
    restored after). `data`: a `TensorData`, `(x, y)` tensors, or a re-iterable of `(x, y)` batches
    (`helpers.data.as_data`). `device`: where to run (the model is moved there); default: where the
    model's parameters are. `batch_size` applies to tensors; batches are used as given. tta: test-time
    augmentation level (`tta_forward`; 0 = none)."""
    if tta not in TTA_LEVELS:
        raise ValueError(f"tta must be one of {TTA_LEVELS}, got {tta!r}")
    data = as_data(data)
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    precision = resolve_precision(precision, device)
    if isinstance(data, Batches):   # a DataLoader: one pass, never cached (its order may change per pass)
        logits, labels = [], []
        with eval_mode(model):
            for x, y in data.to(device):
                with autocast(device, precision):
                    logits.append(tta_forward(model, x, tta).float().cpu())
                labels.append(y.cpu())
        if not logits:
            raise ValueError(f"{data.name}: the batches are empty")
        return torch.cat(logits), torch.cat(labels)

    def compute() -> torch.Tensor:
        out = []
        with eval_mode(model):
            for x, _ in iterate_batches(data, batch_size, device=device):
                with autocast(device, precision):
                    out.append(tta_forward(model, x, tta).float().cpu())
        return torch.cat(out)

    logits = memoized("logits", model, lambda: (tensor_digest(data.images), data.mean, data.std, batch_size,
                                                str(device), precision) + ((("tta", tta),) if tta else ()),
                      compute)
    return logits, data.labels.cpu()


def predict_logits(model: nn.Module, data: DataLike, *, batch_size: int = EVAL_BATCH_SIZE,
                   device: torch.device | str | None = None, precision: str = "auto", tta: int = 0) -> torch.Tensor:
    """Logits (N, C) as float32 on the CPU (`predict_logits_and_labels` without the labels)."""
    return predict_logits_and_labels(model, data, batch_size=batch_size, device=device, precision=precision,
                                     tta=tta)[0]


def evaluate(model: nn.Module, data: DataLike, *, batch_size: int = EVAL_BATCH_SIZE,
             device: torch.device | str | None = None, precision: str = "auto", tta: int = 0) -> dict[str, float]:
    """Accuracy (0-1) and mean cross-entropy loss of `model` on `data` (a `TensorData`, `(x, y)`
    tensors or a DataLoader), as plain floats."""
    logits, labels = predict_logits_and_labels(model, data, batch_size=batch_size, device=device,
                                               precision=precision, tta=tta)
    return {
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
    }
