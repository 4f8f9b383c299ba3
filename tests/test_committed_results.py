"""The committed results (`results/cpu/`) are complete, real, and agree with what is shown from them."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "cpu"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Notebooks added (or renumbered) since the last cpu run: they have real results from the `workshop`
# preset only, and the README says so. The list cannot go stale: a notebook listed here that gains
# cpu results fails `test_pending_list_is_current` until it is taken off.
CPU_PENDING = ("08_soups_and_merging", "09_model_fusion", "10_tradeoffs")
# The cpu run's trade-off notebook, under the number it had then (now 10_tradeoffs).
CPU_TRADEOFFS = "08_tradeoffs"


def _check_real(path, preset, stem):
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run HELPERS_PRESET={preset} make run and commit it"
    prov = json.loads(path.read_text())["provenance"]
    assert prov["preset"] == preset and prov["notebook"] == stem
    assert "synthetic" not in prov["data_source"]
    for key in ("torch", "device", "git_commit", "date"):
        assert prov.get(key), key


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_real_results(notebook):
    if notebook.stem in CPU_PENDING:
        _check_real(ROOT / "results" / "workshop" / f"{notebook.stem}.json", "workshop", notebook.stem)
    else:
        _check_real(RESULTS / f"{notebook.stem}.json", "cpu", notebook.stem)


def test_pending_list_is_current():
    stems = {nb.stem for nb in NOTEBOOKS}
    readme = (ROOT / "README.md").read_text()
    for stem in CPU_PENDING:
        assert stem in stems, f"{stem} is not a notebook any more: take it off CPU_PENDING"
        assert not (RESULTS / f"{stem}.json").exists(), f"{stem} has cpu results now: take it off CPU_PENDING"
        assert stem in readme, f"README.md must say that {stem} has no cpu results yet"


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
