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
| `distillation_study`    | notebook 06's sweep: scratch vs distilled students, temperature chosen on val |
| `get_averaged_run`      | one run with its endpoint, SWA average and EMA (`helpers.swa`, notebook 08)   |
| `get_task_models`       | a briefly trained base and its fine-tunes on class-subset tasks (notebook 08) |
| `get_finetuned`         | any starting weights (or none) trained for a number of epochs, fractions    |
|                         | allowed (merge then fine-tune, notebook 09)                                 |

Every seed the recipes use is in `SEEDS`, in one place, so no two recipes share a stream by
accident. Every cache key is a frozen dataclass (`RunConfig`, `DistillRun`, `FedRun`) holding
everything that determines the result, the teacher's weights included for distilled students.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping, Sequence

import torch
from torch import nn

from helpers.checkpoints import train_or_load
from helpers.data import DataSplits, TensorData, dirichlet_split
from helpers.devices import pick_device
from helpers.distillation import CachedTeacher, distill
from helpers.ensembling import Ensemble
from helpers.evaluation import evaluate
from helpers.federated import client_split, fedavg
from helpers.models import course_cnn, residual_cnn, student_cnn
from helpers.presets import Preset
from helpers.repro import seed_everything
from helpers.swa import AveragingConfig, train_with_averages
from helpers.training import History, TrainConfig, epoch_steps, train_epochs, train_steps

PAIR_KINDS = ("independent", "shared_init", "spawned", "disjoint")
DISJOINT_ALPHA = 0.5   # Dirichlet concentration of the disjoint pair's split

# Every seed a recipe uses (initial weights and data order), in one table. Spawned child i uses
# data seed `spawned_children + i` (children 0 and 1 are the spawned pair); student seed s uses
# `student + s`, and disjoint member i `disjoint + i`.
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
    "dirichlet_split": 0,        # the disjoint pair's data split
})


@dataclass(frozen=True)
class Subset:
    """Which training images a run uses: all of them, or part `index` of `parts` of a Dirichlet
    label-skewed split (`helpers.data.dirichlet_split`) with concentration `dirichlet_alpha`."""

    dirichlet_alpha: float | None = None   # None: all training images
    index: int = 0
    parts: int = 1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.parts:
            raise ValueError(f"need 0 <= index < parts, got index={self.index}, parts={self.parts}")
        if self.dirichlet_alpha is None and self.parts != 1:
            raise ValueError("a subset with parts > 1 needs a dirichlet_alpha")

    def select(self, train: TensorData) -> TensorData:
        if self.dirichlet_alpha is None:
            return train
        return dirichlet_split(train, self.parts, dirichlet_alpha=self.dirichlet_alpha,
                               seed=self.split_seed)[self.index]


ALL = Subset()


