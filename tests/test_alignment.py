import copy

import pytest
import torch
from torch import nn

from helpers.alignment import (PermGroup, hidden_unit_modules, permutation_spec, permute_model, random_permutations,
                               spec_axes, weight_matching)
from helpers.averaging import interpolate, recalibration_batches
from helpers.models import course_cnn, residual_cnn, student_cnn
from helpers.repair import _output_stats, hidden_layers, repair, repair_many
from helpers.repro import seed_everything


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 24), nn.BatchNorm1d(24),
                         nn.GELU(), nn.Linear(24, 10))


def _vgg():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 10))


MAKERS = {"mlp": (_mlp, (3, 8, 8)), "vgg": (_vgg, (3, 8, 8)), "course": (lambda: course_cnn(0.25), (3, 32, 32)),
          "student": (lambda: student_cnn(0.5), (3, 32, 32)),
          "course_nonorm": (lambda: course_cnn(0.25, norm=False), (3, 32, 32))}


def _model(kind, seed):
    make, shape = MAKERS[kind]
    seed_everything(seed)
    model = make()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, *shape))  # non-trivial BatchNorm statistics
    return model.eval(), shape


@pytest.mark.parametrize("kind", list(MAKERS))
def test_permuting_hidden_units_keeps_the_function(kind):
    model, shape = _model(kind, 0)
    x = torch.randn(5, *shape)
    permuted = permute_model(model, random_permutations(model, seed=1))
    assert not torch.equal(next(permuted.parameters()), next(model.parameters()))
    assert torch.allclose(permuted(x), model(x), atol=1e-5)


@pytest.mark.parametrize("kind", list(MAKERS))
def test_weight_matching_recovers_a_random_permutation(kind):
    model, shape = _model(kind, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shuffled = permute_model(model, random_permutations(model, seed=2))
    aligned = weight_matching(model, shuffled)
    for key, value in model.state_dict().items():
        assert torch.allclose(aligned.state_dict()[key].float(), value.float(), atol=1e-6), key
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)  # inputs unchanged


@pytest.mark.parametrize("kind", ["mlp", "vgg", "course"])
def test_alignment_keeps_model_b_function_and_input(kind):
    a, shape = _model(kind, 0)
    b, _ = _model(kind, 1)
    b_before = {k: v.clone() for k, v in b.state_dict().items()}
    aligned = weight_matching(a, b)
    x = torch.randn(5, *shape)
    assert torch.allclose(aligned(x), b(x), atol=1e-5)
    assert all(torch.equal(b_before[k], b.state_dict()[k]) for k in b_before)
    # Alignment moves b towards a in weight space.
    dist = lambda m: sum(float((p - q).detach().norm() ** 2) for p, q in zip(a.parameters(), m.parameters()))
    assert dist(aligned) < dist(b)


def test_a_residual_module_inside_a_sequential_is_traced_and_unknown_modules_are_named():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    seed_everything(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Residual(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    spec = permutation_spec(model)
    assert [g.size for g in spec] == [4] and ("1.conv.weight", 1) in spec[0].inputs   # one tied stream
    shuffled = permute_model(model, random_permutations(model, seed=1))
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), shuffled(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"unsupported node '_1', module 1 \(LayerNorm\)"):
        permutation_spec(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)))
    with pytest.raises(ValueError, match="cannot trace"):
        permutation_spec(nn.Module())
    mismatched = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"key '0.weight' has shape \(8, 4\)"):
        weight_matching(mismatched, other)


def test_repair_sets_interpolated_channel_statistics(tiny_data):
    from helpers.training import TrainConfig, train
    # Briefly trained models: in untrained deep layers the variances are below BatchNorm's eps.
    a, _ = _model("course", 0)
    b, _ = _model("course", 1)
    for m, seed in ((a, 0), (b, 1)):
        train(m, tiny_data.train, config=TrainConfig(num_epochs=1, batch_size=64, lr=0.05), seed=seed,
              progress=False, device="cpu")
        m.eval()
    b = weight_matching(a, b)
    merged = interpolate(a, b, 0.5)
    batches = recalibration_batches(tiny_data.train, num_images=256, batch_size=64)
    repair(merged, a, b, batches, alpha=0.5, device="cpu", precision="fp32")
    sa = _output_stats(a, batches, torch.device("cpu"), "fp32")
    sb = _output_stats(b, batches, torch.device("cpu"), "fp32")
    sm = _output_stats(merged, batches, torch.device("cpu"), "fp32")
    for name in sm:
        assert torch.allclose(sm[name][1], (sa[name][1] + sb[name][1]) / 2, rtol=0.05, atol=1e-3), name
        assert torch.allclose(sm[name][0], (sa[name][0] + sb[name][0]) / 2, atol=0.05), name


