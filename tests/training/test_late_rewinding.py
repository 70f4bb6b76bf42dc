"""Late rewinding in the training loop (Frankle et al. 2020, open_lth's ``train(start_step=K)``): a round that
starts at step K uses the schedule's learning rate at K for its first update, a fresh optimizer, and
trains the T - K remaining iterations."""
import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lottery_xai.config import TrainConfig
from lottery_xai.training import every_epoch, every_iteration, train_round


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _batches(n_batches=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(4, 3, 6, 6, generator=g), "label": torch.randint(0, 3, (4,), generator=g)}
            for _ in range(n_batches)]


class StepRecorder:
    """Learning rate and optimizer state size seen by every optimizer step, before the update (a global
    pre-hook of torch.optim: the lr the step really uses)."""

    def __enter__(self):
        self.steps = []
        self.handle = register_optimizer_step_pre_hook(
            lambda opt, args, kwargs: self.steps.append((opt.param_groups[0]["lr"], len(opt.state))))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("schedule", ["cosine", "step"])
@pytest.mark.parametrize("k", [4, 6, 0])
def test_a_round_from_step_k_continues_the_schedule_and_trains_t_minus_k_iterations(schedule, k):
    torch.manual_seed(0)
    batches, epochs, lr = _batches(4), 3, 0.1
    total = epochs * len(batches)
    tc = TrainConfig(epochs=epochs, lr=lr, lr_schedule=schedule, lr_step_epochs=1, lr_gamma=0.5)
    iterations, epochs_seen = [], []
    with StepRecorder() as rec:
        res = train_round(Tiny(), batches, batches[:1], tc, {}, torch.device("cpu"), 3, start_iteration=k,
                          callbacks=[every_iteration(lambda it, m: iterations.append(it)),
                                     every_epoch(lambda e, m: epochs_seen.append(e))])
    # the schedules written out: cosine over the round's T iterations, step: x gamma at every epoch boundary
    expected = [lr * 0.5 * (1 + math.cos(math.pi * s / total)) if schedule == "cosine" else lr * 0.5 ** (s // 4)
                for s in range(k, total)]
    assert len(rec.steps) == total - k  # T - K updates
    assert rec.steps[0][0] == pytest.approx(expected[0], rel=1e-12)  # the first update uses the lr at step K
    assert [s[0] for s in rec.steps] == pytest.approx(expected, rel=1e-12)
    assert rec.steps[0][1] == 0  # a fresh optimizer: no momentum carried in
    assert iterations == list(range(k + 1, total + 1))
    assert epochs_seen == list(range(k // 4 + 1, epochs + 1)) and [h["epoch"] for h in res.history] == epochs_seen


def test_a_rewind_point_inside_an_epoch_trains_what_the_epoch_has_left():
    batches, epochs, k = _batches(4), 2, 3
    tc = TrainConfig(epochs=epochs, lr=0.1, lr_schedule="cosine")
    iterations = []
    with StepRecorder() as rec:
        res = train_round(Tiny(), batches, batches[:1], tc, {}, torch.device("cpu"), 3, start_iteration=k,
                          callbacks=[every_iteration(lambda it, m: iterations.append(it))])
    assert iterations == [4, 5, 6, 7, 8] and len(rec.steps) == 5
    assert rec.steps[0][0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 8)), rel=1e-12)
    assert [h["epoch"] for h in res.history] == [1, 2]  # the partial epoch 1 is validated too
    with pytest.raises(ValueError, match="outside"):
        train_round(Tiny(), batches, batches[:1], tc, {}, torch.device("cpu"), 3, start_iteration=8)
