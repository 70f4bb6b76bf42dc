"""Guided backpropagation and guided Grad-CAM: the sanity check's positive controls.

Guided backprop (Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for Simplicity: The All
Convolutional Net", ICLR workshop 2015) back-propagates the target logit to the input and, at every
ReLU, passes only the positive part of the gradient through the units that were active in the
forward pass: dR/dx = relu(dR/dy) * (x > 0). Captum's ``GuidedBackprop`` does the same with backward
hooks on every ``nn.ReLU`` module (its hook returns ``relu(grad_input)``, i.e. relu(g) * (x > 0)).
Guided Grad-CAM (Selvaraju et al., "Grad-CAM", ICCV 2017, and their code ramprs/grad-cam) is the
element-wise product of guided backprop with the Grad-CAM map upsampled to the input (bilinear in
the paper's code; Captum's ``GuidedGradCam`` defaults to nearest).

Adebayo et al. 2018 ("Sanity Checks for Saliency Maps") found both nearly unchanged when the
network's weights are randomised: they are the known failures the randomisation test must flag.

The guided ReLU is applied only inside the call: a forward hook on every ``nn.ReLU`` module passes
the module's output through an identity whose backward keeps the positive part of the gradient; the
hooks are removed in a ``finally``, so the model is never changed. Functional ReLUs (``F.relu`` in a
``forward``) are not modules and stay ordinary ReLUs, as in Captum.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lottery_xai.attribution._hooks import TargetsLike, check_eval, check_images, check_logits, resolve_targets
from lottery_xai.attribution.cam import gradcam
from lottery_xai.attribution.channels import check_channels, reduce_channels
from lottery_xai.errors import UserError

INTERPOLATIONS = ("bilinear", "nearest")


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward passes only the positive part of the incoming gradient."""

    @staticmethod
    def forward(ctx, output: torch.Tensor) -> torch.Tensor:
        return output.clone()  # a new tensor: later in-place ops act on it, never on the ReLU's own output

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def _guide(module: nn.Module, inputs, output):
    if isinstance(output, torch.Tensor) and torch.is_grad_enabled() and output.requires_grad:
        # The ReLU's own backward then multiplies by (x > 0): relu(g) * (x > 0), Captum's guided gradient.
        return _PositiveGradient.apply(output)
    return None


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Within the block, every ``nn.ReLU`` of `model` back-propagates as a guided ReLU; yields their number.
    The forward hooks are removed on exit, whatever happens."""
    handles = [m.register_forward_hook(_guide) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def guided_gradients(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(guided gradient [N, C, H, W] float32, logits, targets) from one forward and one backward."""
    check_images(images)
    check_eval(model)
    inputs = images.detach().requires_grad_(True)
    with guided_relus(model) as count:
        if count == 0:
            raise UserError("guided backprop needs nn.ReLU modules in the model (functional ReLUs cannot be "
                            "guided); this model has none")
        with torch.enable_grad():  # also under a caller's torch.no_grad()
            logits = model(inputs)
            check_logits(logits, images.shape[0])
            targets = resolve_targets(targets, logits)
            selected = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(selected, inputs)
    return grad.float(), logits.detach(), targets


def guided_backprop(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    channels: str = "abs_sum",
) -> torch.Tensor:
    """Guided backprop maps [N, H, W] (Springenberg et al. 2015; Captum's ``GuidedBackprop``).

    The gradient of the target logit with respect to the input, where every ``nn.ReLU`` passes back
    only positive gradients through active units (see the module). `channels` reduces the
    per-channel gradient (`lottery_xai.attribution.channels`): 'abs_sum' (default, PAIR's grayscale
    visualisation, as in Adebayo et al.'s sanity checks), 'sum', 'abs_max' or 'none' ([N, C, H, W],
    Captum's output). `layer` is ignored.
    """
    check_channels(channels)
    grad, _, _ = guided_gradients(model, images, targets)
    return reduce_channels(grad, channels)


def guided_gradcam(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    channels: str = "abs_sum",
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Guided Grad-CAM maps [N, H, W] (Selvaraju et al. 2017): guided backprop x upsampled Grad-CAM.

    The Grad-CAM map at `layer` (None: the last module with a spatial output), ReLU'd, is resized to
    the input by `interpolation` ('bilinear', align_corners=False: the paper's code; 'nearest':
    Captum's ``GuidedGradCam`` default) and multiplies the guided gradient of every channel; then
    `channels` reduces them as in `guided_backprop` ('none': [N, C, H, W], Captum's output). Both
    explain the same class (the predicted one unless `targets` is given). Costs one guided forward and
    backward plus Grad-CAM's forward and backward to the layer.
    """
    check_channels(channels)
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    grad, _, targets = guided_gradients(model, images, targets)
    cam = gradcam(model, images, targets, layer=layer, upsample=False)
    mode = {"mode": "bilinear", "align_corners": False} if interpolation == "bilinear" else {"mode": "nearest"}
    cam = F.interpolate(cam[:, None], size=tuple(images.shape[-2:]), **mode)
    return reduce_channels(grad * cam, channels)
