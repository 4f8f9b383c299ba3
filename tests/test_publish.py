"""Publishing executed notebooks: progress noise reduced to final lines, errors and stale runs refused."""

import json

import pytest

from helpers._paths import project_root
from coursetools.publish import PublishError, clean_notebook, provenance_commit, publish_executed


def _widget_state(model="box"):
    return {"application/vnd.jupyter.widget-state+json": {"state": {
        model: {"state": {"children": ["IPY_MODEL_left", "IPY_MODEL_bar", "IPY_MODEL_right"]}},
        "left": {"state": {"value": "train: 100%"}},
        "bar": {"state": {"value": 234, "max": 234}},
        "right": {"state": {"value": " 234/234 [00:15&lt;00:00, epoch=3, test_acc=0.550]"}},
    }}}


def _nb(outputs, *, executed=True, commit="abc123"):
    env = {"output_type": "stream", "name": "stdout", "text": f"torch        2.x\ngit_commit   {commit}\n"}
    return {"cells": [
        {"cell_type": "markdown", "source": ["# title"], "metadata": {}},
        {"cell_type": "code", "source": ["print_environment()"], "metadata": {}, "execution_count": 1, "outputs": [env]},
        {"cell_type": "code", "source": ["train()"], "metadata": {}, "execution_count": 2 if executed else None,
         "outputs": outputs},
    ], "metadata": {"widgets": _widget_state()}, "nbformat": 4, "nbformat_minor": 5}


def test_progress_widgets_and_redraws_become_their_final_line():
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "box"}, "text/plain": "train:   0%"}}
    redraw = {"output_type": "stream", "name": "stderr", "text": "decode:  10%\rdecode:  50%\rdecode: 100%\n"}
    nb = clean_notebook(_nb([widget, redraw]))
    outputs = nb["cells"][2]["outputs"]
    assert len(outputs) == 1 and outputs[0]["output_type"] == "stream"     # consecutive lines merged
    lines = outputs[0]["text"].splitlines()
    assert lines[0].startswith("train: 100%|██████████|") and "test_acc=0.550" in lines[0] and "&lt;" not in lines[0]
    assert lines[1] == "decode: 100%"
    assert "widgets" not in nb["metadata"]


def test_errors_and_unexecuted_cells_are_refused_by_cell():
    error = {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}
    with pytest.raises(PublishError, match="02_x.ipynb: code cell 2 raised ValueError: bad"):
        clean_notebook(_nb([error]), "02_x.ipynb")
    with pytest.raises(PublishError, match="code cell 2 has not been executed"):
        clean_notebook(_nb([], executed=False))


