"""The recipe module: every recipe trains once in `smoke`, then comes from the cache; keys are honest;
no two runs share a seed unless they are meant to."""

import itertools
import re
from dataclasses import replace
from functools import partial
from types import MappingProxyType

import pytest
import torch

import helpers.zoo as zoo
from helpers import checkpoints
from helpers.data import ClassSubset, DataSplits, Subset, synthetic_cifar, train_val_split
from helpers.distillation import CachedTeacher, distillation_study
from helpers.ensembling import Ensemble
from helpers.models import build_model, module_fingerprint
from helpers.presets import PRESETS, get_preset
from helpers.zoo import SEEDS


@pytest.fixture(scope="module")
def smoke_data():
    full = synthetic_cifar(640, 256, seed=0)
    train, val = train_val_split(full.train, 0.2, seed=0)
    return DataSplits(train, full.test, "synthetic", val=val)


@pytest.fixture
def preset():
    return replace(get_preset("smoke"), train=replace(get_preset("smoke").train, batch_size=64))


@pytest.fixture
def trainings(monkeypatch):
    """Counts the trainings the recipes start (whole runs, distillations, FedAvg runs)."""
    count = {"n": 0}
    for name in ("train_epochs", "distill", "fedavg", "train_steps", "train_with_averages"):
        real = getattr(zoo, name)

        def counted(*args, _real=real, **kwargs):
            count["n"] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(zoo, name, counted)
    return count


def _same_weights(m1, m2):
    return all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


RECIPES = {
    "pair independent": lambda p, d: zoo.get_pair("independent", p, d, progress=False).model_b,
    "pair shared_init": lambda p, d: zoo.get_pair("shared_init", p, d, progress=False).model_b,
    "pair spawned": lambda p, d: zoo.get_pair("spawned", p, d, progress=False).model_b,
    "pair disjoint": lambda p, d: zoo.get_pair("disjoint", p, d, progress=False).model_b,
    "spawned children": lambda p, d: zoo.get_spawned_children(p, d, 3, progress=False)[2][0],
    "joint": lambda p, d: zoo.get_joint(p, d, progress=False)[0],
    "independent models": lambda p, d: zoo.get_independent_models(p, d, 3, progress=False)[2],
    "residual pair": lambda p, d: zoo.get_residual_pair(p, d, progress=False).model_b,
    "student": lambda p, d: zoo.get_student(p, d, seed=1, progress=False)[0],
    "distilled student": lambda p, d: zoo.get_distilled_student(p, d, teacher="member", temperature=2.0,
                                                                 progress=False)[0],
    "fedavg": lambda p, d: zoo.get_fedavg(p, d, num_clients=2, dirichlet_alpha=0.5, rounds=2,
                                          averages_per_epoch=2, progress=False)[0],
    "averaged run (SWA)": lambda p, d: zoo.get_averaged_run(p, d, seed=1, progress=False)[0]["swa"],
    "task models": lambda p, d: zoo.get_task_models(p, d, progress=False).finetuned[1],
    "owners": lambda p, d: zoo.get_owners(p, d, 3, dirichlet_alpha=1.0, progress=False)[2][0],
    "fine-tune from scratch": lambda p, d: zoo.get_finetuned(p, d, start=None, start_name="scratch", epochs=0.5,
                                                              progress=False)[0],
}


@pytest.mark.parametrize("recipe", RECIPES, ids=list(RECIPES))
def test_recipe_trains_once_then_hits_the_cache(recipe, preset, smoke_data, trainings):
    first = RECIPES[recipe](preset, smoke_data)
    assert trainings["n"] > 0
    trainings["n"] = 0
    second = RECIPES[recipe](preset, smoke_data)
    assert trainings["n"] == 0, f"{recipe}: trained again instead of loading its checkpoint"
    assert _same_weights(first, second)


def _study(preset, data, teachers):
    return distillation_study(partial(zoo.get_student, preset, data, progress=False),
                              partial(zoo.get_distilled_student, preset, data, progress=False), data,
                              teachers=teachers, temperatures=(1.0, 4.0), soft_weight=0.9, seeds=[0, 1])


