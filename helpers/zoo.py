"""The course's trained models, cached: every recipe the notebooks share (introduced in notebook 02).

Each `get_*` function returns a trained model (and its `History`) for a preset: loaded from the
checkpoint cache, or trained now with exactly the config that notebook 02 (or 06, 07) uses when the
cache is empty. So every notebook can run on its own, in any order.

| recipe                  | what it is                                                                  |
|-------------------------|-----------------------------------------------------------------------------|
| `get_pair(kind, ...)`   | two course models; `kind` says what differs between model_a and model_b:     |
|   `independent`         |   initial weights and data order                                            |
|   `shared_init`         |   data order only (same initial weights)                                    |
|   `spawned`             |   a parent trains `spawn_epoch` epochs, then two children finish the        |
|                         |   schedule with different data orders (Frankle et al., 2020)                |
|   `disjoint`            |   training data: each sees one label-skewed half (Dirichlet split)          |
| `get_spawned_children`  | more children of the spawned pair's parent (soups)                          |
| `get_joint`             | one course model trained on all the training data                           |
| `get_independent_models`| N independent course models (the independent pair first): pairs with spread |
| `get_residual_pair`     | two independent residual CNNs (notebook 04: alignment of residual networks)  |
| `get_nonorm_pair`       | two independent course CNNs without BatchNorm (notebook 04: REPAIR by folding) |
| `get_student`           | the small student CNN trained from scratch (notebook 06's baseline)          |
| `get_distilled_student` | the student distilled from a teacher (`helpers.distillation`)               |
| `get_fedavg`            | FedAvg of the course CNN over client splits (`helpers.federated`)           |
| `get_averaged_run`      | one run with its endpoint, SWA average and EMA (`helpers.swa`, notebook 08)   |
| `get_task_models`       | a briefly trained base and its fine-tunes on class-subset tasks (notebook 08) |
| `get_finetuned`         | any starting weights (or none) trained for a number of epochs, fractions    |
|                         | allowed (merge then fine-tune, notebook 09)                                 |

Every seed the recipes use is in `SEEDS`, in one place, so no two recipes share a stream by
accident. Every cache key is a frozen dataclass (`RunConfig`, `DistillRun`, `FedRun`, `AveragedRun`,
`FineTuneRun`) holding everything that determines the result, the teacher's weights included for
distilled students (`helpers.models.module_fingerprint`). Each recipe's key comes from a function
that trains nothing (`pair_configs`, `spawned_child_config`, `independent_config`, `joint_config`,
`residual_configs`, `nonorm_configs`, `owner_configs`, `student_config`, `distilled_student_config`,
`fedavg_config`, `averaged_run_config`, `finetune_config`, `task_base_config`, `task_finetune_configs`),
so the keys and their seeds can be listed without data or training (tests/test_zoo.py checks that no
two runs share a seed unless they are meant to).

Notebook 06's study protocol (which students to train, the temperature chosen on validation data) is
`helpers.distillation.distillation_study`, given `get_student` and `get_distilled_student`; the data
selectors (`Subset`, `ClassSubset`) are in `helpers.data`, `build_model` in `helpers.models`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping, Sequence

from torch import nn

from helpers.checkpoints import train_or_load
from helpers.data import ALL, ClassSubset, DataSplits, Subset, TensorData, iterate_batches
from helpers.devices import pick_device
from helpers.distillation import CachedTeacher, distill
from helpers.ensembling import Ensemble
from helpers.federated import client_split, fedavg
from helpers.models import Whitening, build_model, fit_whitening, module_fingerprint
from helpers.presets import Preset
from helpers.swa import AveragingConfig, train_with_averages
from helpers.training import History, TrainConfig, epoch_steps, train_epochs, train_steps

PAIR_KINDS = ("independent", "shared_init", "spawned", "disjoint")
DISJOINT_ALPHA = 0.5   # Dirichlet concentration of the disjoint pair's split

# Every seed a recipe uses (initial weights, data order, data splits), in one table; a recipe's
# replicate or member i adds i to its entry (student seed s: `student + s`; disjoint member i:
# `disjoint + i`; spawned children 0 and 1, the spawned pair: `spawned_children + i`, child i >= 2
# `spawned_extra + i`). tests/test_zoo.py lists every run the recipes make and checks that no two
# share a seed unless they are meant to.
SEEDS: Mapping[str, int] = MappingProxyType({
    "independent_a": 1,
    "independent_b": 2,
    "shared_init": 3,            # init and model_a's data order
    "shared_init_b_data": 4,     # model_b's data order
    "spawned_parent": 5,         # the parent's init and data order
    "spawned_children": 6,       # the spawned pair's data orders: child 0 = 6, child 1 = 7
    "spawned_extra": 90,         # child i >= 2 of the spawned parent: data order 90 + i (6 + i would reuse the
                                 # disjoint members' and the joint model's seeds: child 4 and the joint model
                                 # would see the same batches)
    "disjoint": 8,               # member i: init and data order 8 + i
    "joint": 10,
    "independent_extra": 20,     # independent model i >= 2 of get_independent_models: 20 + i
    "residual_a": 11,            # the residual pair of notebook 04 (independent: init and data order)
    "residual_b": 12,
    "nonorm_a": 13,              # the pair without normalisation of notebook 04 (REPAIR by folding)
    "nonorm_b": 14,
    "owners": 70,                # owner i of get_owners (Dirichlet parts of the training set): 70 + i
    "fedavg_init": 30,           # the server model's initial weights (and client data order), every FedAvg setting
    "fedavg_extra": 110,         # FedAvg replicate s >= 1 (get_fedavg(seed=s)): init and data order 110 + s
    "swa": 40,                   # SWA/EMA run s: init and data order 40 + s
    "task_base": 50,             # the task-arithmetic base model
    "task_finetune": 51,         # task i's fine-tune: data order 51 + i
    "finetune": 60,              # get_finetuned: data order (and init, from scratch) 60 + seed
    "student": 100,              # student seed s: init and data order 100 + s
    "dirichlet_split": 0,        # the label-skewed splits: the disjoint pair's and the owners' parts; FedAvg
                                 # replicate s splits its clients with seed 0 + s (replicate 0's Dirichlet
                                 # clients are the owners' parts)
})


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one trained model (the checkpoint key)."""

    arch: str                 # `helpers.models.build_model`'s: "course" | "student" | "residual" | "course_nonorm"
    width: float              # width multiplier
    init_seed: int            # seeds the initial weights
    data_seed: int            # seeds the data order and augmentation
    train: TrainConfig
    data: str                 # the data: "<kind>:<training images>:<content fingerprint>" (`data_tag`)
    subset: Subset | ClassSubset = ALL   # which training images
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


