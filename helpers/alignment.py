"""Permutation alignment: the permutation spec and weight matching (Git Re-Basin) (introduced in notebook 04).

Hidden units can be reordered without changing what a network computes: permute the output
channels of a Conv2d / Linear (and of the BatchNorm after it) and the input channels of the next
Conv2d / Linear the same way. Two independently trained networks store similar features in
different orders, which is why their weight average collapses (notebook 03).

`weight_matching(model_a, model_b)` finds, for every hidden layer, the permutation of model_b's
units that best matches model_a's weights (Ainsworth, Hayase & Srinivasa, 2022: coordinate descent
over layers, each step a linear assignment solved by `scipy.optimize.linear_sum_assignment`) and
returns a permuted copy of model_b that computes the same function.

The permutation structure is read off the model, not written per architecture: `permutation_spec`
traces the forward pass with `torch.fx` (a plain `nn.Sequential` such as the course CNNs traces to
its layer order), and a residual addition ties the channel groups it adds (a ResNet's stream is one
group). Anything else — concatenation, attention, LayerNorm, grouped convolutions — raises an error
naming the node; an explicit spec (a list of `PermGroup`) can be passed instead. `spec_axes` is the
one reading of a spec: permuting, weight matching and REPAIR's choice of hidden units
(`hidden_unit_modules`, used by `helpers.repair`) all go through it.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from helpers.averaging import check_compatible

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

    This is also the format of an explicit `spec` for `weight_matching` / `permute_model` (and
    `helpers.repair.repair`): a list of
    groups, e.g. `[PermGroup(64, ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
    "1.running_var"], [("3.weight", 1)])]` for a Conv2d(., 64) + BatchNorm2d(64) read by the conv at index 3."""

    size: int
    outputs: list[str] = field(default_factory=list)              # state-dict keys with this group on dim 0
    inputs: list[tuple[str, int]] = field(default_factory=list)   # (weight key, block) with this group on dim 1;
    #   block > 1 when a Flatten sits between: each unit is `block` consecutive inputs of a Linear
    name: str = ""                                                # where it comes from, for messages


