"""Masks and pruning rules: which weights are prunable, which go next, and keeping them at zero.

A mask is a bool tensor per prunable weight tensor, keyed by parameter name. Masks are part
of the model state: :class:`MaskEnforcer` zeroes the masked gradients and re-applies the masks
after every optimizer step, so a pruned weight is exactly 0 whatever the optimizer does
(momentum, weight decay, Adam). It gates on the mask, never on the weight's value.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

Masks = dict[str, torch.Tensor]


def prunable_names(model: nn.Module, prune_bn: bool = False, conv_only: bool = False) -> list[str]:
    """Weights of conv and linear layers (and BatchNorm gamma if asked); biases never.
    ``conv_only``: conv weights only, every linear layer kept whole (pruning.layers: conv)."""
    names = []
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d) if conv_only else (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    for mod_name, module in model.named_modules():
        prefix = mod_name + "." if mod_name else ""
        if isinstance(module, kinds):
            names.append(prefix + "weight")
        elif prune_bn and isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            names.append(prefix + "weight")
    return names


def full_masks(model: nn.Module, names: Iterable[str]) -> Masks:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


def target_fractions(round_index: int, schedule: str, prune_percent: float, prune_fc_rate: float,
                     compression_rates: list) -> tuple[float, float]:
    """(fraction of the body's prunable weights kept, fraction of the classifier's kept) at a round.

    Targets are fractions of the ORIGINAL counts, so rounding never accumulates across rounds.
    The compression-rate schedule prunes every prunable tensor, the classifier included, to 1/rate.
    """
    if round_index == 0:
        return 1.0, 1.0
    if schedule == "compression_rates":
        keep = 1.0 / float(compression_rates[round_index - 1])
        return keep, keep
    p = prune_percent / 100.0
    return (1.0 - p) ** round_index, (1.0 - p * prune_fc_rate) ** round_index


def _keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask of the ``n_keep`` largest scores (stable order breaks ties by position)."""
    flat = scores.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if n_keep > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        keep[order[:n_keep]] = True
    return keep.view_as(scores)


def prune(weights: dict[str, torch.Tensor], masks: Masks, keep_fraction: dict[str, float], scope: str,
          method: str = "magnitude", generator: torch.Generator | None = None) -> Masks:
    """New masks that keep ``keep_fraction[name]`` of each tensor's ORIGINAL size.

    ``scope='layerwise'`` applies the fraction per tensor; ``scope='global'`` ranks all tensors
    that share the same target fraction together (one threshold), so the classifier, which
    has its own rate, is ranked on its own. Only alive weights can survive.
    ``method='random'`` ranks by uniform random scores from ``generator``: uniform random pruning at the
    schedule's fractions (``pruning.random_sparsity: uniform``; with ``scope='global'`` it does not keep
    the ticket's per-layer sparsity, see :func:`random_matched` for the LTH control).
    """
    def scores_of(name: str) -> torch.Tensor:
        w = weights[name].detach().float().cpu()
        if method == "magnitude":
            s = w.abs()
        elif method == "random":
            s = torch.rand(w.shape, generator=generator)
        else:
            raise ValueError(f"unknown pruning method {method}")
        return torch.where(masks[name].cpu(), s, torch.full_like(s, -math.inf))

    new: Masks = {}
    if scope == "layerwise":
        for name in masks:
            n_keep = min(round(masks[name].numel() * keep_fraction[name]), int(masks[name].sum()))
            new[name] = _keep_top(scores_of(name), n_keep)
    elif scope == "global":
        groups: dict[float, list[str]] = {}
        for name in masks:
            groups.setdefault(keep_fraction[name], []).append(name)
        for fraction, names in groups.items():
            scores = torch.cat([scores_of(n).flatten() for n in names])
            total = sum(masks[n].numel() for n in names)
            alive = int(sum(int(masks[n].sum()) for n in names))
            keep = _keep_top(scores, min(round(total * fraction), alive))
            offset = 0
            for n in names:
                size = masks[n].numel()
                new[n] = keep[offset:offset + size].view_as(masks[n])
                offset += size
    else:
        raise ValueError(f"unknown pruning scope {scope}")
    return {n: m.to(masks[n].device) for n, m in new.items()}