def data_tag(preset: Preset, data: DataSplits) -> str:
    """The data's identity in cache keys: its content fingerprint, never a path, so a cache made on one
    machine (or under another CIFAR10_DIR) is used wherever the same images are."""
    return f"{preset.data}:{len(data.train)}:{data.fingerprint}"


def train_run(config: RunConfig, data: DataSplits, *, name: str, parent_name: str | None = None,
              progress: bool = True) -> tuple[nn.Module, History]:
    """Train (or load) the model described by `config`; histories of spawned runs include the parent's.

    parent_name: checkpoint name of `config.parent` (default `<name>-parent`). Siblings must pass the
    same name, so that they load one parent instead of each training their own."""
    train_data = config.subset.select(data.train)
    parent_history = None
    if config.parent is not None:
        parent, parent_history = train_run(config.parent, data, name=parent_name or f"{name}-parent",
                                           progress=progress)

    def build() -> nn.Module:
        model = new_model(config.arch, config.width, config.init_seed, train_data)
        if config.parent is not None:
            model.load_state_dict(parent.state_dict())
        return model

    def fit(model: nn.Module) -> History:
        return train_epochs(model, train_data, config=config.train, seed=config.data_seed, start_epoch=config.start_epoch,
                            stop_epoch=config.stop_epoch or config.train.num_epochs, test_data=data.test,
                            progress=progress, desc=name)

    model, history = train_or_load(name, config, build, fit)
    if parent_history is not None:
        history = parent_history.then(history)
    return model.to(pick_device()).eval(), history


WHITENING_IMAGES = 5000   # training images whose 2x2 patches fit a whitening stem (airbench's number)


def new_model(arch: str, width: float, init_seed: int, train: TensorData) -> nn.Module:
    """`build_model(arch, width, init_seed)`, with any `Whitening` stem fitted to the first
    `WHITENING_IMAGES` images of `train` (the training images this run sees; unaugmented, in order),
    so the same run always starts from the same weights."""
    return fit_stem(build_model(arch, width, init_seed), train)


def fit_stem(model: nn.Module, train: TensorData) -> nn.Module:
    """Fit `model`'s `Whitening` stem, if it has one, to the first `WHITENING_IMAGES` images of `train`
    (unaugmented, in order); returns `model`."""
    if any(isinstance(m, Whitening) for m in model.modules()):
        first = train.subset(range(min(WHITENING_IMAGES, len(train))))
        fit_whitening(model, iterate_batches(first, 500), max_images=WHITENING_IMAGES)
    return model


