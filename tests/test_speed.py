"""coursetools.speed: the machine's speed on the course model, recorded with every `make run` time, and the
rough estimate of a committed run's time on another machine. No speed is asserted here."""

import json
import math

import pytest
import torch

from coursetools import publish, speed
from coursetools.runner import save_timings
from helpers.presets import get_preset


def test_measure_reports_finite_speeds_and_what_they_were_measured_at():
    preset = get_preset("smoke")
    before = torch.get_rng_state()
    got = speed.measure(preset, seconds=0.05)
    assert torch.equal(torch.get_rng_state(), before), "measure must leave the global random state alone"
    for key in ("train_images_per_second", "eval_images_per_second"):
        assert math.isfinite(got[key]) and got[key] > 0, key
    assert got["width"] == preset.width and got["train_batch"] == preset.train.batch_size
    assert got["precision"] in ("bf16", "fp32", "fp16") and got["device_name"]
    json.dumps(got)   # plain values: it goes into timings.json


def _timings(total, train, eval_, written):
    return {"total_seconds": total, "checkpoints_written": written,
            "host_speed": {"before": {"train_images_per_second": train - 100, "eval_images_per_second": eval_},
                           "after": {"train_images_per_second": train + 100, "eval_images_per_second": eval_}}}


def test_run_speed_is_the_mean_of_the_measurements_and_none_without_them():
    assert speed.run_speed(_timings(100, 2000, 8000, 5)) == {"train_images_per_second": 2000,
                                                              "eval_images_per_second": 8000}
    assert speed.run_speed({"total_seconds": 100}) is None
    assert speed.estimate_seconds({"total_seconds": 100}, {"train_images_per_second": 1}) is None


def test_estimate_scales_a_cold_run_by_training_speed_and_a_warm_run_by_evaluation_speed():
    here = {"train_images_per_second": 1000.0, "eval_images_per_second": 2000.0}
    # cold: 3,000 s on a machine training twice as fast -> 6,000 s here
    assert speed.estimate_seconds(_timings(3000, 2000, 8000, 63), here) == pytest.approx(6000)
    # warm (no checkpoint written): 600 s on a machine evaluating 4x as fast -> 2,400 s here
    assert speed.estimate_seconds(_timings(600, 2000, 8000, 0), here) == pytest.approx(2400)


def test_timings_file_keeps_the_machine_speed_and_the_guide_table_shows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_ROOT", str(tmp_path))
    measured = {"before": {"train_images_per_second": 1900.0, "eval_images_per_second": 9000.0},
                "after": {"train_images_per_second": 2100.0, "eval_images_per_second": 9400.0}}
    path = save_timings("smoke", {"01_a": 10.0, "02_b": 5.0}, checkpoints_written=2, host_speed=measured)
    saved = json.loads(path.read_text())
    assert saved["host_speed"] == measured
    old = dict(saved)
    del old["host_speed"]
    rows = publish._timing_rows([saved, old])
    assert rows[-1] == "| machine speed, course model (train / eval images/s) | 2,000 / 9,200 | not recorded |"
    assert not any("machine speed" in r for r in publish._timing_rows([old]))   # no row when no run has it


def test_a_failing_speed_measurement_never_stops_make_run(monkeypatch, capsys):
    from coursetools import runner

    def broken():
        raise RuntimeError("no kernel for this op on this device")

    monkeypatch.setattr(runner, "measure", broken)
    assert runner._speed("before the first notebook") is None
    assert "not measured (RuntimeError: no kernel for this op on this device)" in capsys.readouterr().out


def test_make_run_writes_both_measurements_into_timings_json(tmp_path, monkeypatch):
    import nbformat

    from coursetools import runner

    monkeypatch.setenv("HELPERS_ROOT", str(tmp_path))
    monkeypatch.setenv("HELPERS_PRESET", "smoke")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("print(1)")]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, str(tmp_path / "notebooks" / "01_a.ipynb"))
    calls = iter([{"train_images_per_second": 10.0, "eval_images_per_second": 20.0, "precision": "fp32"},
                  {"train_images_per_second": 30.0, "eval_images_per_second": 40.0, "precision": "fp32"}])
    monkeypatch.setattr(runner, "measure", lambda: next(calls))
    monkeypatch.setattr(runner, "course_notebooks", lambda root=None: [tmp_path / "notebooks" / "01_a.ipynb"])
    monkeypatch.setattr(runner, "checkpoint_dir", lambda: tmp_path / "checkpoints")
    assert runner.main([]) == 0
    saved = json.loads((tmp_path / "results" / "smoke" / "timings.json").read_text())
    assert saved["host_speed"] == {
        "before": {"train_images_per_second": 10.0, "eval_images_per_second": 20.0, "precision": "fp32"},
        "after": {"train_images_per_second": 30.0, "eval_images_per_second": 40.0, "precision": "fp32"}}
    assert list(saved["seconds"]) == ["01_a"] and saved["checkpoints_written"] == 0
