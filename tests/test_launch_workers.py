"""The local launcher's workers (issue 21, items 1 and 5): with ``--workers 2`` each per-round step runs as two
tasks of contiguous rounds (3 rounds: rounds 0-1 and round 2), each writing its own shard, merged after the
step; the tables then equal those of ``--workers 1`` (whole steps in this process), time columns aside."""
import shutil

import numpy as np
import torch

from lottery_xai import launch

from conftest import launch_main, launch_tables, tiny_overrides


def test_two_workers_run_chunks_of_rounds_and_write_the_tables_of_one(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(launch.THREADS_ENV, "1")  # every task on one thread, as each worker (below): the same sums
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 2)  # 2 workers: one core each, whatever this machine has
    threads = torch.get_num_threads()
    first = tmp_path / "one"
    try:
        code, out = launch_main(["run", "--steps", "pruning", "--controls", "none"],
                            tiny_overrides(tiny_data, first, "train.epochs=1"), capsys)
        assert code == 0, out
        shutil.copytree(first, tmp_path / "two")
        steps = ["run", "--steps", "test,activations", "--controls", "none"]
        code, out = launch_main(steps, tiny_overrides(tiny_data, first, "train.epochs=1"), capsys)
        assert code == 0, out
        code, out = launch_main([*steps, "--workers", "2", "--folder", str(tmp_path / "launch")],
                            tiny_overrides(tiny_data, tmp_path / "two", "train.epochs=1"), capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, out
    started = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("started: ")]
    assert sorted(started) == ["run/activations/merge", "run/activations/round_00-01", "run/activations/round_02",
                               "run/test/merge", "run/test/round_00-01", "run/test/round_02"]
    one, two = launch_tables(first), launch_tables(tmp_path / "two")
    assert any("test" in k for k in one) and sorted(two) == sorted(one)
    assert {k: v for k, v in two.items() if v != one[k]} == {}
    assert not list((tmp_path / "two").rglob(".shards"))  # every shard merged
    arrays = sorted(p.relative_to(first) for p in first.rglob("activations/**/*.npy"))
    assert len(arrays) >= 3 and sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob(
        "activations/**/*.npy")) == arrays  # every round's activations, the same
    assert all(np.array_equal(np.load(first / a), np.load(tmp_path / "two" / a)) for a in arrays)


def test_a_failing_task_on_a_worker_is_reported_with_its_log(tiny_data, tmp_path, capsys, monkeypatch):
    """Step 2 without step 1's checkpoints: each chunk fails in its worker with the user error's status (2) and
    one line in its log; the merge after them is not run and the launch exits 1."""
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 2)
    code, out = launch_main(["run", "--steps", "test", "--controls", "none", "--workers", "2", "--folder",
                             str(tmp_path / "launch")], tiny_overrides(tiny_data, tmp_path / "empty"), capsys)
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error: task run/test/round_")]
    assert len(errors) == 2 and all("(exit status 2); log: " in line for line in errors), out
    for line in errors:
        log = line.split("; log: ", 1)[1]
        text = open(log).read()
        assert text.startswith("error: ") and len(text.strip().splitlines()) == 1, text
    assert "not run: run/test/merge (a task it waits for failed)" in out