def course_config(preset: Preset, data: DataSplits, seed: int) -> RunConfig:
    """The preset's model (`preset.arch`: the course CNN, or airbench's network for `long`) under `preset`,
    with init and data seed `seed`."""
    return RunConfig(arch=preset.arch, width=preset.width, init_seed=seed, data_seed=seed, train=preset.train,
                     data=data_tag(preset, data))


def pair_configs(kind: str, preset: Preset, data: DataSplits) -> tuple[RunConfig, RunConfig]:
    """The two run configs of a pair kind under `preset`."""
    if kind == "independent":
        return course_config(preset, data, SEEDS["independent_a"]), course_config(preset, data, SEEDS["independent_b"])
    if kind == "shared_init":
        a = course_config(preset, data, SEEDS["shared_init"])
        return a, replace(a, data_seed=SEEDS["shared_init_b_data"])
    if kind == "spawned":
        return spawned_child_config(preset, data, 0), spawned_child_config(preset, data, 1)
    if kind == "disjoint":
        return tuple(replace(course_config(preset, data, SEEDS["disjoint"] + i),
                             subset=Subset(DISJOINT_ALPHA, i, 2, SEEDS["dirichlet_split"])) for i in range(2))
    raise ValueError(f"unknown pair kind {kind!r}; valid kinds: {', '.join(PAIR_KINDS)}")


def spawned_child_config(preset: Preset, data: DataSplits, index: int) -> RunConfig:
    """Child `index` of the spawned parent (which trains the first `preset.spawn_epoch` epochs): the
    parent's weights, then its own data order (children 0 and 1 are the spawned pair)."""
    if index < 0:
        raise ValueError(f"child index must be >= 0, got {index}")
    parent = replace(course_config(preset, data, SEEDS["spawned_parent"]), stop_epoch=preset.spawn_epoch)
    seed = SEEDS["spawned_children"] + index if index < 2 else SEEDS["spawned_extra"] + index
    return replace(parent, stop_epoch=0, start_epoch=preset.spawn_epoch, parent=parent, data_seed=seed)


def get_pair(kind: str, preset: Preset, data: DataSplits, *, progress: bool = True) -> Pair:
    """The trained pair `kind` (one of `PAIR_KINDS`) for `preset`, from the cache or trained now."""
    config_a, config_b = pair_configs(kind, preset, data)
    parent = f"{preset.name}-{kind}-parent"
    model_a, history_a = train_run(config_a, data, name=f"{preset.name}-{kind}-a", parent_name=parent, progress=progress)
    model_b, history_b = train_run(config_b, data, name=f"{preset.name}-{kind}-b", parent_name=parent, progress=progress)
    return Pair(kind, model_a, model_b, history_a, history_b,
                config_a.subset.select(data.train), config_b.subset.select(data.train))


def residual_configs(preset: Preset, data: DataSplits) -> tuple[RunConfig, RunConfig]:
    """The two runs of `get_residual_pair`: the residual CNN at the preset's width and schedule, seeds
    `SEEDS["residual_a"]` and `SEEDS["residual_b"]`."""
    return tuple(replace(course_config(preset, data, SEEDS[f"residual_{m}"]), arch="residual") for m in "ab")


def get_residual_pair(preset: Preset, data: DataSplits, *, progress: bool = True) -> Pair:
    """Two independently trained residual CNNs (`helpers.models.residual_cnn` at the preset's width),
    for aligning residual networks in notebook 04."""
    (model_a, history_a), (model_b, history_b) = (
        train_run(c, data, name=f"{preset.name}-residual-{m}", progress=progress)
        for c, m in zip(residual_configs(preset, data), "ab"))
    return Pair("independent_residual", model_a, model_b, history_a, history_b, data.train, data.train)


NONORM_LR_FACTOR = 0.2   # without BatchNorm the course CNN diverges at the preset's peak lr; a fifth trains


def nonorm_configs(preset: Preset, data: DataSplits) -> tuple[RunConfig, RunConfig]:
    """The two runs of `get_nonorm_pair`: the course CNN without BatchNorm at the preset's width and
    schedule, peak lr times `NONORM_LR_FACTOR`, seeds `SEEDS["nonorm_a"]` and `SEEDS["nonorm_b"]`."""
    return tuple(replace(course_config(preset, data, SEEDS[f"nonorm_{m}"]), arch="course_nonorm",
                         train=replace(preset.train, lr=preset.train.lr * NONORM_LR_FACTOR)) for m in "ab")


