"""Knowledge distillation: a student learns from a teacher's outputs (introduced in notebook 06).

`distillation_loss` mixes the usual cross-entropy on labels with a term that pulls the student's
outputs towards the teacher's (Hinton, Vinyals & Dean, 2015). `distill` trains a student with it;
the teacher can be any module, an `Ensemble` included. The teacher always runs in eval mode, under
`torch.no_grad()`, on the same augmented batch the student sees.

`distillation_study` is the protocol of notebook 06's experiment: which students to train (given the
recipes that train them), and the temperature chosen on validation data.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from helpers.data import DataLike, DataSplits
from helpers.devices import pick_device
from helpers.evaluation import evaluate
from helpers.training import History, TrainConfig, train_epochs

OBJECTIVES = ("kl", "mse")


def check_options(*, temperature: float, soft_weight: float, objective: str) -> None:
    """Raise `ValueError` naming the first invalid distillation option."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    if not 0.0 <= soft_weight <= 1.0:
        raise ValueError(f"soft_weight must be in [0, 1], got {soft_weight}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
                      temperature: float = 4.0, soft_weight: float = 0.9, objective: str = "kl",
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """soft_weight * KD term + (1 - soft_weight) * cross-entropy(student_logits, targets).

    student_logits, teacher_logits: (N, C); targets: (N,) class indices.
    objective="kl": KL(teacher || student) between the temperature-softened distributions, times T^2
        so its gradients keep the same scale whatever the temperature (Hinton et al., 2015).
    objective="mse": mean squared error between the raw logits (temperature unused).
    The teacher's logits are detached: no gradient ever reaches the teacher."""
    check_options(temperature=temperature, soft_weight=soft_weight, objective=objective)
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must both be (N, C); got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    if targets.shape != student_logits.shape[:1]:
        raise ValueError(f"targets must be ({student_logits.shape[0]},) class indices; got {tuple(targets.shape)}")
    teacher_logits = teacher_logits.detach()
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if objective == "kl":
        t = temperature
        kd = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                      reduction="batchmean", log_target=True) * (t * t)
    else:
        kd = F.mse_loss(student_logits, teacher_logits)
    return soft_weight * kd + (1 - soft_weight) * ce


class CachedTeacher(nn.Module):
    """A teacher that remembers its logits for the i-th batch it is shown.

    Students trained with the same data seed and schedule see exactly the same stream of augmented
    batches, so the teacher's outputs can be computed once and reused: call `restart()` before each
    student run. Every cached entry keeps a fingerprint of its batch; a batch that differs from the
    cached one is recomputed, never answered from the cache."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher
        self._cache: dict[int, tuple[tuple, torch.Tensor]] = {}
        self._calls = 0
        self.hits = 0

    def restart(self) -> None:
        self._calls = 0

    @staticmethod
    def _fingerprint(x: torch.Tensor) -> tuple:
        return (tuple(x.shape), float(x.float().sum()), float(x[..., ::7, ::5].float().square().sum()))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key, fp = self._calls, self._fingerprint(x)
        self._calls += 1
        cached = self._cache.get(key)
        if cached is not None and cached[0] == fp:
            self.hits += 1
            return cached[1]
        self.teacher.eval()
        logits = self.teacher(x).float()
        self._cache[key] = (fp, logits)
        return logits


def distill(student: nn.Module, teacher: nn.Module, data: DataLike, *, config: TrainConfig, temperature: float = 4.0,
            soft_weight: float = 0.9, objective: str = "kl", seed: int = 0, test_data: DataLike | None = None,
            device: torch.device | str | None = None, progress: bool = True, desc: str = "distill") -> History:
    """Train `student` in place to imitate `teacher` on `data` (the whole schedule of `config`);
    returns its `History`. The teacher sees the student's augmented batch; `config.label_smoothing`
    applies to the cross-entropy part. The training loop is `helpers.training.train_epochs`, with
    `distillation_loss` as its loss."""
    check_options(temperature=temperature, soft_weight=soft_weight, objective=objective)  # before any training
    device = torch.device(device) if device is not None else pick_device()
    teacher = teacher.to(device, memory_format=torch.channels_last).eval()

    def loss_fn(student_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        teacher.eval()
        with torch.no_grad():
            teacher_logits = teacher(x).float()
        return distillation_loss(student_logits, teacher_logits, y, temperature=temperature, soft_weight=soft_weight,
                                 objective=objective, label_smoothing=config.label_smoothing)

    return train_epochs(student, data, config=config, seed=seed, start_epoch=0, stop_epoch=config.num_epochs,
                        test_data=test_data, loss_fn=loss_fn, device=device, progress=progress, desc=desc)


# ----------------------------------------------------------------------------------------------
# The study protocol: which students to train, and the temperature chosen on validation data


@dataclass
class StudentRun:
    """One trained student: test and validation accuracy (0-1) and its training time."""

    test_accuracy: float
    val_accuracy: float
    train_seconds: float


@dataclass
class DistillationStudy:
    """The distillation study's results (notebook 06): `runs[name][seed]` for every student configuration trained."""

    runs: dict[str, dict[int, StudentRun]] = field(default_factory=dict)
    temperature: float = 0.0                        # chosen on data.val
    val_by_temperature: dict[float, float] = field(default_factory=dict)
    chosen: str = ""                                # the name of the chosen KD configuration
    cache_hits: int = 0                             # teacher outputs reused instead of recomputed

    def accuracies(self, name: str) -> list[float]:
        return [r.test_accuracy for r in self.runs[name].values()]

    def summary(self) -> dict[str, dict]:
        """Per configuration: test accuracy per seed, mean, std (0 for one seed), val accuracy, seconds."""
        out = {}
        for name, by_seed in self.runs.items():
            acc = self.accuracies(name)
            out[name] = {"accuracy": acc, "seeds": list(by_seed), "mean": statistics.fmean(acc),
                         "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                         "val_accuracy": [r.val_accuracy for r in by_seed.values()],
                         "train_seconds_mean": statistics.fmean(r.train_seconds for r in by_seed.values())}
        return out


