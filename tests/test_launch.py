"""The launcher's plan (issue 21, items 1 and 3): tasks made from the step registry, their dependencies,
sweeps and the ROAR grid, the SLURM parameters and the GPU-hour estimate, without running anything."""
import subprocess
import sys
from pathlib import Path

import pytest

from lottery_xai import steps
from lottery_xai.config import load_config
from lottery_xai.errors import UserError
from lottery_xai.launch import (Task, build_plan, describe_plan, groups_of, parse_sweep, round_chunks, select_steps,
                                split_values, _parameters)

ROOT = Path(__file__).resolve().parent.parent


def _plan(tmp_path, *overrides, **kwargs):
    kwargs.setdefault("launcher", "slurm")
    return build_plan(None, [f"logs={tmp_path}", "prune_iterations=2", *overrides], **kwargs)


def test_local_runs_the_steps_in_run_all_order(tmp_path):
    """One worker: whole steps, each for the run then its reinit control, as run_all.sh."""
    plan = _plan(tmp_path, launcher="local")
    expected = []
    for s in steps.pipeline():
        expected.append(f"run/{s.key}")
        if s.controls:
            expected.append(f"run+reinit/{s.key}")
    assert [t.name for t in plan.tasks] == expected
    assert all(t.rounds is None and t.shard is None for t in plan.tasks)
    assert plan.task("run+reinit/pruning").after == ("run/pruning",)  # the reinit control takes the ticket's masks


def test_slurm_splits_the_rounds_and_merges_before_the_readers(tmp_path):
    plan = _plan(tmp_path, controls="none")
    names = [t.name for t in plan.tasks]
    assert plan.task("run/pruning").rounds is None  # step 1: one task, its rounds depend on each other
    assert [n for n in names if n.startswith("run/test/")] == ["run/test/round_00", "run/test/round_01",
                                                              "run/test/round_02", "run/test/merge"]
    t = plan.task("run/heatmaps/round_01")
    assert (t.rounds, t.shard, t.after) == ((1,), "round_01", ("run/pruning",))
    merge = plan.task("run/heatmaps/merge")
    assert merge.step == "merge" and merge.merge == ("heatmaps",) and not merge.gpus
    assert set(merge.after) == {f"run/heatmaps/round_0{r}" for r in range(3)}
    # step 7: per round after the maps (merged) and TCAV, then one call over every round (a gather step)
    assert plan.task("run/metrics/round_02").after == ("run/pruning", "run/tcav/merge", "run/heatmaps/merge")
    gather = plan.task("run/metrics")
    assert gather.rounds is None and gather.shard is None and len(gather.after) == 3
    assert "run/metrics" in plan.task("run/plots").after and "run/plots" in plan.task("run/report").after
    assert [len(g) for g in groups_of(plan) if g[0].step == "test"] == [3]  # one job array per step
    assert names.index("run/tcav/merge") < names.index("run/metrics/round_00")  # submitted after what it waits for


def test_round_chunks_are_contiguous_and_in_order():
    assert round_chunks([0, 1, 2, 3, 4], workers=2) == [(0, 1, 2), (3, 4)]
    assert round_chunks([0, 1, 2, 3], workers=3) == [(0, 1), (2,), (3,)]
    assert round_chunks([0, 1], workers=4) == [(0,), (1,)]  # no empty task
    assert round_chunks([1, 2, 3], per_task=2) == [(1, 2), (3,)]
    assert round_chunks([0, 1, 2]) == [(0,), (1,), (2,)]


def test_local_workers_run_each_step_in_chunks_of_rounds(tmp_path):
    """--workers 2: a per-round step is two tasks of contiguous rounds (one process start and setup each, not
    one per round), each with its own shard; the merge waits for both, the next steps for the merge."""
    plan = _plan(tmp_path, "prune_iterations=4", launcher="local", split=True, workers=2, controls="none",
                 step_list="pruning,test,heatmaps,tcav,metrics,roar")
    names = [t.name for t in plan.tasks]
    assert [n for n in names if n.startswith("run/test/")] == ["run/test/round_00-02", "run/test/round_03-04",
                                                              "run/test/merge"]
    t = plan.task("run/test/round_00-02")
    assert (t.rounds, t.shard, t.after) == ((0, 1, 2), "round_00-02", ("run/pruning",))
    assert t.command()[t.command().index("--rounds") + 1] == "0,1,2"
    assert plan.task("run/test/round_03-04").shard == "round_03-04"  # shards sort as their rounds: merged in order
    assert plan.task("run/test/merge").after == ("run/test/round_00-02", "run/test/round_03-04")
    assert plan.task("run/metrics/round_03-04").after == ("run/pruning", "run/tcav/merge", "run/heatmaps/merge")
    assert plan.task("run/metrics").after == ("run/metrics/round_00-02", "run/metrics/round_03-04")  # the gather
    assert plan.task("run/pruning").rounds is None
    assert not [n for n in names if n.startswith("run/roar/round_0") and "-" in n.split("/")[2]]  # ROAR: per round
    out = []
    describe_plan(plan, throughput=100.0, log=out.append)
    assert "local, 2 workers" in out[0]