def _input_index(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Indices along a permuted dimension for unit permutation `perm`: `perm` itself, or with `block` > 1
    (a consumer's dim 1 after a Flatten) unit * block + position."""
    return (perm[:, None] * block + torch.arange(block)).flatten() if block > 1 else perm


_ADD = {operator.add, operator.iadd, torch.add}
_PASS_FUNCTIONS = {F.relu, F.gelu, F.silu, F.leaky_relu, F.elu, F.hardswish, F.relu6, F.dropout, F.max_pool2d,
                   F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.relu, torch.sigmoid, torch.tanh}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous"}
_SCALE_FUNCTIONS = {operator.mul, operator.truediv, torch.mul}   # by a constant: channels keep their group
_FIXED = -1   # the union-find class of channels that must not move: inputs and the model's outputs


class _Tracer(torch.fx.Tracer):
    """`torch.fx`'s tracer, with subclasses of the supported layers kept whole (a frozen whitening conv,
    a custom BatchNorm) instead of traced into their functional calls."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, LAYERS + NORMS + PASS_THROUGH + (nn.Flatten,)) or \
            super().is_leaf_module(module, qualified_name)


def _is_scaling(node) -> bool:
    """A multiplication or division of one traced tensor by a plain number (e.g. logits times 1/9)."""
    if node.op != "call_function" or node.target not in _SCALE_FUNCTIONS or len(node.args) != 2:
        return False
    tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
    numbers = [a for a in node.args if isinstance(a, (int, float))]
    return len(tensors) == 1 and len(numbers) == 1 and (node.target is not operator.truediv
                                                        or isinstance(node.args[1], (int, float)))


def permutation_spec(model: nn.Module) -> list[PermGroup]:
    """The permutation groups of `model`, read off its forward pass traced with `torch.fx`: any model
    built of Linear / Conv layers, BatchNorm, element-wise activations, pooling, Dropout, Flatten and
    residual additions (a plain `nn.Sequential` traces to its layer order: one group per hidden layer).

    Each hidden Linear / Conv layer starts a group; BatchNorm and element-wise operations carry it;
    an addition ties the groups of its two inputs into one (a residual stream: every layer writing to
    it shares one permutation); the model's input and output channels never move. Anything else —
    concatenation, reshaping views, attention, grouped convolutions, LayerNorm — is refused with the
    node's name, so a wrong permutation is never produced silently."""
    try:
        graph = _Tracer().trace(model)
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
                                 "between Flatten and the next layer: its features mix channels and positions")
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
        elif _is_scaling(node):
            x = source(node, next(a for a in node.args if isinstance(a, torch.fx.Node)))
            channel[node] = channel[x]
            if x in flat:
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


class Axis(NamedTuple):
    """One tensor dimension a spec permutes: dim `dim` of state-dict entry `key`, by the permutation of
    group `group` (its index in the spec), each unit `block` consecutive entries (> 1 only on dim 1,
    after a Flatten)."""

    group: int
    key: str
    dim: int
    block: int


def spec_axes(spec: Sequence[PermGroup]) -> list[Axis]:
    """Every tensor dimension `spec` permutes, group by group: dim 0 of each of a group's `outputs`,
    then dim 1 of each of its `inputs`. The one reading of the spec format: `permute_model`,
    `match_permutations` and `hidden_unit_modules` (REPAIR's hidden units) all go through it."""
    axes = []
    for g, group in enumerate(spec):
        axes += [Axis(g, key, 0, 1) for key in group.outputs]
        axes += [Axis(g, key, 1, block) for key, block in group.inputs]
    return axes


def hidden_unit_modules(model: nn.Module, spec: Sequence[PermGroup] | None = None) -> list[str]:
    """Names of the modules whose output channels are the hidden units of `spec` (default
    `permutation_spec(model)`): the Linear / Conv layers that make a group's units and the BatchNorm
    layers that carry them (not the layer writing the model's outputs, which are never permuted), in
    the order the model registers them. What `helpers.repair` corrects."""
    groups = permutation_spec(model) if spec is None else list(spec)
    owners = {axis.key.rpartition(".")[0] for axis in spec_axes(groups) if axis.dim == 0}
    return [name for name, m in model.named_modules() if name in owners and isinstance(m, LAYERS + NORMS)]


def permute_model(model: nn.Module, perms: Sequence[torch.Tensor], spec: Sequence[PermGroup] | None = None) -> nn.Module:
    """A copy of `model` with hidden units reordered by `perms` (one index tensor per group of
    `permutation_spec(model)`): new unit i is old unit perms[g][i]. Same function, different weights."""
    groups = permutation_spec(model) if spec is None else list(spec)
    if len(perms) != len(groups):
        raise ValueError(f"got {len(perms)} permutations for {len(groups)} permutation groups")
    perms = [torch.as_tensor(perm, dtype=torch.long) for perm in perms]
    for group, perm in zip(groups, perms):
        if sorted(perm.tolist()) != list(range(group.size)):
            raise ValueError(f"not a permutation of {group.size} units: {perm.tolist()[:10]}...")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for axis in spec_axes(groups):
        t = state[axis.key]
        state[axis.key] = t.index_select(axis.dim, _input_index(perms[axis.group], axis.block).to(t.device))
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out


def random_permutations(model: nn.Module, *, seed: int = 0) -> list[torch.Tensor]:
    """One random permutation per hidden layer of `model`."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(group.size, generator=g) for group in permutation_spec(model)]


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
    # Each tensor a group touches, with the other group's permutation applied to its other dimension
    # (a layer's weight: dim 0 is its own group, dim 1 the previous one's); a group's cost needs only
    # its own tensors, not the whole state dict.
    axes = spec_axes(groups)
    by_group = [[axis for axis in axes if axis.group == g] for g in range(len(groups))]
    owner = {(axis.key, axis.dim): axis for axis in axes}

    def permuted_b_except(skip: int) -> dict[str, torch.Tensor]:
        state = {}
        for axis in by_group[skip]:
            t = b[axis.key]
            other = owner.get((axis.key, 1 - axis.dim))
            if other is not None and other.group != skip:
                t = t.index_select(other.dim, _input_index(perms[other.group], other.block))
            state[axis.key] = t
        return state

    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(len(groups)):
            group = groups[i]
            pb = permuted_b_except(i)
            cost = torch.zeros(group.size, group.size, dtype=torch.float64)
            for axis in by_group[i]:   # outputs (dim 0) first, then inputs (dim 1), as the spec lists them
                wa, wb = a[axis.key], pb[axis.key]
                if axis.dim == 0:
                    if axis.key.endswith(("running_mean", "running_var")):
                        continue   # matching uses parameters (weights, biases, BatchNorm affine), not statistics
                    cost += (wa.reshape(group.size, -1).double() @ wb.reshape(group.size, -1).double().T)
                else:
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
