import pytest
import torch
import torch.nn.functional as F

from helpers.distillation import distill, distillation_loss
from helpers.ensembling import Ensemble
from helpers.models import course_cnn, student_cnn
from helpers.repro import seed_everything
from helpers.training import TrainConfig, predict_logits, train

torch.manual_seed(0)
S = torch.randn(16, 10)
T = torch.randn(16, 10)
Y = torch.randint(0, 10, (16,))


def test_kd_term_is_zero_when_student_equals_teacher():
    for temperature in (1.0, 4.0):
        assert float(distillation_loss(T.clone(), T, Y, temperature=temperature, alpha=1.0)) == pytest.approx(0, abs=1e-6)
    assert float(distillation_loss(T.clone(), T, Y, alpha=1.0, kind="mse")) == 0


def test_alpha_selects_pure_ce_and_pure_kd():
    assert torch.allclose(distillation_loss(S, T, Y, alpha=0.0), F.cross_entropy(S, Y))
    kd = F.kl_div(F.log_softmax(S / 4, 1), F.softmax(T / 4, 1), reduction="batchmean") * 16
    assert torch.allclose(distillation_loss(S, T, Y, alpha=1.0, temperature=4.0), kd, atol=1e-6)
    mixed = distillation_loss(S, T, Y, alpha=0.3, temperature=4.0)
    assert torch.allclose(mixed, 0.3 * kd + 0.7 * F.cross_entropy(S, Y), atol=1e-6)


def test_no_gradient_reaches_the_teacher():
    teacher_logits = T.clone().requires_grad_(True)
    student_logits = S.clone().requires_grad_(True)
    distillation_loss(student_logits, teacher_logits, Y).backward()
    assert teacher_logits.grad is None and student_logits.grad is not None


def test_t_squared_keeps_gradient_scale_roughly_constant():
    norms = {}
    for t in (2.0, 8.0):
        s = S.clone().requires_grad_(True)
        distillation_loss(s, T, Y, temperature=t, alpha=1.0).backward()
        norms[t] = float(s.grad.norm())
    # Without the T^2 factor the ratio would be about (8/2)^2 = 16.
    assert 0.5 < norms[2.0] / norms[8.0] < 3


def test_shape_checks_are_clear():
    with pytest.raises(ValueError, match=r"both be \(N, C\)"):
        distillation_loss(S, T[:, :5], Y)
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(S, T, Y[:3])
    with pytest.raises(ValueError, match="kind"):
        distillation_loss(S, T, Y, kind="l1")


def test_short_distill_run_moves_student_towards_teacher(tiny_data):
    seed_everything(0)
    teacher = course_cnn(0.25)
    train(teacher, tiny_data.train, config=TrainConfig(num_epochs=2, batch_size=64, lr=0.1), progress=False, device="cpu")
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seed_everything(1)
    student = student_cnn(0.5)
    def agreement():
        return float((predict_logits(student, tiny_data.test).argmax(1) ==
                      predict_logits(teacher, tiny_data.test).argmax(1)).float().mean())
    before = agreement()
    distill(student, Ensemble([teacher]), tiny_data.train, config=TrainConfig(num_epochs=2, batch_size=64, lr=0.05),
            alpha=1.0, progress=False, device="cpu")
    assert agreement() > before + 0.2
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched


def test_cached_teacher_reuses_only_identical_batches():
    from helpers.distillation import CachedTeacher
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return x.flatten(1)[:, :10] * 2

    teacher = CachedTeacher(Counting())
    xs = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    first = [teacher(x) for x in xs]
    teacher.restart()
    second = [teacher(x) for x in xs]
    assert len(calls) == 3 and teacher.hits == 3
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    teacher.restart()
    other = torch.randn(4, 3, 8, 8)
    assert torch.equal(teacher(other), other.flatten(1)[:, :10] * 2)  # a different batch is recomputed
    assert len(calls) == 4
