"""The local launcher's workers (issue 21, items 1 and 5): with ``--workers 2`` each per-round step runs as two
tasks of contiguous rounds (3 rounds: rounds 0-1 and round 2), each writing its own shard, merged after the
step; the tables then equal those of ``--workers 1`` (whole steps in this process), time columns aside."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lottery_xai import launch

from conftest import tiny_overrides

TIME_COLUMNS = {"train_seconds", "seconds"}


def _tables(root: Path) -> dict:
    """Every CSV table (time columns dropped) and the units of every fingerprint record, by path."""
    out = {}
    for path in sorted(root.rglob("*.csv")):
        if "launch" in path.relative_to(root).parts:
            continue
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        out[str(path.relative_to(root))] = frame[[c for c in frame.columns if c not in TIME_COLUMNS]].to_csv(index=False)
    for path in sorted(root.rglob("fingerprints.json")):
        out[str(path.relative_to(root))] = sorted(pd.read_json(path, typ="series").index)
    return out


def _launch(args, overrides, capsys):
    argv = [*args]
    for o in overrides:
        argv += ["--set", o]
    code = launch.main(argv)
    return code, capsys.readouterr().out


def test_two_workers_run_chunks_of_rounds_and_write_the_tables_of_one(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(launch.THREADS_ENV, "1")  # every task on one thread, as each worker (below): the same sums
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 2)  # 2 workers: one core each, whatever this machine has
    threads = torch.get_num_threads()
    first = tmp_path / "one"
    try:
        code, out = _launch(["run", "--steps", "pruning", "--controls", "none"],
                            tiny_overrides(tiny_data, first, "train.epochs=1"), capsys)
        assert code == 0, out
        shutil.copytree(first, tmp_path / "two")
        steps = ["run", "--steps", "test,activations", "--controls", "none"]
        code, out = _launch(steps, tiny_overrides(tiny_data, first, "train.epochs=1"), capsys)
        assert code == 0, out
        code, out = _launch([*steps, "--workers", "2", "--folder", str(tmp_path / "launch")],
                            tiny_overrides(tiny_data, tmp_path / "two", "train.epochs=1"), capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, out
    started = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("started: ")]
    assert sorted(started) == ["run/activations/merge", "run/activations/round_00-01", "run/activations/round_02",
                               "run/test/merge", "run/test/round_00-01", "run/test/round_02"]
    one, two = _tables(first), _tables(tmp_path / "two")
    assert any("test" in k for k in one) and sorted(two) == sorted(one)
    assert {k: v for k, v in two.items() if v != one[k]} == {}
    assert not list((tmp_path / "two").rglob(".shards"))  # every shard merged
    arrays = sorted(p.relative_to(first) for p in first.rglob("activations/**/*.npy"))
    assert len(arrays) >= 3 and sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob(
        "activations/**/*.npy")) == arrays  # every round's activations, the same
    assert all(np.array_equal(np.load(first / a), np.load(tmp_path / "two" / a)) for a in arrays)
