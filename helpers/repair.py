"""REPAIR: the statistics of a merged model's hidden units, reset to the endpoints' (introduced in notebook 04).

`repair(merged, model_a, model_b, batches, alpha)` fixes the variance collapse of merged models
(Jordan et al., 2022): every hidden channel's output gets the mean and standard deviation
interpolated between the two endpoints' channels, measured on training images — through the
BatchNorm layers' affine parameters where there are BatchNorm layers, else by folding a per-channel
scale and shift into each hidden Linear / Conv layer's weights and bias. `repair_many` does the same
for a merge of several models.

Which channels are hidden units is read from the permutation spec (`helpers.alignment`: the same
reading weight matching permutes), so REPAIR corrects exactly the units alignment matched; the
endpoints must already be aligned (`helpers.alignment.weight_matching`).
"""

from __future__ import annotations

import copy
import math
from typing import Iterable, Sequence

import torch
from torch import nn

from helpers.alignment import LAYERS, NORMS, PermGroup, hidden_unit_modules
from helpers.averaging import has_batchnorm, recalibrate_batchnorm
from helpers.devices import autocast, eval_mode, resolve_precision
from helpers._prediction_cache import batches_digest, memoized


@torch.no_grad()
def _output_stats(model: nn.Module, batches: Sequence, device: torch.device, precision: str,
                  kinds: tuple = NORMS, names: set[str] | None = None) -> dict[str, tuple]:
    """Per module of `kinds` (or named in `names`): (mean, std) of each output channel (dim 1) over
    `batches`, in eval mode, accumulated in float64. Kept by `cache_predictions` when it is on."""
    return memoized("output_stats", model,
                    lambda: (batches_digest(batches),
                             tuple(sorted(k.__name__ for k in kinds)),
                             None if names is None else tuple(sorted(names)), str(device), precision),
                    lambda: _measure_output_stats(model, batches, device, precision, kinds, names))


@torch.no_grad()
def _measure_output_stats(model: nn.Module, batches: Sequence, device: torch.device, precision: str,
                          kinds: tuple, names: set[str] | None) -> dict[str, tuple]:
    sums: dict[str, list] = {}
    hooks = []
    for name, module in model.named_modules():
        if (names is not None and name in names) or (names is None and isinstance(module, kinds)):
            def hook(mod, inp, out, name=name):
                dims = [d for d in range(out.dim()) if d != 1]
                o = out.double()
                s = sums.setdefault(name, [0.0, 0.0, 0])
                s[0] = s[0] + o.sum(dims)
                s[1] = s[1] + (o * o).sum(dims)
                s[2] += o.numel() // o.shape[1]
            hooks.append(module.register_forward_hook(hook))
    try:
        with eval_mode(model), autocast(device, precision):
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
    stats = {}
    for name, (s1, s2, n) in sums.items():
        mean = s1 / n
        stats[name] = (mean.float(), (s2 / n - mean * mean).clamp_min(0).sqrt().float())
    return stats


def hidden_layers(model: nn.Module, spec: Sequence[PermGroup] | None = None) -> list[str]:
    """Names of the Linear / Conv layers whose outputs are hidden units (`hidden_unit_modules`: every
    layer but the classifier), in the order the model registers them."""
    modules = dict(model.named_modules())
    return [name for name in hidden_unit_modules(model, spec) if isinstance(modules[name], LAYERS)]


@torch.no_grad()
def _repair_by_folding(merged: nn.Module, models: list[nn.Module], weights: list[float], batches: list,
                       device: torch.device, precision: str, layers: list[str]) -> nn.Module:
    """REPAIR for networks without normalisation: each hidden layer's output channels get the weighted
    mean of the endpoints' mean and std, by rescaling that layer's weights and shifting its bias
    (no new layers). Layers are corrected in order, each measured after the ones before it."""
    stats = [_output_stats(m, batches, device, precision, names=set(layers)) for m in models]
    modules = dict(merged.named_modules())
    for name in layers:
        layer = modules[name]
        mean_m, std_m = _output_stats(merged, batches, device, precision, names={name})[name]
        target_mean, target_std = _target_stats(stats, weights, name)
        scale = target_std / std_m.clamp_min(1e-8)                   # (C,): dead channels stay as they are
        scale = torch.where(std_m > 1e-8, scale, torch.ones_like(scale))
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(mean_m)
        new_bias = (bias.float() - mean_m) * scale + target_mean       # out' = (out - mean) * s + target
        layer.weight.mul_(scale.view(shape).to(layer.weight))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(layer.weight))
        else:
            layer.bias.copy_(new_bias.to(layer.bias))
    return merged


