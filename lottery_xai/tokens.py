"""Token layers of vision transformers as maps and as vectors.

A CNN layer gives a map [N, C, h, w]; a transformer layer gives tokens: [N, T, D] for ViT / DeiT (the class
token, DeiT's distillation token and any register tokens first, then the h x w patch tokens in row order), or
[N, h, w, C] for timm's Swin (channels last). Two things are built from them:

- :func:`to_grid`: the map [N, D, h, w] of the patch tokens, pytorch-grad-cam's ``reshape_transform``
  (jacobgil/pytorch-grad-cam, tutorials/vision_transformers.md: ``tensor[:, 1:, :].reshape(N, h, w, D)``, then
  channels to the front; for Swin the same reshape of the [N, h, w, C] tokens). CAMs are computed on it like on a
  CNN's map: activation and gradient go through the same reshape.
- :func:`token_features`: the vector [N, D] of a layer for CAVs, TCAV and ACE (config ``token_features``):
  ``cls`` the class token, ``mean`` the mean over the patch tokens, ``grid`` the map of :func:`to_grid` (then
  ``cav_flattening_type`` applies as to a CNN's map), ``auto`` the class token where the model has one (ViT,
  DeiT), else the mean (Swin). For TCAV the gradient takes the same reduction (:func:`token_features` of the
  gradient): for ``cls`` that is the exact gradient with respect to the feature; for ``mean``, moving the mean by
  eps * v moves every patch token by eps * v, so the directional derivative is T * (mean of the gradients) . v,
  of the same sign, which is all a TCAV score counts (as for ``avg_pool``).

Which layout a model has is :func:`token_layout`'s answer: None for a CNN (nothing here changes its maps or
vectors), a :class:`TokenLayout` for timm's VisionTransformer (and subclasses) and SwinTransformer, or the
``token_layout`` attribute a hand-built model sets.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError
from .timm_backbones import grid_side

TOKEN_FEATURES = ("auto", "cls", "mean", "grid")


@dataclass(frozen=True)
class TokenLayout:
    """How a transformer's layer outputs hold the patch grid.

    ``prefix``: tokens before the patch tokens in [N, T, D] outputs (class, distillation, register tokens);
    ``class_token``: whether the first of them is a class token; ``channels_last``: whether a 4-D output is
    [N, h, w, C] (Swin) rather than [N, C, h, w]. A 4-D output whose shape says otherwise unambiguously (a
    convolution inside a Swin: [N, C, h, h] with C != h) is read as its shape says.
    """

    prefix: int = 0
    class_token: bool = False
    channels_last: bool = False


def token_layout(model: nn.Module) -> TokenLayout | None:
    """The :class:`TokenLayout` of a transformer, None for any other model (a CNN's maps are used as they are)."""
    own = getattr(model, "token_layout", None)
    if isinstance(own, TokenLayout):
        return own
    # A timm transformer exists only where its module was imported: look the classes up in sys.modules, so that
    # a CNN (or a process without timm) never pays timm's import (a second or more per step process)
    vit = sys.modules.get("timm.models.vision_transformer")
    if vit is not None and isinstance(model, vit.VisionTransformer):
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        return TokenLayout(prefix=prefix, class_token=getattr(model, "cls_token", None) is not None)
    swin = sys.modules.get("timm.models.swin_transformer")
    if swin is not None and isinstance(model, swin.SwinTransformer):
        return TokenLayout(prefix=0, class_token=False, channels_last=True)
    return None


def _channels_last(x: torch.Tensor, layout: TokenLayout) -> bool:
    """Whether a 4-D output is [N, h, w, C]: its shape when unambiguous (square grids), else the layout's."""
    first, last = x.shape[1] == x.shape[2], x.shape[2] == x.shape[3]
    if first != last:
        return first
    return layout.channels_last


def is_token_output(x: torch.Tensor, layout: TokenLayout | None) -> bool:
    """Whether an output is tokens ([N, T, D], or a channels-last [N, h, w, C]) rather than a CNN-style map."""
    if layout is None:
        return False
    return x.dim() == 3 or (x.dim() == 4 and _channels_last(x, layout))


def _patch_tokens(x: torch.Tensor, layout: TokenLayout, name: str = "") -> tuple[torch.Tensor, int]:
    """The patch tokens [N, h*h, D] of a 3-D token output and the grid side h."""
    t = x.shape[1]
    patches = t - layout.prefix
    if layout.prefix and patches > 0 and grid_side(patches):
        return x[:, layout.prefix:], grid_side(patches)
    if grid_side(t):  # a layer without the prefix tokens (the patch embedding)
        return x, grid_side(t)
    where = f"layer {name!r}" if name else "the layer"
    raise UserError(f"{where} has {t} tokens, which minus the {layout.prefix} class/distillation token(s) is not a "
                    "square grid of patches; pick a layer of the transformer's blocks")


def to_grid(x: torch.Tensor, layout: TokenLayout | None, name: str = "") -> torch.Tensor:
    """A layer output as a map [N, C, h, w] (pytorch-grad-cam's ``reshape_transform``): [N, T, D] tokens without
    the prefix tokens, reshaped to h x h in row order; [N, h, w, C] permuted; [N, C, h, w] unchanged; and every
    output of a model without a layout unchanged."""
    if layout is None:
        return x
    if x.dim() == 3:
        patches, side = _patch_tokens(x, layout, name)
        return patches.reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)
    if x.dim() == 4 and _channels_last(x, layout):
        return x.permute(0, 3, 1, 2)
    return x


def resolve_mode(mode: str, layout: TokenLayout | None) -> str:
    """``auto`` -> ``cls`` for a model with a class token, else ``mean``; other modes are returned checked."""
    if mode not in TOKEN_FEATURES:
        raise UserError(f"token_features '{mode}' is unknown; use one of {', '.join(TOKEN_FEATURES)}")
    if mode == "auto":
        return "cls" if layout is not None and layout.class_token else "mean"
    return mode


def token_features(x: torch.Tensor, layout: TokenLayout | None, mode: str = "auto", name: str = "") -> torch.Tensor:
    """A token output as features (see the module docstring): [N, D] for ``cls`` and ``mean``, the map
    [N, D, h, w] for ``grid``. CNN-style outputs ([N, C, h, w], [N, D], and anything of a model without a layout)
    are returned unchanged, for ``cav_flattening_type`` to flatten as before."""
    if not is_token_output(x, layout):
        return x
    mode = resolve_mode(mode, layout)
    if mode == "cls":
        patches = x.shape[1] - layout.prefix if x.dim() == 3 else 0
        if not layout.class_token or patches <= 0 or not grid_side(patches):
            where = f"layer {name!r}" if name else "this layer"
            raise UserError(f"token_features: cls needs a class token, and {where} has none (Swin, a patch "
                            "embedding, a ViT without class token); use token_features: mean")
        return x[:, 0]
    grid = to_grid(x, layout, name)
    return grid.mean(dim=(2, 3)) if mode == "mean" else grid
