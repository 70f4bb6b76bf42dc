"""Occlusion: how much the target-class probability drops when a square of the image is hidden."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lottery_xai.attribution._hooks import TargetsLike, check_eval, check_images, check_logits, resolve_targets
from lottery_xai.errors import UserError

PLACEMENTS = ("grid", "random")


def _grid_starts(size: int, patch: int, stride: int, device: torch.device) -> torch.Tensor:
    starts = torch.arange(0, size - patch + 1, stride, device=device)
    if int(starts[-1]) != size - patch:  # close the grid at the far edge so every pixel is covered
        starts = torch.cat([starts, starts.new_tensor([size - patch])])
    return starts


def _window_masks(tops: torch.Tensor, lefts: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Boolean masks [B, H, W], True inside each window [top, top + patch) x [left, left + patch)."""
    rows = torch.arange(height, device=tops.device)
    cols = torch.arange(width, device=tops.device)
    in_rows = (rows >= tops[:, None]) & (rows < tops[:, None] + patch)
    in_cols = (cols >= lefts[:, None]) & (cols < lefts[:, None] + patch)
    return in_rows[:, :, None] & in_cols[:, None, :]


def _z_scores(drops: torch.Tensor) -> torch.Tensor:
    """Per-image z-score of each window's drop over that image's windows; 0 where all drops are equal."""
    mean = drops.mean(dim=1, keepdim=True)
    std = drops.std(dim=1, unbiased=False, keepdim=True)
    safe_std = torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, (drops - mean) / safe_std, torch.zeros_like(drops))


def occlusion(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    patch: int | None = None,
    stride: int | None = None,
    placement: str = "grid",
    n_patches: int = 64,
    z_threshold: float | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Occlusion maps [N, H, W]: mean drop of the target-class softmax probability over the windows covering a pixel.

    Each window is a `patch` x `patch` square (default round(16 * H / 224), at least 2) filled with
    the image's mean colour. placement='grid' slides it with `stride` (default patch // 2), adding a
    last row/column of windows at the far edge so every pixel is covered. placement='random' draws
    `n_patches` uniform positions per image from `generator` (or a CPU generator seeded with `seed`)
    and keeps only the windows whose drop has a z-score (over that image's windows) above
    `z_threshold` (default 1.0 for random, no filtering for grid; when all drops are equal no window
    passes). Pixels that no kept window covers get 0. The occluded copies go through the network
    in batches of `batch_size`. `layer` is ignored.
    """
    check_images(images)
    check_eval(model)
    n, _, height, width = images.shape
    device = images.device
    patch = max(2, round(16 * height / 224)) if patch is None else patch
    if not isinstance(patch, int) or not 1 <= patch <= min(height, width):
        raise UserError(f"patch must be an integer between 1 and {min(height, width)} (the image side), got {patch!r}")
    stride = max(1, patch // 2) if stride is None else stride
    if not isinstance(stride, int) or stride < 1:
        raise UserError(f"stride must be a positive integer, got {stride!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    if placement not in PLACEMENTS:
        raise UserError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")

    images = images.detach()
    with torch.no_grad():
        logits = model(images)
    check_logits(logits, n)
    targets = resolve_targets(targets, logits)
    clean_prob = F.softmax(logits.float(), dim=1).gather(1, targets[:, None])[:, 0]

    # Window positions [N, P] (top, left) for every image.
    if placement == "grid":
        tops = _grid_starts(height, patch, stride, device)
        lefts = _grid_starts(width, patch, stride, device)
        tops, lefts = (grid.reshape(1, -1).expand(n, -1) for grid in torch.meshgrid(tops, lefts, indexing="ij"))
    else:
        if not isinstance(n_patches, int) or n_patches < 1:
            raise UserError(f"n_patches must be a positive integer, got {n_patches!r}")
        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        shape = (n, n_patches)
        tops = torch.randint(0, height - patch + 1, shape, generator=generator, device=generator.device).to(device)
        lefts = torch.randint(0, width - patch + 1, shape, generator=generator, device=generator.device).to(device)
    n_windows = tops.shape[1]
    fill = images.mean(dim=(2, 3))[:, :, None, None]  # per-image mean colour

    drops = torch.empty(n * n_windows, device=device)
    flat_tops, flat_lefts = tops.reshape(-1), lefts.reshape(-1)
    with torch.no_grad():
        for start in range(0, n * n_windows, batch_size):
            flat = torch.arange(start, min(start + batch_size, n * n_windows), device=device)
            image = flat // n_windows
            masks = _window_masks(flat_tops[flat], flat_lefts[flat], patch, height, width)
            occluded = torch.where(masks[:, None], fill[image], images[image])
            probs = F.softmax(model(occluded).float(), dim=1).gather(1, targets[image][:, None])[:, 0]
            drops[flat] = clean_prob[image] - probs
    drops = drops.view(n, n_windows)

    if z_threshold is None and placement == "random":
        z_threshold = 1.0
    keep = _z_scores(drops) > z_threshold if z_threshold is not None else torch.ones_like(drops, dtype=torch.bool)
    kept_drops = (drops * keep).reshape(-1)
    kept = keep.reshape(-1).float()

    # Average the kept windows' drops over the pixels they cover (no network here, only masks).
    totals = torch.zeros(n, height, width, device=device)
    counts = torch.zeros(n, height, width, device=device)
    for start in range(0, n * n_windows, batch_size):
        flat = torch.arange(start, min(start + batch_size, n * n_windows), device=device)
        image = flat // n_windows
        masks = _window_masks(flat_tops[flat], flat_lefts[flat], patch, height, width).float()
        totals.index_add_(0, image, masks * kept_drops[flat, None, None])
        counts.index_add_(0, image, masks * kept[flat, None, None])
    return torch.where(counts > 0, totals / counts.clamp(min=1), torch.zeros_like(totals))
