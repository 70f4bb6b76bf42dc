"""Fault injection: steps 1, 3, 4 and 6 killed (SIGKILL) at seeded random moments, then rerun.

For each step a reference run is made without interruption; a second run of the same config is
killed while the step works, at a moment drawn from a seeded generator, and the same command is
run again. The rerun must leave the same outputs as the reference (checkpoints tensor for
tensor, tables value for value except wall-clock columns, arrays element for element), no
temporary files anywhere in the run directory, and no live child process of the killed step
(step 4 fits CAVs in worker processes).
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lottery_xai.config import load_config
from lottery_xai.rundir import RunDir

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261202
STEPS = {  # step number -> (script, the run folders the step writes)
    1: ("main_lth_pruning.py", ("pruning",)),
    3: ("main_lth_save_activations.py", ("activations",)),
    4: ("main_lth_generate_cavs.py", ("cavs",)),
    6: ("main_heatmap_save.py", ("heatmaps", "plots")),
}
ORDER = (1, 3, 4, 6)
EXTRA = ["train.epochs=3", "cav.n_random=12", "cav.n_jobs=2", "heatmaps.images_per_class=3",
         "heatmaps.ig_steps=8", "heatmaps.grid_images=2"]
TIME_COLUMNS = {"train_seconds", "seconds"}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONHASHSEED="0")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _cmd(step: int, overrides: list[str]) -> list[str]:
    args = [sys.executable, STEPS[step][0]]
    for o in overrides:
        args += ["--set", o]
    return args


def _run(step: int, overrides: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(_cmd(step, overrides), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return time.perf_counter() - start


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for c in map(int, children):
                if c not in found:
                    found.add(c)
                    todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_during(step: int, overrides: list[str], delay: float) -> set[int]:
    """Start the step, SIGKILL it after ``delay`` seconds (or when it ends first); return the children it had."""
    proc = subprocess.Popen(_cmd(step, overrides), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    children: set[int] = set()
    end = time.perf_counter() + delay
    while time.perf_counter() < end and proc.poll() is None:
        children |= _descendants(proc.pid)
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)  # the step alone: its workers must notice by themselves
    proc.wait()
    return children


def _same_checkpoint(a: Path, b: Path) -> None:
    x, y = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert set(x) == set(y), a
    for key in x:
        if key in TIME_COLUMNS:
            continue
        if isinstance(x[key], dict):
            assert set(x[key]) == set(y[key]), (a, key)
            for name in x[key]:
                assert torch.equal(x[key][name], y[key][name]), (a, key, name)
        else:
            assert x[key] == y[key], (a, key)


def _same_outputs(ref: Path, got: Path, folders) -> None:
    for folder in folders:
        names = sorted(p.relative_to(ref) for p in (ref / folder).rglob("*") if p.is_file())
        got_names = sorted(p.relative_to(got) for p in (got / folder).rglob("*") if p.is_file())
        assert names == got_names, folder
        for rel in names:
            a, b = ref / rel, got / rel
            if a.suffix == ".pt":
                _same_checkpoint(a, b)
            elif a.suffix == ".csv":
                x, y = pd.read_csv(a), pd.read_csv(b)
                x = x.drop(columns=[c for c in x.columns if c in TIME_COLUMNS])
                y = y.drop(columns=[c for c in y.columns if c in TIME_COLUMNS])
                pd.testing.assert_frame_equal(x, y, check_exact=True)
            elif a.suffix == ".npy":
                x, y = np.load(a), np.load(b)
                assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), rel
            elif a.suffix == ".npz":
                with np.load(a) as x, np.load(b) as y:
                    assert x.files == y.files, rel
                    for k in x.files:
                        assert np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f"), (rel, k)
            elif a.suffix == ".png":
                continue  # figures are redrawn from the arrays compared above
            else:
                assert a.read_bytes() == b.read_bytes(), rel


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """An uninterrupted run of steps 1, 3, 4, 6 and the time each step took."""
    logs = tmp_path_factory.mktemp("reference")
    overrides = tiny_overrides(tiny_data, logs, *EXTRA)
    times = {step: _run(step, overrides) for step in ORDER}
    return RunDir(load_config(None, overrides)).root, times


@pytest.mark.parametrize("step", ORDER)
def test_killed_step_reruns_to_identical_outputs(step, reference, tiny_data, tmp_path):
    ref_root, times = reference
    overrides = tiny_overrides(tiny_data, tmp_path, *EXTRA)
    root = RunDir(load_config(None, overrides)).root
    # the steps before this one: copied from the reference (their outputs are what this step reads)
    root.mkdir(parents=True)
    for before in ORDER[:ORDER.index(step)]:
        for folder in STEPS[before][1]:
            shutil.copytree(ref_root / folder, root / folder, dirs_exist_ok=True)
    rng = random.Random(f"{SEED}-{step}")
    # past the ~2-3 s of start-up (imports), somewhere inside the step's own work
    delay = rng.uniform(0.45, 0.9) * times[step]
    children = _kill_during(step, overrides, delay)
    deadline = time.perf_counter() + 10
    while any(_alive(c) for c in children) and time.perf_counter() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)], f"step {step}: children outlived the killed step"
    _run(step, overrides)
    _same_outputs(ref_root, root, STEPS[step][1])
    stray = [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == "resume.pt"]
    assert not stray, stray
