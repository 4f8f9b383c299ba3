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


def _workshop_results():
    import json
    from helpers._paths import project_root
    folder = project_root() / "results" / "workshop"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("[0-9][0-9]_*.json"))}


def test_rows_over_pairs_never_mix_one_pairs_nll_with_the_pairs_mean_accuracy():
    """The ensemble row is a mean over the pairs of independent models: its NLL/ECE are the pairs' mean
    where notebook 05 measured them, absent otherwise, and the spread says "pairs"."""
    import copy
    from helpers.results import tradeoff_markdown, tradeoff_rows
    results = _workshop_results()
    pairs = results["05_prediction_ensembling"]["results"]["independent_pairs"]
    pairs["metrics_mean"] = {"ensemble, mean of probabilities": {"nll": 1.2345, "ece": 0.0678}}
    row = next(r for r in tradeoff_rows(results) if r["method"].startswith("ensemble, mean of probabilities"))
    assert (row["nll"], row["ece"], row["runs_of"], row["n_runs"]) == (1.2345, 0.0678, "pairs", len(pairs["runs"]["better member"]))
    assert f"({row['n_runs']} pairs)" in tradeoff_markdown([row])

    no_metrics = copy.deepcopy(results)
    del no_metrics["05_prediction_ensembling"]["results"]["independent_pairs"]["metrics_mean"]
    row = next(r for r in tradeoff_rows(no_metrics) if r["method"].startswith("ensemble, mean of probabilities"))
    assert row["nll"] is None and row["ece"] is None

    one_pair = copy.deepcopy(results)
    del one_pair["05_prediction_ensembling"]["results"]["independent_pairs"]
    ind = one_pair["05_prediction_ensembling"]["results"]["pairs"]["independent"]
    row = next(r for r in tradeoff_rows(one_pair) if r["method"].startswith("ensemble, mean of probabilities"))
    assert (row["nll"], row["runs_of"], row["accuracy"]) == (ind["mean_probs"]["nll"], "runs", ind["mean_probs"]["accuracy"])


def test_spawned_and_temperature_rows_go_over_pairs_where_measured():
    from helpers.results import tradeoff_rows
    results = _workshop_results()
    results["03_weight_averaging"]["results"]["spawned_pairs"] = {
        "runs": {"better child": [0.5, 0.6, 0.7], "midpoint + BN reset": [0.52, 0.58, 0.69]},
        "mean_std": {"better child": [0.6, 0.1], "midpoint + BN reset": [0.5967, 0.085]}}
    pairs = results["05_prediction_ensembling"]["results"]["independent_pairs"]
    pairs["metrics_mean"] = {"ensemble, mean of probabilities": {"nll": 1.5, "ece": 0.15},
                             "ensemble + temperature scaling": {"nll": 1.25, "ece": 0.03}}
    rows = {r["method"]: r for r in tradeoff_rows(results)}
    spawned = rows["weight average + BN reset (spawned pair)"]
    assert (spawned["accuracy"], spawned["n_runs"], spawned["runs_of"]) == (0.5967, 3, "pairs")
    assert abs(spawned["delta_own"] - (0.5967 - 0.6)) < 1e-12
    scaled = rows["ensemble + temperature scaling (independent)"]
    assert (scaled["nll"], scaled["ece"], scaled["runs_of"]) == (1.25, 0.03, "pairs")
    assert scaled["accuracy"] == rows["ensemble, mean of probabilities (independent)"]["accuracy"]


def test_fedavg_and_joint_rows_are_over_their_runs_where_measured():
    """07 stores FedAvg IID's runs over seeds and the joint recipe's runs: the two rows become mean ± std
    over them, and FedAvg's own reference is the joint recipe's mean; older results keep one run."""
    import copy
    from helpers.results import tradeoff_markdown, tradeoff_rows
    results = _workshop_results()
    fed = results["07_federated_averaging"]["results"]
    fed.pop("fedavg_iid_runs", None), fed.pop("joint_recipe_runs", None)
    single = {r["method"]: r for r in tradeoff_rows(copy.deepcopy(results))}
    assert single["FedAvg, IID clients"]["n_runs"] == 1 and single["joint model, retrained on all data"]["n_runs"] == 1
    assert single["FedAvg, IID clients"]["accuracy"] == fed["fedavg_final_accuracy"]["IID"]

    fed["fedavg_iid_runs"] = [0.40, 0.44, 0.42]
    fed["joint_recipe_runs"] = [0.45, 0.47]
    rows = {r["method"]: r for r in tradeoff_rows(results)}
    f, j = rows["FedAvg, IID clients"], rows["joint model, retrained on all data"]
    assert (round(f["accuracy"], 10), f["n_runs"], round(f["accuracy_std"], 10)) == (0.42, 3, 0.02)
    assert (round(j["accuracy"], 10), j["n_runs"]) == (0.46, 2)
    assert f["reference"] == "joint recipe (2 runs)" and abs(f["delta_own"] - (0.42 - 0.46)) < 1e-12
    assert "± 2.00 (3 runs)" in tradeoff_markdown([f])


def test_soup_rows_are_over_the_leave_one_out_pools_where_measured():
    import copy
    from helpers.results import tradeoff_markdown, tradeoff_rows
    results = _workshop_results()
    soups = results["08_soups_and_merging"]["results"]["soups"]
    soups["pools"] = {"best child (by val)": [0.40, 0.42], "uniform soup": [0.41, 0.43], "greedy soup": [0.40, 0.44]}
    soups["mean_std"] = {"best child (by val)": [0.41, 0.0141], "uniform soup": [0.42, 0.0141],
                         "greedy soup": [0.42, 0.0283]}
    rows = {r["method"]: r for r in tradeoff_rows(results)}
    g = rows["greedy soup (spawned children)"]
    assert (g["accuracy"], g["n_runs"], g["runs_of"]) == (0.42, 2, "leave-one-out pools")
    assert abs(g["delta_own"] - 0.01) < 1e-12 and "(2 leave-one-out pools)" in tradeoff_markdown([g])
    old = copy.deepcopy(results)
    del old["08_soups_and_merging"]["results"]["soups"]["mean_std"]
    g = {r["method"]: r for r in tradeoff_rows(old)}["greedy soup (spawned children)"]
    assert (g["accuracy"], g["n_runs"]) == (soups["full"]["greedy"], 1)


def test_every_single_run_row_says_why_below_the_table():
    from helpers.results import tradeoff_markdown, tradeoff_rows
    rows = tradeoff_rows(_workshop_results())
    single = [r for r in rows if r["n_runs"] == 1]
    assert single and all(r["why_one_run"] for r in single)
    assert all(r["why_one_run"] is None for r in rows if r["n_runs"] > 1)
    table = tradeoff_markdown(rows)
    notes = table.split("Rows with one run (no error bar), and why:\n")[1]
    assert [line.split(": ")[0] for line in notes.strip().splitlines()] == [f"- {r['method']}" for r in single]
    assert "Rows with one run" not in tradeoff_markdown([r for r in rows if r["n_runs"] > 1])
