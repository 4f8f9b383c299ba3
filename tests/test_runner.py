"""coursetools.runner: what `make run` uses to execute the notebooks (real Jupyter kernels, tiny notebooks)."""

import json
import os

import nbformat
import pytest

from coursetools import runner


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, str(path))
    return path


def test_runs_in_order_in_the_notebook_folder_and_writes_executed_copies(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    first = _notebook(src / "01_a.ipynb", "import os; open('marker.txt', 'w').write(os.getcwd())", "print(6 * 7)")
    second = _notebook(src / "02_b.ipynb", "print(open('marker.txt').read())")
    out = tmp_path / "build"
    seconds = runner.run([first, second], "smoke", out)
    assert list(seconds) == ["01_a", "02_b"] and all(s > 0 for s in seconds.values())
    executed = nbformat.read(str(out / "01_a.ipynb"), as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"
    assert executed.cells[1].metadata["execution"]["shell.execute_reply"]   # nbclient's cell timings are kept
    second_out = nbformat.read(str(out / "02_b.ipynb"), as_version=4)
    assert second_out.cells[0].outputs[0]["text"].strip() == str(src)       # cwd = the notebook's folder
    assert not [p for p in out.iterdir() if p.name.startswith(".")]         # no temp file left behind


def test_a_failing_cell_stops_the_run_and_keeps_the_partial_notebook(tmp_path, capsys):
    bad = _notebook(tmp_path / "01_bad.ipynb", "x = 1", "raise ValueError('the cell that fails')", "print('never')")
    after = _notebook(tmp_path / "02_after.ipynb", "print('must not run')")
    out = tmp_path / "build"
    assert runner.main([str(bad), str(after), "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the cell that fails" in err and str(out) in err
    partial = json.loads((out / "01_bad.ipynb").read_text())
    assert partial["cells"][1]["outputs"][0]["ename"] == "ValueError"
    assert "outputs" not in partial["cells"][2] or not partial["cells"][2]["outputs"]
    assert not (out / "02_after.ipynb").exists()


def test_a_missing_notebook_is_refused_before_anything_runs(tmp_path, capsys):
    ok = _notebook(tmp_path / "01_ok.ipynb", "print(1)")
    assert runner.main([str(ok), str(tmp_path / "02_missing.ipynb"), "--out-dir", str(tmp_path / "out")]) == 2
    assert "02_missing.ipynb" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_course_notebooks_are_the_numbered_ones_in_order():
    names = [p.name for p in runner.course_notebooks()]
    assert names == sorted(names) and len(names) >= 10
    assert all(n[:2].isdigit() and n[2] == "_" for n in names)


@pytest.mark.skipif(__import__("os").name != "posix", reason="IPC transport is for Linux and macOS")
def test_kernels_talk_over_ipc_sockets_that_are_removed_after(tmp_path, monkeypatch):
    sockets = tmp_path / "tmp"
    sockets.mkdir()
    monkeypatch.setattr(runner.tempfile, "tempdir", str(sockets))
    nb = _notebook(tmp_path / "01_ipc.ipynb",
                   "import json, ipykernel.connect\n"
                   "print(json.load(open(ipykernel.connect.get_connection_file()))['transport'])")
    runner.run([nb], "smoke", tmp_path / "build")
    executed = nbformat.read(str(tmp_path / "build" / "01_ipc.ipynb"), as_version=4)
    assert executed.cells[0].outputs[0]["text"].strip() == "ipc"
    assert not [p for p in sockets.iterdir() if p.name.startswith("nb-")]   # the socket folder is gone


def test_counts_the_checkpoints_each_notebook_writes(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "kept-000000000000.pt").write_bytes(b"loaded, not rewritten")
    writes = _notebook(tmp_path / "01_train.ipynb",
                       f"from pathlib import Path\nPath({str(cache)!r}, 'new-111111111111.pt').write_bytes(b'trained')")
    reads = _notebook(tmp_path / "02_load.ipynb", f"open({str(cache / 'kept-000000000000.pt')!r}, 'rb').read()")
    written = {}
    runner.run([writes, reads], "smoke", tmp_path / "build", cache=cache, written=written)
    assert written == {"01_train": ["new-111111111111.pt"], "02_load": []}
    out = capsys.readouterr().out
    assert "1 checkpoint(s) written" in out and "0 checkpoint(s) written" in out


def test_a_rewritten_checkpoint_counts_as_written():
    before = {"a.pt": (10, 1), "b.pt": (10, 1)}
    assert runner.written_checkpoints(before, {"a.pt": (10, 1), "b.pt": (12, 2), "c.pt": (1, 3)}) == ["b.pt", "c.pt"]
    assert runner.written_checkpoints(before, dict(before)) == []
    assert runner._cache_state(__import__("pathlib").Path("/nonexistent-cache")) == {}


def test_the_notebooks_share_a_prediction_folder_kept_for_the_next_run_of_the_same_code(tmp_path, monkeypatch):
    """A model evaluated in one notebook is served to the next from `<cache>/predictions/<preset>/` (real
    kernels, helpers.evaluation.cache_predictions); the folder stays, so the next run computes nothing,
    entries of another code version are removed when a run starts, and share_predictions=False leaves
    each notebook on its own. Every kernel gets HELPERS_CACHE_PREDICTIONS=1 (the cache's switch), shared
    folder or not, and the runner's own environment is left as it was."""
    from helpers._prediction_cache import code_version
    monkeypatch.delenv("HELPERS_PREDICTION_CACHE_DIR", raising=False)
    monkeypatch.delenv("HELPERS_CACHE_PREDICTIONS", raising=False)
    setup = ("import os, torch\n"
             "from helpers.evaluation import cache_predictions, predict_logits\n"
             "from helpers.data import synthetic_cifar\n"
             "from helpers.models import course_cnn\n"
             "torch.manual_seed(0)\n"
             "logits = predict_logits(course_cnn(0.25), synthetic_cifar(64, 32, seed=0).test)\n"
             "print(os.environ.get('HELPERS_PREDICTION_CACHE_DIR'), cache_predictions.hits,\n"
             "      os.environ.get('HELPERS_CACHE_PREDICTIONS'))")
    first = _notebook(tmp_path / "01_a.ipynb", setup)
    second = _notebook(tmp_path / "02_b.ipynb", setup)
    out, cache = tmp_path / "build", tmp_path / "cache"
    folder = cache / "predictions" / "smoke"

    def outputs():
        return [nbformat.read(str(out / name), as_version=4).cells[0].outputs[0]["text"].split()
                for name in ("01_a.ipynb", "02_b.ipynb")]

    counts = {}
    runner.run([first, second], "smoke", out, cache=cache, evaluations=counts)
    assert outputs() == [[str(folder), "0", "1"], [str(folder), "1", "1"]]      # computed in 01, served in 02
    assert counts == {"found": 0, "stored": 1}
    stored = list(folder.glob("*.pt"))
    assert len(stored) == 1 and stored[0].name.startswith(code_version() + "-")
    assert "HELPERS_PREDICTION_CACHE_DIR" not in os.environ and "HELPERS_CACHE_PREDICTIONS" not in os.environ
    stale = folder / f"000000000000-{'0' * 40}.pt"
    stale.write_bytes(b"written by other code")

    counts = {}
    runner.run([first, second], "smoke", out, cache=cache, evaluations=counts)
    assert [line[1] for line in outputs()] == ["1", "1"]               # the next run computes nothing
    assert counts == {"found": 1, "stored": 0} and not stale.exists()

    runner.run([first, second], "smoke", out, cache=cache, share_predictions=False)
    assert outputs() == [["None", "0", "1"], ["None", "0", "1"]]


def test_make_run_timings_are_written_with_what_they_ran_on(tmp_path):
    """`save_timings` (moved here from helpers.results: only the runner writes timings files)."""
    path = runner.save_timings("smoke", {"01_data_and_models": 45, "02_train_paired_models": 141})
    blob = json.loads(path.read_text())
    assert path.name == "timings.json" and path.parent.name == "smoke"
    assert blob["seconds"] == {"01_data_and_models": 45.0, "02_train_paired_models": 141.0}
    assert blob["total_seconds"] == 186.0 and blob["preset"] == "smoke"
    for key in ("precision", "device", "device_name", "torch", "git_commit", "date"):
        assert key in blob
    with pytest.raises(ValueError):
        runner.save_timings("smoke", {"01_data_and_models": float("nan")})   # finite numbers only
