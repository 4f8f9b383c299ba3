"""Averaging along a run (`helpers.swa`): the schedule, and what SWA and EMA hold at the end."""

import pytest
import torch

from helpers.data import synthetic_cifar
from helpers.models import course_cnn
from helpers.repro import seed_everything
from helpers.swa import AveragingConfig, swa_schedule, train_with_averages
from helpers.training import TrainConfig, epoch_steps, lr_at, train, train_steps

CONFIG = TrainConfig(num_epochs=2, batch_size=64, lr=0.1, precision="fp32")


@pytest.fixture(scope="module")
def data():
    return synthetic_cifar(512, 64, seed=0).train


def _model():
    seed_everything(0)
    return course_cnn(0.25)


def test_schedule_is_one_cycle_then_swalr_anneal_to_a_constant():
    averaging = AveragingConfig(swa_start=0.5, swa_lr=0.02, anneal_fraction=0.5)
    lrs = swa_schedule(100, CONFIG, averaging)
    assert len(lrs) == 100
    assert lrs[:50] == [lr_at(s, 100, CONFIG.lr, CONFIG.warmup) for s in range(50)]
    assert lrs[-25:] == pytest.approx([0.02] * 25)                # constant after the anneal
    assert all(abs(b - 0.02) <= abs(a - 0.02) + 1e-12 for a, b in zip(lrs[50:75], lrs[51:76]))   # annealing toward it


def test_train_steps_over_whole_epochs_is_train(data):
    a, b = _model(), _model()
    train(a, data, config=CONFIG, seed=3, progress=False)
    history = train_steps(b, data, config=CONFIG, num_steps=epoch_steps(len(data), CONFIG) * CONFIG.num_epochs,
                          seed=3, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert history.images_seen == len(data) // 64 * 64 * 2


def test_train_steps_takes_exactly_the_steps_asked_and_calls_back_after_each(data):
    seen = []
    history = train_steps(_model(), data, config=CONFIG, num_steps=11, seed=0, after_step=seen.append, progress=False)
    assert seen == list(range(11)) and history.images_seen == 11 * 64
    with pytest.raises(ValueError, match="num_steps"):
        train_steps(_model(), data, config=CONFIG, num_steps=0, progress=False)


def test_swa_is_the_mean_of_its_snapshots_and_ema_tracks_the_weights(data):
    """Replay the run recording the weights after every step: the returned SWA parameters are the mean of
    the weights at the steps the schedule names, written out here by hand rather than recomputed with the
    code's own condition. 512 images in batches of 64 = 8 steps per epoch, 16 in all; SWA starts at half
    the run (step 8) and takes 2 snapshots per epoch (every 4 steps), so it averages the weights after
    steps 11 and 15 (0-based; 15 is also the last step). BatchNorm statistics were recomputed, not averaged."""
    averaging = AveragingConfig(swa_start=0.5, swa_lr=0.05, averages_per_epoch=2, ema_horizon=0.2)
    models, history = train_with_averages(_model(), data, config=CONFIG, averaging=averaging, seed=1, progress=False)
    total = 16
    assert epoch_steps(len(data), CONFIG) * CONFIG.num_epochs == total
    weights_after = []
    replay = _model()

    def record(step):
        weights_after.append({k: v.detach().clone() for k, v in replay.named_parameters()})

    train_steps(replay, data, config=CONFIG, num_steps=total, seed=1, lr_schedule=swa_schedule(total, CONFIG, averaging).__getitem__,
                after_step=record, progress=False)
    snapshots = [weights_after[11], weights_after[15]]
    assert all(torch.equal(p, q) for p, q in zip(replay.parameters(), models["endpoint"].parameters()))
    for name, p in models["swa"].named_parameters():
        mean = torch.stack([s[name] for s in snapshots]).mean(0)
        assert torch.allclose(p, mean, atol=1e-5), name
    bn = [k for k in models["swa"].state_dict() if k.endswith("running_mean")]
    assert bn and not torch.equal(models["swa"].state_dict()[bn[0]], models["endpoint"].state_dict()[bn[0]])
    ema_gap = sum(float((e - w).detach().abs().sum()) for e, w in zip(models["ema"].parameters(), models["endpoint"].parameters()))
    assert ema_gap > 0 and history.images_seen == total * 64


def test_averaging_config_is_checked():
    for bad in ({"swa_start": 1.0}, {"swa_lr": 0}, {"averages_per_epoch": 0}, {"ema_horizon": 0}):
        with pytest.raises(ValueError):
            AveragingConfig(**bad)
