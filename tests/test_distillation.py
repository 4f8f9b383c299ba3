import pytest
import torch
import torch.nn.functional as F

from helpers.distillation import CachedTeacher, distill, distillation_loss
from helpers.data import synthetic_cifar
from helpers.ensembling import Ensemble
from helpers.models import course_cnn, student_cnn
from helpers.repro import seed_everything
from helpers.evaluation import predict_logits
from helpers.training import TrainConfig, train

torch.manual_seed(0)
S = torch.randn(16, 10)
T = torch.randn(16, 10)
Y = torch.randint(0, 10, (16,))


def test_kd_term_is_zero_when_student_equals_teacher():
    for temperature in (1.0, 4.0):
        assert float(distillation_loss(T.clone(), T, Y, temperature=temperature, soft_weight=1.0)) == pytest.approx(0, abs=1e-6)
    assert float(distillation_loss(T.clone(), T, Y, soft_weight=1.0, objective="mse")) == 0


def test_soft_weight_selects_pure_ce_and_pure_kd():
    assert torch.allclose(distillation_loss(S, T, Y, soft_weight=0.0), F.cross_entropy(S, Y))
    kd = F.kl_div(F.log_softmax(S / 4, 1), F.softmax(T / 4, 1), reduction="batchmean") * 16
    assert torch.allclose(distillation_loss(S, T, Y, soft_weight=1.0, temperature=4.0), kd, atol=1e-6)
    mixed = distillation_loss(S, T, Y, soft_weight=0.3, temperature=4.0)
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
        distillation_loss(s, T, Y, temperature=t, soft_weight=1.0).backward()
        norms[t] = float(s.grad.norm())
    # Without the T^2 factor the ratio would be about (8/2)^2 = 16.
    assert 0.5 < norms[2.0] / norms[8.0] < 3


def test_shape_checks_are_clear():
    with pytest.raises(ValueError, match=r"both be \(N, C\)"):
        distillation_loss(S, T[:, :5], Y)
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(S, T, Y[:3])
    with pytest.raises(ValueError, match="objective"):
        distillation_loss(S, T, Y, objective="l1")


class PermutedTeacher(torch.nn.Module):
    """Predicts class perm[c] wherever `model` predicts class c (its logits, columns moved)."""

    def __init__(self, model, perm):
        super().__init__()
        self.model, self.perm = model, perm

    def forward(self, x):
        logits = self.model(x)
        out = torch.empty_like(logits)
        out[:, self.perm] = logits
        return out


def test_student_learns_what_the_teacher_says_not_the_labels():
    """With soft_weight=1 the labels are ignored: a student of a teacher that maps every class c to
    perm[c] must learn the permutation. (If distillation silently stopped and the student fell back
    to the labels, it would predict the true classes and fail here.)"""
    data = synthetic_cifar(2048, 256, seed=0)   # enough steps for a teacher far above chance
    seed_everything(0)
    model = course_cnn(0.25)
    train(model, data.train, config=TrainConfig(num_epochs=2, batch_size=64, lr=0.1), progress=False, device="cpu")
    perm = torch.roll(torch.arange(10), 3)   # class c -> c - 3 (mod 10): no class is a fixed point
    teacher = PermutedTeacher(model, perm)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seed_everything(1)
    student = student_cnn(0.5)
    distill(student, teacher, data.train, config=TrainConfig(num_epochs=2, batch_size=64, lr=0.05),
            soft_weight=1.0, temperature=1.0, progress=False, device="cpu")
    predicted = predict_logits(student, data.test).argmax(1)
    labels = data.test.labels
    assert float((predicted == perm[labels]).float().mean()) > 0.5
    assert float((predicted == labels).float().mean()) < 0.2
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched


def test_bad_options_fail_before_any_training(tiny_data):
    student = student_cnn(0.5)
    before = [p.clone() for p in student.parameters()]
    with pytest.raises(ValueError, match="soft_weight"):
        distill(student, Ensemble([course_cnn(0.25)]), tiny_data.train, config=TrainConfig(num_epochs=1, batch_size=64),
                soft_weight=1.5, progress=False, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_cached_teacher_reuses_only_identical_batches():
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
