"""Callbacks of the training loop: ``train_round(..., callbacks=[...])``.

A callback has ``on_iteration(iteration, model)`` (after each optimizer step, 1-based count over
the round) and ``on_epoch(epoch, model)`` (after each epoch's validation, 1-based). A late-rewound
round (``train_round(..., start_iteration=K)``) counts on from the rewind point: its first step is
iteration K + 1 and its first epoch ``K // steps_per_epoch + 1``. The frequency
helpers wrap a plain function ``fn(count, model)``: the late-rewinding snapshot of step 1 is
``at_epoch(k, save)`` or ``at_iteration(k, save)``; a test that interrupts a run is
``every_iteration(fn)``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

Fn = Callable[[int, nn.Module], None]


class Callback:
    def on_iteration(self, iteration: int, model: nn.Module) -> None:
        pass

    def on_epoch(self, epoch: int, model: nn.Module) -> None:
        pass


class _When(Callback):
    def __init__(self, fn: Fn, kind: str, when: Callable[[int], bool]):
        self.fn, self.kind, self.when = fn, kind, when

    def on_iteration(self, iteration, model):
        if self.kind == "iteration" and self.when(iteration):
            self.fn(iteration, model)

    def on_epoch(self, epoch, model):
        if self.kind == "epoch" and self.when(epoch):
            self.fn(epoch, model)


def every_iteration(fn: Fn) -> Callback:
    return _When(fn, "iteration", lambda _: True)


def at_iteration(k: int, fn: Fn) -> Callback:
    return _When(fn, "iteration", lambda it: it == k)


def every_epoch(fn: Fn) -> Callback:
    return _When(fn, "epoch", lambda _: True)


def at_epoch(k: int, fn: Fn) -> Callback:
    return _When(fn, "epoch", lambda e: e == k)


class EarlyStopping:
    """The thesis's stopping rule for one round (``train.early_stopping``).

    An epoch counts as an improvement when its validation accuracy exceeds the accuracy of the last
    counted improvement by more than ``gain`` relative to it (``acc > ref * (1 + gain)``; the first
    epoch always counts); the round stops after ``patience`` epochs in a row that do not. The rule is
    a function of the validation history alone, so a resumed round stops where an uninterrupted one
    would. Which weights are kept is the loop's business: the best validation state, as always.
    """

    def __init__(self, gain: float, patience: int):
        if gain < 0 or patience < 1:
            raise ValueError(f"early stopping needs gain >= 0 and patience >= 1, got {gain}, {patience}")
        self.gain, self.patience = float(gain), int(patience)

    def epochs_without_gain(self, val_accs) -> int:
        """Epochs since the last counted improvement, at the end of ``val_accs`` (one per epoch)."""
        reference, waited = None, 0
        for acc in val_accs:
            if reference is None or acc > reference * (1.0 + self.gain) + (0.0 if reference > 0 else 1e-12):
                reference, waited = float(acc), 0
            else:
                waited += 1
        return waited

    def should_stop(self, val_accs) -> bool:
        return self.epochs_without_gain(val_accs) >= self.patience


def early_stopping(tc) -> EarlyStopping | None:
    """The rule ``tc`` (a TrainConfig) asks for, or None when ``train.early_stopping`` is off."""
    return EarlyStopping(tc.early_stopping_gain, tc.early_stopping_patience) if tc.early_stopping else None
