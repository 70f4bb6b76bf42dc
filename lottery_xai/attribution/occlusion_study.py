"""The occlusion-sensitivity study of the discovery study (INM363): where a class lives in an image.

Each image is copied ``n_masks`` times, each copy with one ``size`` x ``size`` square at a seeded
uniformly random position filled with the image's mean colour; every copy goes through the model (in
batches). For copy m, ``delta_m = p(target | copy m) - p(target | image)`` (softmax probability); the
deltas of an image are z-scored over its copies, and a square is selected when its z-score is below
``-z*``, with ``z* = scipy.stats.norm.ppf(1 - p)`` the one-sided normal quantile of the chosen level (the
original hard-coded 2.644854 for p = 0.01, which is the quantile of p = 0.004; ``norm.ppf(0.99)`` is
2.326). The heatmap of an image counts the selected squares covering each pixel; its mask is where
the count is positive. Everything is batched over copies; no loop runs over pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from lottery_xai.attribution._hooks import TargetsLike, check_eval, check_images, check_logits, resolve_targets
from lottery_xai.errors import UserError


def z_threshold(p: float) -> float:
    """The one-sided standard-normal quantile z* with P(Z > z*) = p."""
    if not 0 < p < 1:
        raise UserError(f"the occlusion study's level p must be in (0, 1), got {p!r}")
    return float(stats.norm.ppf(1 - p))


def default_size(side: int) -> int:
    """Square side when none is configured: an eighth of the image side (at least 2 pixels)."""
    return max(2, round(side / 8))


def random_squares(n_images: int, n_masks: int, size: int, height: int, width: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(tops, lefts) [n_images, n_masks] of squares lying wholly inside the image, uniformly drawn."""
    shape = (n_images, n_masks)
    device = generator.device
    tops = torch.randint(0, height - size + 1, shape, generator=generator, device=device)
    lefts = torch.randint(0, width - size + 1, shape, generator=generator, device=device)
    return tops, lefts


