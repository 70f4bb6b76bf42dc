"""A run directory shared by processes and reruns: step locks, table upserts, leftover temporaries,
workers of a killed step, and checkpoint fingerprints that make later steps redo stale rounds."""
import os
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

from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.errors import UserError
from lottery_xai.pipeline.test import evaluate_rounds
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.pipeline.roar import roar_step
from lottery_xai.pipeline.activations import activations_step
from lottery_xai.pipeline.cavs import cavs_step
from lottery_xai.safe_io import upsert_table

from conftest import run_steps, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
quiet = lambda *_: None  # noqa: E731
SMALL = ["prune_iterations=1", "train.epochs=1"]  # rounds 0 and 1


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += [c for c in children if c not in found]
            found |= set(children)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    """Steps 1 and 3 of a two-round tiny run: (overrides, run)."""
    overrides = tiny_overrides(tiny_data, tmp_path_factory.mktemp("finished"), *SMALL)
    cfg = load_config(None, overrides)
    LotteryRun(rd.RunDir(cfg), CPU, log=quiet).run_rounds([0, 1])
    activations_step(rd.RunDir(cfg), CPU, [0, 1], log=quiet)
    return overrides, rd.RunDir(cfg)


def _copy(run: rd.RunDir, logs: Path, folders, overrides):
    """The same run in another logs folder, with ``folders`` copied: (overrides, run)."""
    overrides = [o for o in overrides if not o.startswith("logs=")] + [f"logs={logs}"]
    copy = rd.RunDir(load_config(None, overrides))
    for folder in folders:
        shutil.copytree(run.root / folder, copy.root / folder)
    return overrides, copy


# ---------------------------------------------------------------- locks

HOLD = """
import sys, time
from lottery_xai.config import load_config
from lottery_xai.rundir import RunDir
with RunDir(load_config(None, sys.argv[2:])).lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


def test_a_second_process_on_the_same_step_stops_with_one_line(finished, tmp_path, monkeypatch):
    overrides, run = _copy(finished[1], tmp_path, ["pruning"], finished[0])
    cfg = run.cfg
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "test", *overrides], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "main_lth_test.py", *_sets(overrides)], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0] == (f"error: run directory '{run.root}' is in use by step test (pid {holder.pid}); "
                            "wait for it or stop it")
        with pytest.raises(UserError, match="in use by step test"):
            evaluate_rounds(rd.RunDir(cfg), CPU, [0], log=quiet)
        assert not run.test_metrics().exists()
        with run.lock("activations"):  # another step of the same run is not blocked
            pass
        monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 takes the lock
        with run.lock("test"):
            pass
        monkeypatch.delenv("RANK")
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: nothing to clean up by hand
    evaluate_rounds(rd.RunDir(cfg), CPU, [0, 1], log=quiet)
    assert list(pd.read_csv(run.test_metrics())["round"]) == [0, 1]


def test_the_lock_is_reentrant_and_released_on_error(finished, tmp_path):
    _, run = _copy(finished[1], tmp_path, ["pruning"], finished[0])
    with pytest.raises(RuntimeError):
        with run.lock("cavs"):
            with run.lock("cavs"):
                raise RuntimeError
    with run.lock("cavs"):
        pass


UPSERT = """
import sys
from lottery_xai.safe_io import upsert_table
k = int(sys.argv[2])
for i in range(25):
    upsert_table(sys.argv[1], [{"round": i, "writer": k, "value": 0.1 * k + i / 3}], keys=["round", "writer"],
                 sort=["round", "writer"], columns=["round", "writer", "value"])
