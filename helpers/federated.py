"""Federated averaging (FedAvg, McMahan et al., 2017), introduced in notebook 07.

Every round, each client starts from the server's model, trains on its own data for
`local_epochs` with the course's `train` loop, and the server replaces its model by the average of
the clients' models, weighted by their number of training images (`average_state_dicts`).

BatchNorm: running statistics are averaged like the weights (plain FedAvg), so the server model can
be evaluated on its own; keeping them local instead (FedBN, Li et al., 2021) would need a client's
statistics at test time. Integer counters come from the client with the most data.

The learning rate follows one one-cycle schedule over all rounds: round r's local epochs use the
part of a `rounds * local_epochs`-epoch schedule they correspond to. Rounds can also be shorter than
an epoch (`averages_per_epoch=k`: each round is 1/k of a local epoch), which is how FedAvg gets close
to training on all the data at once. Client optimisers (momentum) start fresh every round, as in the
original FedAvg, unless `keep_client_momentum=True` (stateful clients; `get_fedavg`'s default, which
matters when rounds are short: at 16 rounds per epoch it was worth 1.6 points in one 8-epoch IID
run on CIFAR-10, 80.8% -> 82.4%).
BatchNorm recalibration of the server model after averaging was tried and changed nothing with IID
clients (75.43% -> 75.45%), so it is not done.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from helpers.averaging import average_state_dicts
from helpers.data import TensorData
from helpers.pairs import RunConfig
from helpers.repro import pick_device
from helpers.training import History, TrainConfig, evaluate, train


def fedavg(model: nn.Module, client_datasets: Sequence[TensorData], *, rounds: int, local_epochs: int = 1,
           averages_per_epoch: int = 1, keep_client_momentum: bool = False, config: TrainConfig, seed: int = 0,
           client_seeds: Sequence[int] | None = None, test_data: TensorData | None = None,
           device: torch.device | str | None = None, progress: bool = True) -> History:
    """Run FedAvg from `model` (updated in place to the final server model) and return a `History`.

    Each round, every client trains `local_epochs` epochs on its data (or, with
    `averages_per_epoch=k > 1`, the next 1/k of an epoch; then `local_epochs` must be 1) and the
    server averages. The schedule spans `rounds * local_epochs / averages_per_epoch` epochs
    (`config.num_epochs` is ignored; it must come out whole). History: one entry per local epoch
    completed (`epoch` counts epochs of client training; `seconds` is cumulative client training
    time, the clients running one after another here). Client c uses data seed `client_seeds[c]`,
    by default `seed * 1000 + c`. `keep_client_momentum=True` lets each client keep its optimiser's
    momentum from one round to the next (stateful clients, as in cross-silo FL); by default every
    round starts a fresh optimiser, as in the original FedAvg."""
    if rounds < 1 or local_epochs < 1 or averages_per_epoch < 1:
        raise ValueError(f"rounds, local_epochs and averages_per_epoch must be >= 1, "
                         f"got {rounds}, {local_epochs} and {averages_per_epoch}")
    if averages_per_epoch > 1 and (local_epochs != 1 or rounds % averages_per_epoch):
        raise ValueError(f"with averages_per_epoch={averages_per_epoch}, local_epochs must be 1 and rounds a "
                         f"multiple of {averages_per_epoch}; got local_epochs={local_epochs}, rounds={rounds}")
    if not client_datasets:
        raise ValueError("need at least one client dataset")
    if client_seeds is None:
        client_seeds = [seed * 1000 + c for c in range(len(client_datasets))]
    if len(client_seeds) != len(client_datasets):
        raise ValueError(f"got {len(client_seeds)} client seeds for {len(client_datasets)} clients")
    device = torch.device(device) if device is not None else pick_device()
    k = averages_per_epoch
    schedule = replace(config, num_epochs=rounds * local_epochs // k)
    sizes = [len(d) for d in client_datasets]
    history = History(device=str(device))
    momentum: list[dict | None] = [{} if keep_client_momentum else None for _ in client_datasets]
    elapsed = 0.0
    model.to(device)
    for r in tqdm(range(rounds), desc="FedAvg rounds", disable=not progress):
        states, losses, accuracies, lr = [], [], [], 0.0
        for c, data in enumerate(client_datasets):
            client = copy.deepcopy(model)
            start = r // k * local_epochs  # round r: slice r % k of these epochs (the whole of them when k = 1)
            h = train(client, data, config=schedule, seed=client_seeds[c], device=device, start_epoch=start,
                      stop_epoch=start + local_epochs, part=(r % k, k), optimizer_state=momentum[c], progress=False)
            elapsed += h.train_seconds
            history.images_seen += h.images_seen
            history.precision = h.precision
            losses.append(h.train_loss[-1])
            accuracies.append(h.train_accuracy[-1])
            lr = h.lr[-1]
            states.append(client.state_dict())
        model.load_state_dict(average_state_dicts(states, weights=sizes))
        if (r + 1) % k:
            continue  # record once per epoch of client training
        history.epoch.append((r + 1) * local_epochs // k)
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


@dataclass(frozen=True)
class FedRun:
    """Everything that determines a FedAvg run of the course (the checkpoint key)."""

    model: RunConfig                   # architecture, initial weights (init seed), data tag
    client_train: TrainConfig          # the clients' schedule (batch size per client, peak lr, ...)
    num_clients: int
    alpha: float | None                # None = IID split
    split_seed: int
    rounds: int
    local_epochs: int
    averages_per_epoch: int
    keep_client_momentum: bool


def get_fedavg(preset, data, *, num_clients: int, alpha: float | None, rounds: int, local_epochs: int = 1,
               averages_per_epoch: int = 1, client_batch_size: int | None = None,
               keep_client_momentum: bool = True, seed: int = 0, progress: bool = True):
    """FedAvg of the course CNN under `preset` (cached with `train_or_load`): returns (model, History).

    Clients: `client_split(data.train, ...)`. Each client's batch is `client_batch_size`, by default
    the preset's batch size divided by `num_clients`: one step of every client then processes as many
    images as one step of the joint model, so at equal epochs both take the same number of steps.
    The model starts from the same initial weights for every setting (seed 30)."""
    from helpers.checkpoints import train_or_load
    from helpers.pairs import build_model, data_tag

    batch = client_batch_size or max(1, preset.train.batch_size // num_clients)
    clients = client_split(data.train, num_clients=num_clients, alpha=alpha, seed=seed)
    too_small = [len(c) for c in clients if len(c) < batch * averages_per_epoch]
    if too_small:
        raise ValueError(f"a client has {too_small[0]} images, fewer than {averages_per_epoch} batch(es) of {batch}; "
                         "use fewer clients, a larger alpha or fewer averages per epoch")
    init = RunConfig(arch="course", width=preset.width, init_seed=30, data_seed=30, train=preset.train,
                     data=data_tag(preset, data))
    client_train = replace(preset.train, batch_size=batch)
    run = FedRun(init, client_train, num_clients, alpha, seed, rounds, local_epochs, averages_per_epoch,
                 keep_client_momentum)
    split = "iid" if alpha is None else f"dir{alpha:g}"
    return train_or_load(
        f"{preset.name}-fedavg-{split}-c{num_clients}-r{rounds}-e{local_epochs}"
        + (f"-a{averages_per_epoch}" if averages_per_epoch > 1 else ""), run,
        lambda: build_model("course", preset.width, init.init_seed),
        lambda model: fedavg(model, clients, rounds=rounds, local_epochs=local_epochs,
                             averages_per_epoch=averages_per_epoch, keep_client_momentum=keep_client_momentum,
                             config=client_train, seed=init.data_seed, test_data=data.test, progress=progress),
    )