def get_nonorm_pair(preset: Preset, data: DataSplits, *, progress: bool = True) -> Pair:
    """Two independently trained course CNNs without BatchNorm (`course_cnn(norm=False)`, Kaiming
    init) at the preset's width and schedule, peak lr times `NONORM_LR_FACTOR`: REPAIR's main case,
    networks whose statistics can only be corrected inside the weights (notebook 04)."""
    (model_a, history_a), (model_b, history_b) = (
        train_run(c, data, name=f"{preset.name}-nonorm-{m}", progress=progress)
        for c, m in zip(nonorm_configs(preset, data), "ab"))
    return Pair("independent_nonorm", model_a, model_b, history_a, history_b, data.train, data.train)


def get_spawned_children(preset: Preset, data: DataSplits, num_children: int, *,
                         progress: bool = True) -> list[tuple[nn.Module, History]]:
    """`num_children` children of the spawned pair's parent, each with its own data order; the
    first two are the spawned pair's model_a and model_b (loaded from the same cache files)."""
    return [train_run(spawned_child_config(preset, data, i), data,
                      name=f"{preset.name}-spawned-{'ab'[i] if i < 2 else f'c{i}'}",
                      parent_name=f"{preset.name}-spawned-parent", progress=progress)
            for i in range(num_children)]


def owner_configs(preset: Preset, data: DataSplits, num_owners: int, *,
                  dirichlet_alpha: float = DISJOINT_ALPHA) -> list[RunConfig]:
    """The runs of `get_owners`: owner i trains the course CNN on part i of a `num_owners`-part
    Dirichlet split (split seed `SEEDS["dirichlet_split"]`), init and data order `SEEDS["owners"] + i`."""
    if num_owners < 2:
        raise ValueError(f"num_owners must be >= 2, got {num_owners}")
    return [replace(course_config(preset, data, SEEDS["owners"] + i),
                    subset=Subset(dirichlet_alpha, i, num_owners, SEEDS["dirichlet_split"])) for i in range(num_owners)]


def get_owners(preset: Preset, data: DataSplits, num_owners: int, *, dirichlet_alpha: float = DISJOINT_ALPHA,
               progress: bool = True) -> list[tuple[nn.Module, History, TensorData]]:
    """`num_owners` data owners (notebook 09): the training set split into `num_owners` label-skewed
    parts (`helpers.data.dirichlet_split`, concentration `dirichlet_alpha`, split seed
    `SEEDS["dirichlet_split"]` — the same parts `get_fedavg` gives its clients), and a course model
    trained on each part alone with the preset's schedule (owner i: init and data order
    `SEEDS["owners"] + i`). Returns (model, History, the owner's training images) per owner."""
    owners = []
    for i, config in enumerate(owner_configs(preset, data, num_owners, dirichlet_alpha=dirichlet_alpha)):
        train = config.subset.select(data.train)
        if len(train) < preset.train.batch_size:
            raise ValueError(f"owner {i} of {num_owners} (Dirichlet {dirichlet_alpha:g}) has {len(train)} training "
                             f"images, fewer than one batch ({preset.train.batch_size}): use fewer owners or a larger "
                             "dirichlet_alpha")
        model, history = train_run(config, data, name=f"{preset.name}-owner{i}of{num_owners}-dir{dirichlet_alpha:g}",
                                   progress=progress)
        owners.append((model, history, train))
    return owners


def joint_config(preset: Preset, data: DataSplits) -> RunConfig:
    """The run of `get_joint`: the course CNN on all the training data, seeds `SEEDS["joint"]`."""
    return course_config(preset, data, SEEDS["joint"])


def get_joint(preset: Preset, data: DataSplits, *, progress: bool = True) -> tuple[nn.Module, History]:
    """One course model trained on all the training data (its own seeds, `SEEDS["joint"]`)."""
    return train_run(joint_config(preset, data), data, name=f"{preset.name}-joint", progress=progress)


def independent_config(preset: Preset, data: DataSplits, index: int) -> RunConfig:
    """Independent course model `index` of `get_independent_models`: 0 and 1 are the independent pair's
    members, model i >= 2 has init and data order `SEEDS["independent_extra"] + i`."""
    if index < 0:
        raise ValueError(f"model index must be >= 0, got {index}")
    if index < 2:
        return pair_configs("independent", preset, data)[index]
    return course_config(preset, data, SEEDS["independent_extra"] + index)


