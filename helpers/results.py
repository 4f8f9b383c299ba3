"""Results files: numbers + provenance, and figures (every notebook ends by writing one).

`save_results("02_train_paired_models", {...}, preset=preset, data_source=...)` writes
`results/<preset>/02_train_paired_models.json` atomically with the preset, data source, torch
version, device, git commit and date beside the numbers. Values must be plain Python numbers,
strings, lists and dicts (tensors are refused, so nothing un-reviewable ends up in a file).

Notebook 10's trade-off table is built here from the other notebooks' files (`load_all_results`,
`tradeoff_rows`, `tradeoff_markdown`) and written with `save_text`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from helpers._paths import atomic_write, project_root, resolve_user_path
from helpers.repro import environment
from helpers.stats import mean_std


def results_dir(preset_name: str) -> Path:
    """`$HELPERS_RESULTS_DIR/<preset>`, else `<project>/results/<preset>`."""
    base = os.environ.get("HELPERS_RESULTS_DIR") or project_root() / "results"
    return resolve_user_path(base) / preset_name


def _check_plain(value: Any, where: str = "results") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}; results must be finite numbers")
    elif not (value is None or isinstance(value, (str, int, bool))):
        raise TypeError(f"{where} is a {type(value).__name__}; convert it to a plain number first (e.g. float(x))")


def save_results(notebook: str, results: dict, *, preset: str, data_source: str, device: Any = None) -> Path:
    """Write `results/<preset>/<notebook>.json` = {"provenance": {...}, "results": results}."""
    _check_plain(results)
    provenance = {"notebook": notebook, "preset": preset, "data_source": data_source, **environment(device)}
    path = results_dir(preset) / f"{notebook}.json"
    text = json.dumps({"provenance": provenance, "results": results}, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def load_results(notebook: str, *, preset: str) -> dict:
    """The dict written by `save_results` (provenance + results)."""
    return json.loads((results_dir(preset) / f"{notebook}.json").read_text())


def save_figure(fig, name: str, *, preset: str, dpi: int = 120) -> Path:
    """Save a matplotlib figure as `results/<preset>/<name>.png` (atomically)."""
    path = results_dir(preset) / f"{name}.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    return path


def save_text(name: str, text: str, *, preset: str) -> Path:
    """Write `text` to `results/<preset>/<name>` atomically (e.g. the summary of notebook 10)."""
    path = results_dir(preset) / name
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


# ----------------------------------------------------------------------------------------------
# The trade-off table (notebook 10): one row per method, read from the other notebooks' results

TRADEOFF_SOURCES = ("02_train_paired_models", "03_weight_averaging", "04_permutation_alignment",
                    "05_prediction_ensembling", "06_knowledge_distillation", "07_federated_averaging",
                    "08_soups_and_merging", "09_model_fusion")


def load_all_results(preset: str, notebooks: Sequence[str] = TRADEOFF_SOURCES) -> dict[str, dict]:
    """`{notebook: load_results(notebook)}` for each of `notebooks`; a `FileNotFoundError` lists every
    missing one and says how to produce them."""
    missing = [name for name in notebooks if not (results_dir(preset) / f"{name}.json").exists()]
    if missing:
        raise FileNotFoundError(f"results for preset {preset!r} are missing: {', '.join(missing)}. "
                                f"Run those notebooks first (e.g. HELPERS_PRESET={preset} make run).")
    return {name: load_results(name, preset=preset) for name in notebooks}


def tradeoff_rows(results: Mapping[str, dict]) -> list[dict]:
    """The rows of the trade-off table from the notebooks' results (`load_all_results(...)`, each
    file's `results` part). Two reference points per row: the better member of the independent pair
    (`delta`, the same for every row), and the row's **own** reference (`reference`, `delta_own`):
    what the method must beat to be worth it — its own members, its own run's endpoint, joint
    retraining. Costs are multiples of one course model: inference FLOPs, and training seconds on top
    of the members'.

    Each row: method, accuracy (the mean where there are several runs), accuracy_std, n_runs, runs_of
    ("runs", or "pairs" for the rows averaged over the pairs of independent models), delta,
    reference, delta_own, nll, ece (None where not measured), inference_x, ms_per_batch,
    extra_training_x, needs."""
    R = {name: r["results"] for name, r in results.items()}
    ens = R["05_prediction_ensembling"]
    ind = ens["pairs"]["independent"]
    better = ind["better_member_accuracy"]
    member_seconds = R["02_train_paired_models"]["pairs"]["independent"]["train_seconds_a"]
    kd = R["06_knowledge_distillation"]
    fed = R["07_federated_averaging"]
    avg = R["03_weight_averaging"]["pairs"]
    align = R["04_permutation_alignment"]["pairs"]["independent"]
    joint = R["02_train_paired_models"]["joint"]
    disjoint = R["02_train_paired_models"]["pairs"]["disjoint"]
    soups, swa, tasks = (R["08_soups_and_merging"][k] for k in ("soups", "swa", "task_arithmetic"))
    fusion = R["09_model_fusion"]

    def row(method, accuracy, *, std=0.0, n=1, reference="better member (independent)", own=None, nll=None,
            ece=None, inference=1.0, ms=None, extra_training=0.0, needs="", mean=None, runs_of="runs",
            one_run=None):
        accuracy = accuracy if mean is None else mean   # the mean over pairs replaces the one pair's number
        own = better if own is None else own
        if n == 1 and not one_run:
            raise ValueError(f"trade-off row {method!r} has one run and no reason why")
        return {"method": method, "accuracy": accuracy, "accuracy_std": std, "n_runs": n, "runs_of": runs_of,
                "why_one_run": one_run if n == 1 else None,
                "delta": accuracy - better,
                "reference": reference, "delta_own": accuracy - own, "nll": nll, "ece": ece, "inference_x": inference,
                "ms_per_batch": ms, "extra_training_x": extra_training, "needs": needs}

    def metrics(m):
        return {"nll": m["nll"], "ece": m["ece"]}

    def over_runs(accuracies):
        """Mean ± std over a row's runs (07's FedAvg IID seeds, the joint recipe's runs), where measured;
        results from before the replicates keep their single run."""
        if not accuracies or len(accuracies) < 2:
            return {}
        m, sd = mean_std(accuracies)
        return {"mean": m, "std": sd, "n": len(accuracies)}

    def soup_rows(method):
        """08's soups over its leave-one-out pools of children (mean ± std, against the pools' best child by
        validation accuracy), where measured; else the soup of all children against the best child."""
        if "mean_std" not in soups or method not in soups["mean_std"]:
            return {"reference": "best child (by val)", "own": soups["full"]["best_child"],
                    "one_run": "results from before notebook 08 stored its leave-one-out pools"}
        m, sd = soups["mean_std"][method]
        return {"mean": m, "std": sd, "n": len(soups["pools"][method]), "runs_of": "leave-one-out pools",
                "reference": "best child (by val), same pools", "own": soups["mean_std"]["best child (by val)"][0]}

    joint_runs = fed.get("joint_recipe_runs") or [joint["test_accuracy"]]   # the joint model + same-recipe runs
    many = ens.get("independent_pairs")   # every pair of N independent models (notebook 05), where measured

    def pair_stats(block, method, better_key, reference):
        """A row as mean ± std over pairs (`block`: a notebook's `runs` / `mean_std` over its pairs),
        against each pair's better member (`better_key`)."""
        (m, sd), (better_mean, _) = block["mean_std"][method], block["mean_std"][better_key]
        return {"mean": m, "std": sd, "n": len(block["runs"][better_key]), "runs_of": "pairs",
                "reference": reference, "own": better_mean}

    def over_pairs(method, one_pair_metrics=None, metrics_of=None):
        """The row as mean ± std over the pairs of independent models, against each pair's better member;
        NLL and ECE (of `metrics_of`, default `method`) averaged over the same pairs where notebook 05
        measured them, else left out (never one pair's NLL beside the pairs' mean accuracy). Without the
        pairs: the one pair's numbers."""
        if not many:
            return {**(metrics(one_pair_metrics) if one_pair_metrics else {}),
                    "one_run": "results from before notebook 05 measured every pair of independent models"}
        pair_metrics = many.get("metrics_mean", {}).get(metrics_of or method, {})
        return {**pair_stats(many, method, "better member", "each pair's better member"),
                "nll": pair_metrics.get("nll"), "ece": pair_metrics.get("ece")}

    def spawned_pairs():
        """The spawned row as mean ± std over every pair of notebook 03's spawned children, against each
        pair's better child (where measured; else the one spawned pair)."""
        sp = R["03_weight_averaging"].get("spawned_pairs")
        if not sp:
            return {"reference": "better spawned child", "own": spawned_better,
                    "one_run": "results from before notebook 03 measured every pair of spawned children"}
        return pair_stats(sp, "midpoint + BN reset", "better child", "each pair's better child")

    ts_ens = ens["temperature_scaling"]["ensemble of 2"]   # one temperature fitted on data.val (notebook 05)
    better_metrics = ind["member_a"] if ind["member_a"]["accuracy"] == better else ind["member_b"]
    ensemble_ms = min(ens["cost"]["loop_ms_per_batch"], ens["cost"]["vmap_ms_per_batch"])  # the faster path
    student = kd["students"][kd["chosen"]]                 # the temperature notebook 06 chose on data.val
    spawned_better = max(avg["spawned"]["accuracy_a"], avg["spawned"]["accuracy_b"])
    disjoint_better = max(disjoint["accuracy_a"], disjoint["accuracy_b"])
    swa_mean, swa_std = swa["mean_std"]["swa"]
    options = fusion["options"]
    joint_union = options["joint retraining (union, from scratch)"]["accuracy"]
    half = options["fine-tune 0.5 ep from aligned + REPAIR average"]
    distilled = options["ensemble distilled on the union"]
    fusion_seconds = fusion["joint_seconds"] / member_seconds     # joint retraining in member-training units
    ta_name = next(n for n in tasks["test"] if n.startswith("task arithmetic"))
    return [
        row("single model (better member)", better, **metrics(better_metrics), ms=ens["cost"]["single_ms_per_batch"],
            needs="—", one_run="the reference of the Δ column: the independent pair's better member "
                                "(the pair rows compare with each pair's own better member)"),
        row("weight average, naive (independent pair)", avg["independent"]["midpoint_naive"],
            needs="same architecture", **over_pairs("weight average, naive")),
        row("weight average + BN reset (spawned pair)", avg["spawned"]["midpoint_recalibrated"],
            needs="same architecture, shared parent, training images for BN", **spawned_pairs()),
        row("weight average, aligned + REPAIR (independent)", align["aligned + REPAIR"]["midpoint_accuracy"],
            extra_training=align["weight_matching_seconds"] / member_seconds,
            needs="same architecture, training images for BN", **over_pairs("weight average, aligned + REPAIR")),
        row("ensemble, mean of probabilities (independent)", ind["mean_probs"]["accuracy"],
            inference=2.0, ms=ensemble_ms, needs="nothing (any architectures)",
            **over_pairs("ensemble, mean of probabilities", ind["mean_probs"])),
        row("ensemble + temperature scaling (independent)", ts_ens["after"]["accuracy"], inference=2.0, ms=ensemble_ms,
            needs="validation images", **over_pairs("ensemble, mean of probabilities", ts_ens["after"],
                                                     metrics_of="ensemble + temperature scaling")),
        row("ensemble, validation-weighted (disjoint pair)", ens["weighted"]["disjoint"]["accuracy"],
            **metrics(ens["weighted"]["disjoint"]), reference="better disjoint member", own=disjoint_better,
            inference=2.0, ms=ensemble_ms, needs="validation images",
            one_run="one disjoint pair: another costs two more members trained on another split"),
        row(f"student distilled from the ensemble (T={kd['temperature']:g})", student["mean"], std=student["std"],
            n=len(student["accuracy"]), one_run="one student seed in this preset",
            inference=kd["cost"]["student"]["flops"] / ens["cost"]["flops_single"],
            extra_training=student["train_seconds_mean"] / member_seconds, needs="training images"),
        row("joint model, retrained on all data", joint["test_accuracy"],
            extra_training=joint["train_seconds"] / member_seconds, needs="all training data in one place",
            one_run="results from before notebook 07 measured the joint recipe's runs",
            **over_runs(joint_runs)),
        row("FedAvg, IID clients", fed["fedavg_final_accuracy"]["IID"],
            reference=f"joint recipe ({len(joint_runs)} runs)" if len(joint_runs) > 1 else "joint model",
            own=mean_std(joint_runs)[0],
            extra_training=fed["fedavg_curves"]["IID"]["seconds"][-1] / member_seconds,
            needs="clients that train together from the start", **over_runs(fed.get("fedavg_iid_runs")),
            one_run="results from before notebook 07 ran FedAvg IID over seeds"),
        row("SWA average of one run", swa_mean, std=swa_std, n=len(swa["accuracy"]["swa"]),
            one_run="one SWA run in this preset", reference="its own runs' endpoints", own=swa["mean_std"]["endpoint"][0],
            needs="a say in the training schedule; training images for BN"),
        row("greedy soup (spawned children)", soups["full"]["greedy"], needs="children of one parent, validation images",
            **soup_rows("greedy soup")),
        row("uniform soup (spawned children)", soups["full"]["uniform"],
            needs="children of one parent, training images for BN", **soup_rows("uniform soup")),
        row("task arithmetic (two fine-tunes of one base)", tasks["test"][ta_name]["all classes"],
            reference="ensemble of the fine-tunes", own=tasks["test"]["ensemble of the fine-tunes"]["all classes"],
            needs="fine-tunes of one base, validation images",
            one_run="one base and two fine-tunes: a replicate costs a new base and two new fine-tunes"),
        row("merge (aligned + REPAIR) then fine-tune ½ epoch (disjoint owners)", half["accuracy"],
            reference="joint retraining", own=joint_union, extra_training=half["cost"] * fusion_seconds,
            needs="the union of the data for a short fine-tune",
            one_run="one pair of owners (notebook 09's four owners are another setting, not a replicate)"),
        row("owners' ensemble distilled on the union (disjoint owners)", distilled["accuracy"],
            reference="joint retraining", own=joint_union, extra_training=distilled["cost"] * fusion_seconds,
            needs="the union of the data (labels not needed)",
            one_run="one distillation on one pair of owners, at the cost of a full training run"),
    ]


def tradeoff_markdown(rows: Sequence[Mapping]) -> str:
    """The trade-off rows as a Markdown table (what the README and `summary.md` show)."""
    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    def spread(r):
        n = r.get("n_runs", 1)
        return "1 run" if n == 1 else f"± {100 * r['accuracy_std']:.2f} ({n} {r.get('runs_of', 'runs')})"

    def own(r):
        return "—" if "reference" not in r else f"{100 * r['delta_own']:+.2f} ({r['reference']})"

    header = ("| method | test accuracy | Δ vs better member | spread | Δ vs its own reference | NLL | ECE | "
              "inference (× one model) | ms / batch | extra training (× one model) | needs |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|\n")
    return header + "".join(
        f"| {r['method']} | {r['accuracy']:.2%} | {100 * r['delta']:+.2f} | {spread(r)} | {own(r)} "
        f"| {fmt(r['nll'], '.3f')} "
        f"| {fmt(r['ece'], '.3f')} | {r['inference_x']:.2f} | {fmt(r['ms_per_batch'], '.1f')} "
        f"| {r['extra_training_x']:.2f} | {r['needs']} |\n" for r in rows) + one_run_notes(rows)


def one_run_notes(rows: Sequence[Mapping]) -> str:
    """Below the table: each row that has one run, and why (empty when every row has several)."""
    single = [r for r in rows if r.get("n_runs", 1) == 1]
    if not single:
        return ""
    return "\nRows with one run (no error bar), and why:\n" + "".join(
        f"- {r['method']}: {r.get('why_one_run') or 'no reason recorded'}\n" for r in single)
