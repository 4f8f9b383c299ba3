"""Shared fixtures. Unit tests are hermetic: checkpoints, results and caches go to temp folders."""

from __future__ import annotations

import os

import pytest

from helpers.data import synthetic_cifar


@pytest.fixture(autouse=True)
def _hermetic_dirs(tmp_path, monkeypatch):
    """Keep every file a test writes inside its own temp folder."""
    monkeypatch.setenv("HELPERS_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("HELPERS_RESULTS_DIR", str(tmp_path / "results"))
    if not os.environ.get("CIFAR10_DIR"):
        monkeypatch.setenv("HELPERS_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(scope="session")
def tiny_data():
    """512 train / 256 test synthetic images."""
    return synthetic_cifar(512, 256, seed=0)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CIFAR10_DIR"):
        return
    skip = pytest.mark.skip(reason="needs real CIFAR-10: set CIFAR10_DIR to an ImageFolder copy")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)
