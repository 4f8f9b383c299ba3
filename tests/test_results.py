import json
import math

import matplotlib
import pytest
import torch

from helpers.results import load_results, results_dir, save_figure, save_results

matplotlib.use("Agg")


def test_results_carry_provenance(tmp_path):
    path = save_results("01_x", {"accuracy": 0.5, "curve": [1, 2.5]}, preset="smoke", data_source="synthetic")
    blob = json.loads(path.read_text())
    assert path.parent == results_dir("smoke")
    assert blob["results"] == {"accuracy": 0.5, "curve": [1, 2.5]}
    for key in ("preset", "data_source", "torch", "device", "git_commit", "date"):
        assert key in blob["provenance"]
    assert load_results("01_x", preset="smoke") == blob


@pytest.mark.parametrize("bad", [{"a": torch.tensor(1.0)}, {"a": math.nan}, {1: 2}])
def test_results_refuse_non_plain_values(bad):
    with pytest.raises((TypeError, ValueError)):
        save_results("x", bad, preset="smoke", data_source="synthetic")


def test_save_figure_writes_png():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = save_figure(fig, "fig", preset="smoke")
    assert path.read_bytes()[:4] == b"\x89PNG"
