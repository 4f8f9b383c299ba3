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

@torch.no_grad()
def predict_logits_and_labels(model: nn.Module, data: DataLike, *, batch_size: int = EVAL_BATCH_SIZE,
                              device: torch.device | str | None = None,
                              precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C) float32, labels (N,) int64), both on the CPU, in eval mode (the model's mode is
    restored after). `data`: a `TensorData`, `(x, y)` tensors, or a re-iterable of `(x, y)` batches
    (`helpers.data.as_data`). `device`: where to run (the model is moved there); default: where the
    model's parameters are. `batch_size` applies to tensors; batches are used as given."""
    data = as_data(data)
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    precision = resolve_precision(precision, device)
    if isinstance(data, Batches):   # a DataLoader: one pass, never cached (its order may change per pass)
        logits, labels = [], []
        with eval_mode(model):
            for x, y in data.to(device):
                with autocast(device, precision):
                    logits.append(model(x).float().cpu())
                labels.append(y.cpu())
        if not logits:
            raise ValueError(f"{data.name}: the batches are empty")
        return torch.cat(logits), torch.cat(labels)

    def compute() -> torch.Tensor:
        out = []
        with eval_mode(model):
            for x, _ in iterate_batches(data, batch_size, device=device):
                with autocast(device, precision):
                    out.append(model(x).float().cpu())
        return torch.cat(out)

    logits = memoized("logits", model, lambda: (tensor_digest(data.images), data.mean, data.std, batch_size,
                                                str(device), precision), compute)
    return logits, data.labels.cpu()


def predict_logits(model: nn.Module, data: DataLike, *, batch_size: int = EVAL_BATCH_SIZE,
                   device: torch.device | str | None = None, precision: str = "auto") -> torch.Tensor:
    """Logits (N, C) as float32 on the CPU (`predict_logits_and_labels` without the labels)."""
    return predict_logits_and_labels(model, data, batch_size=batch_size, device=device, precision=precision)[0]


def evaluate(model: nn.Module, data: DataLike, *, batch_size: int = EVAL_BATCH_SIZE,
             device: torch.device | str | None = None, precision: str = "auto") -> dict[str, float]:
    """Accuracy (0-1) and mean cross-entropy loss of `model` on `data` (a `TensorData`, `(x, y)`
    tensors or a DataLoader), as plain floats."""
    logits, labels = predict_logits_and_labels(model, data, batch_size=batch_size, device=device,
                                               precision=precision)
    return {
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
    }
