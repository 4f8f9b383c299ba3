"""Task arithmetic and TIES against hand-computed answers, on models the course does not use."""

import copy

import pytest
import torch
from torch import nn

from helpers.merging import apply_task_vectors, task_vector, ties_merge, ties_vector


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def finetune(base, seed, step=0.1):
    model = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(step * torch.randn(p.shape, generator=g))
        model[1].running_mean.add_(0.05)
        model[1].num_batches_tracked.fill_(seed + 7)
    return model


def test_one_vector_at_scale_one_reproduces_the_finetuned_model():
    base = mlp()
    tuned = finetune(base, 1)
    merged = apply_task_vectors(base, [task_vector(base, tuned)], scale=1.0)
    for (k, a), b in zip(merged.state_dict().items(), tuned.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-6), k
    assert int(merged[1].num_batches_tracked) == int(base[1].num_batches_tracked)   # counters: the base's


def test_task_vector_skips_integer_buffers_and_leaves_inputs_alone():
    base, tuned = mlp(), finetune(mlp(), 2)
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    vec = task_vector(base, tuned)
    assert "1.num_batches_tracked" not in vec and "1.running_mean" in vec
    apply_task_vectors(base, [vec], scale=0.5)
    ties_merge(base, [tuned, finetune(base, 3)], density=0.5)
    assert all(torch.equal(before[k], v) for k, v in tuned.state_dict().items())


def test_ties_without_trimming_or_conflicts_is_the_mean_of_the_vectors():
    base = mlp()
    t1, t2 = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():  # same signs everywhere: no conflict
        for p1, p2 in zip(t1.parameters(), t2.parameters()):
            p1.add_(0.1)
            p2.add_(0.3)
    merged = ties_merge(base, [t1, t2], density=1.0, scale=2.0)
    for (k, m), b in zip(merged.state_dict().items(), base.state_dict().values()):
        if k.endswith(("weight", "bias")):
            assert torch.allclose(m, b + 2.0 * 0.2, atol=1e-6), k   # base + scale * mean(0.1, 0.3)


def test_sign_conflict_is_resolved_by_the_elected_sign():
    v1 = {"w": torch.tensor([3.0, -1.0, 2.0, 0.5])}
    v2 = {"w": torch.tensor([-1.0, -2.0, -5.0, 0.5])}
    merged = ties_vector([v1, v2], density=1.0)["w"]
    # entry 0: sum +2 -> sign +, only 3.0 agrees; entry 1: both negative, mean -1.5;
    # entry 2: sum -3 -> sign -, only -5.0 agrees; entry 3: both +0.5
    assert torch.allclose(merged, torch.tensor([3.0, -1.5, -5.0, 0.5]))


def test_trimming_keeps_the_largest_entries_per_tensor():
    v1 = {"w": torch.tensor([0.1, -4.0, 0.2, 3.0])}
    merged = ties_vector([v1], density=0.5)["w"]
    assert torch.equal(merged, torch.tensor([0.0, -4.0, 0.0, 3.0]))


def test_mismatched_models_and_bad_options_name_the_problem():
    base = mlp()
    other = nn.Sequential(nn.Linear(6, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Linear(9, 3))
    with pytest.raises(ValueError, match="'0.weight'"):
        task_vector(base, other)
    with pytest.raises(ValueError, match="missing key '0.bias'"):
        apply_task_vectors(base, [{k: v for k, v in task_vector(base, base).items() if k != "0.bias"}])
    with pytest.raises(ValueError, match="density"):
        ties_merge(base, [finetune(base, 1)], density=0.0)
