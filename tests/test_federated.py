import pytest
import torch

from helpers.data import dirichlet_split, iid_split, synthetic_cifar
from helpers.federated import fedavg
from helpers.models import course_cnn
from helpers.repro import seed_everything
from helpers.training import TrainConfig, train

CONFIG = TrainConfig(num_epochs=1, batch_size=64, lr=0.1)


def _model():
    seed_everything(0)
    return course_cnn(0.25)


def test_one_client_one_round_equals_plain_training(tiny_data):
    fed = _model()
    fedavg(fed, [tiny_data.train], rounds=1, local_epochs=2, config=CONFIG, seed=3, progress=False, device="cpu")
    plain = _model()
    train(plain, tiny_data.train, config=TrainConfig(num_epochs=2, batch_size=64, lr=0.1), seed=3 * 1000,
          progress=False, device="cpu")
    for (k, a), b in zip(fed.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k


def test_identical_clients_give_the_same_result_as_one(tiny_data):
    one = _model()
    fedavg(one, [tiny_data.train], rounds=2, local_epochs=1, config=CONFIG, client_seeds=[7], progress=False,
           device="cpu")
    three = _model()
    fedavg(three, [tiny_data.train] * 3, rounds=2, local_epochs=1, config=CONFIG, client_seeds=[7, 7, 7],
           progress=False, device="cpu")
    for (k, a), b in zip(one.state_dict().items(), three.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-7), k


def test_clients_are_weighted_by_sample_count(tiny_data):
    """One round from a shared start equals the average of two separately trained clients weighted
    384:128 by hand, and differs from the uniform average (so ignoring the sizes would fail)."""
    parts = [tiny_data.train.subset(range(0, 384)), tiny_data.train.subset(range(384, 512))]
    server = _model()
    history = fedavg(server, parts, rounds=1, local_epochs=1, config=CONFIG, seed=5, progress=False, device="cpu",
                     test_data=tiny_data.test)
    alone = []
    for c, part in enumerate(parts):
        model = _model()
        train(model, part, config=CONFIG, seed=5 * 1000 + c, progress=False, device="cpu")
        alone.append(model.state_dict())
    for key, value in server.state_dict().items():
        if not value.is_floating_point():
            continue
        weighted = (384 * alone[0][key].double() + 128 * alone[1][key].double()) / 512
        assert torch.allclose(value.double(), weighted, atol=1e-6), key
    key = "0.weight"
    uniform = (alone[0][key] + alone[1][key]) / 2
    assert not torch.allclose(server.state_dict()[key], uniform, atol=1e-4)
    assert len(history.test_accuracy) == 1 and history.epoch == [1]


def test_fedavg_learns_on_iid_and_skewed_clients(tiny_data):
    for parts in (iid_split(tiny_data.train, 2, seed=0), dirichlet_split(tiny_data.train, 2, dirichlet_alpha=0.5, seed=0)):
        model = _model()
        history = fedavg(model, parts, rounds=2, local_epochs=1, config=CONFIG, progress=False, device="cpu",
                         test_data=tiny_data.test)
        assert history.test_accuracy[-1] > 0.2  # chance is 0.1


def test_rounds_shorter_than_an_epoch_use_every_batch_once_and_record_epochs(tiny_data, monkeypatch):
    import helpers.federated as fed
    calls = []
    real = fed.train_part

    def spy(model, data, **kw):
        calls.append((kw["epoch"], kw["part"]))
        return real(model, data, **kw)

    monkeypatch.setattr(fed, "train_part", spy)
    parts = iid_split(tiny_data.train, 2, seed=0)
    history = fedavg(_model(), parts, rounds=6, averages_per_epoch=3, config=CONFIG, progress=False, device="cpu",
                     test_data=tiny_data.test)
    assert calls == [(r // 3, (r % 3, 3)) for r in range(6) for _ in parts]
    assert history.epoch == [1, 2] and len(history.test_accuracy) == 2
    assert history.images_seen == 2 * sum(len(p) // 64 * 64 for p in parts)


def test_stateful_clients_keep_momentum_between_rounds(tiny_data):
    """With one client and rounds of 1/2 epoch, keeping the client's momentum reproduces one epoch of
    plain training exactly; restarting it every round (classic FedAvg) does not."""
    config = TrainConfig(num_epochs=1, batch_size=64, lr=0.05)
    kept, fresh = _model(), _model()
    fedavg(kept, [tiny_data.train], rounds=2, averages_per_epoch=2, keep_client_momentum=True, config=config,
           client_seeds=[4], progress=False, device="cpu")
    fedavg(fresh, [tiny_data.train], rounds=2, averages_per_epoch=2, keep_client_momentum=False, config=config,
           client_seeds=[4], progress=False, device="cpu")
    plain = _model()
    train(plain, tiny_data.train, config=config, seed=4, progress=False, device="cpu")
    for (k, a), b in zip(kept.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert not torch.allclose(fresh[0].weight, plain[0].weight, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="rounds"):
        fedavg(_model(), [], rounds=0, local_epochs=1, config=CONFIG)
    with pytest.raises(ValueError, match="client"):
        fedavg(_model(), [], rounds=1, local_epochs=1, config=CONFIG)
    with pytest.raises(ValueError, match="2 client seeds for 1 clients"):
        fedavg(_model(), [synthetic_cifar(128, 8).train], rounds=1, local_epochs=1, config=CONFIG, client_seeds=[1, 2])
    with pytest.raises(ValueError, match="averages_per_epoch"):
        fedavg(_model(), [synthetic_cifar(128, 8).train], rounds=3, averages_per_epoch=2, config=CONFIG)
