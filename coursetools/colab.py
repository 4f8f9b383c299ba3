"""Colab: the install cell every notebook starts with, and the README's "Open in Colab" links.

Both are built from one address, `[project.urls] Repository` in `pyproject.toml` (not known until the
course is published: set it there, then run `python -m coursetools.colab` to rewrite the notebooks' first
cells and the README's link table; `tests/test_notebooks.py` checks that they agree).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from helpers._paths import atomic_write, project_root

MARKER = "# Colab: install the course"
LINKS_START, LINKS_END = "<!-- colab:start -->", "<!-- colab:end -->"


def repository_url(root: Path | None = None) -> str:
    """`[project.urls] Repository` from the course's `pyproject.toml`."""
    text = ((root or project_root()) / "pyproject.toml").read_text()
    match = re.search(r'^\[project\.urls\][^\[]*?^Repository\s*=\s*"([^"]+)"', text, re.M | re.S)
    if not match:
        raise ValueError("pyproject.toml has no [project.urls] Repository = \"...\"")
    return match.group(1).rstrip("/")


def install_cell(url: str) -> str:
    """The first code cell of every notebook: installs the course on Colab, does nothing elsewhere."""
    return (f"{MARKER} (does nothing anywhere else; written by `python -m coursetools.colab`).\n"
            "import importlib.util, subprocess, sys\n"
            "on_colab = importlib.util.find_spec(\"google\") is not None and importlib.util.find_spec(\"google.colab\") is not None\n"
            "if on_colab and importlib.util.find_spec(\"helpers\") is None:\n"
            f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"git+{url}\"], check=True)")


def colab_link(url: str, notebook: str) -> str:
    """The Colab address of `notebooks/<notebook>` in the repository at `url` (GitHub, branch main)."""
    path = url.split("github.com/", 1)[-1]
    return f"https://colab.research.google.com/github/{path}/blob/main/notebooks/{notebook}"


def links_table(url: str, notebooks: list[str]) -> str:
    rows = "\n".join(f"| {nb[:2]} | [{nb[3:-6]}]({colab_link(url, nb)}) |" for nb in notebooks)
    return f"{LINKS_START}\n| # | open in Colab |\n|---|---|\n{rows}\n{LINKS_END}"


def write(root: Path | None = None) -> list[Path]:
    """Rewrite every notebook's install cell (inserted as the first code cell if missing) and the README's
    link table from `repository_url()`. Returns the files changed."""
    root = root or project_root()
    url = repository_url(root)
    changed = []
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in notebooks:
        nb = json.loads(path.read_text())
        source = install_cell(url)
        cell = next((c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).startswith(MARKER)),
                    None)
        if cell is None:
            cell = {"cell_type": "code", "execution_count": None, "id": "colab-install", "metadata": {}, "outputs": [],
                    "source": []}
            first_code = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
            nb["cells"].insert(first_code, cell)
        lines = source.split("\n")
        new = [line + "\n" for line in lines[:-1]] + [lines[-1]]
        if cell["source"] != new:
            cell["source"] = new
            text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
            atomic_write(path, lambda tmp, text=text: tmp.write_text(text))
            changed.append(path)
    readme = root / "README.md"
    text = readme.read_text()
    table = links_table(url, [p.name for p in notebooks])
    pattern = re.compile(re.escape(LINKS_START) + ".*?" + re.escape(LINKS_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no {LINKS_START} ... {LINKS_END} block to fill")
    new_text = pattern.sub(lambda _: table, text)
    if new_text != text:
        atomic_write(readme, lambda tmp: tmp.write_text(new_text))
        changed.append(readme)
    return changed


def main() -> None:
    """`python -m coursetools.colab`: rewrite the install cells and the README links from pyproject.toml."""
    try:
        changed = write()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    print(f"repository {repository_url()}: " + (", ".join(p.name for p in changed) or "nothing to change"))


if __name__ == "__main__":
    main()
