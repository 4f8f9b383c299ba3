"""Permutation alignment: weight matching (Git Re-Basin) and REPAIR (introduced in notebook 04).

Hidden units can be reordered without changing what a network computes: permute the output
channels of a Conv2d / Linear (and of the BatchNorm after it) and the input channels of the next
Conv2d / Linear the same way. Two independently trained networks store similar features in
different orders, which is why their weight average collapses (notebook 03).

`weight_matching(model_a, model_b)` finds, for every hidden layer, the permutation of model_b's
units that best matches model_a's weights (Ainsworth, Hayase & Srinivasa, 2022: coordinate descent
over layers, each step a linear assignment solved by `scipy.optimize.linear_sum_assignment`) and
returns a permuted copy of model_b that computes the same function.

The permutation structure is read off the model, not written per architecture (`permutation_spec`):
an `nn.Sequential` (nested Sequentials flattened) of Linear, Conv, BatchNorm, element-wise
activations, pooling, Dropout and Flatten is read in layer order; any other model is traced with
`torch.fx` (`traced_permutation_spec`), where a residual addition ties the channel groups it adds
(a ResNet's stream is one group). Anything else — concatenation, attention, LayerNorm, grouped
convolutions — raises an error naming the node; an explicit spec (a list of `PermGroup`) can be
passed instead. The course CNNs are plain Sequentials.

`repair(merged, model_a, model_b, batches, alpha)` fixes the variance collapse of merged models
(Jordan et al., 2022): every hidden channel's output gets the mean and standard deviation
interpolated between the two endpoints' channels, measured on training images — through the
BatchNorm layers' affine parameters where there are BatchNorm layers, else by folding a per-channel
scale and shift into each hidden Linear / Conv layer's weights and bias.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from helpers.averaging import check_compatible, has_batchnorm, recalibrate_batchnorm
from helpers.devices import autocast, eval_mode, resolve_precision
from helpers.evaluation import batches_digest, memoized

PASS_THROUGH = (
    nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardswish, nn.ReLU6,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
LAYERS = (nn.Linear, nn.Conv2d, nn.Conv1d)


@dataclass
class PermGroup:
    """One set of hidden units that must be permuted together: dim 0 of every key in `outputs` and
    dim 1 of every weight in `inputs`. A plain layer's units form one group; layers joined by a
    residual addition share one group (their outputs are added channel by channel).

    This is also the format of an explicit `spec` for `weight_matching` / `permute_model`: a list of
    groups, e.g. `[PermGroup(64, ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
    "1.running_var"], [("3.weight", 1)])]` for a Conv2d(., 64) + BatchNorm2d(64) read by the conv at index 3."""

    size: int
    outputs: list[str] = field(default_factory=list)              # state-dict keys with this group on dim 0
    inputs: list[tuple[str, int]] = field(default_factory=list)   # (weight key, block) with this group on dim 1;
    #   block > 1 when a Flatten sits between: each unit is `block` consecutive inputs of a Linear
    name: str = ""                                                # where it comes from, for messages


def _flatten(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in model.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            out += _flatten(child, f"{full}.")
        else:
            out.append((full, child))
    return out


def permutation_spec(model: nn.Module) -> list[PermGroup]:
    """The permutation groups of `model`: read off the layer order of an `nn.Sequential`, else traced
    with `torch.fx` (`traced_permutation_spec`: residual networks included)."""
    readable = LAYERS + NORMS + PASS_THROUGH + (nn.Flatten,)
    if not isinstance(model, nn.Sequential) or not all(isinstance(m, readable) for _, m in _flatten(model)):
        return traced_permutation_spec(model)
    groups: list[PermGroup] = []
    current: PermGroup | None = None
    flattened = False
    for name, module in _flatten(model):
        if isinstance(module, LAYERS):
            if current is not None:
                fan_in = module.weight.shape[1]
                block = 1
                if flattened:
                    if fan_in % current.size:
                        raise ValueError(f"{name} has {fan_in} inputs, not a multiple of the {current.size} "
                                         "channels before Flatten")
                    block = fan_in // current.size
                elif fan_in != current.size:
                    raise ValueError(f"{name} expects {fan_in} inputs but the previous layer has {current.size} units")
                current.inputs.append((f"{name}.weight", block))
                groups.append(current)
            current = PermGroup(size=module.weight.shape[0], outputs=[f"{name}.weight"] +
                                ([f"{name}.bias"] if module.bias is not None else []), name=name)
            flattened = False
        elif isinstance(module, NORMS):
            if current is None:
                raise ValueError(f"{name} ({type(module).__name__}) comes before any Linear/Conv layer")
            if flattened:
                raise ValueError(f"unsupported module {name} ({type(module).__name__}) between Flatten and the next "
                                 "layer: its features mix channels and positions")
            current.outputs += [f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")
                                if getattr(module, k, None) is not None]
        elif isinstance(module, nn.Flatten):
            flattened = True
        elif not isinstance(module, PASS_THROUGH):
            raise ValueError(f"unsupported module {name} ({type(module).__name__}): weight matching supports "
                             "Linear, Conv1d/2d, BatchNorm1d/2d, element-wise activations, pooling, Dropout and Flatten")
    return groups  # the last layer's outputs are the classes: never permuted


def _input_index(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Indices along a consumer's dim 1 for unit permutation `perm` (Flatten: unit * block + position)."""
    return (perm[:, None] * block + torch.arange(block)).flatten() if block > 1 else perm


