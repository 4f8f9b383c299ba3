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
