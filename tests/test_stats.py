import math

import pytest
import torch

from helpers.stats import Difference, mean_std, paired_bootstrap, runs_difference, verdict


def test_mean_std_matches_hand_values():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_paired_bootstrap_finds_a_real_difference_and_not_a_fake_one():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(5000, generator=g) < 0.8
    flip = torch.rand(5000, generator=g) < 0.03
    better = base | flip                       # right wherever base is, and on ~3% of base's errors (~0.6 points)
    d = paired_bootstrap(better, base)
    assert d.significant and d.low > 0 and 0.003 < d.value < 0.009   # half a point, detected by pairing
    other = base[torch.randperm(5000, generator=g)]   # the same accuracy, right on different images
    same_rate = paired_bootstrap(base, other)
    assert same_rate.low < 0 < same_rate.high and not same_rate.significant


def test_paired_interval_is_tighter_than_the_unpaired_spread():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2000, generator=g) < 0.7
    b = a.clone()
    b[:20] = ~b[:20]                           # the models disagree on 1% of the images only
    d = paired_bootstrap(a, b)
    assert d.high - d.low < 0.02               # an unpaired comparison would give about +-2.8 points


def test_verdict_words():
    assert verdict(Difference(0.012, 0.004, 0.020)) == "better by 1.20 points (95% CI 0.40 to 2.00)"
    assert verdict(Difference(-0.012, -0.020, -0.004)).startswith("worse by 1.20 points")
    assert verdict(Difference(0.001, -0.003, 0.005)).startswith("within noise (+0.10 points")
    assert "one run" in verdict(runs_difference([0.8], [0.7]))


def test_runs_difference_uses_the_spread_of_runs():
    d = runs_difference([0.80, 0.81, 0.82], [0.70, 0.71, 0.72])
    assert d.significant and math.isclose(d.value, 0.10)
    assert not runs_difference([0.80, 0.70, 0.90], [0.79, 0.69, 0.89]).significant
    with pytest.raises(ValueError):
        paired_bootstrap(torch.ones(3), torch.ones(4))


def test_direction_is_the_sign_of_a_significant_difference_else_zero():
    assert Difference(0.012, 0.004, 0.020).direction == 1
    assert Difference(-0.012, -0.020, -0.004).direction == -1
    assert Difference(0.012, -0.001, 0.025).direction == 0      # a positive estimate, but within noise
    assert Difference(-0.003, -0.010, 0.004).direction == 0
    assert runs_difference([0.80, 0.70, 0.90], [0.79, 0.69, 0.89]).direction == 0
