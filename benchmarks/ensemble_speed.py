"""Inference speed of same-architecture ensembles: torch.func vmap path vs a plain loop, one run.

For 2, 4 and 8 course models (the preset's width, random weights: speed does not depend on the
values), times `Ensemble(..., batched=True)` and `Ensemble(..., batched=False)` on the same batches
under the same precision as training (`helpers.devices.resolve_precision`), alternating the two
paths so machine noise hits both alike. Needs no dataset.

Usage: .venv/bin/python benchmarks/ensemble_speed.py [--preset cpu] [--batch-size 500] [--repeats 10]
The last line of output is one JSON object with images/s for each size and path.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from helpers.devices import autocast, pick_device, resolve_precision
from helpers.ensembling import Ensemble
from helpers.models import course_cnn
from helpers.presets import get_preset
from helpers.repro import device_name, seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sizes", default="2,4,8")
    args = parser.parse_args()

    preset = get_preset(args.preset)
    device = pick_device()
    precision = resolve_precision(preset.train.precision, device)
    seed_everything(0)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    result = {"preset": preset.name, "width": preset.width, "device": device_name(device), "torch": torch.__version__,
              "precision": precision, "batch_size": args.batch_size, "repeats": args.repeats, "sizes": {}}
    for m in (int(s) for s in args.sizes.split(",")):
        members = [course_cnn(preset.width).to(device, memory_format=torch.channels_last).eval() for _ in range(m)]
        paths = {"vmap": Ensemble(members, batched=True), "loop": Ensemble(members, batched=False)}
        seconds = {name: 0.0 for name in paths}
        with torch.inference_mode(), autocast(device, precision):
            for ens in paths.values():
                ens(x)  # warm-up (allocations, oneDNN primitive creation)
            for _ in range(args.repeats):
                for name, ens in paths.items():  # alternate, so noise hits both paths alike
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    ens(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds[name] += time.perf_counter() - start
        ips = {name: args.batch_size * args.repeats / s for name, s in seconds.items()}
        result["sizes"][str(m)] = {"vmap_images_per_second": ips["vmap"], "loop_images_per_second": ips["loop"],
                                   "vmap_speedup": ips["vmap"] / ips["loop"]}
        print(f"{m} members: vmap {ips['vmap']:,.0f} images/s, loop {ips['loop']:,.0f} images/s "
              f"(vmap {ips['vmap'] / ips['loop']:.2f}x)", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
