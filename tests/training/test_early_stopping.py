"""train.early_stopping, the thesis's rule: stop when the validation accuracy has gained less than 1 %
(relative) for 10 epochs; the best-validation weights are kept. Known answers on scripted accuracies."""
import pandas as pd
import pytest
import torch
from torch import nn

import lottery_xai.training.loop as loop
from lottery_xai.config import TrainConfig
from lottery_xai.training import every_epoch, train_round
from lottery_xai.training.callbacks import EarlyStopping, early_stopping

# Epoch:     1    2    3     4     5     6     7     8     9    10    11    12    13    14    15
SCRIPT = [0.50, 0.60, 0.70, 0.705, 0.80, 0.805, 0.807, 0.79, 0.808, 0.81, 0.80, 0.80, 0.80, 0.80, 0.80]
# Counted improvements (acc > ref * 1.01): 1 (0.50), 2 (0.60), 3 (0.70), 5 (0.80); 0.705 < 0.707 and
# 0.807 < 0.808 do not count. With patience 3 the round stops after epoch 8 (6, 7, 8 without a gain);
# the best accuracy is 0.807 at epoch 7 (the best weights are those of epoch 7, not of a counted epoch).


def test_the_rule_on_a_known_sequence():
    rule = EarlyStopping(0.01, 3)
    waited = [rule.epochs_without_gain(SCRIPT[:n]) for n in range(1, len(SCRIPT) + 1)]
    assert waited[:8] == [0, 0, 0, 1, 0, 1, 2, 3]
    assert [rule.should_stop(SCRIPT[:n]) for n in range(1, 9)] == [False] * 7 + [True]
    assert EarlyStopping(0.0, 1).epochs_without_gain([0.5, 0.5]) == 1  # equal is not a gain
    assert EarlyStopping(0.0, 1).epochs_without_gain([0.0, 0.1]) == 0  # from zero any gain counts
    assert EarlyStopping(0.01, 10).should_stop([0.9] * 10) is False  # epoch 1 counts, then 9 without
    assert EarlyStopping(0.01, 10).should_stop([0.9] * 11) is True
    assert early_stopping(TrainConfig()) is None  # off by default
    rule = early_stopping(TrainConfig(early_stopping=True))
    assert (rule.gain, rule.patience) == (0.01, 10)  # the thesis's rule is the default when on
    with pytest.raises(ValueError):
        EarlyStopping(0.01, 0)


def _tiny_training(monkeypatch, tc):
    """A 2-class linear model trained on 8 points; validation accuracy follows SCRIPT epoch by epoch.
    Returns the round's result and the model's weights at the end of every epoch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    data = [{"image": torch.randn(4, 1, 2, 2), "label": torch.tensor([0, 1, 0, 1])} for _ in range(2)]
    accs = iter(SCRIPT)
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"acc": next(accs), "loss": 0.0})
    snapshots = {}
    keep = every_epoch(lambda e, m: snapshots.__setitem__(e, {k: v.clone() for k, v in m.state_dict().items()}))
    masks = {"1.weight": torch.ones(2, 4, dtype=torch.bool)}
    result = train_round(model, data, data, tc, masks, torch.device("cpu"), 2, callbacks=[keep])
    return result, snapshots


def test_training_stops_at_the_right_epoch_and_keeps_the_best_weights(monkeypatch):
    tc = TrainConfig(epochs=15, lr=0.1, lr_schedule="none", early_stopping=True, early_stopping_gain=0.01,
                     early_stopping_patience=3)
    result, snapshots = _tiny_training(monkeypatch, tc)
    assert [h["epoch"] for h in result.history] == list(range(1, 9))  # stopped after epoch 8
    assert [h["val_acc"] for h in result.history] == SCRIPT[:8]
    assert result.best_epoch == 7 and result.best_val_acc == 0.807 and result.last_val_acc == 0.79
    for k, v in result.best_state.items():
        assert torch.equal(v, snapshots[7][k])  # the best weights are epoch 7's
        assert torch.equal(result.last_state[k], snapshots[8][k])
    assert not torch.equal(snapshots[7]["1.weight"], snapshots[8]["1.weight"])  # (they differ)


def test_off_trains_every_epoch(monkeypatch):
    tc = TrainConfig(epochs=15, lr=0.1, lr_schedule="none")
    result, _ = _tiny_training(monkeypatch, tc)
    assert len(result.history) == 15 and result.best_epoch == 10 and result.best_val_acc == 0.81


def test_an_early_stopped_round_records_the_epochs_it_trained(tiny_data, tmp_path):
    from conftest import tiny_overrides

    from lottery_xai import rundir as rd
    from lottery_xai.config import load_config
    from lottery_xai.pipeline.prune import LotteryRun

    # a gain of 100 % never counts after the first epoch: patience 1 ends the round after epoch 2 of 6
    cfg = load_config(None, tiny_overrides(tiny_data, tmp_path, "train.epochs=6", "train.early_stopping=true",
                                           "train.early_stopping_gain=1.0", "train.early_stopping_patience=1"))
    LotteryRun(rd.RunDir(cfg), torch.device("cpu"), log=lambda *_: None).run_rounds([0])
    ckpt = torch.load(rd.RunDir(cfg).checkpoint(0, "last"), weights_only=False)
    assert ckpt["epochs"] == 2 and ckpt["max_epochs"] == 6
    assert len(pd.read_csv(rd.RunDir(cfg).round_log(0))) == 2