def get_independent_models(preset: Preset, data: DataSplits, num_models: int, *,
                           progress: bool = True) -> list[nn.Module]:
    """`num_models` independently trained course models: the independent pair's two members first
    (same cache files), then seeds `SEEDS["independent_extra"] + i`. N models give N(N-1)/2 pairs, so
    pairwise methods (averaging, alignment, ensembling) get a spread over pairs for the price of N runs."""
    if num_models < 2:
        raise ValueError(f"num_models must be >= 2, got {num_models}")
    pair = get_pair("independent", preset, data, progress=progress)
    extra = [train_run(independent_config(preset, data, i), data, name=f"{preset.name}-independent-{i}",
                       progress=progress)[0] for i in range(2, num_models)]
    return [pair.model_a, pair.model_b, *extra]


def student_config(preset: Preset, data: DataSplits, seed: int) -> RunConfig:
    """The student CNN under `preset`, student seed `seed` (init and data seed `SEEDS["student"] + seed`)."""
    return RunConfig(arch="student", width=preset.student_width, init_seed=SEEDS["student"] + seed,
                     data_seed=SEEDS["student"] + seed, train=preset.train, data=data_tag(preset, data))


def get_student(preset: Preset, data: DataSplits, *, seed: int = 0, progress: bool = True) -> tuple[nn.Module, History]:
    """The student CNN trained from scratch on all training data with the preset schedule:
    the baseline of notebook 06, a mixed-architecture member in 05."""
    return train_run(student_config(preset, data, seed), data, name=f"{preset.name}-student-s{seed}", progress=progress)


# ----------------------------------------------------------------------------------------------
# Distilled students


def teacher_fingerprint(teacher: nn.Module) -> str:
    """The teacher's part of a distilled student's key: `helpers.models.module_fingerprint` of the teacher;
    a `CachedTeacher` (which only remembers outputs) has the fingerprint of the teacher it wraps."""
    return module_fingerprint(teacher.teacher if isinstance(teacher, CachedTeacher) else teacher)


@dataclass(frozen=True)
class DistillRun:
    """Everything that determines a distilled student (the checkpoint key)."""

    student: RunConfig                 # architecture, seeds, schedule (same seeds as the scratch student)
    teacher: str                       # the teacher's name, for people ("ensemble", "member", ...)
    teacher_fingerprint: str           # `teacher_fingerprint` of the teacher: its weights and combine rule
    objective: str                     # "kl" | "mse"
    temperature: float
    soft_weight: float                 # weight of the distillation term (1 - soft_weight on cross-entropy)


def pair_teachers(preset: Preset, data: DataSplits, *, progress: bool = True) -> dict[str, nn.Module]:
    """The course's two teachers, from the independent pair: `member` (model_a) and `ensemble`
    (the mean of both members' logits)."""
    pair = get_pair("independent", preset, data, progress=progress)
    return {"member": pair.model_a, "ensemble": Ensemble([pair.model_a, pair.model_b], combine="mean_logits")}


def distilled_student_config(preset: Preset, data: DataSplits, *, teacher: str, teacher_fingerprint: str,
                             objective: str = "kl", temperature: float = 4.0, soft_weight: float = 0.9, seed: int = 0,
                             arch: str = "student") -> DistillRun:
    """The key of `get_distilled_student`: the scratch student's run (`student_config(seed)`: the same
    initial weights and data order), in the course CNN at the preset's width for arch="course", and the
    teacher's name and fingerprint and the loss settings."""
    student = student_config(preset, data, seed)
    if arch == "course":
        student = replace(student, arch=preset.arch, width=preset.width)
    elif arch != "student":
        raise ValueError(f"arch must be 'student' or 'course', got {arch!r}")
    return DistillRun(student, teacher, teacher_fingerprint, objective, float(temperature), float(soft_weight))


