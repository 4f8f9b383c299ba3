"""The committed results (`results/cpu/`) are complete, real, and agree with what is shown from them."""

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "cpu"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The cpu run's trade-off notebook.
CPU_TRADEOFFS = NOTEBOOKS[-1].stem

def _check_real(path, preset, stem):
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run HELPERS_PRESET={preset} make run and commit it"
    prov = json.loads(path.read_text())["provenance"]
    assert prov["preset"] == preset and prov["notebook"] == stem
    assert "synthetic" not in prov["data_source"]
    for key in ("torch", "device", "git_commit", "date"):
        assert prov.get(key), key


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_real_results(notebook):
    """A notebook added since the last cpu run fails here until that preset is run again."""
    _check_real(RESULTS / f"{notebook.stem}.json", "cpu", notebook.stem)


def _table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| method")]


def test_summary_agrees_with_the_json_it_was_made_from():
    summary = (RESULTS / "summary.md").read_text()
    rows = json.loads((RESULTS / f"{CPU_TRADEOFFS}.json").read_text())["results"]["rows"]
    table = _table_rows(summary)
    assert len(table) == len(rows)
    for line, row in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["method"]
        assert cells[1] == f"{row['accuracy']:.2%}"
        assert cells[2] == f"{100 * row['delta']:+.2f}"


def test_readme_shows_the_generated_table():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- results:start -->(.*?)<!-- results:end -->", readme, re.S)
    assert block, "README.md lacks the results block"
    assert _table_rows(block.group(1)) == _table_rows((RESULTS / "summary.md").read_text()), \
        "README's results table differs from results/cpu/summary.md: copy it again"


def _figure_names(notebook: Path) -> set[str]:
    """The figure names a notebook saves (`save_figure(fig, "NAME"`), read from its source."""
    return set(re.findall(r'save_figure\(\w+, \\?"([\w.-]+)\\?"', notebook.read_text()))


def test_the_cpu_results_are_one_clean_run_and_nothing_else():
    """Every results file of results/cpu/ comes from the one run its timings.json describes (same
    commit, no "+dirty"), and nothing else is there: no file of a renamed notebook or an older run."""
    timings = json.loads((RESULTS / "timings.json").read_text())
    assert "dirty" not in timings["git_commit"]
    assert list(timings["seconds"]) == [nb.stem for nb in NOTEBOOKS], "timings.json is not of the whole course"
    figures = set().union(*(_figure_names(nb) for nb in NOTEBOOKS))
    expected = {f"{nb.stem}.json" for nb in NOTEBOOKS} | {f"{name}.png" for name in figures} | {"summary.md"}
    for path in sorted(RESULTS.iterdir()):
        if path.name.startswith("timings"):
            continue
        assert path.name in expected, f"results/cpu/{path.name} is not written by any current notebook"
        if path.suffix == ".json":
            commit = json.loads(path.read_text())["provenance"]["git_commit"]
            assert commit == timings["git_commit"], \
                f"results/cpu/{path.name} is from commit {commit}, the timed run from {timings['git_commit']}"


def test_every_cpu_tradeoff_row_has_runs_or_says_why_not():
    """Issue 15's target: each row of the committed cpu trade-off table is a mean over >= 3 runs with
    its std, or carries a one-line reason why it is a single run."""
    rows = json.loads((RESULTS / f"{CPU_TRADEOFFS}.json").read_text())["results"]["rows"]
    for row in rows:
        if row["n_runs"] >= 3:
            # A spread of exactly 0 is a result, not a gap: at 2 epochs every naive average of an independent
            # pair predicts one class (10.00%), all 6 of them.
            std = row["accuracy_std"]
            assert isinstance(std, float) and math.isfinite(std) and std >= 0, \
                f"{row['method']}: {row['n_runs']} runs but no spread ({std!r})"
        else:
            assert row.get("why_one_run"), f"{row['method']}: {row['n_runs']} run(s) and no reason given"
