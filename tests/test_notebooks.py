"""Promises about the committed notebooks (the notebooks themselves run under nbval in `make test`)."""

import io
import json
import re
import tokenize
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
    from coursetools.colab import LINKS_END, LINKS_START, install_cell, links_table, repository_url
    url = repository_url()
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        first = next(c for c in nb["cells"] if c["cell_type"] == "code")
        assert "".join(first["source"]) == install_cell(url), \
            f"{path.name}: the Colab install cell is missing or stale; run python -m coursetools.colab"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index(LINKS_START):readme.index(LINKS_END) + len(LINKS_END)]
    assert block == links_table(url, [p.name for p in NOTEBOOKS]), "README's Colab links are stale"


# ----------------------------------------------------------------------------------------------
# No preset fact typed by hand: times come from results/<preset>/timings.json, choices from Preset fields

TYPED_MINUTES = re.compile(r"\d+(\.\d+)?\s*(min|mins|minute|minutes)\b")
PRESET_SWITCH = re.compile(r"preset\.name\s*(==|!=|in\b)|\.get\(preset\.name|\[preset\.name\]")
_FSTRING_MIDDLE = getattr(tokenize, "FSTRING_MIDDLE", None)   # Python 3.12+ tokenizes f-strings in parts


def _python(cell) -> str:
    """A code cell's Python, IPython's `%magic` and `!shell` lines left out."""
    lines = "".join(cell["source"]).splitlines(keepends=True)
    return "".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def _typed_text(source: str) -> list[str]:
    """The comments and string literals of `source`, with f-strings' `{...}` fields (formatted output) blanked."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT or tok.type == _FSTRING_MIDDLE:
            found.append(tok.string)
        elif tok.type == tokenize.STRING:
            text = tok.string
            if "f" in re.match(r"[A-Za-z]*", text).group().lower():
                while (blanked := re.sub(r"\{[^{}]*\}", "{}", text)) != text:
                    text = blanked
            found.append(text)
    return found


def _typed_minutes(nb) -> list[str]:
    hits = []
    for i, cell in enumerate(nb["cells"]):
        texts = ["".join(cell["source"])] if cell["cell_type"] == "markdown" else \
            _typed_text(_python(cell)) if cell["cell_type"] == "code" else []
        hits += [f"cell {i}: {' '.join(m.group(0).split())!r} in "
                 f"{' '.join(t[max(0, m.start() - 60):m.end() + 20].split())!r}"
                 for t in texts for m in TYPED_MINUTES.finditer(t)]
    return hits


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_typed_minutes(path):
    hits = _typed_minutes(json.loads(path.read_text()))
    assert not hits, f"{path.name} types a time by hand (print it with helpers.timings.notebook_times): " + \
        "; ".join(hits)


def test_the_minutes_check_reads_markdown_comments_and_strings_but_not_formatted_output():
    cells = [{"cell_type": "markdown", "source": ["Time: `cpu` about 11\n", "minutes."]},
             {"cell_type": "code", "source": ["x = 3  # takes 2 min\n", "print(f'{x:.1f} min, {x} mins')\n",
                                              "s = '1.5 minutes'\n", "n = min(4, 5)\n"]}]
    hits = _typed_minutes({"cells": cells})
    assert len(hits) == 3 and hits[0].startswith("cell 0: '11 minutes'"), hits
    assert "'2 min'" in hits[1] and "'1.5 minutes'" in hits[2], hits


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_switch_on_the_preset_name(path):
    nb = json.loads(path.read_text())
    hits = [f"cell {i}: {line.strip()!r}" for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            for line in "".join(c["source"]).splitlines() if PRESET_SWITCH.search(line)]
    assert not hits, f"{path.name} switches on preset.name (make it a field of helpers.presets.Preset): " + \
        "; ".join(hits)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_prints_the_committed_times(path):
    nb = json.loads(path.read_text())
    (params,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert "print(notebook_times(NOTEBOOK))" in "".join(params["source"])
    assert f'NOTEBOOK = "{path.stem}"' in "".join(params["source"])


def test_notebook_times_reads_each_committed_preset_and_survives_bad_files(tmp_path):
    from helpers.timings import notebook_times
    results = tmp_path / "results"
    for name, text in {"cpu": json.dumps({"seconds": {"02_x": 326.9}, "device_name": "cpu (2 threads, Test)",
                                          "precision": "bf16", "git_commit": "abc123",
                                          "host_speed": {"before": {"train_images_per_second": 1928.1}}}),
                       "workshop": "{not json", "gpu": json.dumps({"seconds": {"03_y": 1.0}}),
                       "mine": json.dumps({"seconds": {"02_x": 12}})}.items():
        (results / name).mkdir(parents=True)
        (results / name / "timings.json").write_text(text)
    lines = notebook_times("02_x", root=tmp_path).splitlines()
    assert lines[1:] == ["  cpu: 327 s (5.4 min) on cpu (2 threads, Test), bf16, commit abc123, "
                         "host 1,928 training images/s",
                         "  mine: 12 s",
                         "  smoke, workshop, long, gpu: not measured"], lines
    root = Path(__file__).resolve().parents[1]
    committed = notebook_times("02_train_paired_models")
    for path in sorted((root / "results").glob("*/timings.json")):
        timings = json.loads(path.read_text())
        assert f"  {path.parent.name}: {timings['seconds']['02_train_paired_models']:.0f} s" in committed
        assert timings["device_name"] in committed