def random_matched(masks: Masks, counts: dict[str, int], generator: torch.Generator) -> Masks:
    """The random-pruning control of the lottery-ticket hypothesis (``pruning.method: random`` with
    ``pruning.random_sparsity: matched``): new masks that keep, in each tensor, ``counts[name]`` weights
    (the ticket's alive count in that tensor at the same round) drawn uniformly at random among the
    weights alive in ``masks`` (this run's masks of the previous round).

    Reference: Frankle & Carbin 2019 compare winning tickets with "randomly sampled sparse networks"
    of the ticket's layerwise sparsity; facebookresearch/open_lth's ``randomly_prune`` branch
    (strategy ``layerwise``, its default) shuffles each tensor of a level's ticket mask, i.e. draws a
    uniform random subset of the whole tensor of the ticket's size, independently at every level.

    Here the subset is drawn among this run's alive weights of the previous round, so the control's
    masks are nested round to round (the iterative version). Both give, at every round, the same
    distribution of masks: a uniform random subset of a uniform random subset is a uniform random
    subset of the whole tensor (of the ticket's size, which does not depend on the draw), so each
    round is exactly OpenLTH's control. Nesting keeps the control on the code path of every other
    run (round r prunes round r-1's alive weights), so it also works with ``rewind: finetune`` (a
    fresh subset would revive weights that fine-tuning has held at 0) and with masks that only shrink.

    Tensors are drawn in the order of ``masks`` from ``generator``: the same seed gives the same masks.
    """
    new: Masks = {}
    for name, mask in masks.items():
        alive = int(mask.sum())
        n_keep = int(counts[name])
        if not 0 <= n_keep <= alive:
            raise ValueError(f"{name}: the ticket keeps {n_keep} weights, this run has {alive} alive")
        scores = torch.rand(mask.shape, generator=generator)
        scores = torch.where(mask.cpu(), scores, torch.full_like(scores, -math.inf))
        new[name] = _keep_top(scores, n_keep).to(mask.device)
    return new


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device, params[name].dtype))


class MaskEnforcer:
    """Keeps pruned weights at exactly 0 through training.

    Gradients of pruned weights are zeroed (so momentum and Adam moments of pruned weights stay 0)
    and the masks are re-applied after every optimizer step (weight decay and any other update
    cannot revive a weight). Use as a context manager; hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, masks: Masks, optimizer: torch.optim.Optimizer):
        params = dict(model.named_parameters())
        self.pairs = [(params[n], masks[n].to(params[n].device)) for n in masks]
        self.optimizer = optimizer
        self.handles = []

    @torch.no_grad()
    def apply(self) -> None:
        for p, m in self.pairs:
            p.mul_(m.to(p.dtype))

    def __enter__(self) -> "MaskEnforcer":
        self.apply()
        for p, m in self.pairs:
            self.handles.append(p.register_hook(lambda g, m=m: g * m.to(g.dtype)))
        self.handles.append(self.optimizer.register_step_post_hook(lambda *_: self.apply()))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def remaining_fractions(model: nn.Module, masks: Masks) -> tuple[float, float]:
    """(alive share of the prunable weights, alive share of all parameters)."""
    prunable = sum(m.numel() for m in masks.values())
    alive = sum(int(m.sum()) for m in masks.values())
    total = sum(p.numel() for p in model.parameters())
    return alive / max(prunable, 1), (total - prunable + alive) / max(total, 1)


def reset_batchnorm_stats(model: nn.Module) -> None:
    """Running mean/var back to their initial values (done together with a rewind)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