"""


def test_concurrent_table_updates_lose_no_row(tmp_path):
    path = tmp_path / "t" / "table.csv"
    procs = [subprocess.Popen([sys.executable, "-c", UPSERT, str(path), str(k)], cwd=ROOT, env=_env())
             for k in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    table = pd.read_csv(path)
    assert len(table) == 4 * 25
    assert list(zip(table["round"], table["writer"])) == [(i, k) for i in range(25) for k in range(4)]


def test_upsert_replaces_by_key_and_round_trips_exactly(tmp_path):
    path = tmp_path / "table.csv"
    cols = ["round", "class", "value"]
    rows = [{"round": r, "class": c, "value": v} for r, c, v in [(1, "NA", 0.1 + 0.2), (0, "None", 1 / 3), (0, "b", np.nan)]]
    upsert_table(path, rows, keys=["round", "class"], sort=["round", "class"], columns=cols)
    once = path.read_bytes()
    upsert_table(path, [], keys=["round", "class"], sort=["round", "class"], columns=cols)
    assert path.read_bytes() == once  # floats, names that look like missing values and NaN survive a re-read
    table = upsert_table(path, [{"round": 1, "class": "NA", "value": 2.0}], keys=["round", "class"],
                         sort=["round", "class"], columns=cols)
    assert list(table["class"]) == ["None", "b", "NA"] and table["value"].iloc[2] == 2.0
    table = upsert_table(path, [], keys=["round"], sort=["round"], columns=cols, replace={"round": 0})
    assert list(table["round"]) == [1]


# ---------------------------------------------------------------- temporaries and killed steps

def test_leftover_temporaries_of_the_step_are_removed(finished, tmp_path):
    overrides, run = _copy(finished[1], tmp_path, ["pruning", "activations"], finished[0])
    stale = [run.activations_dir(0) / ".train_layer3.npy.123.tmp", run.root / "activations" / ".x.npy.9.tmp",
             run.root / ".config.activations.yaml.abc.tmp"]
    others = [run.root / "plots" / ".heatmaps_gradcam.png.xyz.tmp", run.root / "cavs" / "round_00" / ".layer3.npz.7.tmp"]
    for p in stale + others:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * 4096)
    activations_step(run, CPU, [0, 1], log=quiet)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)  # other steps' folders are theirs to clean
    with run.lock("heatmaps"):
        assert not others[0].exists() and others[1].exists()
    with run.lock("cavs"):
        assert not others[1].exists()


SLOW_STEP3 = """
import runpy, sys, time
import lottery_xai.activations as acts
write = acts.StreamWriter.write
def slow(self, start, block):
    write(self, start, block)
    time.sleep(0.5)
