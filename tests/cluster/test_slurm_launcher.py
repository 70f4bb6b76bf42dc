"""The SLURM launcher on a real one-node SLURM (issue 21, item 4): bash_script/local_slurm.sh starts it
(``.ci/run`` installs Debian's slurm-wlm and munge first); the tests are skipped, with the reason, where
it cannot start (not root, no SLURM).

A tiny sweep (2 seeds, 2 rounds: step 1, step 2 per round and its merge, the replicates) through SLURM
writes the tables the local launcher writes (time columns aside; the checkpoints' fingerprints differ only
because a checkpoint records its training time); a task interrupted as SLURM preempts it is requeued by
submitit and completes from its files; a failing task is reported with its log and the launch exits 1.
"""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lottery_xai import launch

from conftest import launch_main, launch_tables

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 and subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.skip("SLURM is not running and starting it needs root (bash bash_script/local_slurm.sh)")
    if not (shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()):
        pytest.skip("SLURM is not installed (bash bash_script/local_slurm.sh --install; .ci/run does it)")
    done = subprocess.run(["bash", str(ROOT / "bash_script" / "local_slurm.sh")], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        pytest.skip(f"SLURM could not start here: {(done.stderr or done.stdout).strip()[-300:]}")
    return True


def _overrides(data, logs, *extra):
    return [f"data_root={data}", f"json_root={data}/prepared", f"logs={logs}", "img_size=32", "train.epochs=1",
            "data.batch_size=8", "prune_iterations=1", "prune_percent=50", "device=cpu", "slurm.gpus_per_task=0",
            "slurm.cpus_per_task=1", "slurm.mem=1500M", "slurm.time=20", *extra]


def test_a_sweep_on_slurm_writes_the_tables_of_the_local_launcher(slurm, tiny_data, tmp_path, capsys):
    args = ["run", "--seeds", "0,1", "--steps", "pruning,test", "--controls", "none"]
    folder = tmp_path / "slurm" / "launch"
    code, out = launch_main([*args, "--launcher", "slurm", "--folder", str(folder), "--detach"],
                        _overrides(tiny_data, tmp_path / "slurm"), capsys)
    assert code == 0, out
    threads = torch.get_num_threads()
    os.environ[launch.THREADS_ENV] = "1"  # as each SLURM task: one core (the local run meanwhile)
    try:
        code, _ = launch_main(args, _overrides(tiny_data, tmp_path / "local"), capsys)
    finally:
        del os.environ[launch.THREADS_ENV]
        torch.set_num_threads(threads)
    assert code == 0
    _, jobs, _ = launch.load_manifest(folder)
    assert launch.watch(folder, jobs, poll=1, log=print) == 0
    assert "tasks: 9 done" in capsys.readouterr().out  # 2 x (step 1, 2 rounds of step 2, their merge), replicates
    local, cluster = launch_tables(tmp_path / "local"), launch_tables(tmp_path / "slurm")
    # 2 x (summary, early stopping, 2 epoch logs, 2 validation logs, 2 tables, record), 4 replicates
    assert len(local) == 22 and sorted(cluster) == sorted(local)
    assert {k: v for k, v in cluster.items() if v != local[k]} == {}
    assert not list((tmp_path / "slurm").rglob(".shards"))  # every shard merged


def _job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%T", "-j", job], capture_output=True, text=True)
    return out.stdout.strip()


def test_a_preempted_task_is_requeued_and_resumes(slurm, tiny_data, tmp_path, capsys):
    overrides = _overrides(tiny_data, tmp_path, "train.epochs=6", "data.batch_size=4")  # round 1 lasts a while
    folder = tmp_path / "launch"
    code, out = launch_main(["run", "--launcher", "slurm", "--steps", "pruning", "--controls", "none", "--detach",
                         "--folder", str(folder)], overrides, capsys)
    assert code == 0, out
    tasks, jobs, _ = launch.load_manifest(folder)
    job = jobs["run/pruning"]
    run = tasks[0].run.dir()
    deadline, checked = time.time() + 300, time.time()
    while not run.checkpoint(0).is_file():  # round 0 is on disk: preempt the job while it trains round 1
        if time.time() > checked + 5:
            assert time.time() < deadline and _job_state(job) in ("PENDING", "RUNNING"), _job_state(job)
            checked = time.time()
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what SLURM sends before preempting (submitit)
    assert not run.checkpoint(1).is_file(), "the job finished round 1 before the signal: make round 1 longer"
    assert launch.watch(folder, jobs, poll=1, log=print) == 0
    log = launch.job_paths(folder, job).stdout.read_text()  # submitit's messages, then the step's
    assert "this job is preempted" in log and "Requeued job" in log
    assert "round 0: complete, skipped" in log.split("Requeued job", 1)[1]  # resumed from disk
    assert sorted(pd.read_csv(run.pruning_summary())["round"]) == [0, 1]


def test_a_failing_task_is_reported_with_its_log(slurm, tiny_data, tmp_path, capsys):
    """Step 2 without step 1: both rounds' tasks fail; the merge after them never runs; status 1."""
    code, out = launch_main(["run", "--launcher", "slurm", "--steps", "test", "--controls", "none", "--poll", "1",
                         "--folder", str(tmp_path / "launch")], _overrides(tiny_data, tmp_path), capsys)
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("error: task run/test/round_0")]
    assert len(errors) == 2 and all("run step 1 (main_lth_pruning.py) first" in e for e in errors), out
    log = Path(errors[0].rsplit("log: ", 1)[1])
    assert log.is_file() and "run step 1" in log.read_text()
    assert "cancelled: run/test/merge" in out
