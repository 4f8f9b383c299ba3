"""Publishing the executed course: readable notebooks with outputs, and the static site's sources.

`make run` executes every notebook into `build/<preset>/`. Two steps turn that into something a
reader can open without running anything:

- `python -m coursetools.publish executed PRESET`: copy the executed notebooks to `docs/executed/<preset>/`
  with progress-bar noise reduced to each bar's final line (Jupyter progress widgets become that line
  as plain text, so GitHub and static HTML show it), after checking that every code cell has run,
  none raised, every file is under 2 MB, and all of them print one clean provenance commit.
- `python -m coursetools.publish guide`: rewrite the instructor's guide's generated blocks (what the
  committed workshop run shows, its timing table) and the README's workshop row from
  `results/workshop/`, so no number there is typed by hand.
- `python -m coursetools.publish readme`: rewrite the README's cpu results section (the trade-off table,
  the calibration sentence, the chart and "How long it takes") from `results/cpu/`, refusing results
  that do not all come from the run its `timings.json` describes.
- `python -m coursetools.publish site-src [--preset P]`: write `build/site-src/` for MkDocs (`make site`):
  a front page (what the course teaches, the trade-off chart, the notebooks with one line each, the
  two commands), the executed notebooks and the instructor's guide.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from coursetools.colab import repository_url
from coursetools.speed import run_speed
from helpers._paths import atomic_write, project_root
from helpers.presets import get_preset
from helpers.results import tradeoff_markdown
from helpers.stats import mean_std

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MAX_BYTES = 2 * 1024 * 1024
_COMMIT = re.compile(r"^git_commit\s+(\S+)", re.M)
_TAGS = re.compile(r"<[^>]+>")


class PublishError(ValueError):
    """An executed notebook that must not be published; the message names the notebook and cell."""


def _final_line(text: str) -> str:
    """A stream's text with carriage-return redraws collapsed: each line keeps what was drawn last."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(line for i, line in enumerate(lines) if line.strip() or i == len(lines) - 1)


def _widget_text(model_id: str, state: dict[str, Any]) -> str | None:
    """The last text a tqdm progress widget (an HBox of label, bar, label) showed, or None."""
    box = state.get(model_id, {}).get("state", {})
    children = [c.removeprefix("IPY_MODEL_") for c in box.get("children", [])]
    parts = []
    for child in children:
        s = state.get(child, {}).get("state", {})
        if "max" in s and "value" in s and not isinstance(s.get("value"), str):
            done = 0 if not s["max"] else min(1.0, float(s["value"]) / float(s["max"]))
            parts.append("|" + "█" * round(10 * done) + " " * (10 - round(10 * done)) + "|")
        elif isinstance(s.get("value"), str):
            parts.append(html.unescape(_TAGS.sub("", s["value"])))
    return "".join(parts).strip() or None


def clean_notebook(nb: dict, name: str = "notebook") -> dict:
    """`nb` (an executed notebook as JSON) ready to publish: progress widgets replaced by their final
    line as text, carriage-return redraws collapsed, widget state dropped. Raises `PublishError` when
    a code cell has not run or produced an error output."""
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        if cell.get("execution_count") is None and "".join(cell["source"]).strip():
            raise PublishError(f"{name}: code cell {i} has not been executed")
        outputs = []
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                raise PublishError(f"{name}: code cell {i} raised {out.get('ename')}: {out.get('evalue')}")
            if out["output_type"] == "stream":
                out = {**out, "text": _final_line("".join(out["text"]) if isinstance(out["text"], list) else out["text"])}
                if out["text"].strip():
                    outputs.append(out)
            elif WIDGET_VIEW in out.get("data", {}):
                text = _widget_text(out["data"][WIDGET_VIEW]["model_id"], state)
                if text:
                    outputs.append({"output_type": "stream", "name": "stderr", "text": text + "\n"})
            else:
                outputs.append(out)
        merged: list[dict] = []   # consecutive progress lines into one output
        for out in outputs:
            if merged and out["output_type"] == "stream" and merged[-1]["output_type"] == "stream" \
                    and merged[-1]["name"] == out["name"]:
                merged[-1] = {**merged[-1], "text": merged[-1]["text"] + out["text"]}
            else:
                merged.append(out)
        cell["outputs"] = merged
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def provenance_commit(nb: dict) -> str | None:
    """The git commit the notebook's environment cell printed (`print_environment`), if any."""
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain", "")
            match = _COMMIT.search("".join(text) if isinstance(text, list) else text)
            if match:
                return match.group(1)
    return None


