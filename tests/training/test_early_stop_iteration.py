"""The Lottery Ticket paper's early-stopping iteration: the iteration of minimum validation loss, recorded per
round (Frankle & Carbin 2019, Figure 3; they validate every 100 iterations: train.eval_every)."""
import pandas as pd
import pytest
import torch

import lottery_xai.training.loop as loop
from lottery_xai import rundir as rd
from lottery_xai.config import TrainConfig, load_config
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.safe_io import load_torch
from lottery_xai.training import train_round
from lottery_xai.training.loop import early_stop_point

from conftest import tiny_overrides

CPU = torch.device("cpu")


def test_the_first_point_of_minimum_loss():
    evals = [{"iteration": 100, "epoch": 1, "val_loss": 0.9, "val_acc": 0.7},
             {"iteration": 200, "epoch": 1, "val_loss": 0.4, "val_acc": 0.8},
             {"iteration": 300, "epoch": 2, "val_loss": float("nan"), "val_acc": 0.1},
             {"iteration": 400, "epoch": 2, "val_loss": 0.4, "val_acc": 0.9},
             {"iteration": 500, "epoch": 3, "val_loss": 0.6, "val_acc": 0.95}]
    assert early_stop_point(evals) == evals[1]  # not the later tie, not the best accuracy, never NaN


def test_validation_every_n_iterations_inside_epochs(monkeypatch):
    """3 epochs of 4 batches, eval_every 3: points at iterations 3, 6, 9 inside epochs and at the epoch ends
    4, 8, 12 (12 is both: validated once); losses scripted so that iteration 6 is the minimum."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    data = [{"image": torch.randn(4, 1, 2, 2), "label": torch.tensor([0, 1, 0, 1])} for _ in range(4)]
    losses = iter([0.9, 0.8, 0.5, 0.6, 0.7, 0.65, 0.7])
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"acc": 0.5, "loss": next(losses)})
    tc = TrainConfig(epochs=3, lr=0.1, lr_schedule="none", eval_every=3)
    result = train_round(model, data, data, tc, {}, CPU, 2)
    assert [(e["iteration"], e["epoch"]) for e in result.evals] == [(3, 1), (4, 1), (6, 2), (8, 2), (9, 3), (12, 3)]
    assert result.early_stop["iteration"] == 6 and result.iterations == 12
    assert [h["iteration"] for h in result.history] == [4, 8, 12]


def test_step_1_records_it_and_training_is_unchanged(tiny_data, tmp_path):
    states, runs = [], []
    for every in (0, 1):
        cfg = load_config(None, tiny_overrides(tiny_data, tmp_path / f"every{every}", "train.epochs=2",
                                               "prune_iterations=1", f"train.eval_every={every}"))
        run = rd.RunDir(cfg)
        LotteryRun(run, CPU, log=lambda *_: None).run_rounds([0, 1])
        states.append([load_torch(run.checkpoint(r))["state_dict"] for r in (0, 1)])
        runs.append(run)
    for a, b in zip(*states):  # validating more often changes nothing that is trained
        assert all(torch.equal(a[k], b[k]) for k in a)
    table = pd.read_csv(runs[1].early_stopping())
    assert list(table["round"]) == [0, 1]
    # a step killed after round 1's checkpoint, before its row: the rerun skips the round and writes the row
    before = runs[1].early_stopping().read_bytes()
    table[table["round"] == 0].to_csv(runs[1].early_stopping(), index=False)
    LotteryRun(runs[1], CPU, log=lambda *_: None).run_rounds([0, 1])
    assert runs[1].early_stopping().read_bytes() == before
    for r in (0, 1):
        points = pd.read_csv(runs[1].round_validation(r))
        steps = int(points["iteration"].max())
        assert list(points["iteration"]) == list(range(1, steps + 1))  # every iteration (epoch ends once)
        row = table[table["round"] == r].iloc[0]
        assert row["early_stop_iteration"] == points["iteration"][points["val_loss"].idxmin()]
        assert row["early_stop_val_loss"] == pytest.approx(points["val_loss"].min())
        assert row["iterations"] == steps
        coarse = pd.read_csv(runs[0].round_validation(r))  # eval_every 0: the epoch ends only
        assert len(coarse) == 2 and list(coarse["val_loss"]) == pytest.approx(
            list(points.set_index("iteration").loc[coarse["iteration"], "val_loss"]))
