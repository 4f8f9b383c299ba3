"""Plots used across the notebooks (matplotlib only)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from helpers.averaging import InterpolationCurve
from helpers.data import TensorData
from helpers.training import History


def show_class_grid(data: TensorData, *, per_class: int = 8, seed: int = 0):
    """A grid with one row per class and `per_class` random images of it. Returns the figure."""
    g = torch.Generator().manual_seed(seed)
    n_classes = len(data.classes)
    fig, axes = plt.subplots(n_classes, per_class, figsize=(per_class * 0.8, n_classes * 0.85))
    labels = data.labels.cpu()
    for c, name in enumerate(data.classes):
        idx = (labels == c).nonzero().flatten()
        pick = idx[torch.randperm(len(idx), generator=g)[:per_class]]
        for j in range(per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(pick):
                ax.imshow(data.images[pick[j]].permute(1, 2, 0).cpu().numpy())
        axes[c, 0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout(pad=0.2)
    return fig


def plot_histories(histories: Mapping[str, History], *, title: str | None = None):
    """Test accuracy and training loss per epoch for several runs, side by side. Returns the figure."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, h in histories.items():
        if h.test_accuracy:
            ax_acc.plot(h.epoch, [100 * a for a in h.test_accuracy], marker="o", ms=3, label=label)
        ax_loss.plot(h.epoch, h.train_loss, marker="o", ms=3, label=label)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss (label-smoothed CE)", title="training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_class_counts(parts: Mapping[str, TensorData]):
    """Images per class in each part of a split (bars side by side). Returns the figure."""
    fig, ax = plt.subplots(figsize=(9, 3))
    width = 0.8 / max(1, len(parts))
    for i, (label, part) in enumerate(parts.items()):
        counts = part.class_counts()
        ax.bar([c + i * width for c in range(len(counts))], counts, width=width, label=f"{label} ({len(part)})")
    names = next(iter(parts.values())).classes
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(names))], names, rotation=30, fontsize=8)
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reliability(curves: Mapping[str, dict], *, ax=None, title: str = "reliability diagram"):
    """Accuracy against confidence per bin for several models (from `helpers.ensembling.reliability`);
    the diagonal is perfect calibration. Returns the figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
    else:
        fig = ax.figure
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--", label="perfectly calibrated")
    for label, rel in curves.items():
        pts = [(c, a) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n > 0]
        ax.plot([c for c, _ in pts], [a for _, a in pts], marker="o", ms=3, label=label)
    ax.set(xlabel="confidence (max probability)", ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_interpolation_curves(panels: Mapping[str, Mapping[str, InterpolationCurve]], *,
                              metrics: Sequence[str] = ("accuracy", "loss"), title: str | None = None,
                              chance: float | None = None):
    """One column per panel (e.g. a pair), one row per metric ("accuracy" in %, "loss"), one line per
    curve: the interpolation curves of notebooks 03 and 04. `chance`: a dotted line at that accuracy
    (0-1) in the first panel. Returns the figure."""
    panel_width = 4.0 if len(panels) > 2 else 5.5
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(panel_width * len(panels), 3 * len(metrics) + 0.8),
                             sharex=True, sharey="row", squeeze=False)
    labels = {"accuracy": "test accuracy (%)", "loss": "test loss"}
    for j, (panel, curves) in enumerate(panels.items()):
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            for label, curve in curves.items():
                values = curve.accuracy if metric == "accuracy" else curve.loss
                scale = 100 if metric == "accuracy" else 1
                ax.plot(curve.alphas, [scale * v for v in values], marker="o", ms=3, label=label)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(labels[metric])
        axes[0, j].set_title(panel)
        axes[-1, j].set_xlabel("α  (0 = model_a, 1 = model_b)")
    if chance is not None and "accuracy" in metrics:
        axes[list(metrics).index("accuracy"), 0].axhline(100 * chance, color="gray", lw=0.8, ls=":")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
