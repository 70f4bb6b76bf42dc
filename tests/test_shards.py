"""Writes safe across nodes (issue 21, item 2): a task that names a shard never updates a shared table or
fingerprint record; it writes its own shard, and the merge builds the table one process would have written
making the same updates in the order of the shard names, whatever order the tasks ran in."""
import json
from pathlib import Path

import pandas as pd
import pytest

from lottery_xai.config import load_config
from lottery_xai.rundir import RunDir
from lottery_xai.safe_io import merge_shards, read_csv, shard_files, sharded, upsert_table

COLUMNS = ["round", "method", "value"]


def _rows(r, values):
    return [{"round": r, "method": m, "value": v} for m, v in values.items()]


def _updates():
    """The updates of three round tasks: round 1 twice (the second replaces its first rows), round 0 with a
    replace that drops the rows of round 0 an earlier run left."""
    return [("round_00", _rows(0, {"b": 0.25, "a": 1 / 3}), {"round": 0}),
            ("round_01", _rows(1, {"a": 0.5}), None),
            ("round_01", _rows(1, {"a": 0.75, "c": 2.0}), None),
            ("round_02", _rows(2, {"a": float("nan"), "b": 1e-17}), {"round": 2})]


def _update(path, rows, replace):
    upsert_table(path, rows, keys=["round", "method"], sort=["round", "method"], columns=COLUMNS, replace=replace)


def test_merged_shards_are_the_table_of_one_process(tmp_path):
    old = _rows(0, {"z": 9.0}) + _rows(3, {"a": 3.0})  # a table an earlier run left
    local, sharded_table = tmp_path / "local" / "t.csv", tmp_path / "shards" / "t.csv"
    for path in (local, sharded_table):
        _update(path, old, None)
    before = sharded_table.read_text()
    for _, rows, replace in _updates():  # one process, in order
        _update(local, rows, replace)
    for task in ("round_02", "round_01", "round_00"):  # the tasks in another order, each in its shard
        for shard, rows, replace in _updates():
            if shard == task:
                with sharded(shard):
                    _update(sharded_table, rows, replace)
    assert sharded_table.read_text() == before  # no task touched the shared table
    assert [p.stem for p in shard_files(sharded_table)] == ["round_00", "round_01", "round_02"]
    pd.testing.assert_frame_equal(read_csv(sharded_table, COLUMNS), read_csv(local, COLUMNS))  # readers see them
    assert merge_shards(sharded_table)
    assert sharded_table.read_bytes() == local.read_bytes()
    assert not shard_files(sharded_table) and not (sharded_table.parent / ".shards").exists()
    assert not merge_shards(sharded_table)  # nothing left to merge


def test_a_shards_update_returns_the_whole_table(tmp_path):
    path = tmp_path / "t.csv"
    _update(path, _rows(0, {"a": 1.0}), None)
    with sharded("round_01"):
        table = upsert_table(path, _rows(1, {"a": 2.0}), keys=["round"], sort=["round"], columns=COLUMNS)
    assert table["round"].tolist() == [0, 1]
    assert read_csv(path, COLUMNS)["round"].tolist() == [0, 1]


def test_shard_names_are_file_names():
    with pytest.raises(ValueError):
        with sharded("../x"):
            pass


@pytest.fixture
def run(tmp_path):
    cfg = load_config(None, [f"logs={tmp_path}"])
    run = RunDir(cfg)
    (run.root / "test").mkdir(parents=True)
    return run


def test_fingerprints_of_shards_are_read_and_merged(run):
    run.record_fingerprint("test", "round_00", "a")
    with sharded("round_02"):
        run.record_fingerprint("test", "round_02", "c")
    with sharded("round_01"):
        run.record_fingerprint("test", "round_01", "b")
        run.record_fingerprint("test", "round_00", "a2")  # a later shard wins over the record
    record = run.fingerprints_file("test")
    assert json.loads(record.read_text()) == {"round_00": "a"}
    assert run.fingerprints("test") == {"round_00": "a2", "round_01": "b", "round_02": "c"}
    assert run.shards("test") == [record]
    assert run.merge_shards("test") == [record]
    assert record.read_text() == json.dumps({"round_00": "a2", "round_01": "b", "round_02": "c"}, indent=1) + "\n"
    assert run.fingerprints("test") == {"round_00": "a2", "round_01": "b", "round_02": "c"}


def test_a_shard_takes_a_lock_of_its_own_and_leaves_the_others_files(run):
    leftover = run.root / "test" / ".metrics.csv.123.tmp"  # another task's file being written
    leftover.write_text("")
    with sharded("round_00"), run.lock("test"):
        with sharded("round_01"), run.lock("test"):  # two rounds of one step at once: no conflict
            upsert_table(run.test_metrics(), [{"round": 1}], keys=["round"], sort=["round"], columns=["round"])
        assert leftover.exists()
    assert {p.name for p in (run.root / ".locks").iterdir()} == {"test.round_00.lock", "test.round_01.lock"}
    assert shard_files(run.test_metrics())
    with run.lock("test"):  # the step's own lock (a whole-step call): temporaries removed, shards merged
        assert not leftover.exists()
        assert not shard_files(run.test_metrics())
    assert Path(run.test_metrics()).read_text() == "round\n1\n"
