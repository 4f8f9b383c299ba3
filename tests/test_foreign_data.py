"""Helpers take anyone's data: the course's TensorData, `(x, y)` tensors, or a DataLoader — shown on
64x64 images of 5 classes and on tabular features, with models the course does not use. Bad input is a
TypeError / ValueError that names what was passed."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.averaging import greedy_soup, interpolation_curve, recalibrate_batchnorm, recalibration_batches
from helpers.data import DataSplits, TensorData, as_data
from helpers.distillation import distill
from helpers.evaluation import evaluate, predict_logits
from helpers.federated import client_split, fedavg
from helpers.training import TrainConfig, train

NUM_CLASSES = 5
CONFIG = TrainConfig(num_epochs=1, batch_size=32, lr=0.05, augment=False, precision="fp32")


def _images(n: int = 160, seed: int = 0):
    """64x64 RGB uint8 images whose class is the bright quadrant (learnable), 5 classes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % NUM_CLASSES
    x = torch.randint(0, 80, (n, 3, 64, 64), generator=g, dtype=torch.uint8)
    for c in range(NUM_CLASSES):
        r, q = divmod(c, 3)
        x[y == c, :, r * 21:(r + 1) * 21 + 10, q * 21:(q + 1) * 21] += 150
    return x, y


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return (x.float() - 100.0) / 60.0


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, NUM_CLASSES))


def test_64x64_images_are_never_standardised_with_cifar_statistics():
    x, y = _images()
    with pytest.raises(ValueError, match=r"\(3, 64, 64\).*mean= and std="):
        TensorData(x, y, tuple("abcde"))
    with pytest.raises(ValueError, match="uint8 inputs .*normalisation"):
        as_data((x, y))
    data = TensorData(x, y, tuple("abcde"), mean=(100.0,) * 3, std=(60.0,) * 3)
    xb, _ = next(iter(DataLoader(TensorDataset(_as_float(x), y), batch_size=len(y))))
    model = _cnn()
    assert torch.allclose(predict_logits(model, data), predict_logits(model, (xb, y)), atol=1e-5)


def test_evaluate_gives_one_answer_for_tensor_data_pairs_and_a_dataloader():
    x, y = _images()
    xf = _as_float(x)
    model = _cnn()
    by_data = evaluate(model, TensorData(x, y, tuple("abcde"), mean=(100.0,) * 3, std=(60.0,) * 3))
    by_pair = evaluate(model, (xf, y))
    by_loader = evaluate(model, DataLoader(TensorDataset(xf, y), batch_size=48))
    assert by_pair["accuracy"] == pytest.approx(by_data["accuracy"]) == pytest.approx(by_loader["accuracy"])
    assert by_pair["loss"] == pytest.approx(by_loader["loss"], rel=1e-5)


@pytest.mark.parametrize("bad, message", [
    (42, r"got int; expected a helpers.data.TensorData, a pair \(x, y\)"),
    (torch.zeros(4, 3), r"single tensor \(4, 3\).*pair \(x, y\)"),
    (TensorDataset(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), r"Dataset.*DataLoader\(dataset"),
    ("images/", "got str"),
    (iter([(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))]), "one-shot iterator"),
])
def test_what_is_not_data_is_a_type_error_that_names_it(bad, message):
    with pytest.raises(TypeError, match=message):
        evaluate(nn.Linear(3, 2), bad)


def test_a_batch_that_is_not_a_pair_is_named_by_index_and_datasplits_by_name(tiny_data):
    batches = [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), torch.zeros(2, 3)]
    with pytest.raises(TypeError, match="batch 1 is a Tensor"):
        evaluate(nn.Linear(3, 2), batches)
    with pytest.raises(TypeError, match="DataSplits.*data.train"):
        evaluate(nn.Linear(3, 2), DataSplits(tiny_data.train, tiny_data.test))


def test_train_distill_and_fedavg_take_pairs_and_dataloaders_and_learn():
    x, y = _images(320)
    xf = _as_float(x)
    test = _images(100, seed=1)
    test = (_as_float(test[0]), test[1])
    config = TrainConfig(num_epochs=3, batch_size=32, lr=0.05, augment=False, precision="fp32")
    teacher = _cnn(1)
    history = train(teacher, (xf, y), config=config, progress=False, device="cpu", test_data=test)
    assert history.final_test_accuracy > 0.6                          # chance is 0.2
    student = _cnn(2)
    loader = DataLoader(TensorDataset(xf, y), batch_size=40, shuffle=True, generator=torch.Generator().manual_seed(0))
    kd = distill(student, teacher, loader, config=config, progress=False, device="cpu", test_data=test)
    assert kd.images_seen == 3 * len(y)                               # one pass of the loader per epoch
    assert kd.final_test_accuracy > 0.4
    server = _cnn(3)
    clients = [DataLoader(TensorDataset(xf[i::2], y[i::2]), batch_size=32) for i in range(2)]
    fed = fedavg(server, clients, rounds=2, config=config, test_data=test, progress=False, device="cpu")
    assert len(fed.test_accuracy) == 2
    parts = client_split((xf, y), num_clients=2, dirichlet_alpha=None)
    assert sum(len(p) for p in parts) == len(y) and parts[0].classes == tuple("01234")
    with pytest.raises(TypeError, match="needs the examples as tensors"):
        client_split(loader, num_clients=2, dirichlet_alpha=None)


def test_tabular_features_train_without_augmentation_and_say_so_with_it():
    torch.manual_seed(0)
    x = torch.randn(200, 12)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()               # 4 classes
    mlp = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    train(mlp, (x, y), config=TrainConfig(num_epochs=8, batch_size=20, lr=0.1, augment=False, precision="fp32"),
          progress=False, device="cpu")
    assert evaluate(mlp, (x, y))["accuracy"] > 0.8
    with pytest.raises(ValueError, match=r"augmentation .*\(200, 12\).*augment=False"):
        train(mlp, (x, y), config=TrainConfig(num_epochs=1, batch_size=20), progress=False, device="cpu")


def test_soups_curves_and_recalibration_take_foreign_data():
    x, y = _images()
    xf = _as_float(x)
    models = [_cnn(s) for s in range(3)]
    config = TrainConfig(num_epochs=1, batch_size=32, lr=0.05, augment=False, precision="fp32")
    for m in models:
        train(m, (xf, y), config=config, progress=False, device="cpu")
    val = DataLoader(TensorDataset(xf[:64], y[:64]), batch_size=16)
    soup, chosen = greedy_soup(models, val, recalibrate=(xf, y), progress=False)
    assert chosen and chosen[0] in range(3)
    curve = interpolation_curve(models[0], models[1], (xf, y), [0, 0.5, 1], recalibrate=(xf, y), progress=False)
    assert curve.recalibrated and len(curve.accuracy) == 3
    # a recalibrated merge differs from its unrecalibrated self (BatchNorm statistics recomputed)
    from helpers.averaging import interpolate
    merged = interpolate(models[0], models[1], 0.5)
    before = {k: v.clone() for k, v in merged.state_dict().items()}
    recalibrate_batchnorm(merged, recalibration_batches((xf, y), num_images=96, batch_size=32))
    after = merged.state_dict()
    assert not torch.allclose(before["1.running_var"], after["1.running_var"])
    assert torch.equal(before["0.weight"], after["0.weight"])         # weights untouched
