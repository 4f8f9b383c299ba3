import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.ensembling import (Ensemble, classification_metrics, combine_logits, disagreement, error_correlation,
                                expected_calibration_error, fit_temperature, fit_weights, reliability)
from helpers.models import course_cnn, student_cnn
from helpers.repro import seed_everything


def _models(n, make=lambda: course_cnn(0.25)):
    out = []
    for seed in range(n):
        seed_everything(seed)
        m = make()
        m.train()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            m(torch.randn(16, 3, 32, 32))
        out.append(m.eval())
    return out


X = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("combine", ["mean_logits", "mean_probs", "vote"])
def test_one_member_ensemble_equals_the_model(combine):
    (model,) = _models(1)
    out = Ensemble([model], combine=combine)(X)
    logits = model(X)
    if combine == "mean_logits":
        assert torch.allclose(out, logits, atol=1e-5)
    elif combine == "mean_probs":
        assert torch.allclose(out, logits.log_softmax(1), atol=1e-5)
    assert torch.equal(out.argmax(1), logits.argmax(1))


@pytest.mark.parametrize("combine", ["mean_logits", "mean_probs"])
def test_two_identical_members_equal_one(combine):
    (model,) = _models(1)
    assert torch.allclose(Ensemble([model, model], combine=combine)(X), Ensemble([model], combine=combine)(X), atol=1e-5)


def test_weights_are_honoured():
    a, b = _models(2)
    assert torch.allclose(Ensemble([a, b], weights=[1, 0])(X), a(X), atol=1e-5)
    mixed = Ensemble([a, b], weights=[3, 1])(X)
    assert torch.allclose(mixed, 0.75 * a(X) + 0.25 * b(X), atol=1e-5)
    with pytest.raises(ValueError, match="non-negative"):
        Ensemble([a, b], weights=[1, -1])
    with pytest.raises(ValueError, match="2 models"):
        Ensemble([a, b], weights=[1])


def test_mean_probs_returns_log_probabilities():
    out = Ensemble(_models(3), combine="mean_probs")(X)
    assert torch.allclose(out.exp().sum(1), torch.ones(len(X)), atol=1e-5)


def test_vote_majority_and_deterministic_ties():
    # 3 members, 2 classes: member logits chosen by hand.
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]],     # member 0: class 0, class 1
                           [[2.0, 0.0], [0.0, 1.0]],     # member 1: class 0, class 1
                           [[0.0, 3.0], [5.0, 0.0]]])    # member 2: class 1, class 0
    out = combine_logits(logits, [1 / 3] * 3, "vote")
    assert out.argmax(1).tolist() == [0, 1]  # majority wins
    # Tie (two members disagree): the class with the higher mean probability wins.
    tie = torch.tensor([[[1.0, 0.0]], [[0.0, 4.0]]])
    assert combine_logits(tie, [0.5, 0.5], "vote").argmax(1).tolist() == [1]
    # Exact tie in votes and probabilities: the lower class index wins, every time.
    exact = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert combine_logits(exact, [0.5, 0.5], "vote").argmax(1).tolist() == [0]


@pytest.mark.parametrize("combine", ["mean_logits", "mean_probs", "vote"])
def test_vmap_path_equals_loop_path(combine):
    models = _models(4)
    batched = Ensemble(models, combine=combine, batched=True)
    looped = Ensemble(models, combine=combine, batched=False)
    assert batched.can_batch
    assert torch.allclose(batched(X), looped(X), atol=1e-4)


def test_vmap_path_follows_members_changed_after_the_first_call():
    models = _models(2)
    batched = Ensemble(models, batched=True)
    before = batched(X).clone()
    with torch.no_grad():
        for p in models[1].parameters():
            p.mul_(0.5)                         # in place: the stacked copy is now stale
    after = batched(X)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, Ensemble(models, batched=False)(X), atol=1e-4)
    models[0].load_state_dict(models[1].state_dict())
    assert torch.allclose(batched(X), Ensemble(models, batched=False)(X), atol=1e-4)


def test_vmap_path_accepts_channels_last_input():
    models = _models(2)
    x = X.contiguous(memory_format=torch.channels_last)   # what iterate_batches yields
    assert torch.allclose(Ensemble(models, batched=True)(x), Ensemble(models, batched=False)(x), atol=1e-4)


