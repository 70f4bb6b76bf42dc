"""Training losses, by name (``train.loss``). A loss is called once per training step with the batch's
logits and labels, and may also use the images and the model the forward ran through (a loss on
explanations, such as a Grad-CAM consistency term, needs both). Adding one: a class with that call
and a ``register_loss`` line in its module (the CGC losses register in :mod:`.cgc`)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..names import unknown_name


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the labelled images of a batch (unlabelled ones carry label -100);
    a batch without any labelled image contributes 0 (and still a graph, for a zero gradient)."""
    if bool((labels >= 0).any()):
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    return logits.float().sum() * 0.0


class CrossEntropy:
    """Cross-entropy of the logits (computed in float32 under autocast), with ``train.label_smoothing``."""

    def __init__(self, tc: TrainConfig, **context):
        self.label_smoothing = tc.label_smoothing

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, *, images: torch.Tensor | None = None,
                 model: nn.Module | None = None) -> torch.Tensor:
        return labelled_cross_entropy(logits, labels, self.label_smoothing)


LOSSES: dict[str, Callable[..., Callable]] = {}


def register_loss(name: str, builder: Callable[..., Callable]) -> None:
    """Make ``train.loss: name`` build its loss with ``builder(train_config, **context)``; the context
    holds ``layer`` (the CAM layer, for losses on explanations). A loss with ``own_forward = True``
    is called as ``loss.forward_pass(forward, model, images, labels, autocast)`` and runs its own
    forwards; the others get the loop's logits."""
    LOSSES[name] = builder


def get_loss(name: str, tc: TrainConfig, **context):
    if name not in LOSSES:
        raise unknown_name(f"unknown training loss {name!r}", name, LOSSES, otherwise=f"known: {', '.join(LOSSES)}")
    return LOSSES[name](tc, **context)


register_loss("cross_entropy", CrossEntropy)
