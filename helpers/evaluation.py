"""Predictions and accuracy of a trained model (introduced in notebook 01).

Separate from `helpers.training` so that the modules that merge or combine models (`averaging`,
`alignment`, `ensembling`) can evaluate them without importing the training loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers.data import TensorData, iterate_batches
from helpers.devices import autocast, eval_mode, model_device, resolve_precision

# Images per forward pass when evaluating (benchmarks/eval_speed.py times the choices). 250: on 2 cores
# of a Xeon with AMX (bf16) the course CNN ×0.5 evaluated the 10,000 test images in 1.3-1.4 s at 250
# against 1.5-2.2 s at 500, and with oneDNN capped at AVX2 in fp32 in 4.3 s against 4.7 s; at ×0.25 the
# two are within a few percent. Larger batches lose on CPUs: their activations no longer fit the caches.
EVAL_BATCH_SIZE = 250


@torch.no_grad()
def predict_logits(model: nn.Module, data: TensorData, *, batch_size: int = EVAL_BATCH_SIZE,
                   device: torch.device | str | None = None, precision: str = "auto") -> torch.Tensor:
    """Logits (N, C) as float32 on the CPU, in eval mode (the model's mode is restored after).
    `device`: where to run (the model is moved there); default: where the model's parameters are."""
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    precision = resolve_precision(precision, device)
    out = []
    with eval_mode(model):
        for x, _ in iterate_batches(data, batch_size, device=device):
            with autocast(device, precision):
                out.append(model(x).float().cpu())
    return torch.cat(out)


def evaluate(model: nn.Module, data: TensorData, *, batch_size: int = EVAL_BATCH_SIZE,
             device: torch.device | str | None = None, precision: str = "auto") -> dict[str, float]:
    """Test accuracy (0-1) and mean cross-entropy loss of `model` on `data`, as plain floats."""
    logits = predict_logits(model, data, batch_size=batch_size, device=device, precision=precision)
    labels = data.labels.cpu()
    return {
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
    }
