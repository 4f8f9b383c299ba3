"""The recipe module: every recipe trains once in `smoke`, then comes from the cache; keys are honest."""

from dataclasses import replace

import pytest
import torch

import helpers.zoo as zoo
from helpers import checkpoints
from helpers.data import DataSplits, synthetic_cifar, train_val_split
from helpers.presets import get_preset
from helpers.zoo import SEEDS, Subset


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


def test_distillation_study_chooses_on_validation_and_reuses_teacher_outputs(preset, smoke_data, trainings):
    teachers = zoo.pair_teachers(preset, smoke_data, progress=False)
    study = zoo.distillation_study(preset, smoke_data, teachers=teachers, temperatures=(1.0, 4.0), soft_weight=0.9,
                                   seeds=[0, 1], progress=False)
    assert study.temperature == max(study.val_by_temperature, key=study.val_by_temperature.get)
    assert set(study.runs) == {"scratch", "KD ensemble (MSE)", "KD ensemble (KL, T=1)", "KD ensemble (KL, T=4)",
                               f"KD member (KL, T={study.temperature:g})"}
    assert set(study.runs["scratch"]) == {0, 1} and set(study.runs[study.chosen]) == {0, 1}
    assert study.cache_hits > 0   # students of one seed see the same batches: the ensemble ran once per batch
    summary = study.summary()
    assert summary["scratch"]["std"] >= 0 and len(summary["scratch"]["accuracy"]) == 2
    trainings["n"] = 0
    again = zoo.distillation_study(preset, smoke_data, teachers=teachers, temperatures=(1.0, 4.0), soft_weight=0.9,
                                   seeds=[0, 1], progress=False)
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
    assert zoo.module_fingerprint(pair.model_a) != zoo.module_fingerprint(pair.model_b)
    ensemble = zoo.pair_teachers(preset, smoke_data, progress=False)["ensemble"]
    other_rule = zoo.Ensemble(list(ensemble.members), combine="mean_probs")
    assert zoo.module_fingerprint(ensemble) != zoo.module_fingerprint(other_rule)   # same weights, other function
    assert zoo.module_fingerprint(zoo.CachedTeacher(ensemble)) == zoo.module_fingerprint(ensemble)


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


def test_seeds_table_is_the_one_source_of_seeds(preset, smoke_data):
    """No two recipes share initial weights by accident: every course model's init seed is distinct,
    except the ones that share it on purpose (shared_init pair, spawned children)."""
    configs = {f"{kind}_{m}": c for kind in zoo.PAIR_KINDS
               for m, c in zip("ab", zoo.pair_configs(kind, preset, smoke_data))}
    configs["joint"] = zoo.course_config(preset, smoke_data, SEEDS["joint"])
    inits = {name: c.init_seed for name, c in configs.items()}
    assert inits["shared_init_a"] == inits["shared_init_b"] and inits["spawned_a"] == inits["spawned_b"]
    distinct = {inits[k] for k in ("independent_a", "independent_b", "shared_init_a", "spawned_a", "disjoint_a",
                                   "disjoint_b", "joint")}
    assert len(distinct) == 7 and SEEDS["fedavg_init"] not in distinct
    assert configs["shared_init_a"].data_seed != configs["shared_init_b"].data_seed


def test_subset_validation_and_selection(smoke_data):
    assert Subset().select(smoke_data.train) is smoke_data.train
    halves = [Subset(0.5, i, 2).select(smoke_data.train) for i in range(2)]
    assert sum(len(h) for h in halves) == len(smoke_data.train)
    with pytest.raises(ValueError, match="index"):
        Subset(0.5, 2, 2)
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        Subset(None, 0, 2)
    with pytest.raises(ValueError, match="unknown arch"):
        zoo.build_model("resnet", 1.0, 0)


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
    part = zoo.ClassSubset((1, 3)).select(smoke_data.train)
    assert set(part.labels.tolist()) == {1, 3}
    assert len(part) == sum(1 for y in smoke_data.train.labels.tolist() if y in (1, 3))
    with pytest.raises(ValueError, match="distinct"):
        zoo.ClassSubset((1, 1))
    with pytest.raises(ValueError, match="class 12"):
        zoo.ClassSubset((12,)).select(smoke_data.train)


def test_independent_models_start_with_the_independent_pair(preset, smoke_data):
    pair = zoo.get_pair("independent", preset, smoke_data, progress=False)
    models = zoo.get_independent_models(preset, smoke_data, 3, progress=False)
    assert _same_weights(models[0], pair.model_a) and _same_weights(models[1], pair.model_b)
    assert not _same_weights(models[2], pair.model_a)
    with pytest.raises(ValueError, match="num_models"):
        zoo.get_independent_models(preset, smoke_data, 1, progress=False)


def test_full_data_runs_never_share_a_data_order(preset, smoke_data):
    """Runs on the same training images with the same data seed see the same batches: every course
    model trained on all of data.train (pairs, spawned children, joint, extra independent models,
    residual / no-norm pairs, SWA runs) has its own data seed for the epochs it trains."""
    runs = {f"{kind}_{m}": c for kind in ("independent", "shared_init")
            for m, c in zip("ab", zoo.pair_configs(kind, preset, smoke_data))}
    runs.update({f"spawned child {i}": zoo.spawned_child_config(preset, smoke_data, i) for i in range(8)})
    runs["spawned parent"] = zoo.spawned_child_config(preset, smoke_data, 0).parent
    runs["joint"] = zoo.course_config(preset, smoke_data, SEEDS["joint"])
    seeds = {name: c.data_seed for name, c in runs.items()}
    seeds.update({f"independent {i}": SEEDS["independent_extra"] + i for i in range(2, 8)})
    seeds.update({f"{kind} {m}": SEEDS[f"{kind}_{m}"] for kind in ("residual", "nonorm") for m in "ab"})
    seeds.update({f"swa {s}": SEEDS["swa"] + s for s in range(3)})
    clashes = [(a, b) for a in seeds for b in seeds if a < b and seeds[a] == seeds[b]]
    assert not clashes, f"runs sharing a data order: {clashes}"
    # the spawned pair itself keeps its seeds (its cache entries and results do not move)
    assert [zoo.spawned_child_config(preset, smoke_data, i).data_seed for i in range(2)] == [6, 7]


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
    assert torch.equal(w0, zoo.build_model("course", preset.width, SEEDS["fedavg_init"]).state_dict()["0.weight"])
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
    from helpers.ensembling import Ensemble
    pair = zoo.get_pair("independent", preset, smoke_data, progress=False)
    model, _ = zoo.get_distilled_student(preset, smoke_data, teacher="pair ensemble",
                                         teacher_module=Ensemble([pair.model_a, pair.model_b]), arch="course",
                                         progress=False)
    reference = zoo.build_model("course", preset.width, 0)
    assert type(model) is type(reference)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
