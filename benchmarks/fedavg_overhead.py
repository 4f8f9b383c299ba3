"""What FedAvg costs on top of the training it does, in one run.

Three timings of the course CNN on the same images, in the same process, one after another:
1. joint: one model, `--epochs` epochs at the preset's batch size (`helpers.training.train`);
2. FedAvg: `--clients` IID clients with a batch of (preset batch / clients) and `--averages` rounds
   per epoch (`helpers.federated.fedavg`, stateful clients as in notebook 07): every client takes as
   many steps as the joint model, and together they see as many images;
3. clients alone: the same client trainings without any averaging (`train` per client), which
   separates the cost of smaller batches from the cost of the rounds themselves.

`fedavg_vs_joint` is the issue's measure (FedAvg time / joint time at equal steps);
`fedavg_vs_clients_alone` is the per-round overhead (copying weights in, averaging, bookkeeping).

Usage (from the project root):
    CIFAR10_DIR=../shared/data/cifar10-jpg .venv/bin/python benchmarks/fedavg_overhead.py [--images 11250]
Without CIFAR10_DIR, synthetic CIFAR-shaped images are used (time does not depend on the pixels).
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import torch

from helpers.data import iid_split, load_cifar10, synthetic_cifar
from helpers.devices import pick_device, resolve_precision
from helpers.federated import fedavg
from helpers.models import course_cnn
from helpers.presets import get_preset
from helpers.repro import device_name, seed_everything
from helpers.training import train


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="smoke | cpu | gpu (default: HELPERS_PRESET, else by device)")
    parser.add_argument("--images", type=int, default=0, help="training images to use (default: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--averages", type=int, default=16, help="FedAvg rounds per epoch")
    args = parser.parse_args()
    preset = get_preset(args.preset or os.environ.get("HELPERS_PRESET") or None)
    full = load_cifar10() if os.environ.get("CIFAR10_DIR") else synthetic_cifar(45_000, 16, seed=0)
    data = full.train if not args.images else iid_split(full.train, len(full.train) // args.images, seed=0)[0]
    device = pick_device()
    joint_config = replace(preset.train, num_epochs=args.epochs)
    client_config = replace(joint_config, batch_size=preset.train.batch_size // args.clients)
    clients = iid_split(data, args.clients, seed=0)

    def model():
        seed_everything(0)
        return course_cnn(preset.width)

    joint_s = timed(lambda: train(model(), data, config=joint_config, seed=0, device=device, progress=False))
    fed_s = timed(lambda: fedavg(model(), clients, rounds=args.epochs * args.averages, averages_per_epoch=args.averages,
                                 keep_client_momentum=True, config=client_config, seed=0, device=device,
                                 progress=False))
    alone_s = timed(lambda: [train(model(), c, config=client_config, seed=i, device=device, progress=False)
                             for i, c in enumerate(clients)])
    result = {
        "device": device_name(device), "torch": torch.__version__,
        "precision": resolve_precision(preset.train.precision, device), "preset": preset.name,
        "width": preset.width, "data_source": full.source, "images": len(data), "epochs": args.epochs,
        "clients": args.clients, "averages_per_epoch": args.averages, "rounds": args.epochs * args.averages,
        "joint_batch": joint_config.batch_size, "client_batch": client_config.batch_size,
        "joint_seconds": joint_s, "fedavg_seconds": fed_s, "clients_alone_seconds": alone_s,
        "fedavg_vs_joint": fed_s / joint_s, "fedavg_vs_clients_alone": fed_s / alone_s,
    }
    print(f"joint {joint_s:.1f} s, FedAvg {fed_s:.1f} s ({fed_s / joint_s:.2f}x), clients alone {alone_s:.1f} s "
          f"(FedAvg overhead {fed_s / alone_s:.2f}x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