_ADD = {operator.add, operator.iadd, torch.add}
_PASS_FUNCTIONS = {F.relu, F.gelu, F.silu, F.leaky_relu, F.elu, F.hardswish, F.relu6, F.dropout, F.max_pool2d,
                   F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.relu, torch.sigmoid, torch.tanh}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous"}
_FIXED = -1   # the union-find class of channels that must not move: inputs and the model's outputs


def traced_permutation_spec(model: nn.Module) -> list[PermGroup]:
    """The permutation groups of any model `torch.fx` can trace, built of Linear / Conv layers, BatchNorm,
    element-wise activations, pooling, Dropout, Flatten and residual additions.

    Each hidden Linear / Conv layer starts a group; BatchNorm and element-wise operations carry it;
    an addition ties the groups of its two inputs into one (a residual stream: every layer writing to
    it shares one permutation); the model's input and output channels never move. Anything else —
    concatenation, reshaping views, attention, grouped convolutions, LayerNorm — is refused with the
    node's name, so a wrong permutation is never produced silently."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - dynamic control flow and the like: say what to do
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
                         "pass an explicit spec (a list of PermGroup) to weight_matching") from None
    modules = dict(model.named_modules())
    parent: dict[int, int] = {_FIXED: _FIXED}
    groups: dict[int, PermGroup] = {}
    channel: dict[torch.fx.Node, int] = {}     # node -> group of its channel dim (dim 1)
    flat: set[torch.fx.Node] = set()           # nodes whose channels were flattened into features

    def find(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    def union(g: int, h: int, node) -> int:
        g, h = find(g), find(h)
        if g == h:
            return g
        if _FIXED in (g, h):
            g, h = _FIXED, h if g == _FIXED else g
        elif groups[g].size != groups[h].size:
            raise ValueError(f"node {node.name!r} adds {groups[g].size} channels to {groups[h].size}")
        parent[h] = g
        return g

    def source(node, arg):
        if not isinstance(arg, torch.fx.Node) or arg not in channel:
            raise ValueError(f"unsupported node {node.name!r} ({node.op} {node.target}): its input is not a "
                             "traced tensor")
        return arg

    for node in graph.nodes:
        if node.op == "placeholder":
            channel[node] = _FIXED
        elif node.op == "call_module" and isinstance(modules[node.target], LAYERS):
            layer, x = modules[node.target], source(node, node.args[0])
            if getattr(layer, "groups", 1) != 1:
                raise ValueError(f"unsupported module {node.target} ({type(layer).__name__} with groups="
                                 f"{layer.groups}): grouped convolutions tie channels in blocks")
            g_in = find(channel[x])
            if g_in != _FIXED:
                size = groups[g_in].size
                fan_in = layer.weight.shape[1]
                block = fan_in // size if x in flat else 1
                if fan_in != size * block:
                    raise ValueError(f"{node.target} has {fan_in} inputs, which do not match the {size} channels "
                                     f"that reach it")
                groups[g_in].inputs.append((f"{node.target}.weight", block))
            g = len(groups)
            parent[g] = g
            groups[g] = PermGroup(layer.weight.shape[0], [f"{node.target}.weight"] +
                                  ([f"{node.target}.bias"] if layer.bias is not None else []), name=node.target)
            channel[node] = g
        elif node.op == "call_module" and isinstance(modules[node.target], NORMS):
            x = source(node, node.args[0])
            if x in flat:
                raise ValueError(f"unsupported module {node.target} ({type(modules[node.target]).__name__}) "
                                 "after Flatten: its features mix channels and positions")
            g = find(channel[x])
            if g != _FIXED:
                groups[g].outputs += [f"{node.target}.{k}" for k in ("weight", "bias", "running_mean", "running_var")
                                      if getattr(modules[node.target], k, None) is not None]
            channel[node] = channel[x]
        elif (node.op == "call_module" and isinstance(modules[node.target], PASS_THROUGH + (nn.Flatten,))) or \
                (node.op == "call_function" and (node.target in _PASS_FUNCTIONS or node.target is torch.flatten)) or \
                (node.op == "call_method" and node.target in _PASS_METHODS | {"flatten"}):
            x = source(node, node.args[0])
            channel[node] = channel[x]
            is_flatten = (node.op == "call_module" and isinstance(modules[node.target], nn.Flatten)) or \
                node.target in (torch.flatten, "flatten")
            if x in flat or is_flatten:
                flat.add(node)
        elif node.op == "call_function" and node.target in _ADD:
            xs = [source(node, a) for a in node.args[:2]]
            if any(x in flat for x in xs):
                raise ValueError(f"unsupported node {node.name!r}: an addition of flattened features")
            channel[node] = union(channel[xs[0]], channel[xs[1]], node)
        elif node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else [node.args[0]]
            for out in outs:
                union(channel[source(node, out)], _FIXED, node)
        else:
            what = (f"module {node.target} ({type(modules[node.target]).__name__})" if node.op == "call_module"
                    else f"{node.op} {getattr(node.target, '__name__', node.target)}")
            raise ValueError(f"unsupported node {node.name!r}, {what}: weight matching supports Linear, "
                             "Conv, BatchNorm, element-wise activations, pooling, Dropout, Flatten and additions; "
                             "pass an explicit spec (a list of PermGroup) for anything else")
    merged: dict[int, PermGroup] = {}
    for g, group in groups.items():
        root = find(g)
        if root == _FIXED:
            continue
        if root not in merged:
            merged[root] = PermGroup(group.size, name=groups[root].name)
        merged[root].outputs += group.outputs
        merged[root].inputs += group.inputs
    return [merged[r] for r in sorted(merged)]


def _permute(state: dict[str, torch.Tensor], group: PermGroup, perm: torch.Tensor) -> None:
    """Apply `perm` to `group` in `state` (in place on the dict, new tensors)."""
    for key in group.outputs:
        state[key] = state[key].index_select(0, perm.to(state[key].device))
    for key, block in group.inputs:
        state[key] = state[key].index_select(1, _input_index(perm, block).to(state[key].device))


def permute_model(model: nn.Module, perms: Sequence[torch.Tensor], spec: Sequence[PermGroup] | None = None) -> nn.Module:
    """A copy of `model` with hidden units reordered by `perms` (one index tensor per group of
    `permutation_spec(model)`): new unit i is old unit perms[g][i]. Same function, different weights."""
    groups = permutation_spec(model) if spec is None else list(spec)
    if len(perms) != len(groups):
        raise ValueError(f"got {len(perms)} permutations for {len(groups)} permutation groups")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for group, perm in zip(groups, perms):
        perm = torch.as_tensor(perm, dtype=torch.long)
        if sorted(perm.tolist()) != list(range(group.size)):
            raise ValueError(f"not a permutation of {group.size} units: {perm.tolist()[:10]}...")
        _permute(state, group, perm)
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out


def random_permutations(model: nn.Module, *, seed: int = 0) -> list[torch.Tensor]:
    """One random permutation per hidden layer of `model`."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(group.size, generator=g) for group in permutation_spec(model)]


