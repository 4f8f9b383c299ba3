"""Reproducibility: seeds and what ran where (introduced in notebook 01).

Device choice lives in `helpers.devices`."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import torch

from helpers._paths import project_root
from helpers.devices import pick_device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) with `seed`; return a CPU generator seeded
    the same way, for code that wants its own stream.

    On the CPU the same seed gives bit-identical training runs (tested in `tests/test_training.py`).
    On a GPU some kernels stay non-deterministic; we do not force deterministic algorithms there
    because it costs speed and the course's claims are reported over several seeds anyway."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _cpuinfo(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo (Linux), stripped; None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_isa(flags: set[str] | None = None, cap: str | None = None) -> str:
    """The widest vector instructions oneDNN can use here, as a reader compares machines by them:
    'AMX', 'AVX-512 BF16', 'AVX-512', 'AVX2' or '' (unknown), plus ', oneDNN capped at X' where
    `$ONEDNN_MAX_CPU_ISA` limits it. The same model name (say 'AMD EPYC') covers hosts with and without
    bfloat16 units, and fp32 convolutions differ by up to 2x between them. `flags`/`cap`: for tests
    (default: /proc/cpuinfo and the environment)."""
    if flags is None:
        flags = set((_cpuinfo("flags") or "").split())
    isa = next((name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"),
                                        ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "") if cap is None else cap
    if cap and cap.upper() != "ALL":
        isa = f"{isa}, oneDNN capped at {cap.upper()}" if isa else f"oneDNN capped at {cap.upper()}"
    return isa


def device_name(device: torch.device | str) -> str:
    """A human name for `device`, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu (2 threads, Intel Xeon, AMX)'
    (the CPU's widest vector instructions from `cpu_isa`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        cpu = _cpuinfo("model name") or platform.processor() or platform.machine()
        isa = cpu_isa()
        return f"cpu ({torch.get_num_threads()} threads, {cpu}{', ' + isa if isa else ''})"
    return str(device)


def git_commit() -> str | None:
    """The project's current git commit, with '+dirty' if tracked files other than `results/` (what
    the notebooks themselves write) have uncommitted changes; None outside a git checkout."""
    root = project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(package: str) -> str | None:
    """An installed package's version, read from its metadata (importing torchvision takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(device: torch.device | str | None = None) -> dict:
    """Versions, device and commit as plain values (stored with every results file)."""
    device = torch.device(device) if device is not None else pick_device()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": np.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def print_environment(device: torch.device | str | None = None) -> None:
    """Print versions and device: the first output of every notebook."""
    env = environment(device)
    width = max(map(len, env))
    for key, value in env.items():
        print(f"{key:<{width}}  {value}")
