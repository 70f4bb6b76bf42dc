"""Attribution maps (local explanations) behind one calling convention.

Every method is called as `method(model, images[N,C,H,W], targets[N] or None, *, layer=None,
**options) -> maps [N,H,W]` (float32, on the images' device, raw values); `targets=None`
explains the predicted class. `attribute(name, ...)` looks a method up by name, checks its
options and normalises the maps. A method with a report (integrated gradients: its completeness
per image) fills `attribute(..., details={})` as well.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from lottery_xai.attribution._hooks import TargetsLike
from lottery_xai.attribution.baseline import random_map
from lottery_xai.attribution.cam import grad_x_activation, grad_x_activation_map, gradcam, gradcam_pp, score_cam
from lottery_xai.attribution.gradients import integrated_gradients, integrated_gradients_report, saliency
from lottery_xai.attribution.perturbation import occlusion
from lottery_xai.attribution.rollout import attention_rollout
from lottery_xai.errors import UserError
from lottery_xai.names import unknown_name

METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "gradcam": gradcam,
    "gradcampp": gradcam_pp,
    "grad_x_activation": grad_x_activation,
    "scorecam": score_cam,
    "saliency": saliency,
    "integrated_gradients": integrated_gradients,
    "occlusion": occlusion,
    "random": random_map,
    "attention_rollout": attention_rollout,
}
# Methods whose `layer` argument matters; the others accept it and ignore it.
LAYER_METHODS = frozenset({"gradcam", "gradcampp", "grad_x_activation", "scorecam"})
# Methods that can say how good their maps are: name -> a function with the method's arguments that
# returns (maps, {detail: tensor [N]}).
REPORTS: dict[str, Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {
    "integrated_gradients": integrated_gradients_report,
}
# Methods that explain vision transformers only (attention, token layers): refused for any other model.
TRANSFORMER_METHODS = frozenset({"attention_rollout"})
NORMALIZE_MODES = ("max", "minmax", "none")

__all__ = [
    "METHODS",
    "LAYER_METHODS",
    "TRANSFORMER_METHODS",
    "NORMALIZE_MODES",
    "REPORTS",
    "attribute",
    "get_method",
    "normalize_maps",
    "gradcam",
    "gradcam_pp",
    "grad_x_activation",
    "grad_x_activation_map",
    "score_cam",
    "saliency",
    "integrated_gradients",
    "integrated_gradients_report",
    "occlusion",
    "random_map",
    "attention_rollout",
]


def get_method(name: str) -> Callable[..., torch.Tensor]:
    """The attribution function registered as `name`; UserError with the closest names when unknown."""
    if name in METHODS:
        return METHODS[name]
    raise unknown_name(f"unknown attribution method {name!r}", name, METHODS, otherwise=f"choose from {', '.join(METHODS)}")


def normalize_maps(maps: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Per-image normalisation of maps [N, H, W].

    'max': divide each map by its own global max (by its max |value| when the max is <= 0, so the
    ranking never flips); all-zero maps stay 0. 'minmax': (m - min) / (max - min), constant maps
    become 0. 'none': the maps unchanged.
    """
    if mode == "none":
        return maps
    if mode not in NORMALIZE_MODES:
        raise UserError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {mode!r}")
    flat = maps.reshape(maps.shape[0], -1)
    if mode == "max":
        peak = flat.amax(dim=1)
        scale = torch.where(peak > 0, peak, flat.abs().amax(dim=1))
        offset = torch.zeros_like(scale)
    else:
        offset = flat.amin(dim=1)
        scale = flat.amax(dim=1) - offset
    scale = scale.view(-1, *([1] * (maps.dim() - 1)))
    offset = offset.view_as(scale)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, (maps - offset) / safe, torch.zeros_like(maps))


def attribute(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    normalize: str = "max",
    details: dict | None = None,
    **options,
) -> torch.Tensor:
    """Maps [N, H, W] of method `name`, normalised per image (`normalize`: max, minmax or none).

    `options` are the method's own keyword arguments; an unknown one raises UserError naming the
    closest valid option, so a typo in a config cannot pass silently. With a dict `details`, a method
    in REPORTS runs through its report function and puts its per-image details (tensors [N], computed
    on the raw maps) in it; other methods leave it empty.
    """
    method = get_method(name)
    accepted = [
        parameter.name
        for parameter in inspect.signature(method).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name != "layer"
    ]
    for option in options:
        if option not in accepted:
            raise unknown_name(f"attribution method {name!r} has no option {option!r}", option, accepted, n=1,
                               otherwise=f"{name} takes {', '.join(accepted) or 'no options'}")
    if normalize not in NORMALIZE_MODES:
        raise UserError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
    if details is not None and name in REPORTS:
        maps, found = REPORTS[name](model, images, targets, layer=layer, **options)
        details.update(found)
    else:
        maps = method(model, images, targets, layer=layer, **options)
    return normalize_maps(maps, normalize)
