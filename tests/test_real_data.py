"""Real CIFAR-10 (skipped unless CIFAR10_DIR points at an ImageFolder copy; `.ci/run` sets it)."""

import json
from pathlib import Path

import pytest
import torch

from helpers.data import iid_split, load_cifar10
from helpers.models import course_cnn
from helpers.repro import seed_everything
from helpers.training import TrainConfig, train

pytestmark = pytest.mark.realdata

# 3 epochs on 10,000 real images with the cpu-preset course model: measured 61% (CIFAR-10 JPEG copy, 2-core Xeon, 9 s);
# the floor leaves room for machine-to-machine noise while still failing on a broken pipeline
# (chance is 10%, a model on shuffled labels or unnormalised inputs stays far below).
FLOOR = 0.50


@pytest.fixture(scope="module")
def cifar():
    return load_cifar10()


def test_real_cifar10_has_the_expected_shape(cifar):
    assert len(cifar.train) == 50_000 and len(cifar.test) == 10_000
    assert cifar.train.class_counts() == [5000] * 10 and cifar.test.class_counts() == [1000] * 10
    assert cifar.train.images.dtype == torch.uint8
    # Real photos, not noise: per-channel means near CIFAR-10's (125, 123, 114).
    means = cifar.train.images.float().mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([125.3, 123.0, 113.9]), atol=6)


def test_brief_training_on_real_subset_clears_floor(cifar):
    subset = iid_split(cifar.train, 5, seed=0)[0]  # 10,000 images
    seed_everything(0)
    model = course_cnn(0.5)
    history = train(model, subset, config=TrainConfig(num_epochs=3, batch_size=128, lr=0.1),
                    test_data=cifar.test, progress=False)
    print(f"real-data smoke: {history.final_test_accuracy:.3f} test accuracy in {history.train_seconds:.1f}s")
    assert history.final_test_accuracy >= FLOOR


# ----------------------------------------------------------------------------------------------
# The workshop preset's committed run (results/workshop/, one cold `make run` on real CIFAR-10):
# every lesson of the course must be visible at that budget.

WORKSHOP = Path(__file__).resolve().parents[1] / "results" / "workshop"


def _workshop(notebook: str) -> dict:
    path = WORKSHOP / f"{notebook}.json"
    assert path.exists(), f"{path} is missing: run HELPERS_PRESET=workshop HELPERS_PRECISION=fp32 make run"
    blob = json.loads(path.read_text())
    assert blob["provenance"]["preset"] == "workshop" and "synthetic" not in blob["provenance"]["data_source"]
    return blob["results"]


def test_workshop_naive_average_of_independent_models_collapses():
    assert _workshop("03_weight_averaging")["pairs"]["independent"]["midpoint_naive"] <= 0.20


def test_workshop_spawned_average_stays_with_its_children():
    spawned = _workshop("03_weight_averaging")["pairs"]["spawned"]
    better_child = max(spawned["accuracy_a"], spawned["accuracy_b"])
    assert spawned["midpoint_recalibrated"] >= better_child - 0.03


def test_workshop_alignment_closes_half_the_accuracy_barrier():
    ind = _workshop("04_permutation_alignment")["pairs"]["independent"]
    closed = 1 - ind["aligned + BN reset"]["accuracy_barrier"] / ind["naive"]["accuracy_barrier"]
    assert closed >= 0.5, f"aligned + BN reset closes {closed:.0%} of the naive accuracy barrier"


def test_workshop_ensemble_beats_its_better_member():
    """Measured over every pair of the independent models (notebook 05), not on one pair: at this budget
    one pair's members can differ by 5 points, and the committed independent pair alone gains only
    +0.20 (a much weaker partner barely lifts the stronger one)."""
    pairs = _workshop("05_prediction_ensembling")["independent_pairs"]
    gains = pairs["ensemble_gains"]
    assert len(gains) >= 6 and sum(gains) / len(gains) >= 0.005, f"mean gain over pairs {sum(gains) / len(gains):+.4f}"


def test_workshop_student_of_the_ensemble_is_at_least_as_good_as_from_scratch():
    """The lesson, or the issue's rule for a lesson this budget cannot show: the run says so with its numbers.
    At the workshop budget distillation's effect is smaller than the scratch student's seed-to-seed spread
    (runs on different hosts and precisions have put the distilled student's mean on either side of
    scratch's), so a miss is accepted only when it is within noise (never worse beyond it) and both the
    executed notebook and the instructor's guide state it."""
    kd = _workshop("06_knowledge_distillation")
    chosen, scratch = kd["students"][kd["chosen"]]["mean"], kd["students"]["scratch"]["mean"]
    if chosen >= scratch:
        return
    assert kd["gain_direction"] == 0, f"the distilled student is worse than scratch beyond noise: {kd['gain_verdict']}"
    root = WORKSHOP.parents[1]
    executed = (root / "docs" / "executed" / "workshop" / "06_knowledge_distillation.ipynb").read_text()
    assert "not better than the scratch student" in executed, "notebook 06 must say the lesson is not shown"
    guide_line = next(line for line in (root / "docs" / "workshop.md").read_text().splitlines()
                      if line.startswith("- student distilled from the ensemble"))
    assert guide_line.endswith("— **not shown**;") and f"{100 * chosen:.2f}%" in guide_line, guide_line


def test_workshop_fedavg_reaches_the_joint_model_and_one_shot_collapses():
    fed = _workshop("07_federated_averaging")
    assert fed["gap_iid_to_joint"] <= 0.04
    assert fed["one_shot"]["IID"] <= 0.25
