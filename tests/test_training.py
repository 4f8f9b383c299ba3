import pytest
import torch

from dataclasses import replace

from helpers.devices import eval_mode, pick_device, resolve_precision
from helpers.evaluation import evaluate, predict_logits
from helpers.models import course_cnn, student_cnn
from helpers.repro import seed_everything
from helpers.training import (History, TrainConfig, lr_at, make_optimizer, prepare, train, train_epochs,
                              train_part)

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
    h1 = train_epochs(model, tiny_data.train, config=FAST, start_epoch=0, stop_epoch=1, progress=False, device="cpu")
    h2 = train_epochs(model, tiny_data.train, config=FAST, start_epoch=1, stop_epoch=2, progress=False, device="cpu")
    seed_everything(0)
    full = train(student_cnn(0.5), tiny_data.train, config=FAST, progress=False, device="cpu")
    assert h1.lr + h2.lr == full.lr and h2.epoch == [2]
    with pytest.raises(ValueError, match="start_epoch"):
        train_epochs(model, tiny_data.train, config=FAST, start_epoch=2, stop_epoch=2, progress=False)


def _in_parts(data, config, *, optimizer_per_part: bool):
    """Epoch 0 of `config` as 3 slices with `train_part`; returns (model, lrs of the slices)."""
    seed_everything(0)
    model = student_cnn(0.5)
    device, _, on_device = prepare(model, data, config, "cpu")
    optimizer = make_optimizer(model, config)
    lrs = []
    for i in range(3):
        if optimizer_per_part:
            optimizer = make_optimizer(model, config)
        lrs.append(train_part(model, on_device, config=config, seed=0, epoch=0, part=(i, 3), optimizer=optimizer,
                              device=device).lr)
    return model, lrs


def _one_epoch(data, config):
    seed_everything(0)
    model = student_cnn(0.5)
    history = train_epochs(model, data, config=config, start_epoch=0, stop_epoch=1, progress=False, device="cpu")
    return model, history


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_epoch_in_parts_with_one_optimiser_equals_one_epoch(tiny_data, momentum):
    """`train_part` runs slice i of k of an epoch with the full run's batches and learning rates; with
    one optimiser carried across the slices, k slices give exactly one epoch's weights."""
    config = TrainConfig(num_epochs=2, batch_size=64, lr=0.05, momentum=momentum)
    parts, lrs = _in_parts(tiny_data.train, config, optimizer_per_part=False)
    whole, history = _one_epoch(tiny_data.train, config)
    for (k, a), b in zip(parts.state_dict().items(), whole.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert len(set(lrs)) == 3 and lrs[-1] == history.lr[0]  # the last slice ends where the epoch ends


def test_restarting_the_optimiser_between_parts_loses_momentum(tiny_data):
    """The counterpart: a fresh optimiser per slice (FedAvg's stateless clients) differs with momentum."""
    config = TrainConfig(num_epochs=2, batch_size=64, lr=0.05)
    parts, _ = _in_parts(tiny_data.train, config, optimizer_per_part=True)
    whole, _ = _one_epoch(tiny_data.train, config)
    assert not torch.allclose(parts[0].weight, whole[0].weight, atol=1e-6)


def test_part_out_of_range_is_refused(tiny_data):
    model = student_cnn(0.5)
    with pytest.raises(ValueError, match="part"):
        train_part(model, tiny_data.train, config=FAST, seed=0, epoch=0, part=(3, 3),
                   optimizer=make_optimizer(model, FAST), device="cpu")


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


def test_eval_mode_restores_every_module_even_on_error():
    model = course_cnn(0.25).train()
    model[1].eval()  # one BatchNorm frozen by its owner: must stay frozen afterwards
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert model.training and not model[1].training
    assert all(m.training for i, m in enumerate(model) if i != 1)


def test_config_validation():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device() == torch.device("cpu")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


def test_custom_loss_is_used(tiny_data):
    """`loss_fn` replaces cross-entropy: a loss that only pushes up the logit of class 0 makes every
    prediction class 0 (a loop that ignored it would learn the labels instead)."""
    seed_everything(0)
    model = course_cnn(0.25)
    history = train_epochs(model, tiny_data.train, config=FAST, start_epoch=0, stop_epoch=2, progress=False,
                           device="cpu", loss_fn=lambda logits, x, y: -logits.log_softmax(1)[:, 0].mean())
    assert (predict_logits(model, tiny_data.test).argmax(1) == 0).all()
    assert history.train_loss[-1] < 0.1


def test_too_small_dataset_fails_clearly(tiny_data):
    with pytest.raises(ValueError, match="smaller than one batch"):
        train(course_cnn(0.25), tiny_data.test.subset(range(10)), config=FAST, progress=False)