def publish_executed(preset: str, *, source: Path | None = None, target: Path | None = None) -> list[Path]:
    """Clean and copy `build/<preset>/NN_*.ipynb` to `docs/executed/<preset>/`. Every notebook of
    `notebooks/` must be there, executed from one clean commit; nothing is written unless all pass."""
    root = project_root()
    source = source or root / "build" / preset
    target = target or root / "docs" / "executed" / preset
    names = sorted(p.name for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [n for n in names if not (source / n).exists()]
    if missing:
        raise PublishError(f"not executed under {source}: {', '.join(missing)} (run HELPERS_PRESET={preset} make run)")
    cleaned, commits = {}, {}
    for n in names:
        nb = clean_notebook(json.loads((source / n).read_text()), n)
        commits[n] = provenance_commit(nb)
        text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        if len(text.encode()) > MAX_BYTES:
            raise PublishError(f"{n}: {len(text.encode()) / 2**20:.1f} MB after cleaning, over the 2 MB limit")
        cleaned[n] = text
    if len(set(commits.values())) != 1 or None in commits.values() or any("dirty" in c for c in commits.values()):
        raise PublishError("the executed notebooks must come from one clean commit; they print: "
                           + ", ".join(f"{n} {c}" for n, c in commits.items()))
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.ipynb"):
        if stale.name not in cleaned:
            stale.unlink()
    written = []
    for n, text in cleaned.items():
        atomic_write(target / n, lambda tmp, text=text: tmp.write_text(text))
        written.append(target / n)
    return written


# ----------------------------------------------------------------------------------------------
# The site's sources (MkDocs)


def _notebook_blurbs(readme: str) -> list[tuple[str, str, str]]:
    """(number, stem, one line) for each row of the README's notebook table."""
    rows = re.findall(r"^\| (\d\d) \| \[(\w+)\]\(notebooks/(\d\d_\w+)\.ipynb\) \| (.+?) \|$", readme, re.M)
    return [(num, stem, line) for num, _, stem, line in rows]


def site_preset(root: Path) -> str:
    """The preset whose executed notebooks the site shows: `cpu` when all are published, else `workshop`."""
    names = {p.name for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for preset in ("cpu", "workshop"):
        folder = root / "docs" / "executed" / preset
        if folder.is_dir() and names <= {p.name for p in folder.glob("*.ipynb")}:
            return preset
    raise PublishError("no complete set of executed notebooks under docs/executed/: "
                       "run `make run`, then `python -m coursetools.publish executed PRESET`")


def write_site_sources(preset: str | None = None, *, out: Path | None = None) -> Path:
    """Write the MkDocs sources to `build/site-src/` (replacing it) and return that folder."""
    root = project_root()
    preset = preset or site_preset(root)
    out = out or root / "build" / "site-src"
    executed = root / "docs" / "executed" / preset
    if out.exists():
        shutil.rmtree(out)
    (out / "notebooks").mkdir(parents=True)
    for nb in sorted(executed.glob("[0-9][0-9]_*.ipynb")):
        shutil.copy2(nb, out / "notebooks" / nb.name)
    # The guide links into the repository (../results/...): on the site those become repository links.
    guide = (root / "docs" / "workshop.md").read_text()
    (out / "workshop.md").write_text(re.sub(r"\]\(\.\./", f"]({repository_url(root)}/tree/main/", guide))
    chart = root / "results" / preset / "10_tradeoffs.png"
    if chart.exists():
        shutil.copy2(chart, out / "tradeoffs.png")
    readme = (root / "README.md").read_text()
    commit = provenance_commit(json.loads(next(executed.glob("01_*.ipynb")).read_text())) or "unknown"
    items = "\n".join(f"{num}. [{stem.split('_', 1)[1].replace('_', ' ')}](notebooks/{stem}.ipynb) — {line}"
                      for num, stem, line in _notebook_blurbs(readme))
    index = f"""# Aggregating PyTorch Models

A hands-on course on turning several trained PyTorch models into one: average their weights, ensemble
their predictions or distil them into a student; make weight averaging work (BatchNorm
recalibration, permutation alignment, REPAIR); average along a run and across fine-tunes (SWA, soups,
task arithmetic, TIES); federated averaging; fusing the models of owners who cannot share data; and
one chart of the trade-offs. Every number is measured on real CIFAR-10 by the notebooks themselves.

These pages are the notebooks **as executed** by one `make run` with the `{preset}` preset (commit
`{commit}`): you can read every output without running anything.

## The trade-offs

{"![every method, one budget](tradeoffs.png)" if chart.exists() else "(the trade-off chart is written by notebook 10)"}

## The notebooks

{items}

For instructors: the [workshop guide](workshop.md).

## Run it yourself

```bash
make run     # set up .venv, get CIFAR-10, execute every notebook in order
make test    # set up .venv, unit tests + every notebook under nbval (smoke preset)
```
"""
    (out / "index.md").write_text(index)
    return out


# ----------------------------------------------------------------------------------------------
# The instructor's guide and the README's workshop row, written from the committed workshop run

GUIDE_MARKERS = {name: (f"<!-- generated: {name} (python -m coursetools.publish guide; do not edit by hand) -->",
                        f"<!-- end generated: {name} -->") for name in ("lessons", "timing")}
README_ROW_MARKER = "<!-- generated: workshop row -->"
WORKSHOP_TARGET_SECONDS = 720          # issue 14: the whole course cold in 12 minutes
PRECISION_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _load_json(folder: Path, name: str) -> dict:
    """`folder/<name>.json` (a notebook's results file, or `timings`), or a PublishError saying how to make it."""
    path = folder / f"{name}.json"
    if not path.is_file():
        raise PublishError(f"{path} is missing: run `HELPERS_PRESET={folder.name} make run` first")
    return json.loads(path.read_text())


def _fedavg_runs(fed: dict) -> str:
    """07's run-level comparison (FedAvg IID over seeds against the joint recipe's runs), where measured."""
    if "fedavg_iid_runs" not in fed:
        return ""
    (fm, fs), (jm, js) = fed["fedavg_iid_mean_std"], fed["joint_recipe_mean_std"]
    return (f"; over runs, {_pct(fm)} ± {_pct(fs)} ({len(fed['fedavg_iid_runs'])} seeds) against the joint recipe's "
            f"{_pct(jm)} ± {_pct(js)} ({len(fed['joint_recipe_runs'])} runs): "
            f"{fed['verdicts']['IID runs vs joint-recipe runs']}")


def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def _row(table: dict, prefix: str) -> float:
    """'all classes' accuracy of the one row of `table` whose name starts with `prefix`."""
    rows = [v for k, v in table.items() if k.startswith(prefix)]
    if len(rows) != 1:
        raise PublishError(f"expected one task-arithmetic row starting with {prefix!r}, found {len(rows)}")
    return rows[0]["all classes"]


def _shown(ok: bool) -> str:
    return "shown" if ok else "**not shown**"


def _single_models(pairs: dict) -> list[float]:
    """Test accuracies of the four single course models in notebook 03's `pairs` (independent and shared-init)."""
    return [pairs[k][m] for k in ("independent", "shared_init") for m in ("accuracy_a", "accuracy_b")]


def _cpu_single_models(folder: Path) -> str:
    """' (x–y% with the `cpu` preset)' from the committed cpu run in `folder`, or '' where there is none."""
    if not (folder / "03_weight_averaging.json").is_file():
        return ""
    singles = _single_models(_load_json(folder, "03_weight_averaging")["results"]["pairs"])
    return f" ({_pct(min(singles), 1)}–{_pct(max(singles), 1)} with the `cpu` preset)"


def workshop_lessons(folder: Path, timings: dict) -> str:
    """The guide's "what the committed run shows": the six tested lessons (the thresholds of
    tests/test_real_data.py) and the untested results of notebooks 04, 08 and 09, every number read
    from the results files in `folder` (`timings`: its `timings.json`)."""
    blobs = {n: _load_json(folder, n) for n in ("03_weight_averaging", "04_permutation_alignment",
                                                 "05_prediction_ensembling", "06_knowledge_distillation",
                                                 "07_federated_averaging", "08_soups_and_merging", "09_model_fusion")}
    r = {n: blob["results"] for n, blob in blobs.items()}
    preset = get_preset(folder.name)
    source = blobs["03_weight_averaging"]["provenance"].get("data_source", "")
    source = "the JPEG copy" if "jpg" in source.lower() else source or "unknown source"
    pairs3, al = r["03_weight_averaging"]["pairs"], r["04_permutation_alignment"]
    ind4 = al["pairs"]["independent"]
    singles = _single_models(pairs3)
    spawned = pairs3["spawned"]
    better_child = max(spawned["accuracy_a"], spawned["accuracy_b"])
    closed = 1 - ind4["aligned + BN reset"]["accuracy_barrier"] / ind4["naive"]["accuracy_barrier"]
    ens = r["05_prediction_ensembling"]
    gains = ens["independent_pairs"]["ensemble_gains"]
    gain_mean, gain_std = mean_std(gains)
    ms = ens["independent_pairs"]["mean_std"]
    one_pair = ens["pairs"]["independent"]
    kd = r["06_knowledge_distillation"]
    chosen, scratch = kd["students"][kd["chosen"]], kd["students"]["scratch"]
    fed = r["07_federated_averaging"]
    res, nonorm = al["residual"], al["nonorm"]
    swa, soups, ta = r["08_soups_and_merging"]["swa"], r["08_soups_and_merging"]["soups"], r["08_soups_and_merging"]["task_arithmetic"]
    fusion = r["09_model_fusion"]
    opts = fusion["options"]
    joint = opts["joint retraining (union, from scratch)"]["accuracy"]
    half = opts["fine-tune 0.5 ep from aligned + REPAIR average"]
    lines = [
        f"The course has one preset made for rooms of laptops: **`workshop`**. It trains on real CIFAR-10, "
        f"but on a class-balanced {preset.train_subset:,}-image subset ({preset.test_subset:,} test images, "
        f"{preset.val_fraction:.0%} of CIFAR-10's 50,000 training images held out for validation), with "
        f"narrow models (the course CNN ×{preset.width:g}, the student ×{preset.student_width:g}) and "
        f"{preset.train.num_epochs} epochs. `tests/test_real_data.py` checks six lessons of the course against "
        f"the committed run in [`results/workshop/`](../results/workshop/). One course model reaches "
        f"{_pct(min(singles), 1)}–{_pct(max(singles), 1)} here{_cpu_single_models(folder.parent / 'cpu')}: the "
        "lessons are about *differences*.",
        "",
        "## What the committed workshop run shows",
        "",
        f"On CIFAR-10 ({source}), {preset.test_subset:,} test images, one cold run "
        f"of commit `{timings['git_commit']}` (`results/workshop/`), written into this guide by "
        "`python -m coursetools.publish guide` (it is never edited by hand):",
        "",
        f"- independent pair, naive midpoint: {_pct(pairs3['independent']['midpoint_naive'], 1)} (lesson: ≤ 20%) — "
        f"{_shown(pairs3['independent']['midpoint_naive'] <= 0.20)};",
        f"- spawned pair, midpoint after BatchNorm reset {_pct(spawned['midpoint_recalibrated'])} against "
        f"{_pct(better_child)} for the better child (lesson: within 3 points) — "
        f"{_shown(spawned['midpoint_recalibrated'] >= better_child - 0.03)};",
        f"- alignment + BatchNorm reset closes {closed:.0%} of the independent pair's accuracy barrier "
        f"(lesson: ≥ 50%) — {_shown(closed >= 0.5)};",
        f"- the ensemble against its better member, over all {len(gains)} pairs of "
        f"{ens['independent_pairs']['num_models']} independent models (notebook 05): "
        f"{100 * gain_mean:+.2f} ± {100 * gain_std:.2f} points (per pair: "
        f"{', '.join(f'{100 * g:+.2f}' for g in gains)}; lesson: ≥ +0.5 on average) — "
        f"{_shown(gain_mean >= 0.005)}. The committed independent pair alone: "
        f"{one_pair['gain_verdict']}: at this budget one seed's model can be several points better than "
        "another's, which is itself a lesson about single-run comparisons. Over the same pairs the naive "
        f"midpoint is {_pct(ms['weight average, naive'][0], 1)} ± {_pct(ms['weight average, naive'][1], 1)}, "
        f"aligned + REPAIR {_pct(ms['weight average, aligned + REPAIR'][0], 1)} ± "
        f"{_pct(ms['weight average, aligned + REPAIR'][1], 1)};",
        f"- student distilled from the ensemble ({kd['chosen']}) {_pct(chosen['mean'])} against "
        f"{_pct(scratch['mean'])} from scratch (mean of {len(scratch['accuracy'])} seeds, {kd['gain_verdict']}; "
        f"lesson: at least as good) — {_shown(chosen['mean'] >= scratch['mean'])};",
        f"- FedAvg with IID clients {_pct(fed['fedavg_final_accuracy']['IID'])} against {_pct(fed['joint_accuracy'])} "
        f"for the joint model ({fed['verdicts']['IID vs joint']}{_fedavg_runs(fed)}; lesson: within 4 points) "
        "and the one-shot "
        f"average of IID clients {_pct(fed['one_shot']['IID'], 1)} (lesson: ≤ 25%) — "
        f"{_shown(fed['gap_iid_to_joint'] <= 0.04 and fed['one_shot']['IID'] <= 0.25)}.",
        "",
        "Not among the tested lessons (verdicts from `helpers.stats`, formatted by the notebooks themselves):",
        "",
        f"- residual networks align too (notebook 04): the independent residual pair's midpoint goes from "
        f"{_pct(res['naive + BN reset'], 1)} (BatchNorm reset only) to {_pct(res['aligned + BN reset'], 1)} aligned "
        f"+ reset, {_pct(res['aligned + REPAIR'], 1)} with REPAIR (endpoints {_pct(res['endpoints'][0], 1)} / "
        f"{_pct(res['endpoints'][1], 1)});",
        f"- REPAIR without BatchNorm (notebook 04): endpoints {_pct(nonorm['endpoints'][0], 1)} / "
        f"{_pct(nonorm['endpoints'][1], 1)}, aligned midpoint {_pct(nonorm['aligned'], 1)}, after REPAIR "
        f"{_pct(nonorm['aligned + REPAIR'], 1)}: {nonorm['share_of_aligned_barrier_closed']:.0%} of the remaining "
        "barrier closed (REPAIR's own VGG11 closed 78%);",
        f"- SWA over {len(swa['accuracy']['swa'])} runs: {_pct(swa['mean_std']['swa'][0])} ± "
        f"{100 * swa['mean_std']['swa'][1]:.2f} against {_pct(swa['mean_std']['endpoint'][0])} ± "
        f"{100 * swa['mean_std']['endpoint'][1]:.2f} for the same runs' endpoints: {swa['verdicts']['swa vs endpoint']};",
        f"- soups of {soups['num_children']} spawned children: greedy {_pct(soups['full']['greedy'])} (keeps "
        f"{len(soups['full']['greedy_kept'])}), uniform {_pct(soups['full']['uniform'])}, best child by validation "
        f"{_pct(soups['full']['best_child'])}; greedy against uniform: {soups['full']['greedy_vs_uniform']};",
        f"- task arithmetic on two fine-tunes of one base (scale {ta['scale']:g}, chosen on validation): "
        f"{_pct(_row(ta['test'], 'task arithmetic'))} on all classes against "
        f"{_pct(ta['test']['ensemble of the fine-tunes']['all classes'])} for the ensemble of the fine-tunes and "
        f"{_pct(ta['test']['base']['all classes'])} for the base; TIES {_pct(_row(ta['test'], 'TIES'))};",
        f"- two owners (notebook 09): merge (aligned + REPAIR, {_pct(opts['aligned + REPAIR average']['accuracy'])}) "
        f"then fine-tune ½ epoch on the union: {_pct(half['accuracy'])} against {_pct(joint)} for joint retraining "
        f"({half['accuracy'] / joint:.0%} of it) at {half['cost']:.2f}× its training cost; the same ½ epoch from "
        f"owner A {_pct(opts['fine-tune 0.5 ep from owner A']['accuracy'])}, from scratch "
        f"{_pct(opts['fine-tune 0.5 ep from scratch']['accuracy'])}; 2 epochs from scratch "
        f"{_pct(opts['fine-tune 2 ep from scratch']['accuracy'])};",
    ]
    four = fusion.get("four_owners")
    if four:
        o4 = four["options"]
        n = four["num_owners"]
        half4 = o4[f"fine-tune 0.5 ep from the {n}-owner merge"]
        lines.append(
            f"- {n} owners (notebook 09; {', '.join(f'{k:,}' for k in four['owner_images'])} training images): "
            f"owners {_pct(min(v['accuracy'] for v in o4.values() if v['kind'] == 'owner'), 1)}–"
            f"{_pct(max(v['accuracy'] for v in o4.values() if v['kind'] == 'owner'), 1)}, uniform ensemble "
            f"{_pct(o4[f'ensemble of the {n}, uniform']['accuracy'])}, aligned + REPAIR average "
            f"{_pct(o4[f'average of the {n}, aligned to owner 1 + REPAIR']['accuracy'])} (naive + BN reset "
            f"{_pct(o4[f'average of the {n}, naive + BN reset']['accuracy'])}), merge then ½ epoch "
            f"{_pct(half4['accuracy'])} ({half4['accuracy'] / joint:.0%} of joint retraining; "
            f"{four['merge_finetune_half_epoch_vs_joint']}), FedAvg of the {n} "
            f"{_pct(o4[f'FedAvg of the {n} owners (equal compute)']['accuracy'])}.")
    return "\n".join(lines)


def _within(total: float, target: float = WORKSHOP_TARGET_SECONDS) -> str:
    return "within" if total <= target else "over"


def _column(r: dict) -> str:
    head = (f"`{r['preset']}`, {PRECISION_NAMES.get(r['precision'], r['precision'])}, {_machine(r['device_name'])}")
    if r.get("label"):
        head += f", {r['label']}"
    return head


def _timing_rows(runs: Sequence[dict]) -> list[str]:
    """A Markdown table, one column per `timings.json` in `runs` (all over the same notebooks)."""
    for other in runs[1:]:
        if list(other["seconds"]) != list(runs[0]["seconds"]):
            raise PublishError("timing runs side by side must cover the same notebooks")
    rows = [f"| notebook | {' | '.join(_column(r) for r in runs)} |", "|---" * (len(runs) + 1) + "|"]
    rows += [f"| {name} | " + " | ".join(f"{r['seconds'][name]:,.0f} s" for r in runs) + " |"
             for name in runs[0]["seconds"]]
    total = "| **all, cold** |" if not any(r.get("label") for r in runs) else "| **all** |"
    rows.append(total + " " + " | ".join(f"**{r['total_seconds']:,.0f} s ({r['total_seconds'] / 60:.1f} min)**"
                                         for r in runs) + " |")
    if any("checkpoints_written" in r for r in runs):
        rows.append("| checkpoints written | " + " | ".join(
            str(r["checkpoints_written"]) if "checkpoints_written" in r else "—" for r in runs) + " |")
    if any("evaluations" in r for r in runs):
        rows.append("| stored evaluations found at the start / computed and stored | " + " | ".join(
            "{found:,} / {stored:,}".format(**r["evaluations"]) if "evaluations" in r else "—" for r in runs) + " |")
    speeds = [run_speed(r) for r in runs]
    if any(speeds):
        rows.append("| machine speed, course model (train / eval images/s) | " + " | ".join(
            "{train_images_per_second:,.0f} / {eval_images_per_second:,.0f}".format(**s) if s else "not recorded"
            for s in speeds) + " |")
    return rows


def workshop_timing(ws: dict, others: Sequence[dict] = ()) -> str:
    """The guide's timing table, from the committed workshop run's `timings.json` (`ws`), with one more
    column per `others`: the `timings.json` of further cold runs of the same commit on other settings
    (another precision or machine; committed beside it as `timings-<what>.json`, results not kept)."""
    for other in others:
        if other["git_commit"] != ws["git_commit"] or other["preset"] != ws["preset"]:
            raise PublishError(f"a second timing run must be of the committed run's commit {ws['git_commit']} and "
                               f"preset {ws['preset']}; got {other['git_commit']}, {other['preset']}")
    rows = _timing_rows([ws, *others])
    total = ws["total_seconds"]
    more = (" The other column" + ("s are" if len(others) > 1 else " is") + " another cold run of the same commit "
            "with only the precision or machine changed; its results are not committed, its "
            "`timings.json` is (`results/workshop/timings-*.json`).") if others else ""
    return (f"Measured cold (empty checkpoint and data caches, the `.venv` installed) with `make run`, which writes "
            f"`results/<preset>/timings.json`: the committed run (commit `{ws['git_commit']}`, torch {ws['torch']}, "
            f"`HELPERS_PRECISION={ws['precision']}`, first column), {_within(total)} the 12-minute target."
            f"{more} The sum is over the notebooks; the data check `make run` does first (decoding the images once, "
            "about half a minute) comes before it.\n\n" + "\n".join(rows))


CPU_TARGET_SECONDS = 2700              # the cpu preset's budget: the whole course cold in 45 minutes
WARM_TARGET_SECONDS = 300              # a run that retrains nothing (from an imported archive): 5 minutes


def _cpu_runs(folder: Path) -> tuple[dict, list[dict]]:
    """`results/cpu/timings.json` (the committed run) and the `timings-*.json` beside it (other runs:
    another precision, or a warm run from an imported checkpoint archive), each checked."""
    cold = _load_json(folder, "timings")
    others = []
    for path in sorted(folder.glob("timings-*.json")):
        other = json.loads(path.read_text())
        if other["preset"] != cold["preset"] or list(other["seconds"]) != list(cold["seconds"]):
            raise PublishError(f"{path} is not a run of the same preset and notebooks as {folder}/timings.json")
        if not other.get("label") and other["git_commit"] != cold["git_commit"]:
            raise PublishError(f"{path}: a second cold run must be of the committed run's commit "
                               f"{cold['git_commit']}, not {other['git_commit']} (or say what it is in 'label')")
        others.append(other)
    return cold, others


def cpu_timing(folder: Path) -> str:
    """The guide's table for the `cpu` preset: the committed cold run and any other runs beside it."""
    cold, others = _cpu_runs(folder)
    measured = {cold["precision"], *(o["precision"] for o in others if not o.get("label"))}
    missing = [PRECISION_NAMES[p] for p in ("bf16", "fp32") if p not in measured]
    total = cold["total_seconds"]
    text = (f"The `cpu` preset (the committed results in [`results/cpu/`](../results/cpu/)): one cold run of commit "
            f"`{cold['git_commit']}` in {PRECISION_NAMES.get(cold['precision'], cold['precision'])}, "
            f"{total:,.0f} s ({total / 60:.1f} min), {_within(total, CPU_TARGET_SECONDS)} the course's 45-minute budget.")
    for other in others:
        if other.get("label"):
            warm = (f", {_within(other['total_seconds'], WARM_TARGET_SECONDS)} the five-minute target for a run "
                    "that retrains nothing" if other.get("checkpoints_written") == 0 else "")
            text += (f" The column \"{other['label']}\" is a run of commit `{other['git_commit']}` with the same "
                     f"preset ({other['total_seconds']:,.0f} s in all{warm}).")
    if missing:
        text += (f" Not measured for this preset: a whole run in {' or '.join(missing)} (the `workshop` preset is "
                 "the one sized for machines without bfloat16 units).")
    return text + "\n\n" + "\n".join(_timing_rows([cold, *others]))


def _machine(device_name: str) -> str:
    """'cpu (2 threads, AMD EPYC)' -> 'a CPU (2 threads, AMD EPYC)'; other device names unchanged."""
    return "a CPU" + device_name[3:] if device_name.startswith("cpu (") else device_name


def workshop_readme_row(folder: Path, ws: dict) -> str:
    """The README's preset-table row for `workshop` (`ws`: its `timings.json`), its marker in the last cell
    (an HTML comment: invisible)."""
    preset = get_preset(folder.name)
    total = ws["total_seconds"]
    return (f"| `workshop` | real CIFAR-10: class-balanced {preset.train_subset:,} training / {preset.test_subset:,} "
            f"test images | course CNN ×{preset.width:g}, student ×{preset.student_width:g}, "
            f"{preset.train.num_epochs} epochs | a 90-minute workshop on laptops: the whole course "
            f"({len(ws['seconds'])} notebooks) cold in {total:,.0f} s ({total / 60:.1f} minutes) in "
            f"{PRECISION_NAMES.get(ws['precision'], ws['precision'])} "
            f"on {_machine(ws['device_name'])} — {_within(total)} the 12-minute target "
            f"([instructor's guide](docs/workshop.md), [results](results/workshop/summary.md)) {README_ROW_MARKER} |")


def _replace_between(text: str, markers: tuple[str, str], body: str | Callable[[], str], path: Path) -> str:
    """`text` with what lies between the `markers` (start, end) replaced by `body` (a callable is called
    only once the markers are found: a file without them is refused before any results are read)."""
    start, end = markers
    if start not in text or end not in text:
        raise PublishError(f"{path} has no '{start}' ... '{end}' block to fill")
    body = body() if callable(body) else body
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render_guide(guide: str, readme: str, *, root: Path | None = None) -> tuple[str, str]:
    """The guide and README texts with their generated parts rewritten from `results/workshop/`."""
    root = root or project_root()
    folder = root / "results" / "workshop"
    timings = _load_json(folder, "timings")
    guide = _replace_between(guide, GUIDE_MARKERS["lessons"], workshop_lessons(folder, timings), root / "docs" / "workshop.md")
    others = [json.loads(path.read_text()) for path in sorted(folder.glob("timings-*.json"))]
    timing = workshop_timing(timings, others)
    if (root / "results" / "cpu" / "timings.json").is_file():
        timing += "\n\n" + cpu_timing(root / "results" / "cpu")
    guide = _replace_between(guide, GUIDE_MARKERS["timing"], timing, root / "docs" / "workshop.md")
    rows = [line for line in readme.splitlines() if README_ROW_MARKER in line]
    if len(rows) != 1:
        raise PublishError(f"README.md should have one preset row marked {README_ROW_MARKER}; found {len(rows)}")
    readme = readme.replace(rows[0], workshop_readme_row(folder, timings))
    readme = re.sub(r"(one cold `workshop` run of commit\s+)`[0-9a-f+dirty]+`",
                    lambda m: m.group(1) + f"`{timings['git_commit']}`", readme)
    return guide, readme


def write_guide(root: Path | None = None) -> list[Path]:
    root = root or project_root()
    paths = [root / "docs" / "workshop.md", root / "README.md"]
    guide, readme = render_guide(paths[0].read_text(), paths[1].read_text(), root=root)
    for path, text in zip(paths, (guide, readme)):
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text))
    return paths