acts.StreamWriter.write = slow
sys.argv = ["main_lth_save_activations.py", *sys.argv[1:]]
runpy.run_path("main_lth_save_activations.py", run_name="__main__")
"""


def test_killed_step3_rerun_leaves_no_temporary_and_the_same_outputs(finished, tmp_path):
    reference = finished[1]
    overrides, run = _copy(reference, tmp_path, ["pruning"], finished[0])
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STEP3, *_sets(overrides)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.perf_counter() + 120
    while not list(run.root.joinpath("activations").rglob(".*.tmp")) and time.perf_counter() < deadline:
        assert proc.poll() is None, "step 3 ended before it was killed"
        time.sleep(0.02)
    proc.kill()  # SIGKILL, in the middle of a memory-mapped write
    proc.wait()
    assert list(run.root.joinpath("activations").rglob(".*.tmp")), "no temporary left to clean: not killed mid-write"
    subprocess.run([sys.executable, "main_lth_save_activations.py", *_sets(overrides)], cwd=ROOT, env=_env(),
                   check=True, capture_output=True, timeout=300)
    assert not [p for p in run.root.rglob("*") if p.name.endswith(".tmp")]
    names = sorted(p.relative_to(reference.root) for p in reference.root.joinpath("activations").rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(run.root) for p in run.root.joinpath("activations").rglob("*") if p.is_file())
    for rel in names:
        if rel.suffix == ".npy":
            assert np.array_equal(np.load(reference.root / rel), np.load(run.root / rel)), rel
        else:  # fingerprints.json and the lock files
            assert (reference.root / rel).read_bytes() == (run.root / rel).read_bytes(), rel


def test_killed_step4_leaves_no_worker_alive(finished, tmp_path):
    overrides, run = _copy(finished[1], tmp_path, ["pruning", "activations"], finished[0])
    overrides += ["cav.n_random=40", "cav.n_jobs=2"]  # several seconds of fits in two worker processes
    proc = subprocess.Popen([sys.executable, "main_lth_generate_cavs.py", *_sets(overrides)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    children, workers_since = set(), None
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        assert proc.poll() is None, "step 4 ended before it was killed: give it more work"
        children |= _descendants(proc.pid)
        workers = [c for c in children if "popen_loky_posix" in _cmdline(c)]
        if len(workers) >= 2 and workers_since is None:
            workers_since = time.perf_counter()
        if workers_since is not None and time.perf_counter() - workers_since > 1.5:  # the workers are fitting
            break
        time.sleep(0.05)
    assert workers_since is not None and proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)  # the step alone, as the kernel's OOM killer or `kill -9` would
    proc.wait()
    end = time.perf_counter() + 10
    while any(_alive(c) for c in children) and time.perf_counter() < end:
        time.sleep(0.1)
    left = [c for c in children if _alive(c)]
    for c in left:
        os.kill(c, signal.SIGKILL)
    assert not left, f"children of the killed step 4 still alive: {[_cmdline(c) for c in left]}"


# ---------------------------------------------------------------- fingerprints

EXTRA = ["experiment_name=fp", "cav.n_random=3", "heatmaps.images_per_class=2", "heatmaps.methods=[gradcam,random]",
         "metrics.transform_methods=[gradcam]", "roar.percents=[0,50]", "roar.seeds=1", "roar.methods=[gradcam]", "roar.epochs=1",
         "heatmaps.batch_size=16"]


def _steps(cfg, log):
    run_steps(rd.RunDir(cfg), [0, 1], log=log)
    roar_step(rd.RunDir(cfg), CPU, [1], log=log)


def _outputs(run: rd.RunDir) -> dict[Path, int]:
    """mtime of every array file steps 2-7 and ROAR wrote (tables are compared by content)."""
    folders = ("activations", "cavs", "heatmaps", "roar")
    return {p: p.stat().st_mtime_ns for f in folders for p in run.root.joinpath(f).rglob("*") if p.suffix in (".npy", ".npz")}


def _tables(run: rd.RunDir) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_csv(p) for p in [run.test_metrics(), run.test_per_class(), run.cav_accuracy(),
                                             run.tcav_scores(), run.explanation_metrics(), run.roar_results()]}


def test_steps_redo_the_rounds_whose_checkpoint_changed(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, tmp_path, *SMALL, *EXTRA)
    cfg = load_config(None, overrides)
    run = rd.RunDir(cfg)
    LotteryRun(rd.RunDir(cfg), CPU, log=quiet).run_rounds([0, 1])
    _steps(cfg, quiet)
    before, tables = _outputs(run), _tables(run)
    prints = {step: run.fingerprints(step) for step in ("test", "activations", "cavs", "tcav", "heatmaps", "metrics", "roar")}
    assert prints["activations"]["round_01/train"] == run.round_fingerprint(1) != run.round_fingerprint(0)
    # step 7's stamp: both checkpoints, the content of the maps it read, and the TCAV agreement rows
    assert prints["metrics"]["round_01"].startswith(f"{run.round_fingerprint(1)}+{run.round_fingerprint(0)}+maps:")
    assert prints["metrics"]["round_01"].endswith("+tcav")

    # nothing changed: nothing is recomputed
    logged = []
    _steps(cfg, logged.append)
    assert _outputs(run) == before
    assert not [line for line in logged if "stale" in line]
    for name, table in _tables(run).items():
        pd.testing.assert_frame_equal(table, tables[name], check_exact=True)

    # step 1 redoes round 1 with another learning rate in the same folder, whose record of the run's settings is
    # removed by hand first (with it, the folder refuses other settings: tests/pipeline/test_run_contents.py)
    other = load_config(None, overrides + ["train.lr=0.05"])
    assert rd.RunDir(other).root == run.root
    with pytest.raises(UserError, match=r"other settings \(train.lr 0.1 there, 0.05 now\)"):
        LotteryRun(rd.RunDir(other), CPU, force=True, log=quiet).run_rounds([1])
    run.settings_file().unlink()
    run.config_file("pruning").unlink()
    old_fp, old_acts = run.round_fingerprint(1), np.load(run.activation_file(1, "test", "layer3"))
    LotteryRun(rd.RunDir(other), CPU, force=True, log=quiet).run_rounds([1])
    assert run.round_fingerprint(1) != old_fp
    with pytest.raises(UserError, match=r"activations output round_01/train .* stale .*rerun step 3"):
        cavs_step(rd.RunDir(other), [0, 1], log=quiet)  # CAVs from activations of the old checkpoint are refused
    logged = []
    _steps(other, logged.append)
    after = _outputs(run)
    assert after.keys() == before.keys()
    changed = {p for p in before if after[p] != before[p]}
    assert changed == {p for p in before if "round_01" in p.parts}
    assert not np.array_equal(np.load(run.activation_file(1, "test", "layer3")), old_acts)
    stale = [line for line in logged if "stale" in line]
    assert stale and all(line.startswith("round 1: outputs stale (step 1 was redone), recomputing") for line in stale)
    for step in prints:
        now = run.fingerprints(step)
        assert now.keys() == prints[step].keys()
        for unit, value in now.items():
            assert (value == prints[step][unit]) == unit.startswith("round_00"), (step, unit)
    new = _tables(run)
    for name, table in new.items():
        if "round" in table:
            pd.testing.assert_frame_equal(table[table["round"] == 0], tables[name][tables[name]["round"] == 0],
                                          check_exact=True)  # round 0 kept as it was
            assert len(table) == len(tables[name])  # round 1 replaced, not duplicated
    assert not new["roar.csv"]["train_seconds"].equals(tables["roar.csv"]["train_seconds"])  # retrained
