"""Localisation: does the map's evidence lie on the object (box) or its parts?

Coordinates: maps are [N,H,W] and boxes / parts are in the pixel coordinates of the maps
(scale them if the map is not at the annotation's resolution). Pixel (row i, col j) covers
[j, j+1) x [i, i+1) and has centre (j+0.5, i+0.5). A pixel is inside the box (x0, y0, x1, y1)
when its centre is: ``x0 <= j+0.5 < x1`` and ``y0 <= i+0.5 < y1`` (half-open, so a box with
integer corners covers exactly the pixels it spans and a zero-area box covers none). For CUB's
``x, y, width, height`` boxes pass ``x0=x, y0=y, x1=x+width, y1=y+height``.

Signed maps: energy metrics use the positive part of the map (Grad-CAM maps are already >= 0;
for gradient-style signed maps only positive evidence counts as energy). Every metric here is
unchanged by a positive scaling of a map.
"""
from __future__ import annotations

import torch

from lottery_xai.errors import UserError
from lottery_xai.metrics.base import check_boxes, check_maps, pixel_centres


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N,H,W] bool: pixels whose centre lies in the half-open box [x0, x1) x [y0, y1)."""
    xs, ys = pixel_centres(height, width, boxes.device, boxes.dtype)
    x0, y0, x1, y1 = (boxes[:, k, None, None] for k in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def _energy_share(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """100 * share of the positive-part map inside `region`; 0 for an all-zero map."""
    energy = maps.clamp_min(0)
    total = energy.sum(dim=(1, 2))
    inside = (energy * region).sum(dim=(1, 2))
    return torch.where(total > 0, 100.0 * inside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Percentage of map energy inside the box, [N] in [0, 100].

    The positive part of each map is normalised to sum 1 at map resolution, and
    ``100 * sum_{p in box} M(p)`` is returned. An all-zero (or all-negative) map scores 0 and an
    empty box scores 0: such images count, they are not skipped. The mean over images is the
    "content heatmap" CH. Higher is better.
    """
    maps = check_maps(maps)
    boxes = check_boxes(boxes, maps)
    return _energy_share(maps, box_mask(boxes, *maps.shape[-2:]))


def content_heatmap(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The content heatmap of the CGC paper, per image: :func:`energy_in_box` of the maps of each
    image's ground-truth class (the caller passes those maps); all-zero maps count as 0."""
    return energy_in_box(maps, boxes)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance: float = 15.0) -> torch.Tensor:
    """Pointing game hits, [N] float of 1.0 (hit) / 0.0 (miss).

    The map points at its maximum. A maximal pixel hits when the Euclidean distance from its
    centre to the (closed) box is at most `tolerance`, in map pixels (Zhang et al. 2016 use 15 px
    at about 224 px; scale it with the map size). Ties: when the maximum is attained at several
    pixels, the image is a hit when at least half of the maximal pixels hit. Unlike "any", this
    does not reward a flat map whose plateau merely touches the box, and unlike "the first in
    raster order" it does not depend on where the plateau starts; with a unique maximum all rules
    agree. A constant map (all zero included) carries no location and is a miss; so is an empty
    box (x1 <= x0 or y1 <= y0). Higher is better.
    """
    maps = check_maps(maps)
    boxes = check_boxes(boxes, maps)
    if tolerance < 0:
        raise UserError(f"pointing-game tolerance must be >= 0 pixels, got {tolerance}")
    xs, ys = pixel_centres(*maps.shape[-2:], maps.device, maps.dtype)
    x0, y0, x1, y1 = (boxes[:, k, None, None] for k in range(4))
    dx = (x0 - xs).clamp_min(0) + (xs - x1).clamp_min(0)
    dy = (y0 - ys).clamp_min(0) + (ys - y1).clamp_min(0)
    near = dx.square() + dy.square() <= float(tolerance) ** 2

    flat = maps.flatten(1)
    peak, low = flat.amax(dim=1), flat.amin(dim=1)
    is_max = maps == peak[:, None, None]
    hit_share = (is_max & near).sum(dim=(1, 2)) / is_max.sum(dim=(1, 2))
    informative = (peak > low) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return ((hit_share >= 0.5) & informative).to(maps.dtype)


def energy_in_parts(maps: torch.Tensor, parts: torch.Tensor, radius: float = 15.0) -> torch.Tensor:
    """Percentage of map energy within `radius` map pixels of the visible parts, [N] in [0, 100].

    `parts` is [N,P,3] with (x, y, visible) per part in map pixel coordinates; a pixel belongs to
    the part region when its centre is within `radius` (Euclidean) of a visible part location.
    Energy as in `energy_in_box` (positive part, normalised to sum 1; an all-zero map scores 0).
    An image with no visible part has no region: its value is NaN (documented; aggregate with
    ``nanmean``). Higher is better.
    """
    maps = check_maps(maps)
    parts = torch.as_tensor(parts, device=maps.device).to(maps.dtype)
    if parts.ndim != 3 or parts.shape[0] != maps.shape[0] or parts.shape[2] != 3:
        raise UserError(f"parts must have shape [N,P,3] = [{maps.shape[0]},P,3] (x, y, visible), got {tuple(parts.shape)}")
    if radius <= 0:
        raise UserError(f"energy_in_parts radius must be > 0 pixels, got {radius}")
    xs, ys = pixel_centres(*maps.shape[-2:], maps.device, maps.dtype)
    visible = parts[:, :, 2] > 0
    region = torch.zeros(maps.shape, dtype=torch.bool, device=maps.device)
    # A loop over the (at most ~15) part slots keeps memory at one [N,H,W] mask, not [N,P,H,W].
    for p in range(parts.shape[1]):
        px, py = parts[:, p, 0, None, None], parts[:, p, 1, None, None]
        near = (xs - px).square() + (ys - py).square() <= float(radius) ** 2
        region |= near & visible[:, p, None, None]
    share = _energy_share(maps, region)
    return torch.where(visible.any(dim=1), share, torch.full_like(share, float("nan")))