def _weights_only(group: PermGroup) -> list[str]:
    # Matching uses parameters (weights, biases, BatchNorm affine), not running statistics.
    return [k for k in group.outputs if not k.endswith(("running_mean", "running_var"))]


def weight_matching(model_a: nn.Module, model_b: nn.Module, spec: Sequence[PermGroup] | None = None, *,
                    max_iter: int = 100, seed: int = 0) -> nn.Module:
    """A copy of `model_b` with its hidden units permuted to match `model_a` (Git Re-Basin weight
    matching). The copy computes the same function as `model_b`; neither input is changed.
    spec: the permutation groups (see `PermGroup`); by default read off the model (`permutation_spec`).
    The permutations themselves: `match_permutations` (same arguments)."""
    spec = permutation_spec(model_a) if spec is None else list(spec)
    return permute_model(model_b, match_permutations(model_a, model_b, spec, max_iter=max_iter, seed=seed), spec)


def match_permutations(model_a: nn.Module, model_b: nn.Module, spec: Sequence[PermGroup] | None = None, *,
                       max_iter: int = 100, seed: int = 0) -> list[torch.Tensor]:
    """The permutations of weight matching: one index tensor per group of `permutation_spec(model_a)`;
    `permute_model(model_b, perms)` applies them (new unit i of a group is old unit perms[g][i]).

    For each permutation group in random order, the units of model_b are assigned to those of model_a
    to maximise the summed inner product of all weights that group touches (its outgoing weights,
    biases and BatchNorm parameters, and the next layer's incoming weights), holding the other
    groups fixed; sweeps repeat until no group changes (at most `max_iter` sweeps)."""
    check_compatible([model_a.state_dict(), model_b.state_dict()])
    groups = permutation_spec(model_a) if spec is None else list(spec)
    a = {k: v.detach().float().cpu() for k, v in model_a.state_dict().items()}
    b = {k: v.detach().float().cpu() for k, v in model_b.state_dict().items()}
    perms = [torch.arange(g.size) for g in groups]
    rng = np.random.default_rng(seed)
    # Which other group permutes each key's other dimension: a group's cost needs only its own keys,
    # each with the other groups' permutations applied (not the whole state dict).
    dim0 = {key: j for j, g in enumerate(groups) for key in g.outputs}
    dim1 = {key: (j, block) for j, g in enumerate(groups) for key, block in g.inputs}

    def permuted_b_except(skip: int) -> dict[str, torch.Tensor]:
        group = groups[skip]
        state = {}
        for key in group.outputs:
            t = b[key]
            if key in dim1 and dim1[key][0] != skip:
                j, block = dim1[key]
                t = t.index_select(1, _input_index(perms[j], block))
            state[key] = t
        for key, _ in group.inputs:
            t = b[key]
            if key in dim0 and dim0[key] != skip:
                t = t.index_select(0, perms[dim0[key]])
            state[key] = t
        return state

    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(len(groups)):
            group = groups[i]
            pb = permuted_b_except(i)
            cost = torch.zeros(group.size, group.size, dtype=torch.float64)
            for key in _weights_only(group):
                cost += (a[key].reshape(group.size, -1).double() @ pb[key].reshape(group.size, -1).double().T)
            for key, _ in group.inputs:
                wa, wb = a[key], pb[key]
                # (out, in * block, ...) -> (in, out * block * ...): one row per unit of this group
                wa = wa.reshape(wa.shape[0], group.size, -1).transpose(0, 1).reshape(group.size, -1)
                wb = wb.reshape(wb.shape[0], group.size, -1).transpose(0, 1).reshape(group.size, -1)
                cost += wa.double() @ wb.double().T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            old_score = cost[torch.arange(group.size), perms[i]].sum()
            new_score = cost[torch.arange(group.size), new].sum()
            if new_score > old_score + 1e-9 * abs(float(old_score)):
                perms[i] = new
                changed = True
        if not changed:
            break
    return perms


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