def get_distilled_student(preset: Preset, data: DataSplits, *, teacher: str = "ensemble",
                          teacher_module: nn.Module | None = None, objective: str = "kl", temperature: float = 4.0,
                          soft_weight: float = 0.9, seed: int = 0, arch: str = "student",
                          progress: bool = True) -> tuple[nn.Module, History]:
    """The student distilled from a teacher, with the same initial weights and data order as
    `get_student(seed=seed)`, so the two differ only in the loss.

    arch: "student" (the small CNN), or "course" to distil into a course-sized model (notebook 09
        distils the owners' ensemble into one model of the members' size).

    teacher: a name for the teacher; without `teacher_module`, one of `pair_teachers` ("member" or
        "ensemble"). teacher_module: any teacher (e.g. a `CachedTeacher`, to share its outputs across
        students). The cache key holds the teacher's fingerprint, so a different teacher never gets
        another's student."""
    if teacher_module is None:
        teachers = pair_teachers(preset, data, progress=progress)
        if teacher not in teachers:
            raise ValueError(f"teacher must be one of {', '.join(teachers)} (or pass teacher_module=); got {teacher!r}")
        teacher_module = teachers[teacher]
    run = distilled_student_config(preset, data, teacher=teacher,
                                   teacher_fingerprint=teacher_fingerprint(teacher_module), objective=objective,
                                   temperature=temperature, soft_weight=soft_weight, seed=seed, arch=arch)

    def build() -> nn.Module:
        return new_model(run.student.arch, run.student.width, run.student.init_seed, data.train)

    def fit(model: nn.Module) -> History:
        if isinstance(teacher_module, CachedTeacher):
            teacher_module.restart()
        return distill(model, teacher_module, data.train, config=run.student.train, temperature=temperature,
                       soft_weight=soft_weight, objective=objective, seed=run.student.data_seed, test_data=data.test,
                       progress=progress, desc=f"KD {teacher} {objective} T={temperature:g} s{seed}")

    prefix = "kd" if arch == "student" else f"kd-{arch}"
    model, history = train_or_load(f"{preset.name}-{prefix}-{teacher}-{objective}-s{seed}", run, build, fit)
    return model.to(pick_device()).eval(), history


# ----------------------------------------------------------------------------------------------
# FedAvg runs


@dataclass(frozen=True)
class FedRun:
    """Everything that determines a FedAvg run of the course (the checkpoint key)."""

    model: RunConfig                   # architecture, initial weights (init seed), data tag
    client_train: TrainConfig          # the clients' schedule (batch size per client, peak lr, ...)
    num_clients: int
    dirichlet_alpha: float | None      # None = IID split
    split_seed: int                    # the clients' split
    rounds: int
    local_epochs: int
    averages_per_epoch: int
    keep_client_momentum: bool


def fedavg_config(preset: Preset, data: DataSplits, *, num_clients: int, dirichlet_alpha: float | None, rounds: int,
                  local_epochs: int = 1, averages_per_epoch: int = 1, client_batch_size: int | None = None,
                  keep_client_momentum: bool = True, seed: int = 0) -> FedRun:
    """The key of `get_fedavg` (same arguments): replicate `seed` 0 starts from `SEEDS["fedavg_init"]`,
    replicate s >= 1 from `SEEDS["fedavg_extra"] + s` (init and the clients' data order); replicate s
    splits the clients with seed `SEEDS["dirichlet_split"] + s`."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    batch = client_batch_size or max(1, preset.train.batch_size // num_clients)
    init = course_config(preset, data, SEEDS["fedavg_init"] if seed == 0 else SEEDS["fedavg_extra"] + seed)
    return FedRun(init, replace(preset.train, batch_size=batch), num_clients, dirichlet_alpha,
                  SEEDS["dirichlet_split"] + seed, rounds, local_epochs, averages_per_epoch, keep_client_momentum)


def get_fedavg(preset: Preset, data: DataSplits, *, num_clients: int, dirichlet_alpha: float | None, rounds: int,
               local_epochs: int = 1, averages_per_epoch: int = 1, client_batch_size: int | None = None,
               keep_client_momentum: bool = True, seed: int = 0, progress: bool = True) -> tuple[nn.Module, History]:
    """FedAvg of the course CNN under `preset` (cached): returns (server model, History).

    Clients: `client_split(data.train, ...)` with split seed `SEEDS["dirichlet_split"] + seed`. Each client's batch is
    `client_batch_size`, by default the preset's batch size divided by `num_clients`: one step of every
    client then processes as many images as one step of the joint model, so at equal epochs both take
    the same number of steps. For one `seed`, the server starts from the same initial weights in every
    setting. `seed` picks a replicate: 0 is the course's run (init `SEEDS["fedavg_init"]`); seed s >= 1
    draws another split, another init and another data order (`SEEDS["fedavg_extra"] + s`), so runs
    over seeds give FedAvg's run-to-run spread."""
    run = fedavg_config(preset, data, num_clients=num_clients, dirichlet_alpha=dirichlet_alpha, rounds=rounds,
                        local_epochs=local_epochs, averages_per_epoch=averages_per_epoch,
                        client_batch_size=client_batch_size, keep_client_momentum=keep_client_momentum, seed=seed)
    batch = run.client_train.batch_size
    clients = client_split(data.train, num_clients=num_clients, dirichlet_alpha=dirichlet_alpha, seed=run.split_seed)
    too_small = [len(c) for c in clients if len(c) < batch * averages_per_epoch]
    if too_small:
        raise ValueError(f"a client has {too_small[0]} images, fewer than {averages_per_epoch} batch(es) of {batch}; "
                         "use fewer clients, a larger dirichlet_alpha or fewer averages per epoch")
    split = "iid" if dirichlet_alpha is None else f"dir{dirichlet_alpha:g}"
    name = (f"{preset.name}-fedavg-{split}-c{num_clients}-r{rounds}-e{local_epochs}"
            + (f"-a{averages_per_epoch}" if averages_per_epoch > 1 else "") + (f"-s{seed}" if seed else ""))
    model, history = train_or_load(
        name, run, lambda: new_model(run.model.arch, run.model.width, run.model.init_seed, data.train),
        lambda model: fedavg(model, clients, rounds=rounds, local_epochs=local_epochs,
                             averages_per_epoch=averages_per_epoch, keep_client_momentum=keep_client_momentum,
                             config=run.client_train, seed=run.model.data_seed, test_data=data.test, progress=progress))
    return model.to(pick_device()).eval(), history