def test_slurm_rounds_per_task(tmp_path):
    """SLURM: one task per round by default (above); slurm.rounds_per_task=2 puts two rounds in a task."""
    plan = _plan(tmp_path, "slurm.rounds_per_task=2", controls="none", step_list="pruning,test")
    assert [(t.name, t.rounds) for t in plan.tasks if t.phase == "array"] == [("run/test/round_00-01", (0, 1)),
                                                                            ("run/test/round_02", (2,))]
    assert [len(g) for g in groups_of(plan) if g[0].step == "test"] == [2]  # one job array of 2 tasks


def test_seeds_add_the_random_control_the_replicates_and_step_8_again(tmp_path):
    plan = _plan(tmp_path, sweep=parse_sweep(["seed=0,1"]), step_list="pruning,test,heatmaps,plots")
    assert [r.label for r in plan.runs] == ["seed=0", "seed=0+reinit", "seed=1", "seed=1+reinit", "seed=0+random"]
    assert plan.task("seed=0+random/pruning").after == ("seed=0/pruning",)
    assert "seed=0+random/heatmaps/merge" in [t.name for t in plan.tasks]
    aggregate = plan.task("seed=0/aggregate")
    assert aggregate.options == {"seeds": [0, 1]} and "seed=0+random/test/merge" in aggregate.after
    assert plan.task("seed=1/plots (replicates)").after == ("seed=0/aggregate",)
    assert "seed=1/report (replicates)" not in [t.name for t in plan.tasks]  # only the steps asked for
    with_report = _plan(tmp_path, sweep=parse_sweep(["seed=0,1"]), step_list="pruning,test,plots,report")
    assert with_report.task("seed=1/report (replicates)").after == ("seed=1/plots (replicates)",)


def test_a_sweep_is_the_product_of_its_values(tmp_path):
    sweep = parse_sweep(["train.cgc_lambda=0.1,1", "pruning.rewind=init,epoch:1"])
    plan = _plan(tmp_path, "train.loss=cgc", sweep=sweep, step_list="pruning", controls="none")
    assert [t.name for t in plan.tasks] == ["train.cgc_lambda=0.1,pruning.rewind=init/pruning",
                                            "train.cgc_lambda=0.1,pruning.rewind=epoch:1/pruning",
                                            "train.cgc_lambda=1,pruning.rewind=init/pruning",
                                            "train.cgc_lambda=1,pruning.rewind=epoch:1/pruning"]
    assert len({r.dir().root for r in plan.runs}) == 4  # sibling run folders
    assert split_values("[1,2],3") == ["[1,2]", "3"]
    for bad in (["train.cgc_lamda=1"], ["seed"], ["seed=0", "seed=1"]):
        with pytest.raises(UserError):
            parse_sweep(bad)
    with pytest.raises(UserError, match="train.epochs"):  # a value is checked with the run's config
        _plan(tmp_path, sweep=parse_sweep(["train.epochs=1,x"]))
    with pytest.raises(UserError):
        select_steps("pipeline,tcva")


def test_the_roar_grid_is_one_task_per_cell(tmp_path):
    plan = _plan(tmp_path, "roar.rounds=[0,-1]", "roar.methods=[gradcam,saliency]", "roar.percents=[0,50]",
                 "roar.seeds=2", step_list="pruning,roar", controls="none")
    ranks = [t for t in plan.tasks if t.step == "roar" and t.options == {"cells": ""}]
    assert [t.rounds for t in ranks] == [(0,), (2,)]
    cells = [t for t in plan.tasks if t.step == "roar" and t.options.get("cells")]
    # per round and seed: 0 % once (every method), 50 % for gradcam, saliency and the random baseline
    assert len(cells) == 2 * 2 * (1 + 3)
    assert plan.task("run/roar/round_02/*:0:1").after == ("run/roar/round_02", "run/roar/round_00/*:0:1")  # reused
    assert plan.task("run/roar/round_00/random:50:0").shard == "round_00+random+50+0"
    assert plan.task("run/roar/merge").merge == ("roar",)


