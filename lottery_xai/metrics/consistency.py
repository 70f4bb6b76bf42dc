"""Consistency: do two maps of the same image agree (pruned vs dense, or T(x) vs T(map of x))?

Also the TCAV-level comparison of a pruning round with the dense model. All map comparisons
are batched over images and invariant to a positive scaling of either map.
"""
from __future__ import annotations

import math
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from lottery_xai.crops import resized_crop, sample_crop_boxes  # noqa: F401  (re-exported)
from lottery_xai.errors import UserError
from lottery_xai.metrics.base import check_eval_mode, check_maps
from lottery_xai.metrics.faithfulness import pixel_rank

# SSIM as Wang et al. (2004): Gaussian window sigma 1.5, 11 taps (scipy's truncate=3.5), K1, K2.
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def average_rank(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..M along the last dim of [N,M] values, ties get their average rank (as scipy's rankdata)."""
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    n_values = values.shape[1]
    positions = torch.arange(n_values, device=values.device).expand_as(order)
    starts_group = torch.ones_like(order, dtype=torch.bool)
    starts_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    ends_group = torch.ones_like(starts_group)
    ends_group[:, :-1] = starts_group[:, 1:]
    # First and last sorted position of each element's tie group, by running max / reversed running min.
    first = torch.where(starts_group, positions, 0).cummax(dim=1).values
    last = torch.where(ends_group, positions, n_values - 1).flip(1).cummin(dim=1).values.flip(1)
    mean_rank = (first + last).to(torch.float64) / 2 + 1
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Per-image Spearman rank correlation of two [N,H,W] map batches, [N] float64.

    Ties take average ranks. A constant map has no ranking: its correlation is defined as 0
    ("no agreement"), so that a dead (all-zero) map lowers the mean instead of turning it NaN.
    """
    ranks_a = average_rank(maps_a.flatten(1))
    ranks_b = average_rank(maps_b.flatten(1))
    ranks_a = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    norm = (ranks_a.square().sum(dim=1) * ranks_b.square().sum(dim=1)).sqrt()
    covariance = (ranks_a * ranks_b).sum(dim=1)
    return torch.where(norm > 0, covariance / norm.clamp_min(1e-300), torch.zeros_like(norm))


def top_iou(maps_a: torch.Tensor, maps_b: torch.Tensor, top_fraction: float = 0.15) -> torch.Tensor:
    """IoU of the top `top_fraction` pixel sets of two [N,H,W] map batches, [N].

    Each set holds exactly ``max(1, round(top_fraction*H*W))`` pixels; ties at the threshold are
    broken by the row-major pixel index (stable sort), so identical maps always give IoU 1.
    """
    if not 0 < top_fraction <= 1:
        raise UserError(f"top_fraction must be in (0, 1], got {top_fraction}")
    n_top = max(1, round(top_fraction * maps_a[0].numel()))
    top_a = pixel_rank(maps_a) < n_top
    top_b = pixel_rank(maps_b) < n_top
    intersection = (top_a & top_b).sum(dim=1).to(torch.float64)
    return intersection / (2 * n_top - intersection)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    offsets = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    weights = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return weights / weights.sum()


def ssim(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Per-image structural similarity of two [N,H,W] map batches, [N] float64.

    Each map is first divided by its largest absolute value (so the scale of either map does
    not matter; an all-zero map stays zero); the data range is then taken from the pair,
    ``max(a, b) - min(a, b)`` (1 when both are constant). The SSIM is Wang et al.'s: Gaussian
    window (sigma 1.5, 11 px), K1 = 0.01, K2 = 0.03, population covariances, averaged over the
    pixels whose window lies inside the image. This equals
    ``skimage.metrics.structural_similarity(a, b, data_range=R, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)`` on the rescaled maps. Maps need H, W >= 11.
    """
    height, width = maps_a.shape[-2:]
    window = 2 * SSIM_RADIUS + 1
    if min(height, width) < window:
        raise UserError(f"SSIM needs maps of at least {window}x{window} pixels, got {height}x{width}")
    a = maps_a.to(torch.float64).flatten(1)
    b = maps_b.to(torch.float64).flatten(1)
    a = a / a.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    b = b / b.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    data_range = torch.maximum(a.amax(dim=1), b.amax(dim=1)) - torch.minimum(a.amin(dim=1), b.amin(dim=1))
    data_range = torch.where(data_range > 0, data_range, torch.ones_like(data_range))[:, None, None]
    a, b = a.view(-1, height, width), b.view(-1, height, width)

    # Valid (unpadded) filtering gives exactly the interior that skimage keeps after cropping.
    weights = _gaussian_window(a.dtype, a.device)
    stack = torch.stack([a, b, a * a, b * b, a * b], dim=1).view(-1, 1, height, width)
    smooth = F.conv2d(F.conv2d(stack, weights.view(1, 1, -1, 1)), weights.view(1, 1, 1, -1))
    mean_a, mean_b, mean_aa, mean_bb, mean_ab = smooth.view(a.shape[0], 5, *smooth.shape[-2:]).unbind(dim=1)
    var_a = mean_aa - mean_a * mean_a
    var_b = mean_bb - mean_b * mean_b
    cov_ab = mean_ab - mean_a * mean_b
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    index = ((2 * mean_a * mean_b + c1) * (2 * cov_ab + c2)) / (
        (mean_a * mean_a + mean_b * mean_b + c1) * (var_a + var_b + c2)
    )
    return index.mean(dim=(1, 2))


def map_agreement(maps_a: torch.Tensor, maps_b: torch.Tensor, top_fraction: float = 0.15) -> dict[str, torch.Tensor]:
    """Agreement of two [N,H,W] map batches of the same images (e.g. a pruning round vs dense).

    Returns ``spearman [N]`` (average-tie ranks; 0 when a map is constant), ``top_iou [N]``
    (top `top_fraction` pixel sets, stable tie-breaking) and ``ssim [N]`` (see `ssim`), all on
    the maps' device, float64. Identical maps give 1, 1, 1; a map and its negation give
    Spearman -1.
    """
    maps_a = check_maps(maps_a, name="maps_a")
    maps_b = check_maps(maps_b, name="maps_b").to(maps_a.device)
    if maps_a.shape != maps_b.shape:
        raise UserError(f"maps_a {tuple(maps_a.shape)} and maps_b {tuple(maps_b.shape)} must have the same shape")
    return {
        "spearman": spearman(maps_a, maps_b),
        "top_iou": top_iou(maps_a, maps_b, top_fraction),
        "ssim": ssim(maps_a, maps_b),
    }


# ---------------------------------------------------------------- TCAV agreement

_TCAV_COLUMNS = ("class", "concept", "tcav_mean", "significant")


def _as_bool(column: pd.Series, what: str) -> pd.Series:
    """Significance flags as bool, also when a CSV round trip left them as text or 0/1."""
    if column.dtype == bool:
        return column
    if pd.api.types.is_numeric_dtype(column):
        return column != 0
    text = column.astype(str).str.strip().str.lower()
    mapped = text.map({"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False})
    if mapped.isna().any():
        bad = sorted(set(column[mapped.isna()].astype(str)))[:3]
        raise UserError(f"{what}: 'significant' must hold true/false values, got {bad}")
    return mapped.astype(bool)


def _tcav_table(frame: pd.DataFrame, keys: list[str], what: str) -> pd.DataFrame:
    missing = [c for c in _TCAV_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{what} lacks TCAV columns {missing}; expected {list(_TCAV_COLUMNS)}")
    table = frame[keys + ["tcav_mean", "significant"]].copy()
    if table.duplicated(keys).any():
        raise UserError(f"{what} has several rows per {keys}; select one round (and layer) before comparing")
    table["significant"] = _as_bool(table["significant"], what)
    return table


def tcav_agreement(df_round: pd.DataFrame, df_dense: pd.DataFrame) -> pd.DataFrame:
    """Compare a pruning round's TCAV table with the dense model's, per (class, concept).

    Inputs have columns class, concept, tcav_mean, significant (plus layer and protocol, each used as
    a key when both tables have it: a table holding the scores of both TCAV protocols compares each
    protocol's round with the same protocol's dense scores). Returns one row per pair present in both: the keys, ``tcav_mean_round``,
    ``tcav_mean_dense``, ``abs_diff = |round - dense|``, ``significant_round``,
    ``significant_dense`` and ``flipped`` (significance differs). The summary
    (`tcav_agreement_summary`) is also stored in ``table.attrs["summary"]``.
    """
    keys = ["class", "concept"] + [k for k in ("layer", "protocol") if k in df_round.columns and k in df_dense.columns]
    round_table = _tcav_table(df_round, keys, "df_round")
    dense_table = _tcav_table(df_dense, keys, "df_dense")
    table = round_table.merge(dense_table, on=keys, how="inner", suffixes=("_round", "_dense"))
    table["abs_diff"] = (table["tcav_mean_round"] - table["tcav_mean_dense"]).abs()
    table["flipped"] = table["significant_round"] != table["significant_dense"]
    table = table.sort_values(keys, kind="stable").reset_index(drop=True)
    summary = tcav_agreement_summary(table)
    summary["n_unmatched"] = len(round_table) + len(dense_table) - 2 * len(table)
    table.attrs["summary"] = summary
    return table


def tcav_agreement_summary(table: pd.DataFrame) -> dict[str, float]:
    """Mean absolute TCAV difference, flip rate and flip counts of a `tcav_agreement` table.

    ``flip_rate`` is the fraction of pairs whose significance flag changed; ``lost`` counts
    significant-in-dense pairs that are no longer significant, ``gained`` the reverse. Means are
    NaN for an empty table.
    """
    n_pairs = len(table)
    return {
        "n_pairs": n_pairs,
        "mean_abs_diff": float(table["abs_diff"].mean()) if n_pairs else math.nan,
        "flip_rate": float(table["flipped"].mean()) if n_pairs else math.nan,
        "n_flipped": int(table["flipped"].sum()),
        "lost": int((table["significant_dense"] & ~table["significant_round"]).sum()),
        "gained": int((table["significant_round"] & ~table["significant_dense"]).sum()),
    }


# ---------------------------------------------------------------- consistency under transformation

AttributionFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
_TRANSFORMS = ("flip", "crop", "both")


def transform_consistency(
    model: torch.nn.Module,
    images: torch.Tensor,
    attribution_fn: AttributionFn,
    transforms: str = "both",
    n_transforms: int = 4,
    generator: torch.Generator | None = None,
    seed: int = 0,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    targets: torch.Tensor | None = None,
    top_fraction: float = 0.15,
) -> dict[str, torch.Tensor]:
    """Agreement of attribution(T(x)) with T(attribution(x)) for random transforms T.

    `transforms`: 'flip' (horizontal flip; deterministic, so it is evaluated once whatever
    `n_transforms`), 'crop' (random resized crop, area fraction in `crop_scale`, aspect ratio
    in `crop_ratio`, resized back to H,W bilinearly), or 'both' (a crop, then a flip with
    probability 0.5, as in contrastive Grad-CAM consistency training). The map of x is cropped,
    resized and flipped by exactly the same operator as the image. `attribution_fn(model,
    images, targets) -> maps [N,H,W]` is called with the class predicted on x (or the given
    `targets`) for both x and T(x). Crops are drawn from `generator`, or from a CPU generator
    seeded with `seed`.

    Returns ``spearman, top_iou, ssim`` [N] (mean over the transforms, see `map_agreement`)
    and ``spearman_all, top_iou_all, ssim_all`` [N, T]. An attribution that commutes with
    T (an equivariant model) scores 1 on all three.
    """
    check_eval_mode(model)
    if transforms not in _TRANSFORMS:
        raise UserError(f"transforms must be one of {list(_TRANSFORMS)}, got {transforms!r}")
    if not isinstance(n_transforms, int) or n_transforms < 1:
        raise UserError(f"n_transforms must be a positive integer, got {n_transforms!r}")
    if images.ndim != 4:
        raise UserError(f"images must be a tensor of shape [N,C,H,W], got {tuple(images.shape)}")
    n_images, _, height, width = images.shape
    device = images.device
    if targets is None:
        with torch.no_grad():
            targets = model(images).argmax(dim=1)
    targets = torch.as_tensor(targets, device=device)
    maps = check_maps(attribution_fn(model, images, targets), images)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)

    results: dict[str, list[torch.Tensor]] = {"spearman": [], "top_iou": [], "ssim": []}
    for _ in range(1 if transforms == "flip" else n_transforms):
        if transforms == "flip":
            transform = lambda x: x.flip(-1)  # noqa: E731 - exact, no interpolation needed
        else:
            box = [t.to(device) for t in sample_crop_boxes(n_images, height, width, generator, crop_scale, crop_ratio)]
            flip = None
            if transforms == "both":
                flip = (torch.rand(n_images, generator=generator, device=generator.device) < 0.5).to(device)
            transform = lambda x, box=box, flip=flip: resized_crop(x, *box, flip=flip)  # noqa: E731
        transformed_maps = check_maps(attribution_fn(model, transform(images), targets), images)
        agreement = map_agreement(transformed_maps, transform(maps), top_fraction)
        for key in results:
            results[key].append(agreement[key])

    out: dict[str, torch.Tensor] = {}
    for key, values in results.items():
        stacked = torch.stack(values, dim=1)
        out[key] = stacked.mean(dim=1)
        out[f"{key}_all"] = stacked
    return out
