import pytest
import torch

from helpers.models import course_cnn, student_cnn
from helpers.repro import pick_device, seed_everything
from helpers.training import History, TrainConfig, evaluate, lr_at, resolve_precision, train

FAST = TrainConfig(num_epochs=2, batch_size=64, lr=0.1, label_smoothing=0.1)


def _trained(seed_init, seed_data, data, config=FAST):
    seed_everything(seed_init)
    model = course_cnn(0.25)
    history = train(model, data.train, config=config, seed=seed_data, test_data=data.test, progress=False,
                    device="cpu")
    return model, history


def test_same_seed_gives_identical_weights_on_cpu(tiny_data):
    a, ha = _trained(0, 0, tiny_data)
    b, hb = _trained(0, 0, tiny_data)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert ha.train_loss == hb.train_loss


def test_different_data_seed_gives_different_weights(tiny_data):
    a, _ = _trained(0, 0, tiny_data)
    b, _ = _trained(0, 1, tiny_data)
    assert not torch.equal(a[0].weight, b[0].weight)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_learns_well_above_chance(tiny_data, precision):
    data = tiny_data
    from dataclasses import replace
    _, history = _trained(0, 0, data, replace(FAST, num_epochs=3, precision=precision))
    assert history.final_test_accuracy > 0.3  # chance is 0.1; 512 images, 3 short epochs
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.precision == precision


def test_history_records_every_epoch_and_round_trips(tiny_data):
    _, h = _trained(0, 0, tiny_data)
    assert h.epoch == [1, 2] and len(h.test_accuracy) == 2 and len(h.seconds) == 2
    assert h.images_seen == 2 * (512 // 64) * 64
    assert History.from_dict(h.to_dict()) == h
    both = h.then(h)
    assert both.epoch == [1, 2, 1, 2] and both.seconds[-1] == pytest.approx(2 * h.seconds[-1])


def test_partial_schedule_keeps_the_full_runs_learning_rates(tiny_data):
    """Epochs 0-1 then 1-2 follow the learning rates of one uninterrupted run (the optimiser's
    momentum restarts, so the weights differ slightly; spawned children rely on the schedule)."""
    seed_everything(0)
    model = student_cnn(0.5)
    h1 = train(model, tiny_data.train, config=FAST, stop_epoch=1, progress=False, device="cpu")
    h2 = train(model, tiny_data.train, config=FAST, start_epoch=1, progress=False, device="cpu")
    seed_everything(0)
    full = train(student_cnn(0.5), tiny_data.train, config=FAST, progress=False, device="cpu")
    assert h1.lr + h2.lr == full.lr
    with pytest.raises(ValueError, match="start_epoch"):
        train(model, tiny_data.train, config=FAST, start_epoch=2, progress=False)


def test_epoch_in_parts_equals_one_epoch_without_momentum(tiny_data):
    """part=(i, k) runs slice i of k of an epoch with the full run's batches and learning rates;
    without momentum (no optimiser state to restart) k parts give exactly one epoch's weights."""
    config = TrainConfig(num_epochs=2, batch_size=64, lr=0.05, momentum=0.0)
    seed_everything(0)
    parts = student_cnn(0.5)
    lrs = []
    for i in range(3):
        lrs += train(parts, tiny_data.train, config=config, stop_epoch=1, part=(i, 3), progress=False, device="cpu").lr
    seed_everything(0)
    whole = student_cnn(0.5)
    history = train(whole, tiny_data.train, config=config, stop_epoch=1, progress=False, device="cpu")
    for (k, a), b in zip(parts.state_dict().items(), whole.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert len(set(lrs)) == 3 and lrs[-1] == history.lr[0]  # the last slice ends where the epoch ends
    with pytest.raises(ValueError, match="part"):
        train(parts, tiny_data.train, config=config, part=(3, 3), progress=False)


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 1.0, 0.2) for s in range(100)]
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 19
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] == pytest.approx(1.0 / 80)
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:20])) and all(a >= b for a, b in zip(lrs[20:], lrs[21:]))


def test_evaluate_returns_plain_floats_and_keeps_mode(tiny_data):
    model = course_cnn(0.25).train()
    metrics = evaluate(model, tiny_data.test, device="cpu")
    assert set(metrics) == {"accuracy", "loss"} and all(type(v) is float for v in metrics.values())
    assert 0 <= metrics["accuracy"] <= 1 and model.training


def test_config_validation():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device() == torch.device("cpu")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


def test_too_small_dataset_fails_clearly(tiny_data):
    with pytest.raises(ValueError, match="smaller than one batch"):
        train(course_cnn(0.25), tiny_data.test.subset(range(10)), config=FAST, progress=False)


def test_epoch_in_parts_with_carried_momentum_equals_one_epoch(tiny_data):
    """With `optimizer_state` carried between calls, k parts give one epoch's weights, momentum included."""
    config = TrainConfig(num_epochs=2, batch_size=64, lr=0.05)
    seed_everything(0)
    parts, state = student_cnn(0.5), {}
    for i in range(3):
        train(parts, tiny_data.train, config=config, stop_epoch=1, part=(i, 3), optimizer_state=state,
              progress=False, device="cpu")
    seed_everything(0)
    whole = student_cnn(0.5)
    train(whole, tiny_data.train, config=config, stop_epoch=1, progress=False, device="cpu")
    for (k, a), b in zip(parts.state_dict().items(), whole.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k
