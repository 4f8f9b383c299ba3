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


def test_make_run_timings_are_written_with_what_they_ran_on(tmp_path):
    from helpers.results import main
    log = tmp_path / "timings.log"
    log.write_text("01_data_and_models 45\n02_train_paired_models 141\n")
    main(["timings", "smoke", str(log)])
    blob = json.loads((results_dir("smoke") / "timings.json").read_text())
    assert blob["seconds"] == {"01_data_and_models": 45.0, "02_train_paired_models": 141.0}
    assert blob["total_seconds"] == 186.0 and blob["preset"] == "smoke"
    for key in ("precision", "device", "device_name", "torch", "git_commit", "date"):
        assert key in blob