@pytest.mark.parametrize("kind", ["course", "mlp"])
def test_repair_many_gives_the_weighted_mean_of_several_endpoints_statistics(tiny_data, kind):
    """Three endpoints aligned to the first and averaged with weights: each channel ends with the same
    weighted mean of the endpoints' mean and std — through BatchNorm (course CNN) and folded into the
    layers (an MLP without normalisation) — and two endpoints equal `repair`."""
    from helpers.averaging import average_state_dicts
    from helpers.training import TrainConfig, train
    models = []
    for seed in (0, 1, 2):
        seed_everything(seed)
        m = _model("course", seed)[0] if kind == "course" else _no_norm("mlp")
        # (course: lr as in the two-endpoint test; in untrained deep layers the variances are below BatchNorm's eps)
        train(m, tiny_data.train, config=TrainConfig(num_epochs=1, batch_size=64, lr=0.05 if kind == "course" else 0.02),
              seed=seed,
              progress=False, device="cpu")
        models.append(m.eval())
    aligned = [models[0]] + [weight_matching(models[0], m) for m in models[1:]]
    weights = [0.5, 0.3, 0.2]
    merged = copy.deepcopy(models[0])
    merged.load_state_dict(average_state_dicts([m.state_dict() for m in aligned], weights))
    batches = recalibration_batches(tiny_data.train, num_images=256, batch_size=64)
    repair_many(merged, aligned, batches, weights=weights, device="cpu", precision="fp32")
    cpu = torch.device("cpu")
    names = None if kind == "course" else set(hidden_layers(merged))
    stats = [_output_stats(m, batches, cpu, "fp32", names=names) for m in (*aligned, merged)]
    for name in stats[-1]:
        target_std = sum(w * s[name][1] for w, s in zip(weights, stats))
        target_mean = sum(w * s[name][0] for w, s in zip(weights, stats))
        assert torch.allclose(stats[-1][name][1], target_std, rtol=0.05, atol=1e-3), name
        assert torch.allclose(stats[-1][name][0], target_mean, atol=0.05), name
    two = [copy.deepcopy(interpolate(aligned[0], aligned[1], 0.3)) for _ in range(2)]
    repair(two[0], aligned[0], aligned[1], batches, alpha=0.3, device="cpu", precision="fp32")
    repair_many(two[1], aligned[:2], batches, weights=[0.7, 0.3], device="cpu", precision="fp32")
    assert all(torch.allclose(x, y) for x, y in zip(two[0].state_dict().values(), two[1].state_dict().values()))


def test_repair_many_refuses_bad_weights(tiny_data):
    a, _ = _model("course", 0)
    batches = recalibration_batches(tiny_data.train, num_images=64, batch_size=64)
    for weights, match in (([1.0], "1 weights for 2 models"), ([1.0, -0.5], "finite, >= 0"),
                           ([0.0, 0.0], "not all zero")):
        with pytest.raises(ValueError, match=match):
            repair_many(copy.deepcopy(a), [a, a], batches, weights=weights, device="cpu")
    with pytest.raises(ValueError, match="at least one"):
        repair_many(copy.deepcopy(a), [], batches, device="cpu")
    with pytest.raises(ValueError, match="alpha"):
        repair(copy.deepcopy(a), a, a, batches, alpha=1.5, device="cpu")


def test_repair_leaves_the_endpoints_unchanged(tiny_data):
    a, _ = _model("course", 0)
    b, _ = _model("course", 1)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    batches = recalibration_batches(tiny_data.train, num_images=128, batch_size=64)
    repair(interpolate(a, b, 0.5), a, b, batches, device="cpu")
    for m, snap in zip((a, b), before):
        assert all(torch.equal(snap[k], v) for k, v in m.state_dict().items())


def test_batchnorm_after_flatten_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.BatchNorm1d(4 * 6 * 6), nn.Linear(4 * 6 * 6, 10))
    with pytest.raises(ValueError, match=r"unsupported module 2 \(BatchNorm1d\) between Flatten"):
        permutation_spec(model)



