"""Where a model runs and in which precision (introduced in notebook 01).

Everything here is about devices, not training, so `averaging`, `alignment` and `ensembling` can
use it without importing the training loop:

- `pick_device()`: `HELPERS_DEVICE` or an explicit choice, else CUDA, else the CPU;
- `resolve_precision("auto", device)`: `$HELPERS_PRECISION` if set, else the fastest precision the
  hardware does natively (`auto_precision`): on CUDA bfloat16 from compute capability 8.0 (A100,
  H100, RTX 30xx+), float16 with gradient scaling on 7.x (V100, T4 — Colab's default GPU, whose bf16
  is emulated), float32 below; on a CPU bfloat16 with AMX or AVX-512 BF16 (via oneDNN), else
  float32 (emulated bf16 would be slower than float32); float32 on MPS (opt-in, untested);
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

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("cpu", "cuda", "mps")


def pick_device(prefer: str | None = None, *, allow_mps: bool = False) -> torch.device:
    """The device to train on: `prefer` if given ("cpu", "cuda", "cuda:1", "mps"), else
    `$HELPERS_DEVICE`, else CUDA when available, else the CPU. Apple's MPS is used only on request
    (`allow_mps=True` or `prefer="mps"`): several ops the course uses are slower or missing there."""
    prefer = prefer or os.environ.get("HELPERS_DEVICE") or None
    if prefer:
        try:
            device = torch.device(prefer)
        except RuntimeError:
            raise ValueError(f"unknown device {prefer!r} (from HELPERS_DEVICE or the name given); valid: "
                             f"{', '.join(DEVICES)}, optionally with an index such as cuda:1") from None
        if device.type not in DEVICES:
            raise ValueError(f"unsupported device {prefer!r}; valid: {', '.join(DEVICES)}")
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


def cuda_precision(capability: tuple[int, int], bf16_native: bool) -> str:
    """The precision for a CUDA GPU of compute `capability` (major, minor): bf16 where it is native
    (capability >= 8.0 and not emulated), fp16 with tensor cores (>= 7.0: V100, T4), else fp32."""
    if capability >= (8, 0) and bf16_native:
        return "bf16"
    if capability >= (7, 0):
        return "fp16"
    return "fp32"


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX or AVX-512 BF16 (where oneDNN runs bf16 faster than fp32)."""
    try:  # private but stable helpers; any failure means "no native bf16"
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except Exception:  # noqa: BLE001
        return False


def auto_precision(device: torch.device) -> str:
    """What "auto" means on `device` (see the module docstring)."""
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation: capability decides alone
            native = True
        return cuda_precision(torch.cuda.get_device_capability(device), native)
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """A concrete precision ("bf16" | "fp16" | "fp32") for `device`. An explicit value passes through;
    "auto" becomes `$HELPERS_PRECISION` when that is set, else `auto_precision(device)`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        precision = (os.environ.get("HELPERS_PRECISION") or "auto").strip().lower()
        if precision not in PRECISIONS:
            raise ValueError(f"HELPERS_PRECISION must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return auto_precision(torch.device(device))
    if precision == "fp16" and torch.device(device).type == "cpu":
        raise ValueError("fp16 training is for GPUs; on a CPU use bf16 (where the CPU has it) or fp32")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 / float16 autocast for `precision` "bf16" / "fp16", else a no-op context."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 training (small fp16 gradients would underflow to zero), else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


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
