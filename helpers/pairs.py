"""The trained model pairs every later notebook combines (introduced in notebook 02).

| kind          | what differs between model_a and model_b                                   |
|---------------|----------------------------------------------------------------------------|
| `independent` | initial weights and data order                                              |
| `shared_init` | data order only (same initial weights)                                      |
| `spawned`     | a parent trains `spawn_epoch` epochs, then two children finish the schedule |
|               | with different data orders (Frankle et al., 2020)                           |
| `disjoint`    | training data: each sees one label-skewed half (Dirichlet alpha=0.5 split)  |

plus `joint`: one model trained on all the data (the reference for the disjoint pair).

All runs go through `train_or_load`, so a notebook that needs a pair loads it from the cache, or
trains it with exactly the config notebook 02 uses when the cache is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from helpers.checkpoints import train_or_load
from helpers.data import CIFAR10, TensorData, dirichlet_split
from helpers.models import course_cnn, student_cnn
from helpers.presets import Preset
from helpers.repro import pick_device, seed_everything
from helpers.training import History, TrainConfig, train

PAIR_KINDS = ("independent", "shared_init", "spawned", "disjoint")
DISJOINT_ALPHA = 0.5


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one trained model (the checkpoint key)."""

    arch: str                 # "course" | "student"
    width: float              # width multiplier
    init_seed: int            # seeds the initial weights
    data_seed: int            # seeds the data order and augmentation
    train: TrainConfig
    data: str                 # the data the preset uses, e.g. "synthetic:2048" or "cifar10"
    subset: str = "all"       # which training images: "all" or "dirichlet(alpha,part/parts,seed)"
    start_epoch: int = 0      # >0: continue from `parent` at this epoch of the schedule
    stop_epoch: int = 0       # 0: the end of the schedule
    parent: "RunConfig | None" = None


@dataclass
class Pair:
    """Two trained models and their histories."""

    kind: str
    model_a: nn.Module
    model_b: nn.Module
    history_a: History
    history_b: History
    train_a: TensorData       # the training data each member saw
    train_b: TensorData


def data_tag(preset: Preset, data: CIFAR10) -> str:
    return f"{preset.data}:{len(data.train)}:{data.source}"


def build_model(arch: str, width: float, init_seed: int) -> nn.Module:
    """A freshly initialised model; the same `init_seed` gives the same weights."""
    seed_everything(init_seed)
    return {"course": course_cnn, "student": student_cnn}[arch](width)


def select_subset(data: CIFAR10, subset: str) -> TensorData:
    if subset == "all":
        return data.train
    if subset.startswith("dirichlet("):
        alpha, part, seed = subset[len("dirichlet("):-1].split(",")
        index, parts = (int(v) for v in part.split("/"))
        return dirichlet_split(data.train, parts, alpha=float(alpha), seed=int(seed))[index]
    raise ValueError(f"unknown subset {subset!r}")


def train_run(config: RunConfig, data: CIFAR10, *, name: str, parent_name: str | None = None,
              progress: bool = True) -> tuple[nn.Module, History]:
    """Train (or load) the model described by `config`; histories of spawned runs include the parent's.

    parent_name: checkpoint name of `config.parent` (default `<name>-parent`). Siblings must pass the
    same name, so that they load one parent instead of each training their own."""
    train_data = select_subset(data, config.subset)
    parent_history = None
    if config.parent is not None:
        parent, parent_history = train_run(config.parent, data, name=parent_name or f"{name}-parent",
                                           progress=progress)

    def build() -> nn.Module:
        model = build_model(config.arch, config.width, config.init_seed)
        if config.parent is not None:
            model.load_state_dict(parent.state_dict())
        return model

    def fit(model: nn.Module) -> History:
        return train(model, train_data, config=config.train, seed=config.data_seed, test_data=data.test,
                     start_epoch=config.start_epoch, stop_epoch=config.stop_epoch or None,
                     progress=progress, desc=name)

    model, history = train_or_load(name, config, build, fit)
    if parent_history is not None:
        history = parent_history.then(history)
    return model.to(pick_device()).eval(), history


def pair_configs(kind: str, preset: Preset, data: CIFAR10) -> tuple[RunConfig, RunConfig]:
    """The two run configs of a pair kind under `preset`."""
    base = RunConfig(arch="course", width=preset.width, init_seed=0, data_seed=0, train=preset.train,
                     data=data_tag(preset, data))
    if kind == "independent":
        return replace(base, init_seed=1, data_seed=1), replace(base, init_seed=2, data_seed=2)
    if kind == "shared_init":
        return replace(base, init_seed=3, data_seed=3), replace(base, init_seed=3, data_seed=4)
    if kind == "spawned":
        parent = replace(base, init_seed=5, data_seed=5, stop_epoch=preset.spawn_epoch)
        child = replace(base, init_seed=5, start_epoch=preset.spawn_epoch, parent=parent)
        return replace(child, data_seed=6), replace(child, data_seed=7)
    if kind == "disjoint":
        return tuple(replace(base, init_seed=8 + i, data_seed=8 + i,
                             subset=f"dirichlet({DISJOINT_ALPHA},{i}/2,0)") for i in range(2))
    raise ValueError(f"unknown pair kind {kind!r}; valid kinds: {', '.join(PAIR_KINDS)}")


