"""Random resized crops and flips of images and maps, batched, through one linear operator: used by
the transformation-consistency metric and by the contrastive Grad-CAM consistency loss alike."""
from __future__ import annotations

import math

import torch

from .errors import UserError


def _interpolation_matrix(start: torch.Tensor, size: torch.Tensor, n_out: int, n_in: int, dtype: torch.dtype) -> torch.Tensor:
    """[N, n_out, n_in] matrix that crops [start, start+size) along one axis and resizes to n_out.

    Bilinear with align_corners=False, sources clamped to the crop, exactly as
    torch.nn.functional.interpolate (and torchvision's resized_crop when upsampling).
    """
    scale = size.to(torch.float64)[:, None] / n_out
    source = ((torch.arange(n_out, device=size.device, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0)
    lower = source.floor()
    weight_upper = source - lower
    last = (size - 1)[:, None]
    index_lower = torch.minimum(lower.long(), last)
    index_upper = torch.minimum(index_lower + 1, last)
    matrix = torch.zeros(size.shape[0], n_out, n_in, dtype=torch.float64, device=size.device)
    matrix.scatter_add_(2, (start[:, None] + index_lower)[..., None], (1 - weight_upper)[..., None])
    matrix.scatter_add_(2, (start[:, None] + index_upper)[..., None], weight_upper[..., None])
    return matrix.to(dtype)


def resized_crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
                 width: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop box (top, left, height, width) of every image [N,C,H,W] (or map [N,H,W]), resize to H,W.

    Bilinear (align_corners=False); per-image boxes as [N] integer tensors; `flip` [N] bool
    mirrors the result horizontally. Batched as two matrix products, so images and maps go
    through exactly the same linear operator.
    """
    is_map = images.ndim == 3
    x = images[:, None] if is_map else images
    n_rows, n_cols = x.shape[-2:]
    rows = _interpolation_matrix(top, height, n_rows, n_rows, x.dtype)
    cols = _interpolation_matrix(left, width, n_cols, n_cols, x.dtype)
    if flip is not None:
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    out = rows[:, None] @ x @ cols[:, None].transpose(-1, -2)
    return out[:, 0] if is_map else out


def sample_crop_boxes(n: int, height: int, width: int, generator: torch.Generator,
                      scale: tuple[float, float] = (0.5, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[torch.Tensor, ...]:
    """Random resized crop boxes (top, left, h, w), [N] each, as torchvision's RandomResizedCrop.

    Ten tries per image of an area fraction uniform in `scale` and a log-uniform aspect ratio in
    `ratio`; the first try that fits wins, otherwise the central crop with the ratio clamped.
    All draws come from `generator` (on its own device), batched over images.
    """
    if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
        raise UserError(f"crop scale must satisfy 0 < lo <= hi <= 1 and ratio 0 < lo <= hi; got {scale}, {ratio}")
    device = generator.device
    tries = 10
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator, device=device, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=generator, device=device, dtype=torch.float64))
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Fallback (no try fits): central crop with the aspect ratio clamped to `ratio`.
    if width / height < ratio[0]:
        fallback_w, fallback_h = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        fallback_w, fallback_h = int(round(height * ratio[1])), height
    else:
        fallback_w, fallback_h = width, height
    found = fits.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    u_top, u_left = torch.rand(2, n, generator=generator, device=device, dtype=torch.float64)
    top = torch.where(found, (u_top * (height - h + 1)).floor().long(), (height - h) // 2)
    left = torch.where(found, (u_left * (width - w + 1)).floor().long(), (width - w) // 2)
    return top, left, h, w
