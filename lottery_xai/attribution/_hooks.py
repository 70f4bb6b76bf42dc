"""Shared machinery of the attribution methods: input checks, target choice, the gradient to a layer.

The layer capture itself is :class:`lottery_xai.activations.LayerCapture` (also used by TCAV and
the activation step): it runs the network up to the layer without building a graph and records
only layer -> logits, so `torch.autograd.grad` to the layer never touches the parameters below it.

Vision transformers: a token layer's output ([N, T, D] for ViT / DeiT, [N, h, w, C] for Swin) becomes a map
[N, D, h, w] through :func:`as_grid` (pytorch-grad-cam's ``reshape_transform``, :func:`lottery_xai.tokens.to_grid`),
applied alike to the activation and to its gradient; the CAM methods then work on it as on a CNN's map. A CNN's
outputs are not changed.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lottery_xai.errors import UserError
from lottery_xai.activations import forward_with_capture  # the one layer capture
from lottery_xai.models import require_eval
from lottery_xai.timm_backbones import default_cam_layer
from lottery_xai.tokens import to_grid, token_layout

TargetsLike = torch.Tensor | Sequence[int] | int | None


def layer_gradient(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    targets: TargetsLike,
    *,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, dz_target/dA, logits, targets) from one forward and one backward that stops at `layer`.

    The gradient of the sum of each image's own target logit gives every image its own
    gradient in one call. No parameter gradient is computed or accumulated.
    With create_graph=True the result stays differentiable (for training losses).
    """
    activation, logits = forward_with_capture(model, images, layer, detach=not create_graph)
    targets = resolve_targets(targets, logits)
    selected = logits.gather(1, targets[:, None]).sum()
    if not selected.requires_grad:
        raise UserError(f"the logits do not depend on layer {layer!r}; pick a layer on the path to the logits")
    (grad,) = torch.autograd.grad(selected, activation, create_graph=create_graph, allow_unused=True)
    if grad is None:
        raise UserError(f"the logits do not depend on layer {layer!r}; pick a layer on the path to the logits")
    return activation, grad, logits, targets


def as_grid(model: nn.Module, tensor: torch.Tensor, layer: str = "") -> torch.Tensor:
    """A layer's output (or its gradient) as a map [N, C, h, w]: a transformer's tokens reshaped to the patch grid
    as pytorch-grad-cam's ``reshape_transform`` does (the class and distillation tokens dropped), anything of a
    CNN unchanged (:func:`lottery_xai.tokens.to_grid`). A one-line UserError when the layer's output is not
    a map (e.g. a fully connected layer's [N, C]): the CAM methods need a convolutional or token layer."""
    grid = to_grid(tensor, token_layout(model), layer)
    if grid.dim() != 4:
        raise UserError(f"layer {layer!r} outputs {list(tensor.shape)}, not a spatial map [N, C, h, w]: the CAM methods "
                        "need a convolutional (or a transformer's token) layer; choose one, or a method without a layer")
    return grid


def find_default_layer(model: nn.Module, images: torch.Tensor) -> str:
    """Name of the last module (in execution order) that outputs a spatial map (4-D, more than 1 pixel).

    Costs one extra forward of a single image; for torchvision ResNets it returns `layer4`.
    Modules that run more than once (shared activations) are skipped. A timm ViT / DeiT or Swin gets
    pytorch-grad-cam's layer instead (the last block's ``norm1``, see :mod:`lottery_xai.timm_backbones`).
    """
    family_layer = default_cam_layer(model)
    if family_layer is not None:
        return family_layer
    order: list[str] = []
    calls: dict[str, int] = {}
    handles = []

    def recorder(name: str):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1:
                order.append(name)

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(recorder(name)))
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    candidates = [name for name in order if calls[name] == 1]
    if not candidates:
        raise UserError("found no layer with a spatial output to explain; pass layer='<module name>'")
    return candidates[-1]


def check_images(images) -> None:
    """UserError unless `images` is a floating tensor [N, C, H, W] with N >= 1."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"images must be a float tensor [N, C, H, W], got {shape}")
    if images.shape[0] == 0:
        raise UserError("images is an empty batch; pass at least one image")


def check_eval(model: nn.Module) -> None:
    """UserError when any submodule is in training mode (BatchNorm and dropout would change the maps)."""
    require_eval(model, "attribution maps")


def check_logits(logits, n: int) -> None:
    """UserError unless the model returned logits [N, K]."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"the model must return logits [N, K] with N = {n}, got {shape}")


def as_target_tensor(targets: int | Sequence[int] | torch.Tensor, n: int, device) -> torch.Tensor:
    """Given targets (one int for every image, or one per image) as a long tensor [n] on `device`; their
    range is checked by `resolve_targets` once the class count is known."""
    if isinstance(targets, int):
        targets = torch.full((n,), targets, dtype=torch.long, device=device)
    targets = torch.as_tensor(targets, device=device)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise UserError(f"targets must be class indices (integers), got dtype {targets.dtype}")
    targets = targets.long().reshape(-1)
    if targets.numel() != n:
        raise UserError(f"targets must hold one class index per image ({n}), got {targets.numel()}")
    return targets


def resolve_targets(targets: TargetsLike, logits: torch.Tensor) -> torch.Tensor:
    """Targets as a long tensor [N] on the logits' device; None means each image's predicted class."""
    n, num_classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    targets = as_target_tensor(targets, n, logits.device)
    low, high = int(targets.min()), int(targets.max())  # one sync per call, outside any loop
    if low < 0 or high >= num_classes:
        raise UserError(f"targets must lie in [0, {num_classes - 1}] (the model has {num_classes} classes), got {low}..{high}")
    return targets


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of maps [N, h, w] to `size` (align_corners=False), as Grad-CAM prescribes."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
