"""Weight averaging: state-dict averages, interpolation, BatchNorm recalibration, loss barriers.

Introduced in notebook 03. Works on any models with the same `state_dict` layout (the course
CNNs, a plain `nn.Sequential` MLP, a VGG-style CNN, ...).

Choices made deliberately:
- floating tensors are averaged in float64 and cast back to their dtype, so a 1:0 weighting returns
  the first model bit-exactly and averaging N copies returns the model exactly;
- integer and bool tensors (BatchNorm's `num_batches_tracked`) are counters, not weights: they are
  never averaged; the result takes them from the input with the largest weight (the first on ties);
- every input is validated before anything is computed, and inputs are never modified.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm.auto import tqdm

from helpers.data import DataLike, TensorData, as_data, as_tensor_data, is_xy_pair, iterate_batches
from helpers.devices import autocast, model_device, resolve_precision
from helpers._prediction_cache import batches_digest, memoized
from helpers.evaluation import evaluate

StateDict = Mapping[str, torch.Tensor]


def normalize_weights(weights: Sequence[float] | None, n: int, *, what: str = "state_dicts") -> list[float]:
    """Uniform weights if `weights` is None, else `weights` checked (finite, >= 0, one per input,
    not all zero) and scaled to sum to one."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} {what}")
    for i, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite and non-negative; weights[{i}] = {w}")
    total = sum(weights)
    if total == 0:
        raise ValueError("weights sum to zero; at least one must be positive")
    return [w / total for w in weights]


def check_compatible(state_dicts: Sequence[StateDict]) -> None:
    """Raise `ValueError` naming the first missing/extra key, shape or kind mismatch between
    `state_dicts[0]` and any other state dict."""
    if len(state_dicts) == 0:
        raise ValueError("need at least one state dict")
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        missing = next((k for k in first if k not in sd), None)
        if missing is not None:
            raise ValueError(f"state_dicts[{i}] is missing key {missing!r} (present in state_dicts[0])")
        extra = next((k for k in sd if k not in first), None)
        if extra is not None:
            raise ValueError(f"state_dicts[{i}] has extra key {extra!r} (absent from state_dicts[0])")
        for key, ref in first.items():
            t = sd[key]
            if not isinstance(t, torch.Tensor) or not isinstance(ref, torch.Tensor):
                raise ValueError(f"key {key!r} is not a tensor in every state dict")
            if t.shape != ref.shape:
                raise ValueError(f"key {key!r} has shape {tuple(ref.shape)} in state_dicts[0] "
                                 f"but {tuple(t.shape)} in state_dicts[{i}]")
            if t.is_floating_point() != ref.is_floating_point() or t.is_complex() != ref.is_complex():
                raise ValueError(f"key {key!r} is {ref.dtype} in state_dicts[0] but {t.dtype} in "
                                 f"state_dicts[{i}]; cannot average a floating tensor with an integer one")