def test_distillation_study_chooses_on_validation_and_reuses_teacher_outputs(preset, smoke_data, trainings):
    teachers = zoo.pair_teachers(preset, smoke_data, progress=False)
    study = _study(preset, smoke_data, teachers)
    assert study.temperature == max(study.val_by_temperature, key=study.val_by_temperature.get)
    assert set(study.runs) == {"scratch", "KD ensemble (MSE)", "KD ensemble (KL, T=1)", "KD ensemble (KL, T=4)",
                               f"KD member (KL, T={study.temperature:g})"}
    assert set(study.runs["scratch"]) == {0, 1} and set(study.runs[study.chosen]) == {0, 1}
    assert study.cache_hits > 0   # students of one seed see the same batches: the ensemble ran once per batch
    summary = study.summary()
    assert summary["scratch"]["std"] >= 0 and len(summary["scratch"]["accuracy"]) == 2
    trainings["n"] = 0
    again = _study(preset, smoke_data, teachers)
    assert trainings["n"] == 0 and again.summary() == summary


def test_distilled_students_of_different_teachers_never_share_a_cache_entry(preset, smoke_data, trainings):
    pair = zoo.get_pair("independent", preset, smoke_data, progress=False)
    from_a, _ = zoo.get_distilled_student(preset, smoke_data, teacher="custom", teacher_module=pair.model_a,
                                          progress=False)
    trainings["n"] = 0
    # same name, different module: must train, not load the first teacher's student
    from_b, _ = zoo.get_distilled_student(preset, smoke_data, teacher="custom", teacher_module=pair.model_b,
                                          progress=False)
    assert trainings["n"] == 1 and not _same_weights(from_a, from_b)
    assert zoo.teacher_fingerprint(pair.model_a) != zoo.teacher_fingerprint(pair.model_b)
    ensemble = zoo.pair_teachers(preset, smoke_data, progress=False)["ensemble"]
    other_rule = Ensemble(list(ensemble.members), combine="mean_probs")
    assert zoo.teacher_fingerprint(ensemble) != zoo.teacher_fingerprint(other_rule)   # same weights, other function
    assert zoo.teacher_fingerprint(CachedTeacher(ensemble)) == zoo.teacher_fingerprint(ensemble) \
        == module_fingerprint(ensemble)


def test_cache_keys_change_with_data_and_config(preset, smoke_data):
    config = zoo.course_config(preset, smoke_data, SEEDS["joint"])
    other_data = DataSplits(smoke_data.train.subset(range(500)), smoke_data.test, "synthetic", val=smoke_data.val)
    keys = {
        checkpoints.config_hash(config),
        checkpoints.config_hash(zoo.course_config(preset, other_data, SEEDS["joint"])),
        checkpoints.config_hash(replace(config, train=replace(config.train, lr=0.05))),
        checkpoints.config_hash(replace(config, subset=Subset(0.5, 1, 2))),
    }
    assert len(keys) == 4


def test_spawned_siblings_share_one_parent_checkpoint(preset, smoke_data):
    zoo.get_spawned_children(preset, smoke_data, 3, progress=False)
    parents = sorted(p.name for p in checkpoints.checkpoint_dir().glob("*parent*.pt"))
    assert len(parents) == 1 and parents[0].startswith("smoke-spawned-parent-")


def test_subset_validation_and_selection(smoke_data):
    assert Subset().select(smoke_data.train) is smoke_data.train
    halves = [Subset(0.5, i, 2).select(smoke_data.train) for i in range(2)]
    assert sum(len(h) for h in halves) == len(smoke_data.train)
    with pytest.raises(ValueError, match="index"):
        Subset(0.5, 2, 2)
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        Subset(None, 0, 2)


def test_a_cache_made_under_one_data_path_is_used_under_another(tmp_path, monkeypatch, preset, trainings):
    """Cache keys hold the data's content fingerprint, not CIFAR10_DIR: the same images elsewhere load
    the same checkpoints without retraining."""
    import shutil
    from PIL import Image
    from helpers.data import CLASSES, load_cifar10
    monkeypatch.setenv("HELPERS_DATA_DIR", str(tmp_path / "data"))
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 40), ("test", 8)):
        for name in CLASSES:
            (tmp_path / "a" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(pixels).save(tmp_path / "a" / split / name / f"{i:04d}.png")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    real = replace(preset, data="cifar10")
    for folder, expect_training in (("a", True), ("b", False)):
        monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / folder))
        data = real.load_data()
        trainings["n"] = 0
        zoo.get_joint(real, data, progress=False)
        assert (trainings["n"] > 0) == expect_training, folder


