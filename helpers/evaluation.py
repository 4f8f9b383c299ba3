"""Predictions and accuracy of a trained model (introduced in notebook 01).

Separate from `helpers.training` so that the modules that merge or combine models (`averaging`,
`alignment`, `ensembling`) can evaluate them without importing the training loop.

`cache_predictions()` (opt-in, per process; the notebooks turn it on in their setup cell) makes
`predict_logits` compute each model's logits on each dataset once: a model with the same layers and
the same weights as one already evaluated gets a copy of the stored logits. An interpolation curve's
endpoints, a greedy soup's ingredients and a pair's members evaluated again in a later cell then cost
nothing; REPAIR's per-channel statistics of an endpoint (`helpers.alignment`) are kept the same way,
so a curve of REPAIRed merges measures each endpoint once, not at every alpha. The key is the model's
content (`model_signature`: every module's class and settings, every parameter and buffer), the
data's content, the batch size, the device and the precision, so a changed weight is never served
stale logits. A model with forward hooks, or with attributes the signature cannot read, is always
evaluated. Timing code turns the cache off (`with cache_predictions(False):`).

`make run` (`helpers.runner`) also gives the notebooks of one run a shared folder for these entries
(`$HELPERS_PREDICTION_CACHE_DIR`, a temporary folder deleted when the run ends): a model that
notebook 03 evaluated is not evaluated again in 04, 05 or 09. Nothing is kept between runs, so every
run still evaluates every distinct model once; files are written atomically and read with
`weights_only=True`.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from helpers._paths import atomic_write
from helpers.data import TensorData, iterate_batches
from helpers.devices import autocast, eval_mode, model_device, resolve_precision

# Images per forward pass when evaluating (benchmarks/eval_speed.py times the choices). 250: on 2 cores
# of a Xeon with AMX (bf16) the course CNN ×0.5 evaluated the 10,000 test images in 1.3-1.4 s at 250
# against 1.5-2.2 s at 500, and with oneDNN capped at AVX2 in fp32 in 4.3 s against 4.7 s; at ×0.25 the
# two are within a few percent. Larger batches lose on CPUs: their activations no longer fit the caches.
EVAL_BATCH_SIZE = 250

_PLAIN = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)


def _is_plain(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


class cache_predictions:
    """Turn the prediction cache on (default) or off for this process: as a call it stays set, as
    `with cache_predictions(False):` only inside the block (like `torch.set_grad_enabled`).

    max_entries: logits kept, least recently used dropped first (10,000 x 10 logits are 400 kB)."""

    enabled: bool = False
    max_entries: int = 256
    store: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
    hits: int = 0

    def __init__(self, enabled: bool = True, *, max_entries: int | None = None) -> None:
        if max_entries is not None and max_entries < 1:   # checked first: a refused call changes nothing
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        cls = type(self)
        self._previous = cls.enabled
        cls.enabled = bool(enabled)
        if max_entries is not None:
            cls.max_entries = int(max_entries)
            while len(cls.store) > cls.max_entries:
                cls.store.popitem(last=False)

    def __enter__(self) -> "cache_predictions":
        return self

    def __exit__(self, *exc) -> None:
        type(self).enabled = self._previous

    @classmethod
    def clear(cls) -> None:
        cls.store.clear()
        cls.hits = 0

    @staticmethod
    def shared_file(key: tuple):
        """The file of `key` in the run's shared folder (`$HELPERS_PREDICTION_CACHE_DIR`), or None."""
        folder = os.environ.get("HELPERS_PREDICTION_CACHE_DIR")
        if not folder:
            return None
        return Path(folder) / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:40]}.pt"

    @classmethod
    def lookup(cls, key: tuple | None):
        if not cls.enabled or key is None:
            return None
        if key not in cls.store:
            path = cls.shared_file(key)
            if path is None or not path.is_file():
                return None
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - an unreadable entry is recomputed (and rewritten)
                return None
            if not isinstance(entry, dict) or entry.get("key") != repr(key):
                return None
            cls._remember(key, entry["value"])
        cls.store.move_to_end(key)
        cls.hits += 1
        return cls.store[key]

    @classmethod
    def keep(cls, key: tuple | None, value) -> None:
        if cls.enabled and key is not None:
            cls._remember(key, value)
            path = cls.shared_file(key)
            if path is not None:
                atomic_write(path, lambda tmp: torch.save({"key": repr(key), "value": value}, tmp))

    @classmethod
    def _remember(cls, key: tuple, value) -> None:
        cls.store[key] = value
        while len(cls.store) > cls.max_entries:
            cls.store.popitem(last=False)