def test_slurm_parameters(tmp_path):
    cfg = load_config(None, ["slurm.partition=gpu", "slurm.cpu_partition=cpu", "slurm.gpus_per_task=2",
                             "slurm.mem=64G", "slurm.sbatch=[account=proj,exclusive]", "slurm.setup=[module load cuda]"])
    gpu = _parameters(cfg, gpus=True, light=False)
    assert (gpu["partition"], gpu["gpus_per_task"], gpu["cpus_per_task"], gpu["mem"], gpu["time"]) == \
        ("gpu", 2, 8, "64G", 1440)
    assert gpu["additional_parameters"] == {"account": "proj", "exclusive": True}
    assert gpu["setup"] == ["export OMP_NUM_THREADS=8", "module load cuda"]
    cpu = _parameters(cfg, gpus=False, light=True)
    assert cpu["partition"] == "cpu" and "gpus_per_task" not in cpu and cpu["cpus_per_task"] == 1


def test_a_task_is_a_command_line_and_survives_a_manifest(tmp_path):
    plan = _plan(tmp_path, step_list="pruning,roar", controls="none")
    task = plan.task("run/roar/round_00/*:0:0")
    assert task.command()[0] == "main_roar.py" and task.command()[-4:] == ["--rounds", "0", "--cells", "*:0:0"]
    assert Task.from_json(task.to_json()) == task


def test_plan_estimates_gpu_hours_without_the_dataset(tmp_path):
    """The CUB study's plan from config/BB_cub.yaml, whose data is not here: CUB's split sizes are known."""
    lines = []
    plan = build_plan(str(ROOT / "config" / "BB_cub.yaml"), [f"logs={tmp_path}", f"data_root={tmp_path}/none",
                                                              f"json_root={tmp_path}/none"],
                      launcher="slurm", sweep=parse_sweep(["seed=0,1"]), step_list="pipeline")
    total = describe_plan(plan, throughput=400, log=lines.append)
    # step 1 alone: 16 rounds x 50 epochs x (3 x 5395 + 599) passes at 1/(3 x 400) s, for 5 runs
    step1 = 16 * 50 * (3 * 5395 + 599) / (3 * 400) / 3600
    assert total > 5 * step1 and total < 10 * step1
    assert any("seed=0/pruning" in line and f"{step1:.2f}" in line for line in lines)
    assert lines[-1].startswith("estimated GPU hours:")


def test_the_command_line_prints_a_plan(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lottery_xai.launch", "plan", "--set", f"logs={tmp_path}",
                           "--set", f"json_root={tmp_path}/none", "--launcher", "slurm", "--steps", "pruning,test",
                           "--throughput", "100"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "run/test [5 tasks]" in done.stdout and "no GPU-hour estimate" in done.stdout  # no data: no sizes
    assert not list(Path(tmp_path).iterdir())  # nothing ran, nothing was written
    done = subprocess.run([sys.executable, "-m", "lottery_xai.launch", "run", "--sweep", "sed=1,2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "unknown config key 'sed'" in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_measured_rate_scales_by_pixels():
    from lottery_xai import costs

    cfg = load_config(None, ["img_size=32", "device=cpu"])  # small_resnet: measured at 64 px only
    found = costs.rate(cfg, device="cpu")
    assert found.seconds == pytest.approx(costs.MEASURED[("cpu", "small_resnet", 64)][1] / 3 / 4)
    assert "scaled from 64 px" in found.source
    assert costs.rate(cfg, throughput=100).seconds == pytest.approx(1 / 300)


def test_a_task_in_this_process_leaves_its_threads_behind(monkeypatch):
    """The local launcher runs a task inside the caller: its share of the cores is set for the task and the
    caller's thread count and thread variables are back afterwards (a later subprocess inherits none)."""
    import os

    import torch

    from lottery_xai import launch

    before = torch.get_num_threads()
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    seen = {}
    with launch.task_threads(1):
        seen = {"torch": torch.get_num_threads(), **{n: os.environ.get(n) for n in launch.THREAD_VARIABLES}}
    assert seen == {"torch": 1, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    assert torch.get_num_threads() == before
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ
    with pytest.raises(RuntimeError), launch.task_threads(1):
        raise RuntimeError("a failing task")
    assert torch.get_num_threads() == before and "MKL_NUM_THREADS" not in os.environ
