import copy

import pytest
import torch
from torch import nn

from helpers.averaging import (average_state_dicts, interpolate, interpolation_curve, loss_barrier,
                               recalibrate_batchnorm, recalibration_batches)
from helpers.models import course_cnn
from helpers.repro import seed_everything


def _mlp(seed):
    seed_everything(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _vgg(seed):
    seed_everything(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _course(seed):
    seed_everything(seed)
    return course_cnn(0.25)


def _snapshot(sd):
    return {k: v.clone() for k, v in sd.items()}


def _with_stats(model, seed):
    """Give BatchNorm layers non-trivial running stats and counters."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    shape = (32, 8) if isinstance(model[0], nn.Linear) else (32, 3, 32, 32)
    for _ in range(3):
        model(torch.randn(*shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("make", [_mlp, _vgg, _course], ids=["mlp", "vgg", "course"])
def test_average_of_copies_is_the_model(make):
    model = _with_stats(make(0), 0)
    sd = model.state_dict()
    avg = average_state_dicts([sd, sd, sd])
    # Exact for float32: sum of three float64 copies of x times 1/3 rounds back to x.
    for k in sd:
        assert torch.equal(avg[k], sd[k]), k
        assert avg[k].dtype == sd[k].dtype


@pytest.mark.parametrize("make", [_mlp, _vgg, _course], ids=["mlp", "vgg", "course"])
def test_interpolate_endpoints_reproduce_models_and_inputs_unchanged(make):
    a, b = _with_stats(make(0), 0), _with_stats(make(1), 1)
    before_a, before_b = _snapshot(a.state_dict()), _snapshot(b.state_dict())
    for alpha, ref in ((0.0, a), (1.0, b)):
        merged = interpolate(a, b, alpha)
        assert merged is not a and merged is not b
        for k, v in ref.state_dict().items():
            assert torch.equal(merged.state_dict()[k], v), (alpha, k)
    mid = interpolate(a, b, 0.5).state_dict()
    key = next(k for k in before_a if k.endswith("weight"))
    assert torch.allclose(mid[key], (before_a[key] + before_b[key]) / 2, atol=1e-7)
    for k in before_a:
        assert torch.equal(a.state_dict()[k], before_a[k]) and torch.equal(b.state_dict()[k], before_b[k])
    with pytest.raises(ValueError, match="alpha"):
        interpolate(a, b, 1.5)


def test_weights_are_honoured():
    a, b = _with_stats(_mlp(0), 0).state_dict(), _with_stats(_mlp(1), 1).state_dict()
    first = average_state_dicts([a, b], weights=[1, 0])
    assert all(torch.equal(first[k], a[k]) for k in a)
    avg = average_state_dicts([a, b], weights=[3, 1])  # normalised to 0.75 / 0.25
    assert torch.allclose(avg["0.weight"], 0.75 * a["0.weight"] + 0.25 * b["0.weight"], atol=1e-7)


@pytest.mark.parametrize("weights, message", [
    ([1, -1], "non-negative"), ([0, 0], "sum to zero"), ([1, float("nan")], "finite"), ([1], "2 state_dicts"),
])
def test_bad_weights_fail_clearly(weights, message):
    sd = _mlp(0).state_dict()
    with pytest.raises(ValueError, match=message):
        average_state_dicts([sd, sd], weights=weights)


def test_integer_buffers_are_not_averaged_into_floats():
    a, b = _with_stats(_mlp(0), 0), _with_stats(_mlp(1), 1)
    with torch.no_grad():
        b[1].num_batches_tracked += 10
    avg = average_state_dicts([a.state_dict(), b.state_dict()], weights=[0.4, 0.6])
    assert avg["1.num_batches_tracked"].dtype == torch.long
    assert avg["1.num_batches_tracked"] == b[1].num_batches_tracked  # from the heavier model
    tie = average_state_dicts([a.state_dict(), b.state_dict()])
    assert tie["1.num_batches_tracked"] == a[1].num_batches_tracked  # first on ties
    model = _mlp(2)
    model.load_state_dict(avg)  # loads: no "Float can't be cast to Long"


def test_mismatches_name_the_offending_key():
    a = _mlp(0).state_dict()
    missing = {k: v for k, v in a.items() if k != "3.bias"}
    with pytest.raises(ValueError, match=r"state_dicts\[1\] is missing key '3.bias'"):
        average_state_dicts([a, missing])
    with pytest.raises(ValueError, match=r"state_dicts\[1\] has extra key 'extra'"):
        average_state_dicts([a, {**a, "extra": torch.zeros(1)}])
    wide = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3)).state_dict()
    with pytest.raises(ValueError, match=r"key '0.weight' has shape \(16, 8\) in state_dicts\[0\] but \(32, 8\)"):
        average_state_dicts([a, wide])
    as_int = {**a, "0.weight": a["0.weight"].long()}
    with pytest.raises(ValueError, match="'0.weight' is torch.float32 .* but torch.int64"):
        average_state_dicts([a, as_int])
    with pytest.raises(ValueError, match="at least one"):
        average_state_dicts([])


def test_mixed_float_dtypes_average_in_first_dtype():
    a = _mlp(0).state_dict()
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in _mlp(1).state_dict().items()}
    avg = average_state_dicts([a, b])
    assert avg["0.weight"].dtype == torch.float32
    assert torch.allclose(avg["0.weight"], (a["0.weight"] + b["0.weight"].float()) / 2, atol=1e-6)


def test_recalibration_changes_running_stats_and_nothing_else(tiny_data):
    model = _course(0).eval()
    before = _snapshot(model.state_dict())
    batches = recalibration_batches(tiny_data.train, num_images=256, batch_size=64)
    recalibrate_batchnorm(model, batches, device="cpu")
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    assert not model.training  # mode restored
    # Running mean of the first BatchNorm = mean of its input over the batches (cumulative average).
    bn = model[1]
    feats = torch.cat([model[0](x) for x, _ in batches])
    assert torch.allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=0.05)


def test_loss_barrier():
    alphas = [0, 0.5, 1]
    assert loss_barrier(alphas, [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert loss_barrier(alphas, [1.0, 1.0, 1.0]) == 0
    assert loss_barrier(alphas, [0.9, 0.5, 0.8], metric="accuracy") == pytest.approx(0.35)
    with pytest.raises(ValueError):
        loss_barrier([0.1, 1], [1, 2])


def test_interpolation_curve_endpoints_match_models(tiny_data):
    from helpers.training import evaluate
    a, b = _course(0).eval(), _course(1).eval()
    curve = interpolation_curve(a, b, tiny_data.test, [0, 0.5, 1], device="cpu", progress=False)
    assert curve.accuracy[0] == evaluate(a, tiny_data.test, device="cpu")["accuracy"]
    assert curve.accuracy[-1] == evaluate(b, tiny_data.test, device="cpu")["accuracy"]
    recal = interpolation_curve(a, b, tiny_data.test, [0, 1], recalibrate=tiny_data.train, device="cpu",
                                progress=False)
    assert recal.recalibrated and len(recal.loss) == 2
    assert set(curve.to_dict()) >= {"alphas", "accuracy", "loss", "loss_barrier", "accuracy_barrier"}


def test_greedy_soup_keeps_what_helps_and_drops_what_hurts(tiny_data):
    from helpers.averaging import greedy_soup
    from helpers.models import course_cnn
    from helpers.training import TrainConfig, train
    torch.manual_seed(0)
    trained = course_cnn(0.25)
    train(trained, tiny_data.train, config=TrainConfig(num_epochs=2, batch_size=64, lr=0.1), progress=False,
          device="cpu")
    torch.manual_seed(1)
    untrained = course_cnn(0.25)   # an ingredient that can only hurt
    twin = copy.deepcopy(trained)
    before = [m.state_dict()["0.weight"].clone() for m in (untrained, trained, twin)]
    soup, chosen = greedy_soup([untrained, trained, twin], tiny_data.test, recalibrate=tiny_data.train,
                               progress=False)
    assert chosen[0] == 1 and 0 not in chosen and 2 in chosen   # best first; a copy of it never hurts
    assert torch.allclose(soup.state_dict()["0.weight"], trained.state_dict()["0.weight"], atol=1e-6)
    assert all(torch.equal(b, m.state_dict()["0.weight"]) for b, m in zip(before, (untrained, trained, twin)))
    with pytest.raises(ValueError, match="at least one"):
        greedy_soup([], tiny_data.test)
