"""Class activation maps at a layer: Grad-CAM, Grad-CAM++, gradient x activation, Score-CAM.

One skeleton (`_layer_cam`) does the capture, the partial backward, the ReLU and the
upsampling; each gradient method only says how to combine the activation A and its gradient.
Score-CAM weighs the channels by forward passes instead of gradients.

On a vision transformer's token layer, A and its gradient are first reshaped to the patch grid
[N, D, h, w] (`as_grid`, pytorch-grad-cam's ``reshape_transform``); the maps are then at the
token grid's resolution before upsampling (pytorch-grad-cam, tutorials/vision_transformers.md).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lottery_xai.attribution._hooks import (
    TargetsLike,
    as_grid,
    check_eval,
    check_images,
    find_default_layer,
    forward_with_capture,
    layer_gradient,
    resolve_targets,
    upsample_maps,
)
from lottery_xai.errors import UserError


def _layer_cam(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike,
    layer: str | None,
    upsample: bool,
    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    check_images(images)
    check_eval(model)
    layer = layer if layer is not None else find_default_layer(model, images)
    activation, grad, _, _ = layer_gradient(model, images, layer, targets)
    activation, grad = as_grid(model, activation, layer), as_grid(model, grad, layer)
    with torch.no_grad():
        maps = torch.relu(combine(activation.float(), grad.float()))
        if upsample:
            maps = upsample_maps(maps, images.shape[-2:])
    return maps


def _gradcam_combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    weights = grad.mean(dim=(2, 3))  # alpha_k^c: spatial mean of dz_c/dA_k
    return torch.einsum("nc,nchw->nhw", weights, activation)


def _gradcam_pp_combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # exp(z) trick (Chattopadhay et al. 2018): the higher derivatives of exp(z_c) are powers of g.
    grad2, grad3 = grad.pow(2), grad.pow(3)
    activation_sum = activation.sum(dim=(2, 3), keepdim=True)
    denominator = 2 * grad2 + activation_sum * grad3
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = torch.where(denominator != 0, grad2 / safe, torch.zeros_like(grad2))
    weights = (alpha * torch.relu(grad)).sum(dim=(2, 3))
    return torch.einsum("nc,nchw->nhw", weights, activation)


def _grad_x_activation_combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return (grad * activation).sum(dim=1)


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    upsample: bool = True,
) -> torch.Tensor:
    """Grad-CAM maps [N, H, W]: ReLU(sum_k mean_hw(dz_c/dA_k) A_k), bilinearly upsampled to the input size.

    `layer` is a dotted module name (None: the last module with a spatial output, found with one
    extra single-image forward). `targets` [N] class indices, None for the predicted class.
    `upsample=False` returns the map at the layer's resolution. Raw (unnormalised) values.
    """
    return _layer_cam(model, images, targets, layer, upsample, _gradcam_combine)


def gradcam_pp(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    upsample: bool = True,
) -> torch.Tensor:
    """Grad-CAM++ maps [N, H, W]: weights sum_ij alpha_ij ReLU(g_ij), alpha = g^2 / (2 g^2 + sum_ab A_ab g^3).

    Same arguments as `gradcam`; where the denominator is 0 the coefficient alpha is 0.
    """
    return _layer_cam(model, images, targets, layer, upsample, _gradcam_pp_combine)


def grad_x_activation(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    upsample: bool = True,
) -> torch.Tensor:
    """Gradient x activation maps [N, H, W]: ReLU(sum_k dz_c/dA_k * A_k) upsampled (the CGC training form)."""
    return _layer_cam(model, images, targets, layer, upsample, _grad_x_activation_combine)


def grad_x_activation_map(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    create_graph: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable ReLU(sum_k dz_c/dA_k * A_k) at the layer's resolution, and the logits, from one forward.

    For the contrastive Grad-CAM consistency loss: with create_graph=True a loss built from the
    map back-propagates into every parameter (below and above the layer). Works in training mode;
    `.grad` of the parameters is not touched here. Returns (maps [N, h, w], logits [N, K]).
    """
    check_images(images)
    activation, grad, logits, _ = layer_gradient(model, images, layer, targets, create_graph=create_graph)
    maps = torch.relu(_grad_x_activation_combine(as_grid(model, activation, layer), as_grid(model, grad, layer)))
    return maps, logits


def score_cam(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    upsample: bool = True,
    batch_size: int = 64,
) -> torch.Tensor:
    """Score-CAM maps [N, H, W] (Wang et al. 2020): ReLU(sum_k s_k A_k), no gradients.

    s_k is the target-class softmax probability of the image multiplied by channel k's map,
    upsampled to the input and min-max scaled to [0, 1] (the authors' code; constant channels
    get weight 0). Costs one forward per image and channel, in batches of `batch_size`.
    """
    check_images(images)
    check_eval(model)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    layer = layer if layer is not None else find_default_layer(model, images)
    images = images.detach()
    activation, logits = forward_with_capture(model, images, layer)
    activation, logits = as_grid(model, activation.detach(), layer).float(), logits.detach()
    targets = resolve_targets(targets, logits)
    n, channels = activation.shape[:2]
    scores = torch.zeros(n * channels, device=images.device)
    with torch.no_grad():
        for start in range(0, n * channels, batch_size):
            flat = torch.arange(start, min(start + batch_size, n * channels), device=images.device)
            image, channel = flat // channels, flat % channels
            masks = upsample_maps(activation[image, channel], images.shape[-2:])
            low = masks.amin(dim=(1, 2), keepdim=True)
            span = masks.amax(dim=(1, 2), keepdim=True) - low
            masks = torch.where(span > 0, (masks - low) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
            probs = F.softmax(model(images[image] * masks[:, None].to(images.dtype)).float(), dim=1)
            valid = span.view(-1) > 0
            scores[flat] = torch.where(valid, probs.gather(1, targets[image][:, None])[:, 0], 0.0)
        maps = torch.relu(torch.einsum("nc,nchw->nhw", scores.view(n, channels), activation))
        return upsample_maps(maps, images.shape[-2:]) if upsample else maps
