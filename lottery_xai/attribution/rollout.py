"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", ACL, section 3):
how much of the class token's final representation flows from each patch, through every layer's attention.

The paper: at each layer the attention weights are averaged over the heads; the residual connection is
accounted for by adding the identity, A' = 0.5 W_att + 0.5 I, with the rows re-normalised; the rolled-out
attention of layer i is A'(i) A'(i-1) ... A'(1) (a recursive product from the input upwards). The map of an
image is the row of the class token over the patch tokens, on the patch grid.

Reference code: jacobgil/vit-explain (vit_rollout.py, the implementation most CAM libraries point to) hooks
``attn_drop`` of every timm block, fuses the heads with ``mean`` (or ``max`` / ``min``), sets to 0 the
``discard_ratio`` lowest entries of the fused matrix (never the class token's own entry [0, 0]), adds the
identity, halves, divides by the row sums, multiplies from the first layer up, takes row 0 over the patch
tokens and scales it by its maximum. Its defaults are ``discard_ratio=0.9`` and ``head_fusion="mean"`` (its
README shows ``max`` with 0.9).

Ours (:func:`attention_rollout`): the paper's rollout by default, ``head_fusion="mean"`` and
``discard_ratio=0.0``; ``head_fusion`` ``max`` / ``min`` and ``discard_ratio`` > 0 give vit-explain's variants.
Differences from vit-explain: each image of a batch gets its own discarding (vit-explain discards on the first
image only); rows are re-normalised as the paper says (vit-explain divides ``a / a.sum(dim=-1)``, which
broadcasts the row sums over the columns: identical while no entry is discarded, since every row of
0.5 (A + I) then sums to 1); the map keeps its raw values (no division by the maximum: the heatmap step scales
every method's maps alike) and is bilinearly upsampled to the image like a CAM (``upsample=False``: on the
patch grid). It needs timm's Attention modules (ViT, DeiT; a class token); Swin's windowed attention has no
global class-token row and is refused. The map does not depend on the class (``targets`` is accepted and
ignored, as the paper's rollout has no class).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from lottery_xai.attribution._hooks import TargetsLike, check_eval, check_images, upsample_maps
from lottery_xai.errors import UserError
from lottery_xai.timm_backbones import grid_side
from lottery_xai.tokens import token_layout

HEAD_FUSIONS = ("mean", "max", "min")


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm's attention modules: an ``attn_drop`` dropout applied to the softmax weights when not fused."""
    return [m for m in model.modules() if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Dropout)]


@contextlib.contextmanager
def _record_attention(modules: list[nn.Module], store: list):
    """Unfused attention (the softmax weights are computed explicitly) with the weights of every call recorded
    in execution order, restored afterwards."""
    saved = [m.fused_attn for m in modules]
    handles = []
    try:
        for m in modules:
            m.fused_attn = False
            handles.append(m.attn_drop.register_forward_hook(lambda mod, inputs, output: store.append(inputs[0].detach())))
        yield store
    finally:
        for h in handles:
            h.remove()
        for m, s in zip(modules, saved):
            m.fused_attn = s


def rollout_matrices(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """The rolled-out attention [N, T, T] of per-layer attention weights [N, heads, T, T] (first layer first)."""
    if head_fusion not in HEAD_FUSIONS:
        raise UserError(f"attention rollout head_fusion '{head_fusion}' is unknown; use one of {', '.join(HEAD_FUSIONS)}")
    if not 0.0 <= discard_ratio < 1.0:
        raise UserError(f"attention rollout discard_ratio must lie in [0, 1), got {discard_ratio}")
    result = None
    for attention in attentions:
        attention = attention.float()
        if head_fusion == "mean":
            fused = attention.mean(dim=1)
        elif head_fusion == "max":
            fused = attention.amax(dim=1)
        else:
            fused = attention.amin(dim=1)
        n, t, _ = fused.shape
        k = int(t * t * discard_ratio)
        if k > 0:
            flat = fused.reshape(n, -1).clone()
            lowest = flat.topk(k, dim=1, largest=False).indices
            drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
            drop[:, 0] = False  # the class token's attention to itself is never discarded
            fused = flat.masked_fill(drop, 0.0).reshape(n, t, t)
        eye = torch.eye(t, device=fused.device, dtype=fused.dtype)
        a = 0.5 * fused + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    if result is None:
        raise UserError("the model ran no attention layer; attention rollout needs a vision transformer")
    return result


@torch.no_grad()
def attention_rollout(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    upsample: bool = True,
) -> torch.Tensor:
    """Attention-rollout maps [N, H, W] (Abnar & Zuidema 2020, see the module docstring): the class token's row
    of the rolled-out attention over the patch tokens, on the patch grid, bilinearly upsampled to the input
    (``upsample=False``: [N, h, w]). ``targets`` is ignored (the rollout has no class), and so is ``layer`` (every
    layer's attention is rolled out; the argument is the methods' calling convention). Raw values."""
    check_images(images)
    check_eval(model)
    layout = token_layout(model)
    modules = _attention_modules(model)
    if layout is None or not layout.class_token or not modules:
        raise UserError(f"attention rollout needs a vision transformer with a class token and timm attention "
                        f"layers (ViT, DeiT); {type(model).__name__} is not one (Swin's windowed attention has no "
                        "class-token row): use a CAM or a gradient method")
    store: list[torch.Tensor] = []
    with _record_attention(modules, store):
        model(images)
    for a in store:
        if a.dim() != 4 or a.shape[0] != images.shape[0] or a.shape[-1] != a.shape[-2] or a.shape[-1] != store[0].shape[-1]:
            raise UserError(f"attention weights of shape {tuple(a.shape)}: attention rollout needs every layer's "
                            "[N, heads, T, T] over the same tokens")
    rolled = rollout_matrices(store, head_fusion, discard_ratio)
    t = rolled.shape[-1]
    side = grid_side(t - layout.prefix)
    if side is None:
        raise UserError(f"{t} tokens minus {layout.prefix} class/distillation token(s) is not a square grid of patches")
    maps = rolled[:, 0, layout.prefix:].reshape(-1, side, side)
    return upsample_maps(maps, images.shape[-2:]) if upsample else maps
