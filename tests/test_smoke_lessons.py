"""The course's central lessons on trained models, in seconds: two independently trained smoke-sized
course CNNs (synthetic data) are not averageable as they are, and permutation alignment makes them so."""

import pytest

from helpers.alignment import weight_matching
from helpers.averaging import interpolate, recalibrate_batchnorm, recalibration_batches
from helpers.data import synthetic_cifar
from helpers.evaluation import evaluate
from helpers.models import course_cnn
from helpers.repro import seed_everything
from helpers.training import TrainConfig, train


@pytest.fixture(scope="module")
def trained_pair():
    data = synthetic_cifar(2048, 512, seed=0)
    config = TrainConfig(num_epochs=3, batch_size=128, lr=0.1, precision="fp32")
    models = []
    for seed in (1, 2):
        seed_everything(seed)
        model = course_cnn(0.25)
        train(model, data.train, config=config, seed=seed, progress=False, device="cpu")
        models.append(model.eval())
    return data, models


def test_an_aligned_midpoint_beats_the_naive_one_on_trained_models(trained_pair):
    data, (model_a, model_b) = trained_pair
    batches = recalibration_batches(data.train, num_images=1024)
    ends = [evaluate(m, data.test)["accuracy"] for m in (model_a, model_b)]
    assert min(ends) > 0.5, f"the members should be trained (chance is 0.1): {ends}"
    naive = recalibrate_batchnorm(interpolate(model_a, model_b, 0.5), batches)
    aligned = recalibrate_batchnorm(interpolate(model_a, weight_matching(model_a, model_b), 0.5), batches)
    naive_acc, aligned_acc = evaluate(naive, data.test)["accuracy"], evaluate(aligned, data.test)["accuracy"]
    assert aligned_acc > naive_acc + 0.05, f"aligned {aligned_acc:.3f} vs naive {naive_acc:.3f} (members {ends})"


def test_recalibrating_a_merge_changes_it_and_helps(trained_pair):
    data, (model_a, model_b) = trained_pair
    merged = interpolate(model_a, weight_matching(model_a, model_b), 0.5)
    before = evaluate(merged, data.test)["accuracy"]
    stats_before = {k: v.clone() for k, v in merged.state_dict().items() if "running_var" in k}
    recalibrate_batchnorm(merged, recalibration_batches(data.train, num_images=1024))
    changed = [k for k, v in stats_before.items() if not v.equal(merged.state_dict()[k])]
    assert changed == list(stats_before), "every BatchNorm layer's statistics are recomputed"
    assert evaluate(merged, data.test)["accuracy"] >= before