def get_pair(kind: str, preset: Preset, data: CIFAR10, *, progress: bool = True) -> Pair:
    """The trained pair `kind` (one of `PAIR_KINDS`) for `preset`, from the cache or trained now."""
    config_a, config_b = pair_configs(kind, preset, data)
    parent = f"{preset.name}-{kind}-parent"
    model_a, history_a = train_run(config_a, data, name=f"{preset.name}-{kind}-a", parent_name=parent, progress=progress)
    model_b, history_b = train_run(config_b, data, name=f"{preset.name}-{kind}-b", parent_name=parent, progress=progress)
    return Pair(kind, model_a, model_b, history_a, history_b,
                select_subset(data, config_a.subset), select_subset(data, config_b.subset))


def get_spawned_children(preset: Preset, data: CIFAR10, num_children: int, *,
                         progress: bool = True) -> list[tuple[nn.Module, History]]:
    """`num_children` children of the spawned pair's parent, each with its own data order; the
    first two are the spawned pair's model_a and model_b (loaded from the same cache files)."""
    config_a, _ = pair_configs("spawned", preset, data)
    children = []
    for i in range(num_children):
        suffix = "ab"[i] if i < 2 else f"c{i}"
        children.append(train_run(replace(config_a, data_seed=config_a.data_seed + i), data,
                                  name=f"{preset.name}-spawned-{suffix}", parent_name=f"{preset.name}-spawned-parent",
                                  progress=progress))
    return children


def get_student(preset: Preset, data: CIFAR10, *, seed: int = 0, progress: bool = True) -> tuple[nn.Module, History]:
    """The student CNN trained from scratch on all training data with the preset schedule
    (init and data seed 100 + `seed`): the baseline of notebook 06, a mixed-architecture member in 05."""
    return train_run(student_config(preset, data, seed), data, name=f"{preset.name}-student-s{seed}", progress=progress)


@dataclass(frozen=True)
class DistillRun:
    """Everything that determines a distilled student (the checkpoint key)."""

    student: RunConfig                 # architecture, seeds, schedule (same seeds as the scratch student)
    teachers: tuple[RunConfig, ...]    # the teacher models' own run configs
    combine: str                       # how several teachers are combined (Ensemble combine rule)
    kind: str                          # "kl" | "mse"
    temperature: float
    alpha: float                       # weight of the distillation term (1 - alpha on cross-entropy)


def student_config(preset: Preset, data: CIFAR10, seed: int) -> RunConfig:
    return RunConfig(arch="student", width=preset.student_width, init_seed=100 + seed, data_seed=100 + seed,
                     train=preset.train, data=data_tag(preset, data))


def get_distilled_student(preset: Preset, data: CIFAR10, *, teacher: str = "ensemble", kind: str = "kl",
                          temperature: float = 4.0, alpha: float = 0.9, seed: int = 0,
                          teacher_module: nn.Module | None = None, progress: bool = True) -> tuple[nn.Module, History]:
    """A student distilled from the independent pair: `teacher="member"` (model_a alone) or
    `"ensemble"` (mean of both members' logits). Same initial weights and data order as
    `get_student(seed=seed)`, so the two differ only in the loss. `teacher_module` lets the caller
    pass a ready teacher (e.g. a `CachedTeacher`) matching `teacher`."""
    from helpers.distillation import CachedTeacher, distill
    from helpers.ensembling import Ensemble

    if teacher not in ("member", "ensemble"):
        raise ValueError(f"teacher must be 'member' or 'ensemble', got {teacher!r}")
    configs = pair_configs("independent", preset, data)
    teachers = configs if teacher == "ensemble" else configs[:1]
    run = DistillRun(student_config(preset, data, seed), tuple(teachers), "mean_logits", kind, float(temperature),
                     float(alpha))

    def build() -> nn.Module:
        return build_model("student", preset.student_width, run.student.init_seed)

    def fit(model: nn.Module) -> History:
        module = teacher_module
        if module is None:
            pair = get_pair("independent", preset, data, progress=progress)
            members = [pair.model_a, pair.model_b][: len(teachers)]
            module = Ensemble(members, combine="mean_logits")
        if isinstance(module, CachedTeacher):
            module.restart()
        return distill(model, module, data.train, config=preset.train, temperature=temperature, alpha=alpha,
                       kind=kind, seed=run.student.data_seed, test_data=data.test, progress=progress,
                       desc=f"KD {teacher} {kind} T={temperature:g} s{seed}")

    name = f"{preset.name}-kd-{teacher}-{kind}-s{seed}"
    model, history = train_or_load(name, run, build, fit)
    return model.to(pick_device()).eval(), history


def get_joint(preset: Preset, data: CIFAR10, *, progress: bool = True) -> tuple[nn.Module, History]:
    """One course model trained on all the training data (its own seeds, 10)."""
    config = RunConfig(arch="course", width=preset.width, init_seed=10, data_seed=10, train=preset.train,
                       data=data_tag(preset, data))
    return train_run(config, data, name=f"{preset.name}-joint", progress=progress)
