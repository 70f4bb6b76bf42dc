"""The prepared benchmarks run: the GPU check's CPU dry run (every part, toy sizes) and the scale benchmark's
growth exponent."""
import importlib.util
import json
import math
import os
import subprocess
import sys

from conftest import ROOT

PARTS = ("env", "train", "steps", "gradcam", "cgc", "structured", "torchrun")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_runs_every_part(tmp_path):
    env = dict(os.environ, GPU_CHECK_CPU="1", OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("gpu_check (cpu mode")
    for part in PARTS:
        result = json.loads((tmp_path / f"{part}.json").read_text())
        assert result["status"] == "ok", (part, result)
        assert f"\n{part}: " in summary, part
    gradcam = json.loads((tmp_path / "gradcam.json").read_text())["result"]
    assert gradcam["gap_captum"] < 1e-4 and gradcam["gap_pytorch_grad_cam"] < 1e-4  # the three agree
    torchrun = json.loads((tmp_path / "torchrun.json").read_text())["result"]
    assert torchrun["backend"] == "gloo" and torchrun["all_reduce_ok"] and torchrun["gather_ok"]


def test_gpu_check_rejects_an_unknown_option(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, OUT=str(tmp_path)))
    assert done.returncode == 2 and "unknown option '--fast'" in done.stderr


def test_scale_growth_exponent():
    growth = _load("bench_scale").growth
    assert math.isclose(growth(1.0, 4.0, 10, 40), 1.0)  # cost proportional to work
    assert math.isclose(growth(1.0, 16.0, 10, 40), 2.0)  # quadratic
    assert math.isclose(growth(2.0, 2.0, 10, 40), 0.0)  # a fixed cost
    assert math.isnan(growth(1.0, 2.0, 10, 10))