def average_state_dicts(state_dicts: Sequence[StateDict], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The weighted average of `state_dicts` (a new dict of new tensors, in the first's key order).

    weights: one per state dict, finite and >= 0, normalised to sum to one (default: uniform).
    Floating tensors: sum_i w_i * t_i computed in float64 on the first input's device, then cast
    to the first input's dtype. Integer/bool tensors: copied from the input with the largest weight.
    Raises `ValueError` naming the offending key on any mismatch (see `check_compatible`)."""
    state_dicts = list(state_dicts)
    check_compatible(state_dicts)
    w = normalize_weights(weights, len(state_dicts))
    heaviest = max(range(len(w)), key=lambda i: w[i])  # first index on ties
    out: dict[str, torch.Tensor] = {}
    for key, ref in state_dicts[0].items():
        if not ref.is_floating_point():
            out[key] = state_dicts[heaviest][key].detach().clone().to(ref.device)
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
        for wi, sd in zip(w, state_dicts):
            if wi:
                acc += wi * sd[key].detach().to(device=ref.device, dtype=torch.float64)
        out[key] = acc.to(ref.dtype)
    return out


def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """A new model with weights (1 - alpha) * model_a + alpha * model_b.

    alpha = 0 reproduces model_a exactly, alpha = 1 model_b. BatchNorm running statistics are
    interpolated like the weights (they are wrong for the merged model: see
    `recalibrate_batchnorm`). The inputs are not changed."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    merged = copy.deepcopy(model_a)
    merged.load_state_dict(average_state_dicts([model_a.state_dict(), model_b.state_dict()], [1 - alpha, alpha]))
    return merged


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, *, device: torch.device | str | None = None,
                          precision: str = "auto") -> nn.Module:
    """Recompute every BatchNorm layer's running mean and variance from `batches` (in place;
    returns `model`). Parameters are untouched.

    batches: an iterable of inputs `x` or of `(x, y)` pairs, e.g. a few thousand *training* images
        without augmentation (`recalibration_batches`). Never use the test set for this.

    This is `torch.optim.swa_utils.update_bn` (reset the statistics, then a cumulative average
    over all batches, then restore momentum and training mode), run under the same autocast as
    training so it costs about one forward pass per image. While `cache_predictions` is on and
    `batches` is a list or tuple, the resulting buffers are kept like logits (keyed by the model's
    content before the update and the batches' content): the same merge recalibrated again, in
    this notebook or a later one, gets the stored statistics, bit for bit."""
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    precision = resolve_precision(precision, device)

    def compute() -> dict[str, torch.Tensor]:
        with autocast(device, precision):
            update_bn(batches, model, device=device)
        return {name: buf.detach().cpu().clone() for name, buf in model.named_buffers()}

    if not isinstance(batches, (list, tuple)):   # an iterator would be used up by the key: never cached
        compute()
        return model
    buffers = memoized("batchnorm_statistics", model,
                       lambda: (batches_digest(batches),
                                str(device), precision),
                       compute)
    with torch.no_grad():   # after compute() this writes the same values again; after a hit, the stored ones
        for name, buf in model.named_buffers():
            buf.copy_(buffers[name])
    return model


def recalibration_batches(data: DataLike, *, num_images: int = 5000, batch_size: int = 500, seed: int = 0):
    """`num_images` random training images (no augmentation) as `(x, y)` batches for
    `recalibrate_batchnorm`. A list, so it can be reused for several models."""
    data = as_tensor_data(data, name="recalibration data")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:num_images]
    return list(iterate_batches(data.subset(idx), batch_size))


def _recalibration_source(recalibrate) -> list | None:
    """`recalibrate=` of the curve and soup helpers as a list of batches: None; training data as tensors
    (a `TensorData` or `(x, y)`: `recalibration_batches` of it); or ready batches (a list of `(x, y)` or
    of inputs, or a DataLoader: used as given, one pass)."""
    if recalibrate is None:
        return None
    if isinstance(recalibrate, TensorData) or is_xy_pair(recalibrate):
        return recalibration_batches(recalibrate)
    if isinstance(recalibrate, (list, tuple)):
        return list(recalibrate)
    return list(as_data(recalibrate, name="recalibrate"))


@dataclass
class InterpolationCurve:
    """Test accuracy and loss along the line from model_a (alpha=0) to model_b (alpha=1)."""

    alphas: list[float]
    accuracy: list[float]
    loss: list[float]
    recalibrated: bool

    def barrier(self, metric: str = "loss") -> float:
        """`loss_barrier` of this curve for `metric` ("loss" or "accuracy")."""
        return loss_barrier(self.alphas, self.loss if metric == "loss" else self.accuracy, metric=metric)

    def at(self, alpha: float) -> dict[str, float]:
        i = min(range(len(self.alphas)), key=lambda j: abs(self.alphas[j] - alpha))
        return {"alpha": self.alphas[i], "accuracy": self.accuracy[i], "loss": self.loss[i]}

    def to_dict(self) -> dict:
        return asdict(self) | {"loss_barrier": self.barrier("loss"), "accuracy_barrier": self.barrier("accuracy")}