@dataclass(frozen=True)
class ClassSubset:
    """The training images of some classes only (a "task" for task arithmetic, notebook 08)."""

    classes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be a non-empty tuple of distinct labels, got {self.classes}")

    def select(self, train: TensorData) -> TensorData:
        bad = [c for c in self.classes if not 0 <= c < len(train.classes)]
        if bad:
            raise ValueError(f"class {bad[0]} is not a label of this data (0..{len(train.classes) - 1})")
        keep = torch.isin(train.labels.cpu(), torch.tensor(self.classes))
        return train.subset(keep.nonzero().flatten())


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one trained model (the checkpoint key)."""

    arch: str                 # "course" | "student"
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


def build_model(arch: str, width: float, init_seed: int) -> nn.Module:
    """A freshly initialised model; the same `init_seed` gives the same weights."""
    builders = {"course": course_cnn, "student": student_cnn, "residual": residual_cnn,
                "course_nonorm": lambda width: course_cnn(width, norm=False)}
    if arch not in builders:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(builders)}")
    seed_everything(init_seed)
    return builders[arch](width)


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
        model = build_model(config.arch, config.width, config.init_seed)
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


def course_config(preset: Preset, data: DataSplits, seed: int) -> RunConfig:
    """The course CNN under `preset`, with init and data seed `seed`."""
    return RunConfig(arch="course", width=preset.width, init_seed=seed, data_seed=seed, train=preset.train,
                     data=data_tag(preset, data))


def pair_configs(kind: str, preset: Preset, data: DataSplits) -> tuple[RunConfig, RunConfig]:
    """The two run configs of a pair kind under `preset`."""
    if kind == "independent":
        return course_config(preset, data, SEEDS["independent_a"]), course_config(preset, data, SEEDS["independent_b"])
    if kind == "shared_init":
        a = course_config(preset, data, SEEDS["shared_init"])
        return a, replace(a, data_seed=SEEDS["shared_init_b_data"])
    if kind == "spawned":
        child = spawned_child_config(preset, data, 0)
        return child, replace(child, data_seed=child.data_seed + 1)
    if kind == "disjoint":
        return tuple(replace(course_config(preset, data, SEEDS["disjoint"] + i),
                             subset=Subset(DISJOINT_ALPHA, i, 2, SEEDS["dirichlet_split"])) for i in range(2))
    raise ValueError(f"unknown pair kind {kind!r}; valid kinds: {', '.join(PAIR_KINDS)}")


def spawned_child_config(preset: Preset, data: DataSplits, index: int) -> RunConfig:
    """Child `index` of the spawned parent (which trains the first `preset.spawn_epoch` epochs)."""
    parent = replace(course_config(preset, data, SEEDS["spawned_parent"]), stop_epoch=preset.spawn_epoch)
    if index < 0:
        raise ValueError(f"child index must be >= 0, got {index}")
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


def get_residual_pair(preset: Preset, data: DataSplits, *, progress: bool = True) -> Pair:
    """Two independently trained residual CNNs (`helpers.models.residual_cnn` at the preset's width),
    for aligning residual networks in notebook 04."""
    configs = [replace(course_config(preset, data, SEEDS[f"residual_{m}"]), arch="residual") for m in "ab"]
    (model_a, history_a), (model_b, history_b) = (
        train_run(c, data, name=f"{preset.name}-residual-{m}", progress=progress) for c, m in zip(configs, "ab"))
    return Pair("independent_residual", model_a, model_b, history_a, history_b, data.train, data.train)


NONORM_LR_FACTOR = 0.2   # without BatchNorm the course CNN diverges at the preset's peak lr; a fifth trains


def get_nonorm_pair(preset: Preset, data: DataSplits, *, progress: bool = True) -> Pair:
    """Two independently trained course CNNs without BatchNorm (`course_cnn(norm=False)`, Kaiming
    init) at the preset's width and schedule, peak lr times `NONORM_LR_FACTOR`: REPAIR's main case,
    networks whose statistics can only be corrected inside the weights (notebook 04)."""
    configs = [replace(course_config(preset, data, SEEDS[f"nonorm_{m}"]), arch="course_nonorm",
                       train=replace(preset.train, lr=preset.train.lr * NONORM_LR_FACTOR)) for m in "ab"]
    (model_a, history_a), (model_b, history_b) = (
        train_run(c, data, name=f"{preset.name}-nonorm-{m}", progress=progress) for c, m in zip(configs, "ab"))
    return Pair("independent_nonorm", model_a, model_b, history_a, history_b, data.train, data.train)


def get_spawned_children(preset: Preset, data: DataSplits, num_children: int, *,
                         progress: bool = True) -> list[tuple[nn.Module, History]]:
    """`num_children` children of the spawned pair's parent, each with its own data order; the
    first two are the spawned pair's model_a and model_b (loaded from the same cache files)."""
    return [train_run(spawned_child_config(preset, data, i), data,
                      name=f"{preset.name}-spawned-{'ab'[i] if i < 2 else f'c{i}'}",
                      parent_name=f"{preset.name}-spawned-parent", progress=progress)
            for i in range(num_children)]


def get_owners(preset: Preset, data: DataSplits, num_owners: int, *, dirichlet_alpha: float = DISJOINT_ALPHA,
               progress: bool = True) -> list[tuple[nn.Module, History, TensorData]]:
    """`num_owners` data owners (notebook 09): the training set split into `num_owners` label-skewed
    parts (`helpers.data.dirichlet_split`, concentration `dirichlet_alpha`, split seed
    `SEEDS["dirichlet_split"]` — the same parts `get_fedavg` gives its clients), and a course model
    trained on each part alone with the preset's schedule (owner i: init and data order
    `SEEDS["owners"] + i`). Returns (model, History, the owner's training images) per owner."""
    if num_owners < 2:
        raise ValueError(f"num_owners must be >= 2, got {num_owners}")
    owners = []
    for i in range(num_owners):
        config = replace(course_config(preset, data, SEEDS["owners"] + i),
                         subset=Subset(dirichlet_alpha, i, num_owners, SEEDS["dirichlet_split"]))
        train = config.subset.select(data.train)
        if len(train) < preset.train.batch_size:
            raise ValueError(f"owner {i} of {num_owners} (Dirichlet {dirichlet_alpha:g}) has {len(train)} training "
                             f"images, fewer than one batch ({preset.train.batch_size}): use fewer owners or a larger "
                             "dirichlet_alpha")
        model, history = train_run(config, data, name=f"{preset.name}-owner{i}of{num_owners}-dir{dirichlet_alpha:g}",
                                   progress=progress)
        owners.append((model, history, train))
    return owners


def get_joint(preset: Preset, data: DataSplits, *, progress: bool = True) -> tuple[nn.Module, History]:
    """One course model trained on all the training data (its own seeds, `SEEDS["joint"]`)."""
    return train_run(course_config(preset, data, SEEDS["joint"]), data, name=f"{preset.name}-joint", progress=progress)


def get_independent_models(preset: Preset, data: DataSplits, num_models: int, *,
                           progress: bool = True) -> list[nn.Module]:
    """`num_models` independently trained course models: the independent pair's two members first
    (same cache files), then seeds `SEEDS["independent_extra"] + i`. N models give N(N-1)/2 pairs, so
    pairwise methods (averaging, alignment, ensembling) get a spread over pairs for the price of N runs."""
    if num_models < 2:
        raise ValueError(f"num_models must be >= 2, got {num_models}")
    pair = get_pair("independent", preset, data, progress=progress)
    extra = [train_run(course_config(preset, data, SEEDS["independent_extra"] + i), data,
                       name=f"{preset.name}-independent-{i}", progress=progress)[0] for i in range(2, num_models)]
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


def module_fingerprint(module: nn.Module) -> str:
    """A hash of what a module computes: its structure (`repr`, which for an `Ensemble` includes the
    combine rule) and every parameter and buffer (name, dtype, shape, values). A `CachedTeacher` has
    the fingerprint of the teacher it wraps. Two modules with the same fingerprint give the same outputs."""
    if isinstance(module, CachedTeacher):
        module = module.teacher
    h = hashlib.sha256(repr(module).encode())
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DistillRun:
    """Everything that determines a distilled student (the checkpoint key)."""

    student: RunConfig                 # architecture, seeds, schedule (same seeds as the scratch student)
    teacher: str                       # the teacher's name, for people ("ensemble", "member", ...)
    teacher_fingerprint: str           # `module_fingerprint` of the teacher: its weights and combine rule
    objective: str                     # "kl" | "mse"
    temperature: float
    soft_weight: float                 # weight of the distillation term (1 - soft_weight on cross-entropy)


def pair_teachers(preset: Preset, data: DataSplits, *, progress: bool = True) -> dict[str, nn.Module]:
    """The course's two teachers, from the independent pair: `member` (model_a) and `ensemble`
    (the mean of both members' logits)."""
    pair = get_pair("independent", preset, data, progress=progress)
    return {"member": pair.model_a, "ensemble": Ensemble([pair.model_a, pair.model_b], combine="mean_logits")}


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
    student = student_config(preset, data, seed)
    if arch == "course":
        student = replace(student, arch="course", width=preset.width)
    elif arch != "student":
        raise ValueError(f"arch must be 'student' or 'course', got {arch!r}")
    run = DistillRun(student, teacher, module_fingerprint(teacher_module), objective,
                     float(temperature), float(soft_weight))

    def build() -> nn.Module:
        return build_model(run.student.arch, run.student.width, run.student.init_seed)

    def fit(model: nn.Module) -> History:
        if isinstance(teacher_module, CachedTeacher):
            teacher_module.restart()
        return distill(model, teacher_module, data.train, config=run.student.train, temperature=temperature,
                       soft_weight=soft_weight, objective=objective, seed=run.student.data_seed, test_data=data.test,
                       progress=progress, desc=f"KD {teacher} {objective} T={temperature:g} s{seed}")

    prefix = "kd" if arch == "student" else f"kd-{arch}"
    model, history = train_or_load(f"{preset.name}-{prefix}-{teacher}-{objective}-s{seed}", run, build, fit)
    return model.to(pick_device()).eval(), history


@dataclass
class StudentRun:
    """One trained student: test and validation accuracy (0-1) and its training time."""

    test_accuracy: float
    val_accuracy: float
    train_seconds: float


@dataclass
class DistillationStudy:
    """Notebook 06's experiment: `runs[name][seed]` for every student configuration trained."""

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


def distillation_study(preset: Preset, data: DataSplits, *, teachers: Mapping[str, nn.Module],
                       temperatures: Sequence[float], soft_weight: float, seeds: Sequence[int],
                       progress: bool = True) -> DistillationStudy:
    """Notebook 06's sweep, spending students where they answer a question:

    1. on the first seed: the scratch student, KD from the ensemble with MSE on logits, and KL at each
       of `temperatures`;
    2. the temperature with the best **validation** accuracy is chosen (never the test set);
    3. on every other seed: scratch and the chosen KD recipe; on the first seed, one member as the
       teacher at the chosen temperature.
    `teachers` must hold "ensemble" and "member". Teacher outputs are computed once per batch and
    shared by students that see the same batches (`CachedTeacher`)."""
    cached = {name: CachedTeacher(t) for name, t in teachers.items()}
    study = DistillationStudy()
    device = pick_device()

    def run(name: str, seed: int, **kd) -> None:
        if kd:
            model, history = get_distilled_student(preset, data, seed=seed, soft_weight=soft_weight,
                                                   teacher_module=cached[kd["teacher"]], progress=progress, **kd)
        else:
            model, history = get_student(preset, data, seed=seed, progress=progress)
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


# ----------------------------------------------------------------------------------------------
# FedAvg runs


@dataclass(frozen=True)
class FedRun:
    """Everything that determines a FedAvg run of the course (the checkpoint key)."""

    model: RunConfig                   # architecture, initial weights (init seed), data tag
    client_train: TrainConfig          # the clients' schedule (batch size per client, peak lr, ...)
    num_clients: int
    dirichlet_alpha: float | None      # None = IID split
    split_seed: int
    rounds: int
    local_epochs: int
    averages_per_epoch: int
    keep_client_momentum: bool


def get_fedavg(preset: Preset, data: DataSplits, *, num_clients: int, dirichlet_alpha: float | None, rounds: int,
               local_epochs: int = 1, averages_per_epoch: int = 1, client_batch_size: int | None = None,
               keep_client_momentum: bool = True, seed: int = 0, progress: bool = True) -> tuple[nn.Module, History]:
    """FedAvg of the course CNN under `preset` (cached): returns (server model, History).

    Clients: `client_split(data.train, ...)` with split seed `seed`. Each client's batch is
    `client_batch_size`, by default the preset's batch size divided by `num_clients`: one step of every
    client then processes as many images as one step of the joint model, so at equal epochs both take
    the same number of steps. For one `seed`, the server starts from the same initial weights in every
    setting. `seed` picks a replicate: 0 is the course's run (init `SEEDS["fedavg_init"]`); seed s >= 1
    draws another split, another init and another data order (`SEEDS["fedavg_extra"] + s`), so runs
    over seeds give FedAvg's run-to-run spread."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    batch = client_batch_size or max(1, preset.train.batch_size // num_clients)
    clients = client_split(data.train, num_clients=num_clients, dirichlet_alpha=dirichlet_alpha, seed=seed)
    too_small = [len(c) for c in clients if len(c) < batch * averages_per_epoch]
    if too_small:
        raise ValueError(f"a client has {too_small[0]} images, fewer than {averages_per_epoch} batch(es) of {batch}; "
                         "use fewer clients, a larger dirichlet_alpha or fewer averages per epoch")
    init = course_config(preset, data, SEEDS["fedavg_init"] if seed == 0 else SEEDS["fedavg_extra"] + seed)
    client_train = replace(preset.train, batch_size=batch)
    run = FedRun(init, client_train, num_clients, dirichlet_alpha, seed, rounds, local_epochs, averages_per_epoch,
                 keep_client_momentum)
    split = "iid" if dirichlet_alpha is None else f"dir{dirichlet_alpha:g}"
    name = (f"{preset.name}-fedavg-{split}-c{num_clients}-r{rounds}-e{local_epochs}"
            + (f"-a{averages_per_epoch}" if averages_per_epoch > 1 else "") + (f"-s{seed}" if seed else ""))
    model, history = train_or_load(
        name, run, lambda: build_model("course", preset.width, init.init_seed),
        lambda model: fedavg(model, clients, rounds=rounds, local_epochs=local_epochs,
                             averages_per_epoch=averages_per_epoch, keep_client_momentum=keep_client_momentum,
                             config=client_train, seed=init.data_seed, test_data=data.test, progress=progress))
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


def get_averaged_run(preset: Preset, data: DataSplits, *, seed: int = 0,
                     progress: bool = True) -> tuple[dict[str, nn.Module], History]:
    """One course-model run with the SWA schedule (`helpers.swa.train_with_averages`), seeds
    `SEEDS["swa"] + seed`: `{"endpoint", "swa", "ema"}` -> model (three results of one run, equal
    compute), and the run's History. Cached as one checkpoint holding the three models."""
    key = AveragedRun(course_config(preset, data, SEEDS["swa"] + seed), averaging_config(preset))

    def build() -> nn.Module:
        return nn.ModuleDict({name: build_model("course", preset.width, key.run.init_seed)
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


def get_finetuned(preset: Preset, data: DataSplits, *, start: nn.Module | None, start_name: str, epochs: float,
                  lr: float | None = None, subset: Subset | ClassSubset = ALL, seed: int = 0,
                  progress: bool = True) -> tuple[nn.Module, History]:
    """`start` (None: fresh course-model weights) trained on `subset` of `data.train` for `epochs`
    epochs, fractions allowed (a quarter epoch is a quarter of an epoch's steps), with a one-cycle
    schedule of peak `lr` (default the preset's) over exactly those steps. Data order (and, from
    scratch, initial weights) `SEEDS["finetune"] + seed`. Cached under the starting weights'
    fingerprint, so a different start is never served another's fine-tune."""
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    run = replace(course_config(preset, data, SEEDS["finetune"] + seed), subset=subset,
                  train=replace(preset.train, lr=preset.train.lr if lr is None else lr))
    train_data = subset.select(data.train)
    steps = max(1, round(epochs * epoch_steps(len(train_data), run.train)))
    key = FineTuneRun(run, start_name, "" if start is None else module_fingerprint(start), steps)

    def build() -> nn.Module:
        model = build_model("course", preset.width, run.init_seed)
        if start is not None:
            model.load_state_dict(start.state_dict())
        return model

    def fit(model: nn.Module) -> History:
        return train_steps(model, train_data, config=run.train, num_steps=steps, seed=run.data_seed,
                           progress=progress, desc=f"fine-tune {start_name} {epochs:g} ep")

    slug = "".join(ch if ch.isalnum() else "-" for ch in start_name.lower()).strip("-")
    classes = f"-c{''.join(map(str, subset.classes))}" if isinstance(subset, ClassSubset) else ""
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


def get_task_models(preset: Preset, data: DataSplits, *, tasks: Sequence[Sequence[int]] = TASKS,
                    progress: bool = True) -> TaskModels:
    """A course model trained briefly on all classes (half the preset's epochs, its own one-cycle
    schedule: the "pre-trained" base), then fine-tuned separately on each task's classes for the
    preset's epochs at a quarter of its peak learning rate (data order `SEEDS["task_finetune"] + i`)."""
    base_config = replace(course_config(preset, data, SEEDS["task_base"]),
                          train=replace(preset.train, num_epochs=max(1, preset.train.num_epochs // 2)))
    base, base_history = train_run(base_config, data, name=f"{preset.name}-task-base", progress=progress)
    finetuned, histories = [], []
    for i, classes in enumerate(tasks):
        model, history = get_finetuned(preset, data, start=base, start_name="task base", epochs=preset.train.num_epochs,
                                       lr=preset.train.lr / 4, subset=ClassSubset(tuple(classes)),
                                       seed=SEEDS["task_finetune"] + i - SEEDS["finetune"], progress=progress)
        finetuned.append(model)
        histories.append(history)
    return TaskModels(tuple(tuple(t) for t in tasks), base, finetuned, base_history, histories)