# ----------------------------------------------------------------------------------------------
# Averaging along a run, fine-tunes (notebooks 08 and 09)


@dataclass(frozen=True)
class AveragedRun:
    """Everything that determines a run averaged with SWA and EMA (the checkpoint key)."""

    run: RunConfig
    averaging: AveragingConfig


def averaging_config(preset: Preset) -> AveragingConfig:
    """The course's SWA/EMA settings: SWA over the last quarter of the run at a quarter of the peak lr."""
    return AveragingConfig(swa_start=0.75, swa_lr=preset.train.lr / 4)


def averaged_run_config(preset: Preset, data: DataSplits, seed: int = 0) -> AveragedRun:
    """The key of `get_averaged_run(seed=seed)`: the course CNN, init and data order `SEEDS["swa"] + seed`,
    with the course's SWA/EMA settings."""
    return AveragedRun(course_config(preset, data, SEEDS["swa"] + seed), averaging_config(preset))


def get_averaged_run(preset: Preset, data: DataSplits, *, seed: int = 0,
                     progress: bool = True) -> tuple[dict[str, nn.Module], History]:
    """One course-model run with the SWA schedule (`helpers.swa.train_with_averages`), seeds
    `SEEDS["swa"] + seed`: `{"endpoint", "swa", "ema"}` -> model (three results of one run, equal
    compute), and the run's History. Cached as one checkpoint holding the three models."""
    key = averaged_run_config(preset, data, seed)

    def build() -> nn.Module:
        return nn.ModuleDict({name: new_model(key.run.arch, key.run.width, key.run.init_seed, data.train)
                              for name in ("endpoint", "swa", "ema")})

    def fit(container: nn.Module) -> History:
        models, history = train_with_averages(container["endpoint"], data.train, config=key.run.train,
                                              averaging=key.averaging, seed=key.run.data_seed, test_data=data.test,
                                              progress=progress, desc=f"SWA run s{seed}")
        for name in ("swa", "ema"):
            container[name].load_state_dict(models[name].state_dict())
        return history

    container, history = train_or_load(f"{preset.name}-swa-s{seed}", key, build, fit)
    device = pick_device()
    return {name: m.to(device).eval() for name, m in container.items()}, history


@dataclass(frozen=True)
class FineTuneRun:
    """Everything that determines a fine-tune (the checkpoint key)."""

    run: RunConfig                 # architecture, seeds (init: used from scratch only), schedule, data, subset
    start: str                     # a name for the starting weights, for people
    start_fingerprint: str         # `module_fingerprint` of the starting weights ("" from scratch)
    num_steps: int


def finetune_config(preset: Preset, data: DataSplits, *, seed: int = 0, subset: Subset | ClassSubset = ALL,
                    lr: float | None = None) -> RunConfig:
    """The run of `get_finetuned(seed=seed)` (its `FineTuneRun` adds the start and the step count): the
    course CNN on `subset` at peak lr `lr` (default the preset's), data order (and, from scratch, initial
    weights) `SEEDS["finetune"] + seed`."""
    return _finetune_run(preset, data, SEEDS["finetune"] + seed, subset, lr)


def _finetune_run(preset: Preset, data: DataSplits, seed: int, subset: Subset | ClassSubset,
                  lr: float | None) -> RunConfig:
    """A fine-tune's run with init and data seed `seed` (a `SEEDS` entry plus an index)."""
    return replace(course_config(preset, data, seed), subset=subset,
                   train=replace(preset.train, lr=preset.train.lr if lr is None else lr))


