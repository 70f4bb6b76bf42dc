"""A round killed in its middle resumes at its last finished epoch, bit-identical to an uninterrupted run."""
import pandas as pd
import pytest
import torch

from lottery_xai import rundir as rd
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.safe_io import load_torch, save_torch

from conftest import DEVICE, Interrupt, iteration_hook, tiny_cfg

EPOCHS = 3


def _cfg(data, logs):
    return tiny_cfg(data, logs, f"train.epochs={EPOCHS}", "train.lr_schedule=cosine", "prune_iterations=1")


def _kill_in_last_epoch(steps_per_epoch):
    def kill(r, it, model):
        if r == 1 and it == (EPOCHS - 1) * steps_per_epoch + 1:  # one step into the last epoch
            raise Interrupt
    return kill


def _steps_per_epoch(cfg):
    lr = LotteryRun(rd.RunDir(cfg), DEVICE, log=lambda *_: None)
    n = len(lr.datasets["train"])
    return -(-n // cfg.data.batch_size)


def _same_round(run_a, run_b, r):
    for which in ("last", "best"):
        a, b = load_torch(run_a.checkpoint(r, which)), load_torch(run_b.checkpoint(r, which))
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (r, which, key)
        assert (a["best_val_acc"], a["best_epoch"], a["last_val_acc"]) == (b["best_val_acc"], b["best_epoch"], b["last_val_acc"])
    ha, hb = pd.read_csv(run_a.round_log(r)), pd.read_csv(run_b.round_log(r))
    pd.testing.assert_frame_equal(ha, hb)


@pytest.fixture
def straight(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path / "straight")
    LotteryRun(rd.RunDir(cfg), DEVICE, log=lambda *_: None).run_rounds([0, 1])
    return cfg


def test_round_resumes_at_its_last_epoch_bit_identical(tiny_data, tmp_path, straight):
    cfg = _cfg(tiny_data, tmp_path / "killed")
    per_epoch = _steps_per_epoch(cfg)
    with pytest.raises(Interrupt):
        LotteryRun(rd.RunDir(cfg), DEVICE, callbacks=iteration_hook(_kill_in_last_epoch(per_epoch)), log=lambda *_: None).run_rounds([0, 1])
    run = rd.RunDir(cfg)
    saved = load_torch(run.resume_state(1))
    assert saved["epoch"] == EPOCHS - 1 and len(saved["history"]) == EPOCHS - 1
    assert not run.checkpoint(1).exists() and not run.resume_state(0).exists()  # round 0 finished: its state is gone

    steps, lines = [], []
    LotteryRun(rd.RunDir(cfg), DEVICE, callbacks=iteration_hook(lambda r, it, m: steps.append((r, it))), log=lines.append).run_rounds([0, 1])
    # only the last epoch was trained again, and its iterations continue the count
    assert [it for r, it in steps if r == 1] == list(range((EPOCHS - 1) * per_epoch + 1, EPOCHS * per_epoch + 1))
    assert any(f"resuming after epoch {EPOCHS - 1} of {EPOCHS}" in line for line in lines)
    _same_round(rd.RunDir(straight), run, 1)
    assert not run.resume_state(1).exists()  # deleted once the round is complete


@pytest.mark.parametrize("spoil", ["other settings", "corrupt"])
def test_a_foreign_or_unreadable_resume_state_is_ignored(tiny_data, tmp_path, straight, spoil):
    cfg = _cfg(tiny_data, tmp_path / "killed")
    per_epoch = _steps_per_epoch(cfg)
    with pytest.raises(Interrupt):
        LotteryRun(rd.RunDir(cfg), DEVICE, callbacks=iteration_hook(_kill_in_last_epoch(per_epoch)), log=lambda *_: None).run_rounds([0, 1])
    run = rd.RunDir(cfg)
    path = run.resume_state(1)
    if spoil == "other settings":  # e.g. saved before step 1 was redone with other settings or another init
        state = load_torch(path)
        save_torch({**state, "settings": state["settings"].replace('"train"', '"train_old"')}, path)
    else:
        path.write_bytes(path.read_bytes()[:100])
    steps, lines = [], []
    LotteryRun(rd.RunDir(cfg), DEVICE, callbacks=iteration_hook(lambda r, it, m: steps.append((r, it))), log=lines.append).run_rounds([0, 1])
    assert [it for r, it in steps if r == 1] == list(range(1, EPOCHS * per_epoch + 1))  # the whole round again
    assert any("starting the round from its first epoch" in line for line in lines)
    _same_round(rd.RunDir(straight), run, 1)
    assert not path.exists()


def test_force_ignores_a_resume_state(tiny_data, tmp_path, straight):
    cfg = _cfg(tiny_data, tmp_path / "killed")
    per_epoch = _steps_per_epoch(cfg)
    with pytest.raises(Interrupt):
        LotteryRun(rd.RunDir(cfg), DEVICE, callbacks=iteration_hook(_kill_in_last_epoch(per_epoch)), log=lambda *_: None).run_rounds([0, 1])
    steps = []
    LotteryRun(rd.RunDir(cfg), DEVICE, force=True, callbacks=iteration_hook(lambda r, it, m: steps.append((r, it))),
               log=lambda *_: None).run_rounds([0, 1])
    assert [it for r, it in steps if r == 1] == list(range(1, EPOCHS * per_epoch + 1))
    _same_round(rd.RunDir(straight), rd.RunDir(cfg), 1)


def test_a_late_rewound_round_resumes_bit_identical(tiny_data, tmp_path):
    """pruning.rewind=epoch:1: round 1 trains epochs 2 and 3 (from step K on); killed one step into epoch 3,
    it resumes after epoch 2 with the schedule where it was and ends as the uninterrupted run."""
    extra = ("pruning.rewind=epoch:1",)
    straight = tiny_cfg(tiny_data, tmp_path / "straight", f"train.epochs={EPOCHS}", "prune_iterations=1", *extra)
    LotteryRun(rd.RunDir(straight), DEVICE, log=lambda *_: None).run_rounds([0, 1])
    cfg = tiny_cfg(tiny_data, tmp_path / "killed", f"train.epochs={EPOCHS}", "prune_iterations=1", *extra)
    per_epoch = _steps_per_epoch(cfg)
    with pytest.raises(Interrupt):
        LotteryRun(rd.RunDir(cfg), DEVICE, callbacks=iteration_hook(_kill_in_last_epoch(per_epoch)), log=lambda *_: None).run_rounds([0, 1])
    run = rd.RunDir(cfg)
    saved = load_torch(run.resume_state(1))
    assert saved["epoch"] == EPOCHS - 1 and [h["epoch"] for h in saved["history"]] == list(range(2, EPOCHS))
    steps = []
    LotteryRun(rd.RunDir(cfg), DEVICE, callbacks=iteration_hook(lambda r, it, m: steps.append((r, it))), log=lambda *_: None).run_rounds([0, 1])
    assert [it for r, it in steps if r == 1] == list(range((EPOCHS - 1) * per_epoch + 1, EPOCHS * per_epoch + 1))
    _same_round(rd.RunDir(straight), run, 1)
    assert load_torch(run.checkpoint(1))["epochs"] == EPOCHS - 1  # T - K epochs trained
