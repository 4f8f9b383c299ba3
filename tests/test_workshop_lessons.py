"""The workshop preset's committed run (`results/workshop/`, one cold `make run` on real CIFAR-10): every
lesson of the course must be visible at that budget. These tests read only the committed JSON and files
(no data, no training), so they run in `make test` on any machine."""

import json
from pathlib import Path

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