def test_fine_tunes_of_different_starts_never_share_a_cache_entry(preset, smoke_data, trainings):
    pair = zoo.get_pair("independent", preset, smoke_data, progress=False)
    trainings["n"] = 0
    from_a, _ = zoo.get_finetuned(preset, smoke_data, start=pair.model_a, start_name="start", epochs=0.25,
                                  progress=False)
    from_b, _ = zoo.get_finetuned(preset, smoke_data, start=pair.model_b, start_name="start", epochs=0.25,
                                  progress=False)
    assert trainings["n"] == 2 and not _same_weights(from_a, from_b)
    longer, history = zoo.get_finetuned(preset, smoke_data, start=pair.model_a, start_name="start", epochs=0.5,
                                        progress=False)
    steps = len(smoke_data.train) // preset.train.batch_size
    assert history.images_seen == round(0.5 * steps) * preset.train.batch_size
    with pytest.raises(ValueError, match="epochs"):
        zoo.get_finetuned(preset, smoke_data, start=None, start_name="x", epochs=0, progress=False)


def test_task_models_fine_tune_on_their_classes_only(preset, smoke_data):
    tm = zoo.get_task_models(preset, smoke_data, tasks=((0, 1), (2, 3, 4)), progress=False)
    assert tm.tasks == ((0, 1), (2, 3, 4)) and len(tm.finetuned) == 2
    images = [sum(1 for y in smoke_data.train.labels.tolist() if y in t) for t in tm.tasks]
    for history, n in zip(tm.histories, images):   # each fine-tune sees its task's images only
        assert 0 < history.images_seen <= preset.train.num_epochs * n
    assert not _same_weights(tm.base, tm.finetuned[0])


def test_class_subset_validation_and_selection(smoke_data):
    part = ClassSubset((1, 3)).select(smoke_data.train)
    assert set(part.labels.tolist()) == {1, 3}
    assert len(part) == sum(1 for y in smoke_data.train.labels.tolist() if y in (1, 3))
    with pytest.raises(ValueError, match="distinct"):
        ClassSubset((1, 1))
    with pytest.raises(ValueError, match="class 12"):
        ClassSubset((12,)).select(smoke_data.train)


def test_independent_models_start_with_the_independent_pair(preset, smoke_data):
    pair = zoo.get_pair("independent", preset, smoke_data, progress=False)
    models = zoo.get_independent_models(preset, smoke_data, 3, progress=False)
    assert _same_weights(models[0], pair.model_a) and _same_weights(models[1], pair.model_b)
    assert not _same_weights(models[2], pair.model_a)
    with pytest.raises(ValueError, match="num_models"):
        zoo.get_independent_models(preset, smoke_data, 1, progress=False)


def test_fedavg_replicates_differ_in_init_split_and_order_and_keep_seed_0(preset, smoke_data, monkeypatch):
    """get_fedavg(seed=s): a replicate is another split, another init and another data order; seed 0
    keeps the course's init (its cache entry does not move)."""
    seen = []
    monkeypatch.setattr(zoo, "fedavg", lambda model, clients, **kw: seen.append(
        (model.state_dict()["0.weight"].clone(), clients[0].labels.clone(), kw["seed"])) or zoo.History())
    for seed in (0, 1, 2):
        zoo.get_fedavg(preset, smoke_data, num_clients=2, dirichlet_alpha=None, rounds=1, seed=seed, progress=False)
    (w0, y0, s0), (w1, y1, s1), (w2, _, s2) = seen
    assert s0 == SEEDS["fedavg_init"] and [s1, s2] == [SEEDS["fedavg_extra"] + 1, SEEDS["fedavg_extra"] + 2]
    assert not torch.equal(w0, w1) and not torch.equal(w1, w2)
    assert not torch.equal(y0, y1)
    assert torch.equal(w0, build_model("course", preset.width, SEEDS["fedavg_init"]).state_dict()["0.weight"])
    with pytest.raises(ValueError, match="seed"):
        zoo.get_fedavg(preset, smoke_data, num_clients=2, dirichlet_alpha=None, rounds=1, seed=-1, progress=False)


