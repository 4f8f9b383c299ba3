"""The prediction cache (private; the switch is `helpers.evaluation.cache_predictions`).

While it is on, `predict_logits` computes each model's logits on each dataset once: a model with the same
layers and the same weights as one already evaluated gets a copy of the stored logits. An interpolation
curve's endpoints, a greedy soup's ingredients and a pair's members evaluated again in a later cell then cost
nothing; REPAIR's per-channel statistics of an endpoint (`helpers.repair`) and the BatchNorm statistics
`helpers.averaging.recalibrate_batchnorm` computes go through the same cache (`memoized`).

**Off by default.** `make run` switches it on for the notebooks it executes (`HELPERS_CACHE_PREDICTIONS=1`,
set by `coursetools.runner`); in an interactive notebook it stays off unless you call `cache_predictions()`,
so a cell that edits a weight and evaluates again always computes.

**Keyed by content.** The key is the model's content (`model_signature`: every module's class and settings,
every parameter and buffer hashed byte for byte at every lookup), the data's content, the batch size, the
device and the precision. Nothing is remembered per tensor object, so no in-place edit can be served stale:
not `p.data.mul_(-1)` or `p.data = ...` (which PyTorch's version counter does not see), not `copy_` under
`no_grad`, not `load_state_dict`. Hashing costs about 20 ms per 30 MB (the 10,000 CIFAR-10 test images) and
well under a millisecond for the course model's weights. A model with forward hooks, or with attributes the
signature cannot read, is always evaluated. Timing code turns the cache off (`with cache_predictions(False):`).

**Stored entries.** With `$HELPERS_PREDICTION_CACHE_DIR` set (the runner uses
`<checkpoint cache>/predictions/<preset>/`), entries are also written there, so a model that notebook 03
evaluated is not evaluated again in 04, 05 or 09, nor in a later run of the same code. The folder travels in
a checkpoint archive (`python -m helpers.checkpoints export`). An entry is tied to the code that computed it:
its file name starts with `code_version()` (a digest of the `helpers` package's source and the torch version),
its key names each non-PyTorch module class's source (file digest), and entries of a model whose class has no
readable source (defined at a prompt) stay in memory. Files are written atomically and read with
`weights_only=True`; delete the folder to evaluate everything again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

from helpers._paths import atomic_write

ENV_SWITCH = "HELPERS_CACHE_PREDICTIONS"   # "1": on from the start of the process (make run); default off


_PLAIN = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)


def _is_plain(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


class cache_predictions:
    """Turn the prediction cache on (default) or off for this process: as a call it stays set, as
    `with cache_predictions(False):` only inside the block (like `torch.set_grad_enabled`).

    max_entries: logits kept, least recently used dropped first (10,000 x 10 logits are 400 kB)."""

    enabled: bool = os.environ.get(ENV_SWITCH, "0") == "1"
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
        """The file of `key` in the shared folder (`$HELPERS_PREDICTION_CACHE_DIR`), or None:
        `<code_version()>-<digest of the key>.pt`."""
        folder = os.environ.get("HELPERS_PREDICTION_CACHE_DIR")
        if not folder:
            return None
        return Path(folder) / f"{code_version()}-{hashlib.sha256(repr(key).encode()).hexdigest()[:40]}.pt"

    @classmethod
    def lookup(cls, key: tuple | None, *, shareable: bool = True):
        if not cls.enabled or key is None:
            return None
        if key not in cls.store:
            path = cls.shared_file(key) if shareable else None
            if path is None or not path.is_file():
                return None
            value = read_entry(path, key)
            if value is None:   # unreadable or not this key: recomputed (and rewritten)
                return None
            cls._remember(key, value)
        cls.store.move_to_end(key)
        cls.hits += 1
        return cls.store[key]

    @classmethod
    def keep(cls, key: tuple | None, value, *, shareable: bool = True) -> None:
        if cls.enabled and key is not None:
            cls._remember(key, value)
            path = cls.shared_file(key) if shareable else None
            if path is not None:
                entry = _pack(f"{code_version()}:{key!r}", value)
                atomic_write(path, lambda tmp: torch.save(entry, tmp))

    @classmethod
    def _remember(cls, key: tuple, value) -> None:
        cls.store[key] = value
        while len(cls.store) > cls.max_entries:
            cls.store.popitem(last=False)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """12 hex digits of a digest of the `helpers` package's source files and the torch version: what a
    stored evaluation was computed with (a change to either makes every stored entry a miss)."""
    h = hashlib.sha256(f"torch {torch.__version__}\n".encode())
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(f"{path.name}:".encode() + path.read_bytes())
    return h.hexdigest()[:12]


def _pack(key: str, value) -> dict:
    """A stored entry. Logits computed in bfloat16 are exact in bfloat16: kept so, half the bytes."""
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        narrow = value.to(torch.bfloat16)
        if torch.equal(narrow.float(), value):
            return {"key": key, "value": narrow, "widen": True}
    return {"key": key, "value": value}


def _is_entry_value(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_entry_value(v) for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return all(_is_entry_value(v) for v in value)
    return False


def check_entry(entry) -> str:
    """The key string of a stored entry (`torch.load(..., weights_only=True)`'s result), or ValueError
    saying what is wrong with it. Used by reading and by `helpers.checkpoints` on import."""
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or "value" not in entry:
        raise ValueError("not a stored evaluation (a dict with a 'key' string and a 'value')")
    if not _is_entry_value(entry["value"]):
        raise ValueError("a stored evaluation's value must be tensors (in dicts or tuples)")
    return entry["key"]


def read_entry(path: Path, key: tuple):
    """The value stored at `path` for `key` (this code version), or None if it is unreadable or another key's."""
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if check_entry(entry) != f"{code_version()}:{key!r}":
            return None
    except Exception:  # noqa: BLE001 - an unreadable entry is recomputed (and rewritten)
        return None
    value = entry["value"]
    return value.float() if entry.get("widen") else value


_class_sources: dict[type, str | None] = {}


def class_source(cls: type) -> str | None:
    """What ties a module class's computation to its code: "" for PyTorch's and this package's own
    classes (`code_version()` covers them), a digest of the source file (or, failing that, the class's
    source) for anyone else's, None when neither can be read (a class defined at an interactive prompt)."""
    if cls not in _class_sources:
        module = cls.__module__ or ""
        if module == "torch" or module.startswith(("torch.", "helpers.")):
            _class_sources[cls] = ""
        else:
            try:
                file = inspect.getsourcefile(cls)
                if file and os.path.isfile(file):
                    text = Path(file).read_bytes()
                else:
                    text = inspect.getsource(cls).encode()
                _class_sources[cls] = hashlib.sha256(text).hexdigest()[:16]
            except (OSError, TypeError):
                _class_sources[cls] = None
    return _class_sources[cls]


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes, read now (never remembered per tensor object: an
    edit through `.data` does not move PyTorch's version counter)."""
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel():
        h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def batches_digest(batches) -> tuple[str, ...]:
    """`tensor_digest` of each batch's inputs (`x`, or `x` of an `(x, y)` pair): the batches' part of a key."""
    return tuple(tensor_digest(b[0] if isinstance(b, (tuple, list)) else b) for b in batches)


def model_signature(model: nn.Module) -> str | None:
    """A digest of what determines `model`'s outputs in eval mode: each module's name, class, settings
    (`extra_repr` and public attributes: plain data or tensors) and every parameter and buffer, persistent
    or not (dtype, shape, bytes). None when that cannot be read: a module with forward hooks (they may
    change the outputs), a global hook, or a public attribute that is neither plain data, a tensor, nor a
    module (e.g. a function). Private attributes (a leading underscore) are taken to be derived from
    the rest, as PyTorch's own are."""
    return signature_and_scope(model)[0]


def signature_and_scope(model: nn.Module) -> tuple[str | None, bool]:
    """(`model_signature(model)`, whether its evaluations may be stored in files): not when a module's
    class has no readable source (`class_source`), since another process could define another class of
    that name. The signature includes each class's source digest."""
    from torch.nn.modules import module as module_globals

    if module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks:
        return None, False
    h = hashlib.sha256()
    shareable = True
    for name, mod in model.named_modules():
        if mod._forward_hooks or mod._forward_pre_hooks:
            return None, False
        source = class_source(type(mod))
        shareable = shareable and source is not None
        h.update(f"{name}:{type(mod).__module__}.{type(mod).__qualname__}:{source or ''}:{mod.extra_repr()}\n".encode())
        for key, value in sorted(vars(mod).items()):
            if key.startswith("_") or key == "training":
                continue
            if _is_plain(value):
                h.update(f"{key}={value!r};".encode())
            elif isinstance(value, torch.Tensor):
                h.update(f"{key}=tensor:{tensor_digest(value)};".encode())
            elif not isinstance(value, nn.Module):
                return None, False
    # every parameter and buffer, including non-persistent buffers (not in the state dict: an Ensemble's weights)
    for kind, named in (("p", model.named_parameters(remove_duplicate=False)),
                        ("b", model.named_buffers(remove_duplicate=False))):
        for key, t in named:
            h.update(f"{kind}:{key}:{tensor_digest(t)}\n".encode())
    return h.hexdigest(), shareable


def cached_signature(model: nn.Module) -> tuple[str | None, bool]:
    """`signature_and_scope(model)` while `cache_predictions` is on, else (None, False) (nothing is hashed).
    A model whose tensors cannot be read as bytes (e.g. quantized) is not cached either."""
    if not cache_predictions.enabled:
        return None, False
    try:
        return signature_and_scope(model)
    except (RuntimeError, TypeError):
        return None, False


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
    only called when the model can be cached). The one place `predict_logits`, REPAIR's statistics and
    BatchNorm recalibration go through the cache."""
    signature, shareable = cached_signature(model)
    if signature is None:
        return compute()
    key = (kind, signature, *parts())
    value = cache_predictions.lookup(key, shareable=shareable)
    if value is None:
        value = compute()
        cache_predictions.keep(key, value, shareable=shareable)
    return _copy(value)
