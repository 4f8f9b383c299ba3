"""The package's shape: recipes on top, algorithms below, no import cycles hidden inside functions; the
course's tooling (`coursetools`) sits outside the learner's library and above it."""

import ast
import subprocess
import sys
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


def _loaded_after_import(module: str) -> tuple[list[str], list[str]]:
    """In a fresh interpreter: (every helpers/coursetools module loaded by `import module`, its public names)."""
    code = (f"import importlib, sys; m = importlib.import_module({module!r}); "
            "print(' '.join(sorted(n for n in sys.modules if n.split('.')[0] in ('helpers', 'coursetools')))); "
            "print(' '.join(n for n in dir(m) if not n.startswith('_')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded, names = (done.stdout.splitlines() + ["", ""])[:2]
    return loaded.split(), names.split()


def test_federated_is_only_the_algorithm():
    """Importing helpers.federated loads no checkpoint cache, preset or recipe module, even indirectly, and
    it offers no recipe (`get_*`, `FedRun`: those are helpers.zoo's)."""
    loaded, names = _loaded_after_import("helpers.federated")
    assert not {"helpers.checkpoints", "helpers.presets", "helpers.zoo"} & set(loaded), loaded
    assert not [n for n in names if n.startswith("get_") or n == "FedRun"], names


def test_notebooks_import_no_private_names():
    notebooks = sorted((PACKAGE.parent / "notebooks").glob("*.ipynb"))
    for nb in notebooks:
        text = nb.read_text()
        assert "helpers._" not in text, f"{nb.name} imports a private helpers module"


# ----------------------------------------------------------------------------------------------
# helpers is the learner's library; coursetools (make run, publishing, Colab cells, speed probe) sits above it

TOOLING = ("runner.py", "publish.py", "colab.py", "speed.py")


def _coursetools_imports(path: Path) -> list[str]:
    """'line N: what' for every import of coursetools in `path`: import / from-import statements at any
    depth (inside functions too), and importlib.import_module / __import__ calls with a literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            names = [node.args[0].value]
        found += [f"line {node.lineno}: {name}" for name in names if name.split(".")[0] == "coursetools"]
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_helpers_never_import_coursetools(path):
    found = _coursetools_imports(path)
    assert not found, f"helpers/{path.relative_to(PACKAGE)} imports coursetools ({'; '.join(found)}): " \
                      "the learner's library must not depend on the course's tooling"


def test_the_import_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from coursetools.speed import measure\n"
                      "    import coursetools\n    return __import__('coursetools.runner')\n")
    assert _coursetools_imports(module) == ["line 4: coursetools.speed", "line 5: coursetools",
                                            "line 6: coursetools.runner"]


def test_the_tooling_modules_live_in_coursetools_not_helpers():
    assert not [name for name in TOOLING if (PACKAGE / name).exists()], "tooling module(s) back in helpers/"
    assert all((PACKAGE.parent / "coursetools" / name).is_file() for name in TOOLING)


def test_importing_every_helpers_module_loads_no_coursetools():
    """The same rule at run time, indirect imports included."""
    modules = [f"helpers.{p.stem}" for p in MODULES]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(' '.join(n for n in sys.modules if n.split('.')[0] == 'coursetools'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"importing helpers loaded {done.stdout.split()}"