def distillation_study(scratch: Callable[..., tuple[nn.Module, History]],
                       distilled: Callable[..., tuple[nn.Module, History]], data: DataSplits, *,
                       teachers: Mapping[str, nn.Module], temperatures: Sequence[float], soft_weight: float,
                       seeds: Sequence[int]) -> DistillationStudy:
    """A distillation sweep that spends students where they answer a question (notebook 06):

    1. on the first seed: the scratch student, KD from the ensemble with MSE on logits, and KL at each
       of `temperatures`;
    2. the temperature with the best **validation** accuracy (`data.val`) is chosen, never the test set;
    3. on every other seed: scratch and the chosen KD recipe; on the first seed, one member as the
       teacher at the chosen temperature.
    Each student is scored on `data.test` and `data.val`.

    This is the protocol only; the students come from the two recipes passed in, which train or load
    them: `scratch(seed=s)` and `distilled(seed=s, soft_weight=..., teacher_module=..., teacher=name,
    objective=..., temperature=...)`, each returning (model, History). The course passes
    `functools.partial(get_student, preset, data)` and `functools.partial(get_distilled_student, preset,
    data)` from `helpers.zoo`. `teachers` must hold "ensemble" and "member". Teacher outputs are computed
    once per batch and shared by students that see the same batches (`CachedTeacher`)."""
    cached = {name: CachedTeacher(t) for name, t in teachers.items()}
    study = DistillationStudy()
    device = pick_device()

    def run(name: str, seed: int, **kd) -> None:
        if kd:
            model, history = distilled(seed=seed, soft_weight=soft_weight, teacher_module=cached[kd["teacher"]], **kd)
        else:
            model, history = scratch(seed=seed)
        study.runs.setdefault(name, {})[seed] = StudentRun(evaluate(model, data.test, device=device)["accuracy"],
                                                           evaluate(model, data.val, device=device)["accuracy"],
                                                           history.train_seconds)

    first = seeds[0]
    run("scratch", first)
    run("KD ensemble (MSE)", first, teacher="ensemble", objective="mse", temperature=1.0)
    for t in temperatures:
        run(f"KD ensemble (KL, T={t:g})", first, teacher="ensemble", objective="kl", temperature=t)
    study.val_by_temperature = {t: study.runs[f"KD ensemble (KL, T={t:g})"][first].val_accuracy
                                for t in temperatures}
    study.temperature = max(study.val_by_temperature, key=study.val_by_temperature.get)
    study.chosen = f"KD ensemble (KL, T={study.temperature:g})"
    for seed in seeds[1:]:
        run("scratch", seed)
        run(study.chosen, seed, teacher="ensemble", objective="kl", temperature=study.temperature)
    run(f"KD member (KL, T={study.temperature:g})", first, teacher="member", objective="kl",
        temperature=study.temperature)
    study.cache_hits = sum(c.hits for c in cached.values())
    return study