# ----------------------------------------------------------------------------------------------
# The README's cpu results, written from the committed cpu run

CPU_MARKERS = ("<!-- generated: cpu results (python -m coursetools.publish readme; do not edit by hand) -->",
               "<!-- end generated: cpu results -->")


def _accuracy_after_scaling(block: dict) -> str:
    before, after = block["before"]["accuracy"], block["after"]["accuracy"]
    return "accuracy unchanged" if before == after else f"accuracy {_pct(before)} → {_pct(after)}"


def _confidence(ens: dict, one: dict) -> str:
    """Why the ensemble is miscalibrated, as the fitted temperatures show it (T < 1 sharpens: under-confident)."""
    if ens["temperature"] < 1 and one["temperature"] < 1:
        worse = " and averaging lowers confidence further" if ens["temperature"] < one["temperature"] else ""
        return (f": both fitted temperatures are below 1, so the (label-smoothed) models are under-confident"
                f"{worse}")
    return ""


def cpu_results_section(folder: Path, timings: dict) -> str:
    """The README's results section body, from the committed cpu run in `folder` (`results/cpu/`, `timings`: its
    `timings.json`):
    what ran where, the trade-off table (`results/cpu/summary.md`'s), the calibration sentence, the
    chart and the run's time. Refuses a folder whose results files come from more than one commit, or
    from another commit than its `timings.json`."""
    stems = list(timings["seconds"])
    blobs = {stem: _load_json(folder, stem) for stem in stems}
    commits = {stem: blob["provenance"]["git_commit"] for stem, blob in blobs.items()}
    wrong = {stem: c for stem, c in commits.items() if c != timings["git_commit"]}
    if wrong:
        raise PublishError(f"{folder}: results from another commit than the timed run's {timings['git_commit']}: "
                           + ", ".join(f"{stem} {c}" for stem, c in wrong.items()))
    last = stems[-1]
    rows = blobs[last]["results"]["rows"]
    prov = blobs[last]["provenance"]
    source = "the JPEG copy, see \"Data\" below" if "jpg" in prov["data_source"].lower() else prov["data_source"]
    precision = PRECISION_NAMES.get(timings["precision"], timings["precision"])
    scaled = blobs["05_prediction_ensembling"]["results"]["temperature_scaling"]
    ens = scaled["ensemble of 2"]
    one = scaled["model A"]
    total = timings["total_seconds"]
    per_nb = ", ".join(f"{stem[:2]} — {sec:,.0f} s" for stem, sec in timings["seconds"].items())
    speed = run_speed(timings)
    machine_speed = (f" That machine trained the course model at {speed['train_images_per_second']:,.0f} images/s and "
                     f"evaluated it at {speed['eval_images_per_second']:,.0f} (`host_speed` in `timings.json`, measured "
                     "before and after the run); `python -m coursetools.speed` scales the time to yours." if speed else "")
    first = blobs[stems[0]]["results"]
    model = (f" (course CNN ×{first['model']['width']:g} ({first['model']['parameters']:,} parameters), "
             f"{first['train_config']['num_epochs']} epochs per model: {_pct(first['test_accuracy'], 1)} for "
             f"notebook 01's model)" if {"model", "train_config", "test_accuracy"} <= set(first) else "")
    return f"""Measured by the notebooks with the `cpu` preset{model} on CIFAR-10 ({source}) on {_machine(timings['device_name'])},
no GPU, in {precision}: one cold `make run` of commit `{timings['git_commit']}` on {timings['date'][:10]}, whose
results files, figures and executed notebooks ([`docs/executed/cpu/`](docs/executed/cpu/)) are committed
together in [`results/cpu/`](results/cpu/). The table is [`results/cpu/summary.md`](results/cpu/summary.md),
written by `{last}` from the JSON files beside it; this section is written from those files by
`python -m coursetools.publish readme` (a test fails if they differ). Every row is a mean over runs where the
spread column gives ± (the standard deviation) and their number; Δ columns compare means.

<!-- results:start -->
{tradeoff_markdown(rows).rstrip()}
<!-- results:end -->

Calibration (notebook 05, `temperature_scaling`): the independent pair's ensemble has an ECE of
{ens['before']['ece']:.3f} and an NLL of {ens['before']['nll']:.3f} on the test set, a single member
{one['before']['ece']:.3f} and {one['before']['nll']:.3f}{_confidence(ens, one)}. One temperature fitted on the
validation split fixes it: T =
{ens['temperature']:.2f} gives the ensemble ECE {ens['after']['ece']:.3f} and NLL {ens['after']['nll']:.3f}
({_accuracy_after_scaling(ens)}); T = {one['temperature']:.2f} gives the single model ECE
{one['after']['ece']:.3f} and NLL {one['after']['nll']:.3f}.

![accuracy against inference cost, every method](results/cpu/{last}.png)

**How long it takes.** That run, from an empty checkpoint cache and an empty data cache (the `.venv`
already installed), took **{total:,.0f} s ({total / 60:.1f} minutes)** for the {len(stems)} notebooks
({precision}, {_machine(timings['device_name'])}), {_within(total, CPU_TARGET_SECONDS)} the 45-minute budget: {per_nb}
(`results/cpu/timings.json`; the data check before them decodes the images once, about half a minute).
With a warm cache a second `make run` retrains nothing; the [instructor's guide](docs/workshop.md#timing)
has the per-notebook times of every measured run side by side.{machine_speed} The 45-minute budget relies on bfloat16:
a CPU without bf16 units trains in float32, several times slower (see "Training speed")."""


