"""Publishing the executed course: readable notebooks with outputs, and the static site's sources.

`make run` executes every notebook into `build/<preset>/`. Two steps turn that into something a
reader can open without running anything:

- `python -m helpers.publish executed PRESET`: copy the executed notebooks to `docs/executed/<preset>/`
  with progress-bar noise reduced to each bar's final line (Jupyter progress widgets become that line
  as plain text, so GitHub and static HTML show it), after checking that every code cell has run,
  none raised, every file is under 2 MB, and all of them print one clean provenance commit.
- `python -m helpers.publish site-src [--preset P]`: write `build/site-src/` for MkDocs (`make site`):
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
from typing import Any

from helpers._paths import atomic_write, project_root
from helpers.colab import repository_url

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
                       "run `make run`, then `python -m helpers.publish executed PRESET`")


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.publish")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("executed", help="copy build/<preset>/ to docs/executed/<preset>/, cleaned and checked")
    ex.add_argument("preset")
    site = sub.add_parser("site-src", help="write build/site-src/ for MkDocs")
    site.add_argument("--preset", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "executed":
            for path in publish_executed(args.preset):
                print(f"wrote {path.relative_to(project_root())} ({path.stat().st_size // 1024} kB)")
        else:
            print(f"wrote {write_site_sources(args.preset)}")
    except PublishError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
