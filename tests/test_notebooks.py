"""Promises about the committed notebooks (the notebooks themselves run under nbval in `make test`)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_anatomy(path):
    nb = json.loads(path.read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for heading in ("**What you'll do**", "**What you'll learn**", "**What you need**",
                    "## What you learned", "## Exercises", "## Further reading"):
        assert heading in text, f"{path.name} lacks {heading!r}"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "get_preset()" in "".join(tagged[0]["source"])
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "save_results(" in code, f"{path.name} does not write results/<preset>/{path.stem}.json"
    assert "'cuda'" not in code and '"cuda"' not in code and "filterwarnings" not in code
    long = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and len("".join(c["source"]).splitlines()) > 30]
    assert not long, f"{path.name}: code cells {long} are over 30 lines; move plumbing into helpers"


def test_colab_install_cells_and_readme_links_follow_the_one_repository_url():
    from helpers.colab import LINKS_END, LINKS_START, install_cell, links_table, repository_url
    url = repository_url()
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        first = next(c for c in nb["cells"] if c["cell_type"] == "code")
        assert "".join(first["source"]) == install_cell(url), \
            f"{path.name}: the Colab install cell is missing or stale; run python -m helpers.colab"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index(LINKS_START):readme.index(LINKS_END) + len(LINKS_END)]
    assert block == links_table(url, [p.name for p in NOTEBOOKS]), "README's Colab links are stale"