def _no_norm(kind):
    if kind == "course_nonorm":
        return course_cnn(0.25, norm=False)
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 48), nn.ReLU(), nn.Linear(48, 32), nn.GELU(),
                             nn.Linear(32, 10))
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


@pytest.mark.parametrize("kind", ["mlp", "vgg", "course_nonorm"])
def test_repair_without_normalisation_folds_the_statistics_into_the_layers(tiny_data, kind):
    """No BatchNorm: every hidden layer's output channels get the interpolated mean and std (measured on
    the same batches), by rescaling weights and shifting biases — same modules, same keys except a bias
    where a layer had none — and the endpoints stay untouched."""
    from helpers.training import TrainConfig, train
    models = []
    for seed in (0, 1):
        seed_everything(seed)
        m = _no_norm(kind)
        train(m, tiny_data.train, config=TrainConfig(num_epochs=1, batch_size=64, lr=0.02), seed=seed,
              progress=False, device="cpu")
        models.append(m.eval())
    a, b = models[0], weight_matching(models[0], models[1])
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    batches = recalibration_batches(tiny_data.train, num_images=256, batch_size=64)
    merged = interpolate(a, b, 0.3)
    modules_before = [type(m) for m in merged.modules()]
    repair(merged, a, b, batches, alpha=0.3, device="cpu", precision="fp32")
    assert [type(m) for m in merged.modules()] == modules_before
    layers = set(hidden_layers(merged))
    cpu = torch.device("cpu")
    sa, sb, sm = (_output_stats(m, batches, cpu, "fp32", names=layers) for m in (a, b, merged))
    for name in layers:
        assert torch.allclose(sm[name][0], 0.7 * sa[name][0] + 0.3 * sb[name][0], atol=1e-4), name
        assert torch.allclose(sm[name][1], 0.7 * sa[name][1] + 0.3 * sb[name][1], rtol=1e-3, atol=1e-5), name
    for m, snap in zip((a, b), before):
        assert all(torch.equal(snap[k], v) for k, v in m.state_dict().items())


def test_repair_without_normalisation_helps_a_collapsed_midpoint(tiny_data):
    """The point of REPAIR: on a no-norm CNN pair, the repaired midpoint is at least as accurate as the plain one."""
    from helpers.evaluation import evaluate
    from helpers.training import TrainConfig, train
    models = []
    for seed in (0, 1):
        seed_everything(seed)
        m = _no_norm("vgg")
        train(m, tiny_data.train, config=TrainConfig(num_epochs=2, batch_size=64, lr=0.02), seed=seed,
              progress=False, device="cpu")
        models.append(m.eval())
    a, b = models[0], weight_matching(models[0], models[1])
    batches = recalibration_batches(tiny_data.train, num_images=256, batch_size=64)
    plain = evaluate(interpolate(a, b, 0.5), tiny_data.test)["loss"]
    repaired = evaluate(repair(interpolate(a, b, 0.5), a, b, batches, device="cpu"), tiny_data.test)["loss"]
    assert repaired <= plain


# ----------------------------------------------------------------------------------------------
# Residual networks: permutation groups traced with torch.fx


def _resnet18():
    import torchvision
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)   # the CIFAR stem
    model.maxpool = nn.Identity()
    return model


