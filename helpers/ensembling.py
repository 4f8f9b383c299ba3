"""Prediction ensembling: combine what several models predict (introduced in notebook 05).

`Ensemble(models, weights=None, combine="mean_logits")` is an `nn.Module` whose forward returns
(N, C) scores:

- `mean_logits`: the weighted mean of the members' logits;
- `mean_probs`:  the log of the weighted mean of the members' softmax probabilities (log-probs, so
  `F.cross_entropy` / `nll_loss` on the output stay correct);
- `vote`:        weighted majority vote shares; ties go to the class with the higher mean
  probability, then to the lower class index (deterministic).

Members are always evaluated in eval mode and under `torch.no_grad()`: an ensemble is used, never
trained through. Members run in a loop; with `batched=True`, members of one architecture run
together through `torch.func` (`stack_module_state` + `functional_call` + `vmap`) instead. Both
give the same outputs (tested); `benchmarks/ensemble_speed.py` measures which is faster on your
machine (the loop, wherever the course has measured it so far: vmap turns each conv into a grouped conv).

Also here: `fit_weights` (weights chosen on a validation split by minimising NLL), `fit_temperature`
(temperature scaling, likewise on a validation split), and the metrics
notebook 05 reports: accuracy, NLL, expected calibration error, disagreement, error correlation.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize, minimize_scalar
from torch import nn
from torch.func import functional_call, stack_module_state

from helpers.averaging import normalize_weights

COMBINE_RULES = ("mean_logits", "mean_probs", "vote")


def same_architecture(models: Sequence[nn.Module]) -> bool:
    """True when all models have the same class, module structure (repr: layer types and their
    settings, e.g. ReLU vs GELU, padding) and state-dict keys, shapes and dtypes."""
    first = models[0].state_dict()
    for m in models[1:]:
        if type(m) is not type(models[0]) or repr(m) != repr(models[0]):
            return False
        sd = m.state_dict()
        if sd.keys() != first.keys() or any(sd[k].shape != first[k].shape or sd[k].dtype != first[k].dtype
                                            for k in first):
            return False
    return True


class Ensemble(nn.Module):
    """Combine the predictions of `models` (see the module docstring for `combine`).

    weights: one per member, finite and >= 0 (normalised; default uniform).
    batched: True runs members of one architecture through `torch.func.vmap`; False (default) loops
        over them (see the module docstring).
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 combine: str = "mean_logits", *, batched: bool = False):
        super().__init__()
        if len(models) == 0:
            raise ValueError("an Ensemble needs at least one model")
        if combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_RULES)}; got {combine!r}")
        self.members = nn.ModuleList(models)
        self.combine = combine
        self.register_buffer("weights", torch.tensor(normalize_weights(weights, len(models), what="models"),
                                                     dtype=torch.float32), persistent=False)
        can_batch = same_architecture(list(models))
        if batched and not can_batch:
            raise ValueError("batched=True needs members of one architecture (same class, keys and shapes)")
        self.can_batch = can_batch
        self.batched = bool(batched)
        self.members.eval()

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, batched={self.batched}"

    def train(self, mode: bool = True) -> "Ensemble":
        """Members stay in eval mode whatever mode the ensemble is put in."""
        super().train(mode)
        self.members.eval()
        return self

    @torch.no_grad()
    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits: (M, N, C)."""
        self.members.eval()
        if not self.batched or len(self.members) == 1:
            outs = [m(x) for m in self.members]
            for i, out in enumerate(outs):
                if out.shape != outs[0].shape:
                    raise ValueError(f"member {i} ({type(self.members[i]).__name__}) outputs {tuple(out.shape)}, "
                                     f"member 0 outputs {tuple(outs[0].shape)}; members must predict the same classes")
            return torch.stack(outs)
        params, buffers, base = self._stacked()
        x = x.contiguous()  # BatchNorm under vmap supports only the default memory format (CUDA)

        def one(p, b, inp):
            return functional_call(base, (p, b), (inp,))

        return torch.vmap(one, in_dims=(0, 0, None))(params, buffers, x)

    def _stacked(self):
        """The members' weights stacked for vmap, read afresh at every call: a copy of a few MB, cheaper
        than hashing them, and never stale (an edit through `p.data` moves no version counter). Only the
        weightless skeleton on the "meta" device is kept, rebuilt when the members' structure changes."""
        params, buffers = stack_module_state(list(self.members))
        structure = tuple((name, tuple(t.shape), t.dtype) for name, t in self.members[0].state_dict().items())
        skeleton = getattr(self, "_skeleton", None)   # (structure, module) in a tuple: not a registered submodule
        if skeleton is None or skeleton[0] != structure:
            skeleton = self._skeleton = (structure, copy.deepcopy(self.members[0]).to("meta"))
        return params, buffers, skeleton[1]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_logits(self.member_logits(x).float(), self.weights, self.combine)