def get_finetuned(preset: Preset, data: DataSplits, *, start: nn.Module | None, start_name: str, epochs: float,
                  lr: float | None = None, subset: Subset | ClassSubset = ALL, seed: int = 0,
                  progress: bool = True) -> tuple[nn.Module, History]:
    """`start` (None: fresh course-model weights) trained on `subset` of `data.train` for `epochs`
    epochs, fractions allowed (a quarter epoch is a quarter of an epoch's steps), with a one-cycle
    schedule of peak `lr` (default the preset's) over exactly those steps. Data order (and, from
    scratch, initial weights) `SEEDS["finetune"] + seed`. Cached under the starting weights'
    fingerprint, so a different start is never served another's fine-tune."""
    return _finetune(preset, data, finetune_config(preset, data, seed=seed, subset=subset, lr=lr), start=start,
                     start_name=start_name, epochs=epochs, progress=progress)


def _finetune(preset: Preset, data: DataSplits, run: RunConfig, *, start: nn.Module | None, start_name: str,
              epochs: float, progress: bool) -> tuple[nn.Module, History]:
    """`get_finetuned` for the fine-tune run `run` (`finetune_config`, or a task's)."""
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    train_data = run.subset.select(data.train)
    steps = max(1, round(epochs * epoch_steps(len(train_data), run.train)))
    key = FineTuneRun(run, start_name, "" if start is None else module_fingerprint(start), steps)

    def build() -> nn.Module:
        model = new_model(run.arch, run.width, run.init_seed, train_data)
        if start is not None:
            model.load_state_dict(start.state_dict())
        return model

    def fit(model: nn.Module) -> History:
        return train_steps(model, train_data, config=run.train, num_steps=steps, seed=run.data_seed,
                           progress=progress, desc=f"fine-tune {start_name} {epochs:g} ep")

    slug = "".join(ch if ch.isalnum() else "-" for ch in start_name.lower()).strip("-")
    classes = f"-c{''.join(map(str, run.subset.classes))}" if isinstance(run.subset, ClassSubset) else ""
    model, history = train_or_load(f"{preset.name}-ft-{slug}{classes}-{epochs:g}ep", key, build, fit)
    return model.to(pick_device()).eval(), history


TASKS = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))   # CIFAR-10: airplane..deer, dog..truck


@dataclass
class TaskModels:
    """A base model and its fine-tunes, one per task (notebook 08's task arithmetic)."""

    tasks: tuple[tuple[int, ...], ...]
    base: nn.Module
    finetuned: list[nn.Module]
    base_history: History
    histories: list[History]


def task_base_config(preset: Preset, data: DataSplits) -> RunConfig:
    """The task-arithmetic base of `get_task_models`: the course CNN on all classes for half the preset's
    epochs (its own one-cycle schedule), seeds `SEEDS["task_base"]`."""
    return replace(course_config(preset, data, SEEDS["task_base"]),
                   train=replace(preset.train, num_epochs=max(1, preset.train.num_epochs // 2)))


def task_finetune_configs(preset: Preset, data: DataSplits,
                          tasks: Sequence[Sequence[int]] = TASKS) -> list[RunConfig]:
    """The fine-tune runs of `get_task_models`, one per task: the task's classes at a quarter of the
    preset's peak lr, data order `SEEDS["task_finetune"] + i` for task i."""
    return [_finetune_run(preset, data, SEEDS["task_finetune"] + i, ClassSubset(tuple(classes)), preset.train.lr / 4)
            for i, classes in enumerate(tasks)]


def get_task_models(preset: Preset, data: DataSplits, *, tasks: Sequence[Sequence[int]] = TASKS,
                    progress: bool = True) -> TaskModels:
    """A course model trained briefly on all classes (half the preset's epochs, its own one-cycle
    schedule: the "pre-trained" base), then fine-tuned separately on each task's classes for the
    preset's epochs at a quarter of its peak learning rate (data order `SEEDS["task_finetune"] + i`)."""
    base, base_history = train_run(task_base_config(preset, data), data, name=f"{preset.name}-task-base",
                                   progress=progress)
    finetuned, histories = [], []
    for run in task_finetune_configs(preset, data, tasks):
        model, history = _finetune(preset, data, run, start=base, start_name="task base",
                                   epochs=preset.train.num_epochs, progress=progress)
        finetuned.append(model)
        histories.append(history)
    return TaskModels(tuple(tuple(t) for t in tasks), base, finetuned, base_history, histories)
