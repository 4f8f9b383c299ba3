"""Numbers a researcher can cite: mean ± std over runs, paired bootstrap intervals, verdicts.

- `mean_std(values)`: the mean and the sample standard deviation (0 for one run) of several runs;
- `paired_bootstrap(correct_a, correct_b)`: the accuracy difference of two models scored on the
  *same* test images, with a bootstrap confidence interval that resamples images (pairs kept
  together, so the shared difficulty of an image cancels: much tighter than comparing two unpaired
  accuracies);
- `verdict(difference)`: a difference and its interval in words — "better by 1.20 points (95% CI
  0.80 to 1.60)" only when the interval excludes zero, else "within noise".
An ordering of two methods in the course's prose goes through `verdict`, so it is claimed only when
it is outside run-to-run (or image-to-image) noise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import torch


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of `values`; the std is 0.0 for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("need at least one value")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass(frozen=True)
class Difference:
    """A difference (a - b, as a fraction: 0.012 = 1.2 points) with a confidence interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero."""
        return self.low > 0 or self.high < 0

    @property
    def direction(self) -> int:
        """+1 when A is better (the interval lies above zero), -1 when worse, 0 within noise: what
        `verdict` would say, as a number two comparisons can be checked against."""
        return (self.low > 0) - (self.high < 0)


def paired_bootstrap(correct_a: torch.Tensor, correct_b: torch.Tensor, *, num_samples: int = 2000,
                     level: float = 0.95, seed: int = 0) -> Difference:
    """Accuracy of A minus accuracy of B on the same N images, with a percentile bootstrap interval.

    correct_a, correct_b: (N,) booleans (or 0/1), whether each model got image i right. Images are
    resampled with replacement `num_samples` times, the same draw for both models."""
    a = torch.as_tensor(correct_a).double().flatten()
    b = torch.as_tensor(correct_b).double().flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"need two equally long, non-empty vectors of per-image results; got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    g = torch.Generator().manual_seed(seed)
    diff = a - b
    idx = torch.randint(0, len(diff), (num_samples, len(diff)), generator=g)
    boot = diff[idx].mean(1).sort().values
    lo = boot[int(math.floor((1 - level) / 2 * (num_samples - 1)))]
    hi = boot[int(math.ceil((1 + level) / 2 * (num_samples - 1)))]
    return Difference(float(diff.mean()), float(lo), float(hi), level)


def runs_difference(runs_a: Sequence[float], runs_b: Sequence[float], *, level: float = 0.95) -> Difference:
    """Mean of A's runs minus mean of B's runs, with a normal-approximation interval from the runs'
    spread (Welch's standard error; with one run on either side the interval is unbounded)."""
    (ma, sa), (mb, sb) = mean_std(runs_a), mean_std(runs_b)
    if len(runs_a) < 2 or len(runs_b) < 2:
        return Difference(ma - mb, -math.inf, math.inf, level)
    z = statistics.NormalDist().inv_cdf((1 + level) / 2)
    se = math.sqrt(sa * sa / len(runs_a) + sb * sb / len(runs_b))
    return Difference(ma - mb, ma - mb - z * se, ma - mb + z * se, level)


def verdict(difference: Difference, *, better: str = "better", worse: str = "worse") -> str:
    """The difference in words, in points: "better by 1.20 points (95% CI 0.80 to 1.60)" when the
    interval excludes zero, "within noise (-0.10 points, 95% CI -0.50 to 0.30)" otherwise."""
    pts = 100 * difference.value
    if math.isinf(difference.low) or math.isinf(difference.high):
        ci = "one run: no interval"
    else:
        ci = f"{100 * difference.level:.0f}% CI {100 * difference.low:.2f} to {100 * difference.high:.2f}"
    if not difference.significant:
        return f"within noise ({pts:+.2f} points, {ci})"
    return f"{better if pts > 0 else worse} by {abs(pts):.2f} points ({ci})"