def combine_logits(logits: torch.Tensor, weights: torch.Tensor | Sequence[float], combine: str) -> torch.Tensor:
    """Combine member logits (M, N, C) with `weights` (M,) by `combine` -> (N, C) scores."""
    w = torch.as_tensor(weights, dtype=logits.dtype, device=logits.device).view(-1, 1, 1)
    if combine == "mean_logits":
        return (w * logits).sum(0)
    probs = (w * logits.softmax(-1)).sum(0)
    if combine == "mean_probs":
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    if combine == "vote":
        num_classes = logits.shape[-1]
        votes = (w * F.one_hot(logits.argmax(-1), num_classes).to(logits.dtype)).sum(0)
        tied = votes >= votes.max(dim=1, keepdim=True).values - 1e-6
        winner = torch.where(tied, probs, torch.full_like(probs, -1.0)).argmax(1)  # first index on equal probs
        out = votes.clone()  # vote shares; lift the tie-break winner just above the top share
        rows = torch.arange(len(out), device=out.device)
        out[rows, winner] = votes.max(dim=1).values + 1e-6
        return out
    raise ValueError(f"combine must be one of {', '.join(COMBINE_RULES)}; got {combine!r}")


def fit_weights(member_logits: torch.Tensor, labels: torch.Tensor, *, combine: str = "mean_probs") -> list[float]:
    """Ensemble weights that minimise NLL on a **validation** split (never the test set).

    member_logits: (M, N, C) logits of the members on the validation images; labels: (N,).
    Weights are parameterised as a softmax, so they stay positive and sum to one, and optimised
    with `scipy.optimize.minimize` (L-BFGS-B). Returns plain floats."""
    if combine not in ("mean_probs", "mean_logits"):
        raise ValueError("fit_weights supports combine='mean_probs' or 'mean_logits' (a vote has no gradient)")
    logits = member_logits.double().cpu()
    labels = labels.cpu()
    m = logits.shape[0]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.tensor(theta, requires_grad=True)
        scores = combine_logits(logits, t.softmax(0), combine)
        loss = F.cross_entropy(scores, labels)  # on log-probs this is the NLL; on logits, softmax first
        loss.backward()
        return float(loss.detach()), t.grad.numpy().copy()

    result = minimize(objective, np.zeros(m), jac=True, method="L-BFGS-B")
    return torch.tensor(result.x).softmax(0).tolist()


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 that minimises the NLL of `scores / T` on a
    **validation** split. `scores` (N, C) are logits or log-probabilities (an ensemble's
    `mean_probs` output: dividing log-probs by T and renormalising is the same power transform).
    T < 1 sharpens an under-confident model, T > 1 softens an over-confident one; accuracy is
    unchanged. One-dimensional, so `scipy.optimize.minimize_scalar` on log T (bounded)."""
    scores, labels = scores.double().cpu(), labels.cpu()
    result = minimize_scalar(lambda log_t: float(F.cross_entropy(scores / np.exp(log_t), labels)),
                             bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(result.x))


# ----------------------------------------------------------------------------------------------
# Metrics (all take scores (N, C) that are logits or log-probs; softmax is applied where needed)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, *, num_bins: int = 15) -> float:
    """ECE: the |accuracy - confidence| gap, averaged over equal-width confidence bins weighted by
    their share of samples (Guo et al., 2017). probs: (N, C)."""
    rel = reliability(probs, labels, num_bins=num_bins)
    total = sum(rel["count"])
    return sum(n / total * abs(acc - conf)
               for n, acc, conf in zip(rel["count"], rel["accuracy"], rel["confidence"]) if n > 0)


def reliability(probs: torch.Tensor, labels: torch.Tensor, *, num_bins: int = 15) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy and sample count (for a reliability diagram).
    Empty bins have None for confidence and accuracy."""
    confidence, prediction = probs.max(1)
    correct = (prediction == labels).float()
    bins = torch.clamp((confidence * num_bins).long(), max=num_bins - 1)
    out = {"confidence": [], "accuracy": [], "count": [], "bin_centre": []}
    for b in range(num_bins):
        mask = bins == b
        out["bin_centre"].append((b + 0.5) / num_bins)
        out["count"].append(int(mask.sum()))
        out["confidence"].append(float(confidence[mask].mean()) if mask.any() else None)
        out["accuracy"].append(float(correct[mask].mean()) if mask.any() else None)
    return out


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, *, log_probs: bool = False) -> dict[str, float]:
    """Accuracy, NLL and ECE of scores (N, C): logits, or log-probabilities if `log_probs`."""
    scores = scores.float().cpu()
    labels = labels.cpu()
    log_p = scores if log_probs else scores.log_softmax(1)
    return {
        "accuracy": float((scores.argmax(1) == labels).float().mean()),
        "nll": float(F.nll_loss(log_p, labels)),
        "ece": expected_calibration_error(log_p.exp(), labels),
    }


def disagreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Share of inputs on which two models predict different classes."""
    return float((logits_a.argmax(1) != logits_b.argmax(1)).float().mean())


def error_correlation(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Pearson correlation between the two models' error indicators (1 = wrong) over the inputs.
    0: errors independent (the ideal for ensembling); 1: they fail on the same inputs. None when it
    is undefined: a model that is right on every input (or wrong on every one) has no error variance."""
    ea = (logits_a.argmax(1) != labels).double()
    eb = (logits_b.argmax(1) != labels).double()
    if ea.std() == 0 or eb.std() == 0:
        return None
    return float(torch.corrcoef(torch.stack([ea, eb]))[0, 1])
