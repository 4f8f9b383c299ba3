"""Where a model runs and in which precision (introduced in notebook 01).

Everything here is about devices, not training, so `averaging`, `alignment` and `ensembling` can
use it without importing the training loop:

- `pick_device()`: `HELPERS_DEVICE` or an explicit choice, else CUDA, else the CPU;
- `resolve_precision("auto", device)`: bfloat16 only where the hardware does it natively (CUDA
  with bf16; CPUs with AMX or AVX-512 BF16, via oneDNN), float32 elsewhere — on a CPU without bf16
  units, bf16 would be emulated and slower than float32;
- `autocast(device, precision)`: the matching autocast context;
- `model_device(model)`, and `eval_mode(*models)`: eval mode for a block, each model's own mode
  restored afterwards (even when the block raises).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp32")


def pick_device(prefer: str | None = None, *, allow_mps: bool = False) -> torch.device:
    """The device to train on: `prefer` if given ("cpu", "cuda", "cuda:1", "mps"), else
    `$HELPERS_DEVICE`, else CUDA when available, else the CPU. Apple's MPS is used only on request
    (`allow_mps=True` or `prefer="mps"`): several ops the course uses are slower or missing there."""
    prefer = prefer or os.environ.get("HELPERS_DEVICE") or None
    if prefer:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was asked for, but CUDA is not available here")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {prefer!r} was asked for, but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if allow_mps and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the hardware runs bfloat16 natively, else 'fp32'; other values pass through."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
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


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put `models` in eval mode for the block; afterwards every submodule gets back the mode it
    had (a model with some modules frozen in eval mode keeps them so)."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode
