"""Callbacks of the training loop: ``train_round(..., callbacks=[...])``.

A callback has ``on_iteration(iteration, model)`` (after each optimizer step, 1-based count over
the round) and ``on_epoch(epoch, model)`` (after each epoch's validation, 1-based). The frequency
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
