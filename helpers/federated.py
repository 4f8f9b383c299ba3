"""Federated averaging (FedAvg, McMahan et al., 2017), introduced in notebook 07.

Every round, each client starts from the server's model, trains on its own data with the course's
training loop (`helpers.training.train_part`), and the server replaces its model by the average of
the clients' models, weighted by their number of training images (`average_state_dicts`).

BatchNorm: running statistics are averaged like the weights (plain FedAvg), so the server model can
be evaluated on its own; keeping them local instead (FedBN, Li et al., 2021) would need a client's
statistics at test time. Integer counters come from the client with the most data.

The learning rate follows one one-cycle schedule over all rounds: round r's local epochs use the
part of a `rounds * local_epochs`-epoch schedule they correspond to. Rounds can also be shorter than
an epoch (`averages_per_epoch=k`: each round is 1/k of a local epoch), which is how FedAvg gets close
to training on all the data at once. Client optimisers (momentum) start fresh every round, as in the
original FedAvg, unless `keep_client_momentum=True` (stateful clients, as in cross-silo FL), which
matters when rounds are short (notebook 07 measures it).

Each client keeps one model and one optimiser for the whole run: a round copies the server's
weights into it in place, so no model, optimiser or state is rebuilt per round. The course's cached
FedAvg runs are in `helpers.zoo` (`get_fedavg`).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from helpers.averaging import average_state_dicts
from helpers.data import DataLike, TensorData, as_data, as_tensor_data, dirichlet_split, iid_split, num_examples
from helpers.devices import grad_scaler, pick_device
from helpers.evaluation import evaluate
from helpers.training import History, StepStats, TrainConfig, make_optimizer, prepare, train_part


def fedavg(model: nn.Module, client_datasets: Sequence[DataLike], *, rounds: int, local_epochs: int = 1,
           averages_per_epoch: int = 1, keep_client_momentum: bool = False, config: TrainConfig, seed: int = 0,
           client_seeds: Sequence[int] | None = None, test_data: DataLike | None = None,
           device: torch.device | str | None = None, progress: bool = True) -> History:
    """Run FedAvg from `model` (updated in place to the final server model) and return a `History`.

    Each round, every client trains `local_epochs` epochs on its data (or, with
    `averages_per_epoch=k > 1`, the next 1/k of an epoch; then `local_epochs` must be 1) and the
    server averages. The schedule spans `rounds * local_epochs / averages_per_epoch` epochs
    (`config.num_epochs` is ignored; it must come out whole). History: one entry per local epoch
    completed (`epoch` counts epochs of client training; `seconds` is cumulative client training
    time, the clients running one after another here); the server is evaluated on `test_data` at
    those points only. Client c uses data seed `client_seeds[c]`, by default `seed * 1000 + c`.
    `keep_client_momentum=True` lets each client keep its optimiser's momentum from one round to the
    next; by default every round starts from an empty optimiser state, as in the original FedAvg."""
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
    k = averages_per_epoch
    schedule = replace(config, num_epochs=rounds * local_epochs // k)
    device = torch.device(device) if device is not None else pick_device()
    model.to(device)
    client_datasets = [as_data(d, name=f"client {c}'s data") for c, d in enumerate(client_datasets)]
    sizes = [num_examples(d) for d in client_datasets]
    unknown = next((c for c, n in enumerate(sizes) if not n), None)
    if unknown is not None:
        raise ValueError(f"client {unknown}'s data: its number of examples is unknown or zero (FedAvg weights "
                         "clients by it); pass a DataLoader over a sized dataset, or tensors")
    clients, optimizers, scalers, datasets = [], [], [], []
    for data in client_datasets:  # one model, optimiser, scaler and on-device dataset per client, for all rounds
        client = copy.deepcopy(model)
        device, precision, on_device = prepare(client, data, schedule, device)
        clients.append(client)
        optimizers.append(make_optimizer(client, schedule))
        scalers.append(grad_scaler(device, precision))
        datasets.append(on_device)
    history = History(device=str(device), precision=precision)
    elapsed = 0.0
    for r in tqdm(range(rounds), desc="FedAvg rounds", disable=not progress):
        server_state = model.state_dict()
        last: list[StepStats] = []  # each client's last local epoch (or slice) of this round
        for c, client in enumerate(clients):
            client.load_state_dict(server_state)  # in place: the client's tensors keep their memory format
            if not keep_client_momentum:
                optimizers[c].state.clear()
            start = r // k * local_epochs  # round r: slice r % k of these epochs (the whole of them when k = 1)
            for epoch in range(start, start + local_epochs):
                stats = train_part(client, datasets[c], config=schedule, seed=client_seeds[c], epoch=epoch,
                                   part=(r % k, k), optimizer=optimizers[c], device=device, scaler=scalers[c])
                elapsed += stats.seconds
                history.images_seen += stats.seen
            last.append(stats)
        model.load_state_dict(average_state_dicts([client.state_dict() for client in clients], weights=sizes))
        if (r + 1) % k:
            continue  # record once per epoch of client training
        history.epoch.append((r + 1) * local_epochs // k)
        history.seconds.append(elapsed)
        history.train_loss.append(sum(w * s.loss_sum / s.seen for w, s in zip(sizes, last)) / sum(sizes))
        history.train_accuracy.append(sum(w * s.correct / s.seen for w, s in zip(sizes, last)) / sum(sizes))
        history.lr.append(last[-1].lr)
        if test_data is not None:
            metrics = evaluate(model, test_data, device=device)
            history.test_accuracy.append(metrics["accuracy"])
            history.test_loss.append(metrics["loss"])
    return history


def client_split(data: DataLike, *, num_clients: int, dirichlet_alpha: float | None,
                 seed: int = 0) -> list[TensorData]:
    """`num_clients` client datasets: IID (`dirichlet_alpha=None`) or label-skewed by a Dirichlet split
    with that concentration (see `helpers.data.dirichlet_split`)."""
    data = as_tensor_data(data)
    if dirichlet_alpha is None:
        return iid_split(data, num_clients, seed=seed)
    return dirichlet_split(data, num_clients, dirichlet_alpha=dirichlet_alpha, seed=seed)
