"""Patch-grid superpixels for ACE on vision transformers (config ``ace.superpixels: patch_grid``).

ACE (Ghorbani et al. 2019) segments each discovery image with SLIC and feeds each segment's patch to the
network. A transformer sees its input as a grid of p x p patches (tokens): a SLIC boundary that cuts through a
token mixes the segment with the fill colour inside one token. With ``patch_grid`` every SLIC label map is
first snapped to the token grid, each p x p cell taking the label that covers most of its pixels (ties: the
smallest label), so every superpixel is a union of whole tokens; ACE's own rules then apply unchanged (segments
of at most ``min_fraction`` of the image dropped, a segment overlapping a kept coarser one by a Jaccard index
above ``max_jaccard`` dropped: snapping makes such duplicates common at fine resolutions). The default stays
ACE's SLIC superpixels as they are, which a transformer reads like any image.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError


def snap_to_patches(labels: np.ndarray, patch: int) -> np.ndarray:
    """A label map [H, W] (non-negative integers) with every ``patch`` x ``patch`` cell set to the label that
    covers most of its pixels (ties: the smallest label). H and W must be multiples of ``patch``."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise UserError(f"snap_to_patches expects a label map [H, W], got shape {labels.shape}")
    h, w = labels.shape
    if patch < 1 or h % patch or w % patch:
        raise UserError(f"the image ({h} x {w} px) is not a whole number of {patch}-pixel patches; use an img_size "
                        "that is a multiple of the transformer's patch size, or ace.superpixels: slic")
    if labels.min() < 0:
        raise UserError("snap_to_patches expects non-negative labels")
    gh, gw = h // patch, w // patch
    cells = labels.reshape(gh, patch, gw, patch).transpose(0, 2, 1, 3).reshape(gh * gw, patch * patch)
    n_labels = int(labels.max()) + 1
    counts = np.zeros((gh * gw, n_labels), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(gh * gw), patch * patch), cells.ravel()), 1)
    majority = counts.argmax(axis=1).astype(labels.dtype)  # argmax: the first (smallest) label among ties
    return np.repeat(np.repeat(majority.reshape(gh, gw), patch, axis=0), patch, axis=1)


def model_patch_size(model) -> int:
    """The side of a transformer's input patches (timm's ``patch_embed.patch_size``); UserError for a model
    without a patch embedding."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if size is None:
        raise UserError(f"ace.superpixels: patch_grid needs a transformer with a patch embedding; "
                        f"{type(model).__name__} has none (use ace.superpixels: slic)")
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    if size[0] != size[1]:
        raise UserError(f"ace.superpixels: patch_grid needs square patches, the model has {size}")
    return int(size[0])
