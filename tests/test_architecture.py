"""The package's shape: recipes on top, algorithms below, no import cycles hidden inside functions."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "helpers"
MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def _helpers_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported helpers module, is it at module level) for every import in `path`."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers"):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("helpers")]
        out += [(name, id(node) in top) for name in names]
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_function_level_imports_of_helpers(path):
    inner = [name for name, at_top in _helpers_imports(path) if not at_top]
    assert not inner, f"{path.name} imports {inner} inside a function: move the code to the right module instead"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_nothing_in_helpers_imports_the_recipe_module(path):
    if path.name == "zoo.py":
        return
    assert "helpers.zoo" not in {name for name, _ in _helpers_imports(path)}, \
        f"{path.name} imports helpers.zoo: recipes sit on top of the algorithms, not inside them"


@pytest.mark.parametrize("module", ["averaging", "alignment", "ensembling", "evaluation", "devices"])
def test_merging_modules_do_not_import_the_training_loop(module):
    imported = {name for name, _ in _helpers_imports(PACKAGE / f"{module}.py")}
    assert "helpers.training" not in imported, f"helpers.{module} imports helpers.training"


def test_federated_is_only_the_algorithm():
    source = (PACKAGE / "federated.py").read_text()
    imported = {name for name, _ in _helpers_imports(PACKAGE / "federated.py")}
    assert "helpers.checkpoints" not in imported and "helpers.presets" not in imported
    assert "def get_" not in source and "class FedRun" not in source


def test_notebooks_import_no_private_names():
    notebooks = sorted((PACKAGE.parent / "notebooks").glob("*.ipynb"))
    for nb in notebooks:
        text = nb.read_text()
        assert "helpers._" not in text, f"{nb.name} imports a private helpers module"
