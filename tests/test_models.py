import pytest
import torch
from torch import nn

from helpers.models import CNN, count_flops, count_parameters, course_cnn, describe, student_cnn


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