def render_readme(readme: str, *, root: Path | None = None) -> str:
    """The README with its cpu results section (between `CPU_MARKERS`) rewritten from `results/cpu/`,
    and the commit of "one cold `cpu` run of commit `...`" set to the run's."""
    root = root or project_root()
    folder = root / "results" / "cpu"
    timings = _load_json(folder, "timings")
    readme = _replace_between(readme, CPU_MARKERS, lambda: cpu_results_section(folder, timings), root / "README.md")
    commit = timings["git_commit"]
    return re.sub(r"(one cold `cpu` run of commit\s+)`[0-9a-z+]+`", lambda m: m.group(1) + f"`{commit}`", readme)


def write_readme(root: Path | None = None) -> Path:
    root = root or project_root()
    path = root / "README.md"
    text = render_readme(path.read_text(), root=root)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coursetools.publish")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("executed", help="copy build/<preset>/ to docs/executed/<preset>/, cleaned and checked")
    ex.add_argument("preset")
    site = sub.add_parser("site-src", help="write build/site-src/ for MkDocs")
    site.add_argument("--preset", default=None)
    sub.add_parser("guide", help="rewrite docs/workshop.md's generated blocks and README.md's workshop row "
                                 "from results/workshop/")
    sub.add_parser("readme", help="rewrite README.md's cpu results section from results/cpu/")
    args = parser.parse_args(argv)
    try:
        if args.command == "executed":
            for path in publish_executed(args.preset):
                print(f"wrote {path.relative_to(project_root())} ({path.stat().st_size // 1024} kB)")
        elif args.command == "readme":
            print(f"wrote {write_readme().relative_to(project_root())}")
        elif args.command == "guide":
            for path in write_guide():
                print(f"wrote {path.relative_to(project_root())}")
        else:
            print(f"wrote {write_site_sources(args.preset)}")
    except PublishError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
