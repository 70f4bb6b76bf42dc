"""Shared machinery of the attribution methods: layer lookup and capture, input checks, target choice.

The capture runs the network up to the chosen layer without building a graph and
only records operations from the layer to the logits, so `torch.autograd.grad`
to the layer never touches (or computes gradients for) the parameters below it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lottery_xai.errors import UserError
from lottery_xai.models import get_layer, require_eval

TargetsLike = torch.Tensor | Sequence[int] | int | None


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule of `model` with dotted name `layer`; UserError naming close matches when there is none."""
    if not isinstance(layer, str) or not layer:
        raise UserError(f"layer must be a dotted module name such as 'layer4', got {layer!r}")
    return get_layer(model, layer)


class LayerCapture:
    """Context manager that records one module's output during a forward pass, ready for `autograd.grad`.

    detach=True (explanations): the captured activation is a fresh leaf and grad mode is
    switched on at the layer, so when the forward starts under `torch.no_grad()` the graph
    spans only layer -> logits. detach=False (training losses): the activation stays attached
    to the graph below it, so a loss built from it reaches every parameter.
    The hook is removed on exit, whatever happens.
    """

    def __init__(self, module: nn.Module, name: str, detach: bool = True):
        self.module, self.name, self.detach = module, name, detach
        self.activation: torch.Tensor | None = None
        self._calls = 0
        self._handle = None

    def __enter__(self) -> "LayerCapture":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> bool:
        self._handle.remove()
        self._handle = None
        return False

    def _hook(self, module: nn.Module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise UserError(
                f"layer {self.name!r} returns {type(output).__name__}, not a tensor; pick a layer whose output is a feature map"
            )
        self._calls += 1
        if self._calls > 1:
            raise UserError(
                f"layer {self.name!r} runs more than once per forward pass (a shared module); pick a layer that runs once, e.g. its parent block"
            )
        if self.detach:
            activation = output.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # record only from here to the logits
        else:
            activation = output if output.requires_grad else output.requires_grad_(True)
        self.activation = activation
        # Later in-place ops (ReLU(inplace=True), `out += identity`) must not modify the captured tensor.
        return activation.clone()


def forward_with_capture(
    model: nn.Module, images: torch.Tensor, layer: str, *, detach: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model(images)` once and return (activation of `layer`, logits); see LayerCapture for `detach`."""
    capture = LayerCapture(resolve_layer(model, layer), layer, detach=detach)
    with capture:
        with torch.no_grad() if detach else torch.enable_grad():
            logits = model(images)
    if capture.activation is None:
        raise UserError(f"layer {layer!r} did not run in the forward pass; pick a layer on the path to the logits")
    check_logits(logits, images.shape[0])
    return capture.activation, logits


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


def find_default_layer(model: nn.Module, images: torch.Tensor) -> str:
    """Name of the last module (in execution order) that outputs a spatial map (4-D, more than 1 pixel).

    Costs one extra forward of a single image; for torchvision ResNets it returns `layer4`.
    Modules that run more than once (shared activations) are skipped.
    """
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


def resolve_targets(targets: TargetsLike, logits: torch.Tensor) -> torch.Tensor:
    """Targets as a long tensor [N] on the logits' device; None means each image's predicted class."""
    n, num_classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    if isinstance(targets, int):
        targets = torch.full((n,), targets, dtype=torch.long, device=logits.device)
    targets = torch.as_tensor(targets, device=logits.device)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise UserError(f"targets must be class indices (integers), got dtype {targets.dtype}")
    targets = targets.long().reshape(-1)
    if targets.numel() != n:
        raise UserError(f"targets must hold one class index per image ({n}), got {targets.numel()}")
    low, high = int(targets.min()), int(targets.max())  # one sync per call, outside any loop
    if low < 0 or high >= num_classes:
        raise UserError(f"targets must lie in [0, {num_classes - 1}] (the model has {num_classes} classes), got {low}..{high}")
    return targets


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of maps [N, h, w] to `size` (align_corners=False), as Grad-CAM prescribes."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