def _target_stats(stats: list[dict], weights: list[float], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted mean over endpoints of one layer's per-channel (mean, std)."""
    mean = sum(w * s[name][0] for w, s in zip(weights, stats))
    std = sum(w * s[name][1] for w, s in zip(weights, stats))
    return mean, std


@torch.no_grad()
def repair(merged: nn.Module, model_a: nn.Module, model_b: nn.Module, batches: Iterable, *, alpha: float = 0.5,
           device: torch.device | str | None = None, precision: str = "auto",
           spec: Sequence[PermGroup] | None = None) -> nn.Module:
    """REPAIR (Jordan et al., 2022), in place on `merged`; returns it. `alpha` is the merged model's
    position between model_a (0) and model_b (1), as in `helpers.averaging.interpolate`.

    Networks with BatchNorm:
    1. measure each BatchNorm output channel's mean and std in both endpoints on `batches`
       (training images; model_b must already be aligned to model_a, so channel i is the same unit);
    2. set each BatchNorm layer's affine weight and bias to (1 - alpha) * A's + alpha * B's std and
       mean: with fresh statistics a BatchNorm output channel has std |weight| and mean bias;
    3. reset all BatchNorm statistics of `merged` on `batches`, which makes step 2 hold.
    On BatchNorm networks this is a BatchNorm reset that also interpolates the endpoints' output scale
    and offset per channel.

    Networks without normalisation (MLPs, VGG-style CNNs): every hidden Linear / Conv layer's output
    channels are given the interpolated mean and std directly, by folding a per-channel scale into the
    layer's weights and a shift into its bias (a bias is added where the layer had none; no new layers),
    layer by layer from the input. `model_a` and `model_b` are not changed (copied if on another device).

    The hidden channels are those of the permutation spec (`helpers.alignment.hidden_unit_modules`):
    `spec` as given to `weight_matching`, by default `permutation_spec(merged)`.

    More than two endpoints (a merge of several aligned models): `repair_many`."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return repair_many(merged, [model_a, model_b], batches, weights=[1 - alpha, alpha], device=device,
                       precision=precision, spec=spec)


@torch.no_grad()
def repair_many(merged: nn.Module, models: Sequence[nn.Module], batches: Iterable, *,
                weights: Sequence[float] | None = None, device: torch.device | str | None = None,
                precision: str = "auto", spec: Sequence[PermGroup] | None = None) -> nn.Module:
    """REPAIR for a merge of several models (e.g. every owner aligned to the first, then averaged with
    `helpers.averaging.average_state_dicts`), in place on `merged`; returns it. Each channel's target
    mean and std is the `weights`-weighted mean (default: uniform) of the endpoints' — the same weights
    the merge used. Otherwise exactly `repair` (which is this with two endpoints and weights 1 - alpha,
    alpha): BatchNorm networks get new affine parameters and fresh statistics, networks without
    normalisation get the correction folded into their Linear / Conv layers. Every model in `models`
    must already be aligned to the same reference, so channel i is the same unit in all of them;
    `spec`: their permutation spec, by default `permutation_spec(merged)`."""
    models = list(models)
    if not models:
        raise ValueError("repair_many needs at least one endpoint model")
    if weights is None:
        weights = [1.0 / len(models)] * len(models)
    weights = [float(w) for w in weights]
    if len(weights) != len(models):
        raise ValueError(f"got {len(weights)} weights for {len(models)} models")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {weights}")
    weights = [w / sum(weights) for w in weights]
    batches = list(batches)
    device = torch.device(device) if device is not None else next(merged.parameters()).device
    precision = resolve_precision(precision, device)
    on_device = lambda m: m if next(m.parameters()).device == device else copy.deepcopy(m).to(device)
    models = [on_device(m) for m in models]
    if not has_batchnorm(merged):
        return _repair_by_folding(merged.to(device), models, weights, batches, device, precision,
                                  hidden_layers(merged, spec))
    stats = [_output_stats(m, batches, device, precision) for m in models]
    merged.to(device)
    modules = dict(merged.named_modules())
    for name in hidden_unit_modules(merged, spec):
        module = modules[name]
        if isinstance(module, NORMS) and module.affine:
            missing = [i for i, s in enumerate(stats) if name not in s]
            if missing:
                raise ValueError(f"normalisation layer {name!r} of the merged model is not in endpoint model "
                                 f"{missing[0]}: the models must share one architecture")
            target_mean, target_std = _target_stats(stats, weights, name)
            # With fresh statistics a BatchNorm output channel has mean = bias and std = |weight|.
            sign = torch.where(module.weight >= 0, 1.0, -1.0)
            module.weight.copy_(sign * target_std.to(module.weight))
            module.bias.copy_(target_mean.to(module.bias))
    recalibrate_batchnorm(merged, batches, device=device, precision=precision)
    return merged
