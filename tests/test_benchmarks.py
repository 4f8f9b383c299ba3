"""The evaluation benchmark runs end to end and reports what it promises (speed itself is measured by
running it, never asserted in a test)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.evaluation import EVAL_BATCH_SIZE

ROOT = Path(__file__).resolve().parents[1]


def test_eval_speed_reports_every_batch_size_and_the_baseline_in_one_json_line():
    env = {k: v for k, v in os.environ.items() if k != "CIFAR10_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_speed.py"), "--preset", "smoke",
                          "--synthetic", "--sizes", "100", "--repeats", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["preset"] == "smoke" and result["data_source"] == "synthetic" and result["images"] == 10_000
    assert set(result["images_per_second"]) == {"100", str(EVAL_BATCH_SIZE), "500"}
    assert all(v > 0 for v in result["images_per_second"].values())
    assert result["baseline_batch"] == 500 and result["default_batch"] == EVAL_BATCH_SIZE
    assert result["best_batch"] in (100, EVAL_BATCH_SIZE, 500)
    rates = {int(k): v for k, v in result["images_per_second"].items()}
    assert abs(result["default_vs_baseline"] - rates[EVAL_BATCH_SIZE] / rates[500]) < 0.01


def test_recipe_ablation_refuses_a_preset_without_airbenchs_network_and_unknown_variants():
    script = str(ROOT / "benchmarks" / "recipe_ablation.py")
    wrong = subprocess.run([sys.executable, script, "--preset", "cpu"], capture_output=True, text=True)
    assert wrong.returncode != 0 and "does not use airbench's network" in wrong.stderr
    unknown = subprocess.run([sys.executable, script, "--variants", "full,wings"], capture_output=True, text=True)
    assert unknown.returncode != 0 and "unknown variant 'wings'" in unknown.stderr