def test_owners_are_the_fedavg_clients_and_are_validated(preset, smoke_data):
    from helpers.federated import client_split
    owners = zoo.get_owners(preset, smoke_data, 3, dirichlet_alpha=1.0, progress=False)
    clients = client_split(smoke_data.train, num_clients=3, dirichlet_alpha=1.0, seed=SEEDS["dirichlet_split"])
    assert [torch.equal(o[2].labels, c.labels) and torch.equal(o[2].images, c.images)
            for o, c in zip(owners, clients)] == [True] * 3
    assert sum(len(o[2]) for o in owners) == len(smoke_data.train)
    assert not _same_weights(owners[0][0], owners[1][0])
    with pytest.raises(ValueError, match="num_owners"):
        zoo.get_owners(preset, smoke_data, 1, progress=False)
    with pytest.raises(ValueError, match=r"owner \d+ of 40 .* fewer than one batch"):
        zoo.get_owners(preset, smoke_data, 40, dirichlet_alpha=0.1, progress=False)


def test_distilling_into_a_course_sized_model_builds_the_course_cnn(preset, smoke_data):
    """arch="course" must give the course CNN at the preset's width (it once built the student CNN)."""
    pair = zoo.get_pair("independent", preset, smoke_data, progress=False)
    model, _ = zoo.get_distilled_student(preset, smoke_data, teacher="pair ensemble",
                                         teacher_module=Ensemble([pair.model_a, pair.model_b]), arch="course",
                                         progress=False)
    reference = build_model("course", preset.width, 0)
    assert type(model) is type(reference)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Seeds: every run the recipes make, listed from their config functions (no data, no training)


class _Data:
    """What the config functions read of the data: its size and content fingerprint (`zoo.data_tag`)."""

    train = range(1000)
    fingerprint = "listing"


def _runs(preset) -> dict[str, zoo.RunConfig]:
    """Every trained model's run under `preset`, by a name for people: pairs of each kind, the spawned
    parent and children 0..max(5, soup_size)-1 (notebook 08's soups), the joint model, independent models
    0..max(num_seeds + 1, ensemble_models, 3)-1, the residual and no-norm pairs, students and distilled
    students 0..max(num_seeds, kd_seeds)-1, owners of 2, 4 and 8 parts, SWA runs, a fine-tune, the task
    base and its fine-tunes, and FedAvg's server model for replicates 0..num_seeds-1. (Runs of another
    preset, such as notebook 04's width trend, `replace(preset, width=w)`, are these recipes at another
    width and reuse these seeds by design.)"""
    d = _Data()
    runs = {}
    for kind in zoo.PAIR_KINDS:
        runs.update({f"{kind} {m}": c for m, c in zip("ab", zoo.pair_configs(kind, preset, d))})
    runs.update({f"spawned child {i}": zoo.spawned_child_config(preset, d, i)
                 for i in range(max(5, preset.soup_size))})
    runs["spawned parent"] = runs["spawned child 0"].parent
    runs["joint"] = zoo.joint_config(preset, d)
    runs.update({f"independent {i}": zoo.independent_config(preset, d, i)
                 for i in range(max(preset.num_seeds + 1, preset.ensemble_models, 3))})
    runs.update({f"residual {m}": c for m, c in zip("ab", zoo.residual_configs(preset, d))})
    runs.update({f"nonorm {m}": c for m, c in zip("ab", zoo.nonorm_configs(preset, d))})
    for s in range(max(preset.num_seeds, preset.kd_seeds)):
        runs[f"student {s}"] = zoo.student_config(preset, d, s)
        for arch, name in (("student", "distilled student"), ("course", "course-sized distilled student")):
            runs[f"{name} {s}"] = zoo.distilled_student_config(preset, d, teacher="ensemble", teacher_fingerprint="-",
                                                                seed=s, arch=arch).student
    for n in (2, 4, 8):
        runs.update({f"owner {i} of {n}": c for i, c in enumerate(zoo.owner_configs(preset, d, n))})
    runs.update({f"swa {s}": zoo.averaged_run_config(preset, d, s).run for s in range(max(3, preset.swa_runs))})
    runs["fine-tune"] = zoo.finetune_config(preset, d)
    runs["task base"] = zoo.task_base_config(preset, d)
    runs.update({f"task {i} fine-tune": c for i, c in enumerate(zoo.task_finetune_configs(preset, d))})
    for s in range(preset.num_seeds):
        for alpha in (None, zoo.DISJOINT_ALPHA):
            runs[f"fedavg {alpha or 'iid'} replicate {s}"] = zoo.fedavg_config(
                preset, d, num_clients=preset.fed_clients, dirichlet_alpha=alpha, rounds=2, seed=s).model
    return runs