def test_default_path_is_the_loop(monkeypatch):
    models = _models(2)
    ens = Ensemble(models)  # batched=None: the loop, the faster path on CPU and GPU
    calls = []
    monkeypatch.setattr("helpers.ensembling.torch.vmap", lambda *a, **k: calls.append(1) or (lambda *x: None))
    ens(X)
    assert ens.can_batch and calls == []


def test_mixed_architectures_use_the_loop():
    models = _models(1) + _models(1, make=lambda: student_cnn(0.5))
    ens = Ensemble(models)
    assert not ens.can_batch
    assert ens(X).shape == (8, 10)
    with pytest.raises(ValueError, match="one architecture"):
        Ensemble(models, batched=True)


def test_structurally_different_members_are_not_batched():
    from torch import nn
    def make(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), act(), nn.Linear(16, 10))
    relu, gelu = make(nn.ReLU), make(nn.GELU)  # same state-dict layout, different functions
    ens = Ensemble([relu, gelu])
    assert not ens.can_batch
    assert torch.allclose(ens(X), (relu(X) + gelu(X)) / 2, atol=1e-5)


def test_members_with_different_class_counts_fail_clearly():
    with pytest.raises(ValueError, match=r"member 1 \(CNN\) outputs \(8, 7\)"):
        Ensemble([course_cnn(0.25), course_cnn(0.25, num_classes=7)], batched=False)(X)


def test_no_gradients_reach_members_and_members_stay_in_eval():
    models = _models(2)
    ens = Ensemble(models).train()
    assert all(not m.training for m in models)
    x = X.clone().requires_grad_(True)  # even with a differentiable input, no graph reaches the members
    out = ens(x)
    assert not out.requires_grad
    student = course_cnn(0.25)
    loss = F.mse_loss(student(X), out)
    loss.backward()
    assert all(p.grad is None for m in models for p in m.parameters())


def test_fit_weights_prefers_the_better_member():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (500,))
    good = F.one_hot(labels, 10).float() * 4 + torch.randn(500, 10)
    bad = torch.randn(500, 10)
    w = fit_weights(torch.stack([good, bad]), labels)
    assert w[0] > 0.9 and sum(w) == pytest.approx(1.0)


def test_metrics_against_hand_computed_values():
    labels = torch.tensor([0, 1, 1, 0])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4]])
    # One bin per 0.5 of confidence: bin [0.5, 1) has all four; confidence mean 0.725, accuracy 0.75.
    assert expected_calibration_error(probs, labels, num_bins=2) == pytest.approx(0.025)
    m = classification_metrics(probs.log(), labels, log_probs=True)
    assert m["accuracy"] == 0.75
    assert m["nll"] == pytest.approx(float(-(torch.tensor([0.9, 0.8, 0.4, 0.6]).log().mean())), rel=1e-5)
    rel = reliability(probs, labels, num_bins=2)
    assert rel["count"] == [0, 4]
    a = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    b = torch.tensor([[1.0, 0], [0, 1], [0, 1], [1, 0]])
    assert disagreement(a, b) == 0.5
    assert error_correlation(a, a, labels) == pytest.approx(1.0)


def test_fit_temperature_undoes_a_known_scaling():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (4000,), generator=g)
    calibrated = torch.randn(4000, 10, generator=g)
    calibrated[torch.arange(4000), labels] += 1.5                    # some signal
    # Sample labels from the model itself, so that T = 1 is calibrated by construction.
    labels = torch.multinomial(calibrated.softmax(1), 1, generator=g).squeeze(1)
    for true_t in (0.5, 3.0):                                        # under- and over-confident
        t = fit_temperature(calibrated / true_t, labels)
        assert abs(t - 1 / true_t) / (1 / true_t) < 0.1, (true_t, t)
    probs = (calibrated * 3.0).softmax(1)
    fixed = (calibrated * 3.0 / fit_temperature(calibrated * 3.0, labels)).softmax(1)
    assert expected_calibration_error(fixed, labels) < expected_calibration_error(probs, labels) / 2
