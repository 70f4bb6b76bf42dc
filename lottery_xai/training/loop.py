"""Training and evaluation loops (one round of training; evaluation of any model on any split)."""
from __future__ import annotations

import copy
import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..pruning import Masks, MaskEnforcer
from .callbacks import Callback, early_stopping
from .losses import get_loss


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA; a no-op on the CPU (CPU autocast is slower than fp32 for these nets)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(batch: dict, device: torch.device, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch["image"].to(device, non_blocking=True)
    if channels_last and device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["label"].to(device, non_blocking=True)


def _original_view(batch: dict, device: torch.device, channels_last: bool = False) -> torch.Tensor | None:
    """The batch's evaluation-transform view (``original``, see loaders.WithOriginalView), if it has one."""
    if "original" not in batch:
        return None
    return to_device({"image": batch["original"], "label": batch["label"]}, device, channels_last)[0]


def make_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw":  # decoupled decay on every parameter (torch's default; timm's recipes exempt 1-D ones)
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)


def make_scheduler(optimizer, tc: TrainConfig, steps_per_epoch: int, start_iteration: int = 0):
    """Per-iteration schedule over the round's epochs (a fresh one every round), at step ``start_iteration``
    of it from the first update on (late rewinding: the schedule continues at the rewind point K; the
    learning rate of the first update is the schedule's value at K, as open_lth's ``train`` gets by
    stepping its schedule K times before training)."""
    total = max(tc.epochs * steps_per_epoch, 1)
    k = int(start_iteration)
    if tc.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * min(it + k, total) / total)))
    if tc.lr_schedule == "step":
        step = tc.lr_step_epochs * steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: tc.lr_gamma ** ((it + k) // step))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, num_classes: int, amp: bool = True,
             channels_last: bool = False, progress: bool = False) -> dict:
    """Accuracy, mean loss and per-class counts of ``model`` on ``loader`` (eval mode)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros(num_classes, device=device, dtype=torch.long)
    count = torch.zeros(num_classes, device=device, dtype=torch.long)
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        images, labels = to_device(batch, device, channels_last)
        with autocast(device, amp):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        hit = (logits.argmax(1) == labels).long()
        correct.index_add_(0, labels, hit)
        count.index_add_(0, labels, torch.ones_like(labels))
    model.train(was_training)
    n = int(count.sum())
    return {
        "acc": float(correct.sum()) / max(n, 1),
        "loss": float(loss_sum) / max(n, 1),
        "n": n,
        "per_class_correct": correct.cpu(),
        "per_class_count": count.cpu(),
    }


@dataclass
class RoundResult:
    last_state: dict
    best_state: dict
    best_val_acc: float
    last_val_acc: float
    best_epoch: int
    history: list = field(default_factory=list)
    seconds: float = 0.0
    evals: list = field(default_factory=list)  # every validation: {iteration, epoch, val_loss, val_acc}
    iterations: int = 0  # the iteration count at the end (from 0; a late-rewound round started at K)
    early_stop_state: dict | None = None  # the weights at the early-stopping point (keep_early_stop=True)

    @property
    def early_stop(self) -> dict:
        """The validation point of minimum loss (the first of equal ones): the Lottery Ticket paper's
        early-stopping iteration (Frankle & Carbin 2019, Figure 3: the iteration of minimum validation
        loss), with the loss and the accuracy there, at the resolution of ``train.eval_every``."""
        return early_stop_point(self.evals)


def early_stop_point(evals: list) -> dict:
    """The first validation point of minimum ``val_loss`` in ``evals`` (a loss that is not a number never wins)."""
    finite = [e for e in evals if math.isfinite(e["val_loss"])]
    if not finite:
        return {"iteration": evals[-1]["iteration"], "epoch": evals[-1]["epoch"], "val_loss": float("nan"),
                "val_acc": evals[-1]["val_acc"]} if evals else {}
    return dict(min(finite, key=lambda e: e["val_loss"]))


def _rng_state(loader) -> dict:
    state = {"torch": torch.get_rng_state(), "loader": loader.generator.get_state() if getattr(loader, "generator", None) is not None else None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(loader, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("loader") is not None and getattr(loader, "generator", None) is not None:
        loader.generator.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_round(model: nn.Module, train_loader, val_loader, tc: TrainConfig, masks: Masks, device: torch.device,
                num_classes: int, *, loss: Callable | None = None, callbacks: Sequence[Callback] = (),
                desc: str = "train", train_sampler=None, ddp_model: nn.Module | None = None,
                start_iteration: int = 0, resume: dict | None = None,
                save_resume: Callable[[dict], None] | None = None, keep_early_stop: bool = False) -> RoundResult:
    """Train for ``tc.epochs`` with a fresh optimizer and schedule, masks held at every step
    (fewer with ``tc.early_stopping``: :class:`.callbacks.EarlyStopping` ends the round).

    ``start_iteration`` = K > 0 (late rewinding) trains from step K to the end, T - K iterations with
    T = ``tc.epochs * len(train_loader)``, as open_lth's ``train(start_step=K)``: a fresh optimizer, the
    schedule continuing at K, epochs and iterations counted from K (the first epoch is
    ``K // len(train_loader) + 1``; when K falls inside it, it trains the ``len(train_loader) - K %
    len(train_loader)`` iterations the epoch has left after K, on the first batches of its data order
    (open_lth skips the first ones, those its dense run trained on before K: our rounds draw their own
    data order, so which positions are used makes no difference, and no batch is loaded in vain), then
    validates as at every epoch end).

    Validation runs after each epoch's training, so the final weights are scored. The best
    validation state is kept in memory and returned with the last state. ``loss`` is a loss object
    of :mod:`.losses` (default: the one ``tc.loss`` names); ``callbacks`` (:mod:`.callbacks`) see
    every finished step and epoch (late-rewinding snapshots, tests that interrupt a run). ``ddp_model`` is the
    DistributedDataParallel wrapper to run forwards through, when training with torchrun.

    ``tc.eval_every`` = N > 0 also validates after every N-th iteration (counted from 0, as the round's
    iterations) that does not end an epoch; these points and the epoch ends are the result's ``evals``, from
    which :attr:`RoundResult.early_stop` reads the iteration of minimum validation loss. They are
    recorded only: the best state, early stopping and the training itself are as without them (evaluation
    runs in eval mode under no_grad and draws no random numbers). ``keep_early_stop`` also keeps the weights
    at that point (``early_stop_state``: the network whose test accuracy the paper reports "at early stopping").

    ``save_resume(state)`` receives, at every epoch end, everything needed to go on from there:
    model, optimizer and schedule states, the global and loader generators, the best state so far
    and the history. ``train_round(..., resume=state)`` continues from such a state and ends with
    exactly the weights an uninterrupted run would have.
    """
    start = time.perf_counter()
    steps = len(train_loader)
    if not 0 <= start_iteration < max(tc.epochs * steps, 1):
        raise ValueError(f"start_iteration {start_iteration} is outside the {tc.epochs * steps} iterations of training")
    optimizer = make_optimizer(model, tc)
    scheduler = make_scheduler(optimizer, tc, steps, start_iteration)
    forward = ddp_model if ddp_model is not None else model
    loss_fn = loss if loss is not None else get_loss(tc.loss, tc)
    stopper = early_stopping(tc)  # None unless train.early_stopping
    best_acc, best_state, best_epoch, history, evals = -1.0, None, 0, [], []
    stop_state = None

    def validated(point: dict, epoch: int) -> None:
        nonlocal stop_state
        lowest = min((e["val_loss"] for e in evals if math.isfinite(e["val_loss"])), default=math.inf)
        evals.append({"iteration": iteration, "epoch": epoch, "val_loss": point["loss"], "val_acc": point["acc"]})
        if keep_early_stop and (stop_state is None or (math.isfinite(point["loss"]) and point["loss"] < lowest)):
            stop_state = _cpu(model.state_dict())

    start_epoch, skip = start_iteration // max(steps, 1) + 1, start_iteration % max(steps, 1)
    iteration, first, elapsed = start_iteration, start_epoch, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        best_acc, best_state, best_epoch = resume["best_acc"], resume["best_state"], resume["best_epoch"]
        history, iteration, elapsed = list(resume["history"]), resume["iteration"], resume["seconds"]
        evals, stop_state = list(resume.get("evals", [])), resume.get("early_stop_state")
        first = resume["epoch"] + 1
        _set_rng_state(train_loader, resume["rng"])
    with MaskEnforcer(model, masks, optimizer):
        for epoch in range(first, tc.epochs + 1):
            if train_sampler is not None:
                train_sampler.set_epoch(epoch)
            dataset = getattr(train_loader, "dataset", None)
            if hasattr(dataset, "set_epoch"):  # augmentation = f(seed, epoch, index), whatever the workers
                dataset.set_epoch(epoch)
            model.train()
            loss_sum, seen = 0.0, 0
            batches = train_loader
            if epoch == start_epoch and skip:  # the rewind point is inside this epoch: its remaining batches
                batches = itertools.islice(train_loader, steps - skip)
            in_epoch = steps - skip if epoch == start_epoch else steps
            bar = tqdm(batches, desc=f"{desc} epoch {epoch}/{tc.epochs}", leave=False, total=in_epoch)
            for done, batch in enumerate(bar, start=1):
                images, labels = to_device(batch, device, tc.channels_last)
                if getattr(loss_fn, "own_forward", False):
                    loss = loss_fn.forward_pass(forward, model, images, labels, autocast(device, tc.amp),
                                                originals=_original_view(batch, device, tc.channels_last))
                else:
                    with autocast(device, tc.amp):
                        logits = forward(images)
                    loss = loss_fn(logits, labels, images=images, model=forward)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                iteration += 1
                loss_sum += float(loss.detach()) * len(labels)
                seen += len(labels)
                for callback in callbacks:
                    callback.on_iteration(iteration, model)
                if tc.eval_every and iteration % tc.eval_every == 0 and done < in_epoch:  # the epoch end validates anyway
                    validated(evaluate(model, val_loader, device, num_classes, tc.amp, tc.channels_last), epoch)
            val = evaluate(model, val_loader, device, num_classes, tc.amp, tc.channels_last)
            validated(val, epoch)
            history.append({"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_acc": val["acc"], "val_loss": val["loss"],
                            "lr": optimizer.param_groups[0]["lr"], "iteration": iteration})
            if val["acc"] > best_acc:
                best_acc, best_epoch = val["acc"], epoch
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            for callback in callbacks:
                callback.on_epoch(epoch, model)
            stop = stopper is not None and stopper.should_stop([h["val_acc"] for h in history])
            if save_resume is not None and epoch < tc.epochs and not stop:
                save_resume({
                    "epoch": epoch, "iteration": iteration, "seconds": elapsed + time.perf_counter() - start,
                    "model": _cpu(model.state_dict()), "optimizer": _cpu(optimizer.state_dict()),
                    "scheduler": scheduler.state_dict(), "best_acc": best_acc, "best_state": best_state,
                    "best_epoch": best_epoch, "history": history, "evals": evals, "early_stop_state": stop_state,
                    "rng": _rng_state(train_loader),
                })
            if stop:
                tqdm.write(f"{desc}: early stop after epoch {epoch} (validation accuracy gained less than "
                           f"{100 * tc.early_stopping_gain:g} % for {tc.early_stopping_patience} epochs); "
                           f"best epoch {best_epoch}")
                break
    last_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return RoundResult(last_state, best_state, best_acc, history[-1]["val_acc"], best_epoch, history,
                       elapsed + time.perf_counter() - start, evals, iteration, stop_state)


def _cpu(tree):
    """A copy of a (nested) state dict with every tensor on the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu(v) for v in tree)
    return tree