def square_masks(tops: torch.Tensor, lefts: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Boolean masks [B, H, W], True inside each square [top, top + size) x [left, left + size)."""
    rows = torch.arange(height, device=tops.device)
    cols = torch.arange(width, device=tops.device)
    in_rows = (rows >= tops[:, None]) & (rows < tops[:, None] + size)
    in_cols = (cols >= lefts[:, None]) & (cols < lefts[:, None] + size)
    return in_rows[:, :, None] & in_cols[:, None, :]


def square_counts(tops: torch.Tensor, lefts: torch.Tensor, weights: torch.Tensor, size: int, height: int,
                  width: int) -> torch.Tensor:
    """Per image, the sum of ``weights`` [N, M] of the squares covering each pixel: [N, H, W].

    A 2-D difference array (+w at the square's top-left, -w beyond its right and bottom edges, +w at the
    far corner) summed along both axes: O(N (M + H W)), whatever the square size."""
    n, m = tops.shape
    diff = torch.zeros(n, height + 1, width + 1, dtype=torch.float64, device=tops.device)
    image = torch.arange(n, device=tops.device)[:, None].expand(n, m).reshape(-1)
    t, l = tops.reshape(-1), lefts.reshape(-1)
    w = weights.reshape(-1).to(torch.float64)
    for dr, dc, sign in ((0, 0, 1.0), (size, 0, -1.0), (0, size, -1.0), (size, size, 1.0)):
        diff.index_put_((image, t + dr, l + dc), sign * w, accumulate=True)
    return diff.cumsum(1).cumsum(2)[:, :height, :width]


def z_scores(values: torch.Tensor) -> torch.Tensor:
    """Row-wise z-scores of [N, M] values (population std); 0 where a row is constant."""
    mean = values.mean(dim=1, keepdim=True)
    std = values.std(dim=1, unbiased=False, keepdim=True)
    return torch.where(std > 0, (values - mean) / torch.where(std > 0, std, torch.ones_like(std)),
                       torch.zeros_like(values))


def occlusion_study(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *, n_masks: int = 500,
                    size: int | None = None, p: float = 0.01, batch_size: int = 128,
                    generator: torch.Generator | None = None, seed: int = 0,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """The study for ``images`` [N, 3, H, W] (normalised as the model expects), explaining ``targets``
    (default: each image's predicted class). Squares come from ``generator`` (default: a CPU generator
    seeded with ``seed``). Returns, on the images' device: tops, lefts [N, M]; delta [N, M] (probability
    change of each copy), z [N, M]; selected [N, M] (z < -z*); heatmap [N, H, W] (count of selected
    squares over each pixel); mask [N, H, W] (heatmap > 0); clean_prob [N]; targets [N]; z_threshold.
    ``progress``: a progress bar over the batches of copies."""
    check_images(images)
    check_eval(model)
    n, _, height, width = images.shape
    size = default_size(min(height, width)) if size in (None, 0) else size
    if not isinstance(size, int) or not 1 <= size <= min(height, width):
        raise UserError(f"occlusion square size must be an integer between 1 and {min(height, width)}, got {size!r}")
    for name, value in (("n_masks", n_masks), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    threshold = z_threshold(p)
    device = images.device
    images = images.detach()
    generator = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    tops, lefts = (t.to(device) for t in random_squares(n, n_masks, size, height, width, generator))
    with torch.no_grad():
        logits = model(images)
        check_logits(logits, n)
        targets = resolve_targets(targets, logits)
        clean = F.softmax(logits.float(), dim=1).gather(1, targets[:, None])[:, 0]
        fill = images.mean(dim=(2, 3))[:, :, None, None]  # each image's mean colour
        flat_tops, flat_lefts = tops.reshape(-1), lefts.reshape(-1)
        total = n * n_masks
        delta = torch.empty(total, device=device)
        for start in tqdm(range(0, total, batch_size), desc="occluded copies", unit="batch", leave=False,
                          disable=not progress):
            flat = torch.arange(start, min(start + batch_size, total), device=device)
            owner = flat // n_masks
            masks = square_masks(flat_tops[flat], flat_lefts[flat], size, height, width)
            occluded = torch.where(masks[:, None], fill[owner], images[owner])
            prob = F.softmax(model(occluded).float(), dim=1).gather(1, targets[owner][:, None])[:, 0]
            delta[flat] = prob - clean[owner]
    delta = delta.view(n, n_masks)
    z = z_scores(delta)
    selected = z < -threshold
    heatmap = square_counts(tops, lefts, selected.to(torch.float64), size, height, width).round().to(torch.int32)
    return {"tops": tops, "lefts": lefts, "delta": delta, "z": z, "selected": selected, "heatmap": heatmap,
            "mask": heatmap > 0, "clean_prob": clean, "targets": targets, "z_threshold": threshold, "size": size}


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Share [N] of each map's (non-negative) mass inside its box (x0, y0, x1, y1; a pixel counts when
    its centre is inside); 0 for an all-zero map. With a binary mask it is the share of the mask's area."""
    maps = maps.to(torch.float64)
    _, h, w = maps.shape
    boxes = torch.as_tensor(boxes, dtype=torch.float64, device=maps.device)
    ys = torch.arange(h, dtype=torch.float64, device=maps.device) + 0.5
    xs = torch.arange(w, dtype=torch.float64, device=maps.device) + 0.5
    inside = (((xs[None, None, :] >= boxes[:, 0, None, None]) & (xs[None, None, :] <= boxes[:, 2, None, None]))
              & ((ys[None, :, None] >= boxes[:, 1, None, None]) & (ys[None, :, None] <= boxes[:, 3, None, None])))
    total = maps.sum((1, 2))
    return torch.where(total > 0, (maps * inside).sum((1, 2)) / torch.where(total > 0, total, 1), 0.0)
