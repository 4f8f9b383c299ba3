"""Merging models fine-tuned from one base: task arithmetic and TIES-merging.

A *task vector* is what fine-tuning added to the base model's weights: `finetuned - base`
(Ilharco et al., 2023). Adding task vectors to the base (`apply_task_vectors`) merges what several
fine-tunes learned into one model; `scale` says how much of them to add. TIES-merging (Yadav et al.,
2023) first **trims** each task vector to its largest-magnitude entries (`density`), **elects** a
sign per entry (the sign of the sum of the trimmed vectors), and **merges** by averaging, per entry,
only the trimmed values that agree with the elected sign — so fine-tunes that pull one weight in
opposite directions do not cancel into noise. These are mergekit's `task_arithmetic` and `ties`
methods (its `linear` method is `helpers.averaging.average_state_dicts`).

What counts: floating-point parameters and buffers. Integer buffers (BatchNorm's
`num_batches_tracked`) are counters, not weights: they get no task vector and the merged model keeps
the base's. BatchNorm running statistics are floating buffers and merge like weights; recalibrate
them on training images after merging (`helpers.averaging.recalibrate_batchnorm`).

Inputs are never modified; every function returns new tensors or a new model. Mismatched models
fail with the first offending key (`helpers.averaging.check_compatible`).
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from helpers.averaging import check_compatible

TaskVector = dict[str, torch.Tensor]


def task_vector(base: nn.Module, finetuned: nn.Module) -> TaskVector:
    """`finetuned - base` for every floating-point tensor of the state dict (float32 or wider), keyed
    like the state dict. Integer tensors have no entry."""
    sb, sf = base.state_dict(), finetuned.state_dict()
    check_compatible([sb, sf])
    return {k: (sf[k].detach().double() - sb[k].detach().double()).to(sb[k].dtype)
            for k in sb if sb[k].is_floating_point()}


def _check_vectors(base_state: Mapping[str, torch.Tensor], vectors: Sequence[Mapping[str, torch.Tensor]]) -> None:
    floating = {k for k, v in base_state.items() if v.is_floating_point()}
    for i, vec in enumerate(vectors):
        extra = next((k for k in vec if k not in floating), None)
        if extra is not None:
            raise ValueError(f"vectors[{i}] has key {extra!r}, which is not a floating tensor of the base model")
        missing = next((k for k in sorted(floating) if k not in vec), None)
        if missing is not None:
            raise ValueError(f"vectors[{i}] is missing key {missing!r} of the base model")
        for k, v in vec.items():
            if v.shape != base_state[k].shape:
                raise ValueError(f"vectors[{i}][{k!r}] has shape {tuple(v.shape)}, the base model "
                                 f"{tuple(base_state[k].shape)}")


def apply_task_vectors(base: nn.Module, vectors: Sequence[Mapping[str, torch.Tensor]], scale: float = 1.0) -> nn.Module:
    """A new model: `base + scale * sum(vectors)` (task arithmetic). With one vector and scale 1 it
    reproduces the fine-tuned model; a negative scale subtracts a task ("forgetting")."""
    vectors = list(vectors)
    state = base.state_dict()
    _check_vectors(state, vectors)
    merged = {}
    for k, v in state.items():
        if v.is_floating_point() and vectors:
            total = torch.stack([vec[k].detach().double() for vec in vectors]).sum(0)
            merged[k] = (v.detach().double() + scale * total.to(v.device)).to(v.dtype)
        else:
            merged[k] = v.detach().clone()
    model = copy.deepcopy(base)
    model.load_state_dict(merged)
    return model


def ties_vector(vectors: Sequence[Mapping[str, torch.Tensor]], *, density: float) -> TaskVector:
    """The TIES-merged task vector: trim each vector to its top-`density` entries by magnitude (per
    tensor), elect each entry's sign as the sign of the sum of the trimmed values, and average the
    trimmed values that agree with it (the "disjoint mean"; 0 where none agrees)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    vectors = list(vectors)
    if not vectors:
        raise ValueError("need at least one task vector")
    out: TaskVector = {}
    for k in vectors[0]:
        stacked = torch.stack([vec[k].detach().double().flatten() for vec in vectors])    # (T, n)
        if density < 1.0:
            keep = max(1, int(round(density * stacked.shape[1])))
            threshold = stacked.abs().topk(keep, dim=1).values[:, -1:]                     # (T, 1)
            stacked = torch.where(stacked.abs() >= threshold, stacked, torch.zeros_like(stacked))
        elected = torch.sign(stacked.sum(0))                                                # (n,)
        agree = (torch.sign(stacked) == elected) & (stacked != 0)
        count = agree.sum(0)
        mean = torch.where(agree, stacked, torch.zeros_like(stacked)).sum(0) / count.clamp_min(1)
        out[k] = mean.view(vectors[0][k].shape).to(vectors[0][k].dtype)
    return out


def ties_merge(base: nn.Module, finetuned_models: Sequence[nn.Module], *, density: float,
               scale: float = 1.0) -> nn.Module:
    """A new model: `base + scale * ties_vector([task_vector(base, m) for m in finetuned_models])`."""
    vectors = [task_vector(base, m) for m in finetuned_models]
    return apply_task_vectors(base, [ties_vector(vectors, density=density)], scale=scale)
