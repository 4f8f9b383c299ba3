import pytest
import torch
from torch import nn

from helpers.models import (CNN, ResidualCNN, build_model, count_flops, count_parameters, course_cnn, describe,
                            module_fingerprint, student_cnn)


def test_shapes_and_widths():
    x = torch.randn(4, 3, 32, 32)
    for model in (course_cnn(0.25), course_cnn(1.0), student_cnn(0.5)):
        assert model(x).shape == (4, 10)
    assert course_cnn(0.5).widths == (16, 32, 64, 128)
    assert student_cnn(1.0).widths == (16, 32, 64, 128)
    assert course_cnn(1.0, num_classes=7)(x).shape == (4, 7)


def test_student_is_smaller_than_course_model():
    assert count_parameters(student_cnn(0.5)) < count_parameters(course_cnn(0.5)) / 3
    assert count_flops(student_cnn(0.5)) < count_flops(course_cnn(0.5)) / 2


def test_flop_count_matches_hand_count():
    # Linear 10 -> 5 on one input: 10*5 multiply-adds = 100 FLOPs; conv 3->4, 3x3, 8x8 output: 2*3*4*9*64.
    assert count_flops(nn.Linear(10, 5), (1, 10)) == 100
    assert count_flops(nn.Conv2d(3, 4, 3, padding=1, bias=False), (1, 3, 8, 8)) == 2 * 3 * 4 * 9 * 64


def test_parameter_count_matches_hand_count():
    model = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5))
    assert count_parameters(model) == 10 * 5 + 5 + 5 + 5
    assert describe(course_cnn(0.25))["parameters"] == count_parameters(course_cnn(0.25))


def test_flop_count_restores_training_mode():
    model = course_cnn(0.25).train()
    count_flops(model)
    assert model.training


def test_bad_widths_fail_clearly():
    with pytest.raises(ValueError, match="4 positive"):
        CNN((8, 16))
    with pytest.raises(ValueError, match="width"):
        course_cnn(0)


def test_residual_cnn_shapes_and_traced_groups():
    from helpers.alignment import permutation_spec, permute_model, random_permutations
    from helpers.models import residual_cnn
    model = residual_cnn(0.25).eval()
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    # stem, then per stage the residual stream (down conv tied to the block's output) and the block's inner layer
    assert [g.size for g in permutation_spec(model)] == [8, 16, 16, 32, 32, 64, 64]
    assert torch.allclose(model(x), permute_model(model, random_permutations(model, seed=0))(x), atol=1e-5)
    with pytest.raises(ValueError, match="widths"):
        residual_cnn(1.0).__class__((8, 16))


def _same_weights(m1, m2):
    return all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


@pytest.mark.parametrize("arch, cls", [("course", CNN), ("student", CNN), ("residual", ResidualCNN),
                                       ("course_nonorm", CNN)])
def test_build_model_builds_each_arch_with_seeded_weights(arch, cls):
    a, b, c = build_model(arch, 0.25, 0), build_model(arch, 0.25, 0), build_model(arch, 0.25, 1)
    assert type(a) is cls and _same_weights(a, b) and not _same_weights(a, c)
    assert (arch == "course_nonorm") == (not any(isinstance(m, nn.BatchNorm2d) for m in a.modules()))


def test_build_model_names_the_valid_archs():
    with pytest.raises(ValueError, match="unknown arch 'resnet'; valid: course, student, residual, course_nonorm"):
        build_model("resnet", 1.0, 0)


def test_module_fingerprint_digests_the_content():
    """The digest of checkpoint keys: equal for equal content, different for other weights or another
    structure, and pinned (a change to it would silently orphan every cached distilled student and fine-tune)."""
    a, b = build_model("course", 0.25, 0), build_model("course", 0.25, 0)
    assert module_fingerprint(a) == module_fingerprint(b)
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 1
    assert module_fingerprint(a) != module_fingerprint(b)
    assert module_fingerprint(course_cnn(0.25)) != module_fingerprint(course_cnn(0.25, norm=False))
    m = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[0.5, -1.0]]))
        m[0].bias.fill_(0.25)
    assert module_fingerprint(m) == "900e168e0b42479b"