_digests: dict[int, tuple[weakref.ref, int, str]] = {}


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes; remembered per tensor object until it changes
    in place (its version counter moves) or is freed."""
    entry = _digests.get(id(t))
    if entry is not None and entry[0]() is t and entry[1] == t._version:
        return entry[2]
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    flat = t.detach().cpu().contiguous().reshape(-1)
    h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    digest = h.hexdigest()
    try:
        ref = weakref.ref(t, lambda _, k=id(t): _digests.pop(k, None))
    except TypeError:
        return digest
    _digests[id(t)] = (ref, t._version, digest)
    return digest


def model_signature(model: nn.Module) -> str | None:
    """A digest of what determines `model`'s outputs in eval mode: each module's name, class, settings
    (`extra_repr` and public attributes: plain data or tensors) and every parameter and buffer, persistent
    or not (dtype, shape, bytes). None when that cannot be read: a module with forward hooks (they may
    change the outputs), a global hook, or a public attribute that is neither plain data, a tensor, nor a
    module (e.g. a function). Private attributes (a leading underscore) are taken to be derived from
    the rest, as PyTorch's own are."""
    from torch.nn.modules import module as module_globals

    if module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks:
        return None
    h = hashlib.sha256()
    for name, mod in model.named_modules():
        if mod._forward_hooks or mod._forward_pre_hooks:
            return None
        h.update(f"{name}:{type(mod).__module__}.{type(mod).__qualname__}:{mod.extra_repr()}\n".encode())
        for key, value in sorted(vars(mod).items()):
            if key.startswith("_") or key == "training":
                continue
            if _is_plain(value):
                h.update(f"{key}={value!r};".encode())
            elif isinstance(value, torch.Tensor):
                h.update(f"{key}=tensor:{tensor_digest(value)};".encode())
            elif not isinstance(value, nn.Module):
                return None
    # every parameter and buffer, including non-persistent buffers (not in the state dict: an Ensemble's weights)
    for kind, named in (("p", model.named_parameters(remove_duplicate=False)),
                        ("b", model.named_buffers(remove_duplicate=False))):
        for key, t in named:
            h.update(f"{kind}:{key}:{tensor_digest(t)}\n".encode())
    return h.hexdigest()


def cached_signature(model: nn.Module) -> str | None:
    """`model_signature(model)` while `cache_predictions` is on, else None (nothing is hashed).
    A model whose tensors cannot be read as bytes (e.g. quantized) is not cached either."""
    if not cache_predictions.enabled:
        return None
    try:
        return model_signature(model)
    except (RuntimeError, TypeError):
        return None


T = TypeVar("T")


def _copy(value):
    """A copy of a cached value (tensors, and dicts / tuples of them): callers may change what they get."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    return value


def memoized(kind: str, model: nn.Module, parts: Callable[[], tuple], compute: Callable[[], T]) -> T:
    """`compute()`, or, while `cache_predictions` is on, a copy of what it returned before for the same
    `kind`, the same model content (`model_signature`) and the same `parts()` (the inputs and settings;
    only called when the model can be cached). The one place `predict_logits` and REPAIR's statistics
    go through the cache."""
    signature = cached_signature(model)
    if signature is None:
        return compute()
    key = (kind, signature, *parts())
    value = cache_predictions.lookup(key)
    if value is None:
        value = compute()
        cache_predictions.keep(key, value)
    return _copy(value)


@torch.no_grad()
def predict_logits(model: nn.Module, data: TensorData, *, batch_size: int = EVAL_BATCH_SIZE,
                   device: torch.device | str | None = None, precision: str = "auto") -> torch.Tensor:
    """Logits (N, C) as float32 on the CPU, in eval mode (the model's mode is restored after).
    `device`: where to run (the model is moved there); default: where the model's parameters are."""
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    precision = resolve_precision(precision, device)

    def compute() -> torch.Tensor:
        out = []
        with eval_mode(model):
            for x, _ in iterate_batches(data, batch_size, device=device):
                with autocast(device, precision):
                    out.append(model(x).float().cpu())
        return torch.cat(out)

    return memoized("logits", model, lambda: (tensor_digest(data.images), batch_size, str(device), precision),
                    compute)


def evaluate(model: nn.Module, data: TensorData, *, batch_size: int = EVAL_BATCH_SIZE,
             device: torch.device | str | None = None, precision: str = "auto") -> dict[str, float]:
    """Test accuracy (0-1) and mean cross-entropy loss of `model` on `data`, as plain floats."""
    logits = predict_logits(model, data, batch_size=batch_size, device=device, precision=precision)
    labels = data.labels.cpu()
    return {
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
    }