def hidden_layers(model: nn.Module) -> list[str]:
    """Names of the Linear / Conv layers whose outputs are hidden units: all but the last one (the
    classifier), in the order the model registers them."""
    names = [name for name, m in model.named_modules() if isinstance(m, LAYERS)]
    return names[:-1]


@torch.no_grad()
def _repair_by_folding(merged: nn.Module, models: list[nn.Module], weights: list[float], batches: list,
                       device: torch.device, precision: str) -> nn.Module:
    """REPAIR for networks without normalisation: each hidden layer's output channels get the weighted
    mean of the endpoints' mean and std, by rescaling that layer's weights and shifting its bias
    (no new layers). Layers are corrected in order, each measured after the ones before it."""
    layers = hidden_layers(merged)
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
           device: torch.device | str | None = None, precision: str = "auto") -> nn.Module:
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

    More than two endpoints (a merge of several aligned models): `repair_many`."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return repair_many(merged, [model_a, model_b], batches, weights=[1 - alpha, alpha], device=device,
                       precision=precision)


@torch.no_grad()
def repair_many(merged: nn.Module, models: Sequence[nn.Module], batches: Iterable, *,
                weights: Sequence[float] | None = None, device: torch.device | str | None = None,
                precision: str = "auto") -> nn.Module:
    """REPAIR for a merge of several models (e.g. every owner aligned to the first, then averaged with
    `helpers.averaging.average_state_dicts`), in place on `merged`; returns it. Each channel's target
    mean and std is the `weights`-weighted mean (default: uniform) of the endpoints' — the same weights
    the merge used. Otherwise exactly `repair` (which is this with two endpoints and weights 1 - alpha,
    alpha): BatchNorm networks get new affine parameters and fresh statistics, networks without
    normalisation get the correction folded into their Linear / Conv layers. Every model in `models`
    must already be aligned to the same reference, so channel i is the same unit in all of them."""
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
        return _repair_by_folding(merged.to(device), models, weights, batches, device, precision)
    stats = [_output_stats(m, batches, device, precision) for m in models]
    merged.to(device)
    for name, module in merged.named_modules():
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