class TinyResNet(nn.Module):
    """A residual CNN the course does not use: a stem, two residual blocks on one stream, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                                    nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.block2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(),
                                    nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4, 10))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(x + self.block2(x))
        return self.head(x)


def _warm(model, shape=(3, 32, 32)):
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, *shape))
    return model.eval()


@pytest.mark.parametrize("make, groups", [(TinyResNet, 3), (_resnet18, 12)], ids=["tiny_resnet", "resnet18"])
def test_residual_networks_permute_and_are_recovered_exactly(make, groups):
    seed_everything(0)
    model = _warm(make())
    spec = permutation_spec(model)
    assert len(spec) == groups   # residual streams are one group each, plus one per inner layer
    shuffled = permute_model(model, random_permutations(model, seed=3))
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(model(x), shuffled(x), atol=1e-4)
    assert not torch.equal(model.state_dict()["head.2.weight" if make is TinyResNet else "fc.weight"],
                           shuffled.state_dict()["head.2.weight" if make is TinyResNet else "fc.weight"])
    recovered = weight_matching(model, shuffled)
    for (k, a), b in zip(model.state_dict().items(), recovered.state_dict().values()):
        assert torch.equal(a, b), k


def _cnn_spec(model):
    """The course CNN's permutation groups written out by hand: each conv's outputs (weight, bias when it
    has one, its BatchNorm's parameters and statistics) are read by the next conv, the last by the classifier."""
    convs = [i for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
    groups = []
    for i, nxt in zip(convs, convs[1:] + [len(model) - 1]):
        bn = next((j for j in range(i + 1, nxt) if isinstance(model[j], nn.BatchNorm2d)), None)
        outputs = [f"{i}.weight"] + ([f"{i}.bias"] if model[i].bias is not None else []) + \
            ([f"{bn}.{k}" for k in ("weight", "bias", "running_mean", "running_var")] if bn is not None else [])
        groups.append((model[i].out_channels, outputs, [(f"{nxt}.weight", 1)]))
    return groups


@pytest.mark.parametrize("make", [lambda: course_cnn(0.25), lambda: student_cnn(0.5),
                                  lambda: course_cnn(0.5, norm=False)], ids=["course", "student", "course_nonorm"])
def test_the_course_cnns_trace_to_one_group_per_hidden_layer(make):
    """The one spec reader (torch.fx) gives the plain course CNNs the layer-order groups they always had,
    and a wrapper module only prefixes the keys."""
    model = make()
    assert [(g.size, g.outputs, g.inputs) for g in permutation_spec(model)] == _cnn_spec(model)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x)

    assert [(g.size, g.outputs, g.inputs) for g in permutation_spec(Wrapped())] == \
        [(size, [f"net.{k}" for k in outputs], [(f"net.{k}", b) for k, b in inputs])
         for size, outputs, inputs in _cnn_spec(model)]


def test_spec_axes_is_the_one_reading_of_a_spec():
    spec = [PermGroup(4, ["0.weight", "0.bias"], [("2.weight", 1)]), PermGroup(3, ["2.weight"], [("5.weight", 9)])]
    assert [tuple(a) for a in spec_axes(spec)] == [(0, "0.weight", 0, 1), (0, "0.bias", 0, 1), (0, "2.weight", 1, 1),
                                                  (1, "2.weight", 0, 1), (1, "5.weight", 1, 9)]
    # REPAIR's hidden units are the spec's: every layer but the classifier, with the BatchNorm carrying its units
    model = course_cnn(0.25)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert hidden_layers(model) == layers[:-1]
    assert hidden_unit_modules(model) == [n for n, _ in model.named_modules() if n in set(layers[:-1] + norms)]
    residual = residual_cnn(0.25)
    assert hidden_layers(residual) == [n for n, m in residual.named_modules() if isinstance(m, nn.Conv2d)]


def test_repair_corrects_the_units_of_the_spec_it_is_given(tiny_data):
    """With an explicit spec naming only the first hidden group, REPAIR sets only that BatchNorm's affine
    parameters (the others keep theirs; every layer's statistics are then recomputed)."""
    a, _ = _model("course", 0)
    b, _ = _model("course", 1)
    batches = recalibration_batches(tiny_data.train, num_images=128, batch_size=64)
    first = permutation_spec(a)[:1]
    merged = interpolate(a, b, 0.5)
    before = {k: v.clone() for k, v in merged.state_dict().items()}
    repair(merged, a, b, batches, device="cpu", precision="fp32", spec=first)
    changed = {k for k, v in merged.state_dict().items()
               if k.endswith(("weight", "bias")) and not torch.equal(v, before[k])}
    assert changed == {"1.weight", "1.bias"}
    full = repair(interpolate(a, b, 0.5), a, b, batches, device="cpu", precision="fp32")
    assert torch.equal(full.state_dict()["1.weight"], merged.state_dict()["1.weight"])


def test_unsupported_operations_are_refused_with_the_node_name():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))

    with pytest.raises(ValueError, match="unsupported node 'cat', call_function cat"):
        weight_matching(Concat(), Concat())
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8 * 28 * 28, 10))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = grouped

        def forward(self, x):
            return self.net(x)

    with pytest.raises(ValueError, match=r"net\.1 \(Conv2d with groups=8\)"):
        weight_matching(Wrap(), Wrap())


def test_an_explicit_spec_is_used_as_given():
    seed_everything(0)
    model = _warm(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 10)), (3, 8, 8))
    spec = [PermGroup(16, ["1.weight", "1.bias"], [("3.weight", 1)])]
    shuffled = permute_model(model, [torch.randperm(16)], spec)
    recovered = weight_matching(model, shuffled, spec)
    assert torch.equal(recovered[1].weight, model[1].weight)
