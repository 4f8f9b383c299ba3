"""The committed results (`results/cpu/`) are complete, real, and agree with what is shown from them."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "cpu"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_real_cpu_results(notebook):
    path = RESULTS / f"{notebook.stem}.json"
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run HELPERS_PRESET=cpu make run and commit results/cpu/"
    blob = json.loads(path.read_text())
    prov = blob["provenance"]
    assert prov["preset"] == "cpu" and prov["notebook"] == notebook.stem
    assert "synthetic" not in prov["data_source"]
    for key in ("torch", "device", "git_commit", "date"):
        assert prov.get(key), key


def _table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| method")]


def test_summary_agrees_with_the_json_it_was_made_from():
    summary = (RESULTS / "summary.md").read_text()
    rows = json.loads((RESULTS / "08_tradeoffs.json").read_text())["results"]["rows"]
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