def test_publishing_needs_every_notebook_from_one_clean_commit(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    build = root / "build" / "workshop"
    build.mkdir(parents=True)
    for name in ("01_a.ipynb", "02_b.ipynb"):
        (root / "notebooks" / name).write_text("{}")
    monkeypatch.setattr("coursetools.publish.project_root", lambda: root)
    (build / "01_a.ipynb").write_text(json.dumps(_nb([])))
    with pytest.raises(PublishError, match="02_b.ipynb"):
        publish_executed("workshop")                                       # one missing
    (build / "02_b.ipynb").write_text(json.dumps(_nb([], commit="def456+dirty")))
    with pytest.raises(PublishError, match="one clean commit"):
        publish_executed("workshop")
    assert not (root / "docs").exists()                                    # nothing written on refusal
    (build / "02_b.ipynb").write_text(json.dumps(_nb([])))
    written = publish_executed("workshop")
    assert [p.name for p in written] == ["01_a.ipynb", "02_b.ipynb"]
    assert provenance_commit(json.loads(written[0].read_text())) == "abc123"


# ----------------------------------------------------------------------------------------------
# The instructor's guide and the README's workshop row are written from the committed run


def test_the_guide_and_the_readme_row_say_what_the_committed_workshop_run_says():
    """docs/workshop.md's generated blocks and the README's workshop row equal what `python -m
    coursetools.publish guide` writes from results/workshop/: no number there is typed by hand or stale."""
    from coursetools.publish import render_guide
    root = project_root()
    guide, readme = (root / "docs" / "workshop.md").read_text(), (root / "README.md").read_text()
    new_guide, new_readme = render_guide(guide, readme, root=root)
    assert new_guide == guide, "docs/workshop.md is stale: run `python -m coursetools.publish guide`"
    assert new_readme == readme, "README.md's workshop row is stale: run `python -m coursetools.publish guide`"


def test_the_guide_follows_the_results_and_says_when_a_lesson_is_not_shown(tmp_path):
    """Change one number in a copy of the results: the guide changes with it, and a lesson beyond its
    threshold is reported as not shown."""
    import shutil
    from coursetools.publish import render_guide
    root = project_root()
    shutil.copytree(root / "results" / "workshop", tmp_path / "results" / "workshop")
    path = tmp_path / "results" / "workshop" / "03_weight_averaging.json"
    blob = json.loads(path.read_text())
    blob["results"]["pairs"]["independent"]["midpoint_naive"] = 0.3125
    path.write_text(json.dumps(blob))
    guide, _ = render_guide((root / "docs" / "workshop.md").read_text(), (root / "README.md").read_text(),
                            root=tmp_path)
    assert "independent pair, naive midpoint: 31.2% (lesson: ≤ 20%) — **not shown**" in guide


def test_the_guide_refuses_a_file_without_its_generated_blocks():
    from coursetools.publish import PublishError, render_guide
    root = project_root()
    with pytest.raises(PublishError, match=r"workshop\.md has no '<!-- generated: lessons"):
        render_guide("# a guide without markers\n", (root / "README.md").read_text(), root=root)
    with pytest.raises(PublishError, match="one preset row marked"):
        render_guide((root / "docs" / "workshop.md").read_text(), "# no table\n", root=root)


def test_the_timing_table_gains_a_column_per_second_run_of_the_same_commit():
    from coursetools.publish import PublishError, workshop_timing
    base = {"preset": "workshop", "precision": "fp32", "device_name": "cpu (2 threads, AMD EPYC, AVX2)",
            "torch": "2.14.1", "git_commit": "abc123", "seconds": {"01_a": 30.0, "02_b": 100.0},
            "total_seconds": 130.0}
    bf16 = dict(base, precision="bf16", device_name="cpu (2 threads, AMD EPYC, AVX-512 BF16)",
                seconds={"01_a": 20.0, "02_b": 60.0}, total_seconds=80.0)
    table = workshop_timing(base, [bf16])
    assert "| notebook | `workshop`, float32, a CPU (2 threads, AMD EPYC, AVX2) | `workshop`, bfloat16, a CPU (2 threads, " \
           "AMD EPYC, AVX-512 BF16) |" in table
    assert "| 02_b | 100 s | 60 s |" in table and "**130 s (2.2 min)** | **80 s (1.3 min)**" in table
    assert "The other column is another cold run of the same commit" in table
    assert "other column" not in workshop_timing(base)
    with pytest.raises(PublishError, match="commit abc123"):
        workshop_timing(base, [dict(bf16, git_commit="def456")])
    with pytest.raises(PublishError, match="same notebooks"):
        workshop_timing(base, [dict(bf16, seconds={"01_a": 20.0})])


def test_the_readme_results_say_what_the_committed_cpu_run_says():
    """README.md's cpu results section (table, calibration, chart, time) equals what `python -m
    coursetools.publish readme` writes from results/cpu/: no number there is typed by hand or stale."""
    from coursetools.publish import render_readme
    root = project_root()
    readme = (root / "README.md").read_text()
    assert render_readme(readme, root=root) == readme, "README.md is stale: run `python -m coursetools.publish readme`"


def test_the_readme_results_name_the_schedule_the_cpu_run_trained_with(tmp_path):
    """The results section says which model and schedule made its numbers, read from notebook 01's results
    (so a preset changed after the run cannot make the README claim the new schedule)."""
    from coursetools.publish import render_readme
    root, folder = _cpu_copy(tmp_path)
    first = json.loads((folder / "01_data_and_models.json").read_text())
    first["results"]["train_config"]["num_epochs"] = 7
    first["results"]["model"]["width"] = 0.75
    (folder / "01_data_and_models.json").write_text(json.dumps(first))
    text = render_readme((root / "README.md").read_text(), root=tmp_path)
    assert "course CNN ×0.75" in text and "7 epochs per model" in text
    real = json.loads((root / "results" / "cpu" / "01_data_and_models.json").read_text())["results"]
    assert f"{real['train_config']['num_epochs']} epochs per model" in (root / "README.md").read_text()


def _cpu_copy(tmp_path):
    import shutil
    root = project_root()
    shutil.copytree(root / "results" / "cpu", tmp_path / "results" / "cpu")
    return root, tmp_path / "results" / "cpu"


def test_the_readme_results_follow_the_run_and_refuse_another_commit(tmp_path):
    from coursetools.publish import render_readme
    root, folder = _cpu_copy(tmp_path)
    readme = (root / "README.md").read_text()
    path = folder / "05_prediction_ensembling.json"
    blob = json.loads(path.read_text())
    blob["results"]["temperature_scaling"]["ensemble of 2"]["temperature"] = 3.25
    path.write_text(json.dumps(blob))
    new = render_readme(readme, root=tmp_path)
    assert "T =\n3.25" in new or "T = 3.25" in new.replace("\n", " ")
    assert "under-confident" not in new     # the sentence follows the fitted temperature, not a fixed story
    blob["provenance"]["git_commit"] = "0123456789ab"
    path.write_text(json.dumps(blob))
    with pytest.raises(PublishError, match="05_prediction_ensembling 0123456789ab"):
        render_readme(readme, root=tmp_path)
    with pytest.raises(PublishError, match="no '<!-- generated: cpu results"):
        render_readme("# a README without the block\n", root=tmp_path)


def test_the_cpu_timing_table_shows_cold_and_labelled_runs(tmp_path):
    from coursetools.publish import cpu_timing
    base = {"preset": "cpu", "precision": "bf16", "device_name": "cpu (2 threads, Intel Xeon, AMX)",
            "torch": "2.14.1", "git_commit": "abc123", "seconds": {"01_a": 300.0, "02_b": 2500.0},
            "total_seconds": 2800.0, "checkpoints_written": 40}
    warm = dict(base, git_commit="def456", seconds={"01_a": 20.0, "02_b": 40.0}, total_seconds=60.0,
                checkpoints_written=0, label="warm, from an imported archive")
    (tmp_path / "timings.json").write_text(json.dumps(base))
    text = cpu_timing(tmp_path)
    assert "2,800 s (46.7 min), over the course's 45-minute budget" in text
    assert "Not measured for this preset: a whole run in float32" in text
    (tmp_path / "timings-warm.json").write_text(json.dumps(warm))
    text = cpu_timing(tmp_path)
    assert "| 02_b | 2,500 s | 40 s |" in text and "| checkpoints written | 40 | 0 |" in text
    assert ('The column "warm, from an imported archive" is a run of commit `def456` with the same preset '
            '(60 s in all, within the five-minute target for a run that retrains nothing)') in text
    assert "stored evaluations found" not in text           # older timings files do not record them
    served = dict(warm, label="served, warm", total_seconds=400.0, evaluations={"found": 248, "stored": 3})
    (tmp_path / "timings-served.json").write_text(json.dumps(served))
    text = cpu_timing(tmp_path)
    assert "(400 s in all, over the five-minute target" in text
    assert "| stored evaluations found at the start / computed and stored | — | 248 / 3 | — |" in text
    (tmp_path / "timings-served.json").unlink()
    (tmp_path / "timings-warm.json").write_text(json.dumps(dict(warm, label=None)))
    with pytest.raises(PublishError, match="commit abc123, not def456"):
        cpu_timing(tmp_path)
    (tmp_path / "timings-warm.json").write_text(json.dumps(dict(warm, seconds={"01_a": 1.0})))
    with pytest.raises(PublishError, match="same preset and notebooks"):
        cpu_timing(tmp_path)
