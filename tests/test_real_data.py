"""Real CIFAR-10 (skipped unless CIFAR10_DIR points at an ImageFolder copy; `.ci/run` sets it)."""


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