# Runs that share seeds on purpose: (which seeds, "<one run> & <the other>" as a regular expression, why).
BOTH = ("init_seed", "data_seed")
SHARED_ON_PURPOSE = [
    (BOTH, r"independent a & independent 0|independent b & independent 1",
     "get_independent_models starts with the independent pair: the same runs (and checkpoints)"),
    (("init_seed",), r"shared_init a & shared_init b", "the shared_init pair: one initialisation, two data orders"),
    (BOTH, r"spawned a & spawned child 0|spawned b & spawned child 1",
     "the spawned pair is children 0 and 1 of get_spawned_children: the same runs (and checkpoints)"),
    (("init_seed",), r"spawned (parent|a|b|child \d+) & spawned (parent|a|b|child \d+)",
     "spawned children continue from the parent's weights (the parent part of their run is the parent's)"),
    (BOTH, r"student (\d+) & distilled student \1",
     "a distilled student has the scratch student's seeds (get_distilled_student): the two differ only in the loss"),
    (BOTH, r"(distilled )?student (\d+) & course-sized distilled student \2",
     "the same for a course-sized student (notebook 09): the scratch student's data order"),
    (BOTH, r"fedavg \S+ replicate (\d+) & fedavg \S+ replicate \1",
     "every FedAvg setting of one replicate starts from the same server model (get_fedavg)"),
    (BOTH, r"owner (\d+) of \d+ & owner \1 of \d+",
     "owner i has seeds `owners + i` in every split; owners of different splits train on other images and are "
     "never combined"),
]


def _shared_on_purpose(kind: str, a: str, b: str) -> bool:
    return any(kind in kinds and (re.fullmatch(pattern, f"{a} & {b}") or re.fullmatch(pattern, f"{b} & {a}"))
               for kinds, pattern, _ in SHARED_ON_PURPOSE)


def _seed_clashes(preset) -> list[str]:
    """Every pair of runs with the same init or data seed that `SHARED_ON_PURPOSE` does not allow (two
    recipes giving one identical run count too: that is one model trained twice under two names)."""
    clashes = []
    for kind in ("init_seed", "data_seed"):
        for (a, c1), (b, c2) in itertools.combinations(_runs(preset).items(), 2):
            if getattr(c1, kind) == getattr(c2, kind) and not _shared_on_purpose(kind, a, b):
                clashes.append(f"{a} and {b} share {kind} {getattr(c1, kind)}")
    return clashes


@pytest.mark.parametrize("name", ["smoke", "workshop", "cpu", "gpu"])
def test_no_two_runs_share_a_seed_unless_they_are_meant_to(name):
    preset = PRESETS[name]
    assert _seed_clashes(preset) == []
    runs = _runs(preset)
    assert len(runs) > 40
    # the spawned pair itself keeps its seeds (its cache entries and results do not move)
    assert [runs[f"spawned child {i}"].data_seed for i in range(2)] == [6, 7]


@pytest.mark.parametrize("entry, same_as, clash", [
    ("joint", "independent_a", "independent a and joint share init_seed 1"),
    ("swa", "task_base", "swa 0 and task base share init_seed 50"),
    ("spawned_extra", "spawned_children", "disjoint a and spawned child 2 share data_seed 8"),
    ("student", "owners", "student 0 and owner 0 of 2 share init_seed 70"),
])
def test_the_seed_check_fails_when_two_recipes_get_one_seed(monkeypatch, entry, same_as, clash):
    """The check can fail: with one `SEEDS` entry set to another's, it names the runs that now collide."""
    monkeypatch.setattr(zoo, "SEEDS", MappingProxyType({**SEEDS, entry: SEEDS[same_as]}))
    clashes = _seed_clashes(PRESETS["cpu"])
    assert any(c.startswith(clash) for c in clashes), clashes
