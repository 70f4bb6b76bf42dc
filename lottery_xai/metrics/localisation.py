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
    empty box scores 0: such images count, they are not skipped (`content_heatmap`, computed on the
    maps of the ground-truth class, skips all-zero maps as CGC's reference does). Higher is better.
    """
    maps = check_maps(maps)
    boxes = check_boxes(boxes, maps)
    return _energy_share(maps, box_mask(boxes, *maps.shape[-2:]))


ZERO_MAPS = ("skip", "zero", "uniform")
POINTING_TIES = ("first", "half")


def no_energy(maps: torch.Tensor) -> torch.Tensor:
    """[N] bool: maps with no positive energy (all zero, or nowhere positive), which `content_heatmap` skips."""
    return check_maps(maps).clamp_min(0).flatten(1).sum(dim=1) <= 0


def content_heatmap(maps: torch.Tensor, boxes: torch.Tensor, zero_maps: str = "skip") -> torch.Tensor:
    """The content heatmap of the CGC paper (Pillai et al. 2022), per image: `energy_in_box` of the maps
    of each image's ground-truth class (the caller passes those maps), in [0, 100].

    Reference: UCDvision/CGC ``TorchRay/torchray/benchmark/evaluate_finegrained_gradcam_energy_inside_bbox.py``
    (and ``evaluate_imagenet_gradcam_energy_inside_bbox.py``): the Grad-CAM of the ground-truth class is
    resized to the image, and when its sum is ``<= 0`` the image is skipped (``continue``) and counted
    (``zero_count``, printed as "Zero GC found for k/n samples"); otherwise the map is divided by its sum
    and its mass inside the box is averaged over the images that were not skipped. So with
    ``zero_maps='skip'`` (the default) a map with no positive energy (`no_energy`) is NaN here, the mean
    over the others (``nanmean``, as step 7 takes) is CGC's number; `zero_map_indicator` marks them (step 7's
    ``content_heatmap_zero_maps``). ``zero_maps='zero'`` counts them as 0 instead (this project's earlier
    rule, which averages over every image). ``zero_maps='uniform'`` scores them as a uniform map (the
    box's share of the image's pixels): what CGC's code computes in practice, because its
    ``compute_gradcam`` adds 1e-8 to every pixel after normalising, so an all-zero Grad-CAM arrives
    uniform and its skip branch does not fire there.
    """
    if zero_maps not in ZERO_MAPS:
        raise UserError(f"zero_maps must be one of {list(ZERO_MAPS)}, got {zero_maps!r}")
    share = energy_in_box(maps, boxes)
    if zero_maps == "zero":
        return share
    if zero_maps == "uniform":
        replacement = energy_in_box(torch.ones_like(check_maps(maps)), boxes)
    else:
        replacement = torch.full_like(share, float("nan"))
    return torch.where(no_energy(maps), replacement, share)


def zero_map_indicator(maps: torch.Tensor) -> torch.Tensor:
    """[N] float 1.0 where the map has no positive energy (the maps `content_heatmap` skips), else 0.0;
    its mean is the share and its sum the count of such maps."""
    return no_energy(maps).to(check_maps(maps).dtype)


def _near_box(maps: torch.Tensor, boxes: torch.Tensor, tolerance: float) -> torch.Tensor:
    """[N,H,W] bool: pixels whose centre is within `tolerance` (Euclidean, map pixels) of the closed box."""
    xs, ys = pixel_centres(*maps.shape[-2:], maps.device, maps.dtype)
    x0, y0, x1, y1 = (boxes[:, k, None, None] for k in range(4))
    dx = (x0 - xs).clamp_min(0) + (xs - x1).clamp_min(0)
    dy = (y0 - ys).clamp_min(0) + (ys - y1).clamp_min(0)
    return dx.square() + dy.square() <= float(tolerance) ** 2


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance: float = 15.0, ties: str = "first") -> torch.Tensor:
    """Pointing game hits (Zhang et al. 2016, "Top-down neural attention by excitation backprop"), [N]
    float of 1.0 (hit) / 0.0 (miss).

    ``ties='first'`` (the default) is TorchRay's benchmark (facebookresearch/TorchRay,
    ``examples/attribution_benchmark.py`` ``_saliency_to_point``: the point is ``torch.argmax`` of the
    flattened map, i.e. the first maximal pixel in row-major order; ``benchmark/pointing_game.py``
    ``PointingGame.evaluate``: a hit when some pixel of the object mask lies at Euclidean distance
    strictly below ``tolerance`` (15 px, in the pixels of the image the map was resized to) from that
    point, i.e. the point falls in the mask dilated by a disc of radius `tolerance`). The object mask is
    the box's pixels (`box_mask`: pixel centres in the half-open box, as TorchRay's ``voc_as_mask``
    fills the box's pixel rows and columns); distances are between pixel centres. TorchRay has no
    special case: a constant (e.g. all-zero) map points at pixel (0, 0), a hit only when the box
    comes within the tolerance of the top-left corner, and an empty box is a miss. A tolerance of 0
    never hits (strict inequality). Step 7 passes 15 px at 224 px scaled with the image size.

    ``ties='half'`` is this project's stricter earlier rule: a maximal pixel hits when the distance
    from its centre to the (closed, continuous) box is at most `tolerance`; when the maximum is attained
    at several pixels the image is a hit when at least half of them hit (a plateau that merely touches
    the box, or happens to start there in raster order, does not score); a constant map carries no
    location and is a miss, and so is an empty box (x1 <= x0 or y1 <= y0). Higher is better.
    """
    maps = check_maps(maps)
    boxes = check_boxes(boxes, maps)
    if tolerance < 0:
        raise UserError(f"pointing-game tolerance must be >= 0 pixels, got {tolerance}")
    if ties not in POINTING_TIES:
        raise UserError(f"pointing-game ties must be one of {list(POINTING_TIES)}, got {ties!r}")
    flat = maps.flatten(1)
    if ties == "first":
        height, width = maps.shape[-2:]
        point = flat.argmax(dim=1)  # the first maximal index in row-major order
        row, col = point // width, point % width
        rows = torch.arange(height, device=maps.device, dtype=maps.dtype).view(1, height, 1)
        cols = torch.arange(width, device=maps.device, dtype=maps.dtype).view(1, 1, width)
        accept = (rows - row.view(-1, 1, 1)).square() + (cols - col.view(-1, 1, 1)).square() < float(tolerance) ** 2
        return (accept & box_mask(boxes, height, width)).flatten(1).any(dim=1).to(maps.dtype)
    near = _near_box(maps, boxes, tolerance)
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
