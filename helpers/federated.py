"""Federated averaging (FedAvg, McMahan et al., 2017), introduced in notebook 07.

Every round, each client starts from the server's model, trains on its own data for
`local_epochs` with the course's `train` loop, and the server replaces its model by the average of
the clients' models, weighted by their number of training images (`average_state_dicts`).

BatchNorm: running statistics are averaged like the weights (plain FedAvg), so the server model can
be evaluated on its own; keeping them local instead (FedBN, Li et al., 2021) would need a client's
statistics at test time. Integer counters come from the client with the most data.

The learning rate follows one one-cycle schedule over all rounds: round r's local epochs use the
part of a `rounds * local_epochs`-epoch schedule they correspond to. Client optimisers (momentum)
start fresh every round, as in FedAvg.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from helpers.averaging import average_state_dicts
from helpers.data import TensorData
from helpers.repro import pick_device
from helpers.training import History, TrainConfig, evaluate, train


def fedavg(model: nn.Module, client_datasets: Sequence[TensorData], *, rounds: int, local_epochs: int,
           config: TrainConfig, seed: int = 0, client_seeds: Sequence[int] | None = None,
           test_data: TensorData | None = None,
           device: torch.device | str | None = None, progress: bool = True) -> History:
    """Run FedAvg from `model` (updated in place to the final server model); returns a `History`
    with one entry per round (`epoch` counts rounds; `seconds` is cumulative client training time,
    clients run one after another here). `config.num_epochs` is ignored: the schedule spans
    `rounds * local_epochs` epochs. Client c uses data seed `client_seeds[c]`, by default
    `seed * 1000 + c`."""
    if rounds < 1 or local_epochs < 1:
        raise ValueError(f"rounds and local_epochs must be >= 1, got {rounds} and {local_epochs}")
    if not client_datasets:
        raise ValueError("need at least one client dataset")
    if client_seeds is None:
        client_seeds = [seed * 1000 + c for c in range(len(client_datasets))]
    if len(client_seeds) != len(client_datasets):
        raise ValueError(f"got {len(client_seeds)} client seeds for {len(client_datasets)} clients")
    device = torch.device(device) if device is not None else pick_device()
    schedule = replace(config, num_epochs=rounds * local_epochs)
    sizes = [len(d) for d in client_datasets]
    history = History(device=str(device))
    elapsed = 0.0
    model.to(device)
    for r in tqdm(range(rounds), desc="FedAvg rounds", disable=not progress):
        states, losses, accuracies, lr = [], [], [], 0.0
        for c, data in enumerate(client_datasets):
            client = copy.deepcopy(model)
            h = train(client, data, config=schedule, seed=client_seeds[c], device=device,
                      start_epoch=r * local_epochs, stop_epoch=(r + 1) * local_epochs, progress=False)
            elapsed += h.train_seconds
            history.images_seen += h.images_seen
            history.precision = h.precision
            losses.append(h.train_loss[-1])
            accuracies.append(h.train_accuracy[-1])
            lr = h.lr[-1]
            states.append(client.state_dict())
        model.load_state_dict(average_state_dicts(states, weights=sizes))
        history.epoch.append(r + 1)
        history.seconds.append(elapsed)
        history.train_loss.append(sum(w * v for w, v in zip(sizes, losses)) / sum(sizes))
        history.train_accuracy.append(sum(w * v for w, v in zip(sizes, accuracies)) / sum(sizes))
        history.lr.append(lr)
        if test_data is not None:
            metrics = evaluate(model, test_data, device=device)
            history.test_accuracy.append(metrics["accuracy"])
            history.test_loss.append(metrics["loss"])
    return history


def client_split(data: TensorData, *, num_clients: int, alpha: float | None, seed: int = 0) -> list[TensorData]:
    """`num_clients` client datasets: IID (`alpha=None`) or Dirichlet label-skewed with `alpha`."""
    from helpers.data import dirichlet_split, iid_split

    if alpha is None:
        return iid_split(data, num_clients, seed=seed)
    return dirichlet_split(data, num_clients, alpha=alpha, seed=seed)


def get_fedavg(preset, data, *, num_clients: int, alpha: float | None, rounds: int, local_epochs: int,
               seed: int = 0, progress: bool = True):
    """FedAvg of the course CNN under `preset` (cached with `train_or_load`): returns (model, History).

    Clients: `client_split(data.train, ...)`; each client has at least one batch of data, or the
    split is refused. The model starts from the same initial weights for every setting (seed 30)."""
    from dataclasses import dataclass

    from helpers.checkpoints import train_or_load
    from helpers.pairs import RunConfig, build_model, data_tag

    clients = client_split(data.train, num_clients=num_clients, alpha=alpha, seed=seed)
    too_small = [len(c) for c in clients if len(c) < preset.train.batch_size]
    if too_small:
        raise ValueError(f"a client has {too_small[0]} images, fewer than one batch ({preset.train.batch_size}); "
                         "use fewer clients or a larger alpha")

    @dataclass(frozen=True)
    class FedRun:
        model: RunConfig
        num_clients: int
        alpha: float | None
        split_seed: int
        rounds: int
        local_epochs: int

    init = RunConfig(arch="course", width=preset.width, init_seed=30, data_seed=30, train=preset.train,
                     data=data_tag(preset, data))
    run = FedRun(init, num_clients, alpha, seed, rounds, local_epochs)
    split = "iid" if alpha is None else f"dir{alpha:g}"
    return train_or_load(
        f"{preset.name}-fedavg-{split}-c{num_clients}-r{rounds}-e{local_epochs}", run,
        lambda: build_model("course", preset.width, init.init_seed),
        lambda model: fedavg(model, clients, rounds=rounds, local_epochs=local_epochs, config=preset.train,
                             seed=init.data_seed, test_data=data.test, progress=progress),
    )