def loss_barrier(alphas: Sequence[float], values: Sequence[float], *, metric: str = "loss") -> float:
    """The height of the curve above the straight line between its endpoints (Frankle et al., 2020):
    max over alpha of value(alpha) - [(1 - alpha) value(0) + alpha value(1)] for a loss; for
    accuracy (higher is better) the depth below that line. Needs alphas that start at 0 and end at 1."""
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
    if len(alphas) != len(values) or len(alphas) < 2 or alphas[0] != 0 or alphas[-1] != 1:
        raise ValueError("need matching alphas and values, with alphas running from 0 to 1")
    v0, v1 = values[0], values[-1]
    sign = 1.0 if metric == "loss" else -1.0
    return max(sign * (v - ((1 - a) * v0 + a * v1)) for a, v in zip(alphas, values))


def interpolation_curve(model_a: nn.Module, model_b: nn.Module, data: DataLike, alphas: Sequence[float], *,
                        recalibrate: DataLike | Sequence | None = None, device: torch.device | str | None = None,
                        after_merge: Callable[[nn.Module, float], nn.Module] | None = None,
                        progress: bool = True, desc: str = "interpolate") -> InterpolationCurve:
    """Evaluate `interpolate(model_a, model_b, alpha)` on `data` (the test set) for each alpha.

    recalibrate: None for the naive average; training data (a `TensorData`, or ready batches from
        `recalibration_batches`) to recompute BatchNorm statistics of each merged model first.
        The endpoints are recalibrated too, so the curve compares like with like.
    after_merge: `after_merge(merged, alpha) -> model`, applied after the merge and any
        recalibration, e.g. REPAIR in notebook 04."""
    from tqdm.auto import tqdm

    batches = None
    if recalibrate is not None:
        batches = _recalibration_source(recalibrate)
    accuracy, loss = [], []
    for alpha in tqdm(list(alphas), desc=desc, disable=not progress, leave=False):
        merged = interpolate(model_a, model_b, float(alpha))
        if batches is not None:
            recalibrate_batchnorm(merged, batches, device=device)
        if after_merge is not None:
            merged = after_merge(merged, float(alpha))
        metrics = evaluate(merged, data, device=device)
        accuracy.append(metrics["accuracy"])
        loss.append(metrics["loss"])
    return InterpolationCurve([float(a) for a in alphas], accuracy, loss, recalibrated=batches is not None)


def greedy_soup(models: Sequence[nn.Module], val_data: DataLike, *,
                recalibrate: DataLike | Sequence | None = None, device: torch.device | str | None = None,
                progress: bool = True) -> tuple[nn.Module, list[int]]:
    """A greedy model soup (Wortsman et al., 2022): ingredients sorted by validation accuracy, best
    first; each is added to the uniform average of those kept so far only if the soup's validation
    accuracy does not drop. Returns (soup, indices of the kept models in `models`, in the order added).

    val_data: a **validation** split (never the test set). recalibrate: training data (or ready batches)
    to reset BatchNorm statistics of every candidate soup before it is scored, as BatchNorm networks
    need after averaging; None for networks without BatchNorm. Inputs are not changed."""
    models = list(models)
    if not models:
        raise ValueError("need at least one model")
    check_compatible([m.state_dict() for m in models])
    batches = None
    if recalibrate is not None:
        batches = _recalibration_source(recalibrate)

    def soup_of(indices: list[int]) -> nn.Module:
        soup = copy.deepcopy(models[indices[0]])
        soup.load_state_dict(average_state_dicts([models[i].state_dict() for i in indices]))
        if batches is not None:
            recalibrate_batchnorm(soup, batches, device=device)
        return soup

    scores = [evaluate(m, val_data, device=device)["accuracy"] for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])   # stable: ties keep the given order
    chosen = [order[0]]
    best = evaluate(soup_of(chosen), val_data, device=device)["accuracy"]
    for i in tqdm(order[1:], desc="greedy soup", disable=not progress, leave=False):
        accuracy = evaluate(soup_of(chosen + [i]), val_data, device=device)["accuracy"]
        if accuracy >= best:
            chosen.append(i)
            best = accuracy
    return soup_of(chosen), chosen
