"""Faithfulness: does removing what the map calls important change the prediction?

Deletion / insertion AUC (Petsiuk et al., RISE, 2018) and MoRF / LeRF pixel perturbation with
AOPC (Samek et al., 2017). Both build every perturbed copy of every image as one stream of
(image, step) pairs and send it through the network in chunks of `batch_size`, so the cost is
the forwards of the copies and nothing else.

Pixel order: pixels are ranked by attribution, ties broken by a stable sort on the row-major
pixel index (the earlier pixel counts as more important in descending order, and as less
important in ascending order). Maps must be finite; the order only depends on the ranking, so
any positive scaling of a map gives the same scores.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from lottery_xai.errors import UserError
from lottery_xai.metrics.base import check_eval_mode, check_maps

DEFAULT_FRACTIONS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10)


def pixel_rank(maps: torch.Tensor, descending: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rank of every pixel in attribution order, [N, H*W] int64 (0 = first to be perturbed).

    Ties are broken by a stable sort on the row-major pixel index, or, given ``generator``, on one
    random permutation of the pixels drawn from it (ROAR: a flat region is then removed in random,
    not row-major, order).
    """
    flat = maps.reshape(maps.shape[0], -1)
    if generator is not None:
        flat = flat.float()
        perm = torch.randperm(flat.shape[1], generator=generator).to(flat.device)
        order = perm[torch.sort(flat[:, perm], dim=1, descending=descending, stable=True).indices]
    else:
        order = torch.sort(flat, dim=1, descending=descending, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under curves sampled at equally spaced x in [0, 1] (trapezoid rule), over the last dim."""
    n_points = curves.shape[-1]
    if n_points < 2:
        raise UserError("an AUC needs at least 2 points on the curve; use n_steps >= 1")
    inner = curves.sum(-1) - 0.5 * (curves[..., 0] + curves[..., -1])
    return inner / (n_points - 1)


def _class_probability(model: torch.nn.Module, batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax probability of `targets` for a batch, [B]."""
    logits = model(batch)
    if logits.ndim != 2:
        raise UserError(f"the model must return logits of shape [N, classes], got {tuple(logits.shape)}")
    return logits.float().softmax(dim=1).gather(1, targets[:, None]).squeeze(1)


def _clean_probability(
    model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target class (the predicted one unless given) and its probability on the clean images."""
    logits = torch.cat([model(images[start : start + batch_size]) for start in range(0, images.shape[0], batch_size)])
    if logits.ndim != 2:
        raise UserError(f"the model must return logits of shape [N, classes], got {tuple(logits.shape)}")
    probs = logits.float().softmax(dim=1)
    if targets is None:
        targets = probs.argmax(dim=1)
    else:
        targets = torch.as_tensor(targets, device=images.device).long()
        if targets.shape != (images.shape[0],):
            raise UserError(f"targets must have shape [N] = [{images.shape[0]}], got {tuple(targets.shape)}")
    return targets, probs.gather(1, targets[:, None]).squeeze(1)


def _perturbed_probability(
    model: torch.nn.Module,
    base: torch.Tensor,
    fill: torch.Tensor,
    rank: torch.Tensor,
    targets: torch.Tensor,
    copy_source: torch.Tensor,
    copy_count: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """Target probability of every copy `where(rank < count, fill, base)` of source image `copy_source`.

    `base`, `fill` [M,C,H,W], `rank` [M,H*W], `targets` [M]; `copy_source`, `copy_count` [K].
    Copies are built chunk by chunk so memory stays at `batch_size` images.
    """
    height, width = base.shape[-2:]
    out = torch.empty(copy_source.shape[0], device=base.device, dtype=torch.float32)
    for start in range(0, copy_source.shape[0], batch_size):
        source = copy_source[start : start + batch_size]
        count = copy_count[start : start + batch_size]
        replaced = (rank[source] < count[:, None]).view(-1, 1, height, width)
        copies = torch.where(replaced, fill[source], base[source])
        out[start : start + batch_size] = _class_probability(model, copies, targets[source])
    return out


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")


def _fill_value(value, images: torch.Tensor, what: str) -> torch.Tensor:
    """A per-image fill [N,C,H,W] from 'zeros'/'mean' (0 after normalisation) or per-channel values."""
    if isinstance(value, str):
        if value in ("zeros", "mean"):
            return torch.zeros_like(images)
        raise UserError(f"{what} must be 'zeros', 'mean' or {images.shape[1]} per-channel values, got {value!r}")
    channel = torch.as_tensor(value, device=images.device, dtype=images.dtype).flatten()
    if channel.numel() != images.shape[1]:
        raise UserError(f"{what} needs {images.shape[1]} per-channel values (normalised), got {channel.numel()}")
    return channel.view(1, -1, 1, 1).expand_as(images)


def _blur(images: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    if kernel < 1 or kernel % 2 == 0:
        raise UserError(f"blur_kernel must be a positive odd integer, got {kernel}")
    if kernel // 2 >= min(images.shape[-2:]):
        raise UserError(f"blur_kernel {kernel} is too large for {tuple(images.shape[-2:])} images; use a smaller kernel")
    from torchvision.transforms.functional import gaussian_blur  # lazy: torchvision costs seconds to import

    return gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


@torch.no_grad()
def deletion_insertion(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    n_steps: int = 28,
    substrate: str | Sequence[float] = "zeros",
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    batch_size: int = 64,
    targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves and AUCs (RISE protocol), batched over all perturbed copies.

    Pixels are ordered by attribution (descending, stable ties); one step is
    ``ceil(H*W / n_steps)`` pixels, so step k changes the top ``min(k*step, H*W)`` pixels and
    the last step changes every pixel. Deletion starts from the clean image and replaces the
    top pixels (all channels) with `substrate`: 'zeros' (the dataset mean after
    normalisation), 'blur' (the blurred image) or per-channel values in normalised units.
    Insertion starts from the image blurred with a Gaussian (`blur_kernel`, `blur_sigma`) and
    restores the top pixels. The score is the softmax probability of the class the model
    predicts on the clean image (or of the given `targets` [N]). AUC: trapezoid rule over
    n_steps+1 points equally spaced in [0, 1], so it lies in [0, 1]. Good maps: low deletion
    AUC, high insertion AUC.

    The clean image is both deletion step 0 and insertion step n_steps; it is forwarded once.
    Returns ``deletion_auc [N], insertion_auc [N], deletion_curve [N, n_steps+1],
    insertion_curve [N, n_steps+1], targets [N]`` on the images' device.
    """
    check_eval_mode(model)
    maps = check_maps(maps, images)
    _check_batch_size(batch_size)
    if not isinstance(n_steps, int) or n_steps < 1:
        raise UserError(f"n_steps must be a positive integer, got {n_steps!r}")
    n_images, _, height, width = images.shape
    device = images.device
    n_pixels = height * width

    targets, clean = _clean_probability(model, images, targets, batch_size)
    blurred = _blur(images, blur_kernel, blur_sigma)
    if isinstance(substrate, str) and substrate == "blur":
        deleted = blurred
    else:
        deleted = _fill_value(substrate, images, "substrate")
    rank = pixel_rank(maps.to(device))

    step = math.ceil(n_pixels / n_steps)
    counts = (torch.arange(n_steps + 1, device=device) * step).clamp(max=n_pixels)
    # Sources 0..N-1: deletion (base = image, fill = substrate); N..2N-1: insertion (base = blur, fill = image).
    base = torch.cat([images, blurred])
    fill = torch.cat([deleted, images])
    image_index = torch.arange(n_images, device=device).repeat_interleave(n_steps)
    step_index = torch.arange(n_steps, device=device).repeat(n_images)
    copy_source = torch.cat([image_index, image_index + n_images])
    copy_count = torch.cat([counts[step_index + 1], counts[step_index]])
    probs = _perturbed_probability(
        model, base, fill, torch.cat([rank, rank]), torch.cat([targets, targets]), copy_source, copy_count, batch_size
    )
    deletion_probs, insertion_probs = probs.view(2, n_images, n_steps)
    deletion_curve = torch.cat([clean[:, None], deletion_probs], dim=1)
    insertion_curve = torch.cat([insertion_probs, clean[:, None]], dim=1)
    return {
        "deletion_auc": trapezoid_auc(deletion_curve),
        "insertion_auc": trapezoid_auc(insertion_curve),
        "deletion_curve": deletion_curve,
        "insertion_curve": insertion_curve,
        "targets": targets,
    }


@torch.no_grad()
def pixel_perturbation(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    order: str = "morf",
    fill: str | Sequence[float] = "mean",
    batch_size: int = 64,
    targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """MoRF / LeRF pixel perturbation: replace the top (morf) or bottom (lerf) q of the pixels.

    For each fraction q the ``round(q*H*W)`` most (morf) or least (lerf) relevant pixels of the
    clean image are replaced, all channels, by `fill`: 'mean' (the dataset mean, i.e. 0 after
    normalisation) or per-channel values in normalised units. The sets are nested (same order
    for every q). With c the class predicted on the clean image x (or the given `targets`) and
    x_q the perturbed copy:

    - ``relative_drop[n, q] = |p_c(x) - p_c(x_q)| / p_c(x)``, and
      ``D[q] = 100/N * sum_n relative_drop[n, q]`` (percent);
    - ``aopc[n] = 1/(L+1) * sum_{k=0..L} (p_c(x) - p_c(x_k))`` (Samek et al. 2017, signed
      drop in probability, k=0 being the clean image whose drop is 0, L = len(fractions)).
      Average it over images for the dataset AOPC. Higher is better under morf, lower under lerf.

    Returns ``fractions [Q], D [Q], relative_drop [N,Q], drop [N,Q] (signed p_c(x) - p_c(x_q)),
    probability [N], perturbed_probability [N,Q], aopc [N], targets [N]``.
    """
    check_eval_mode(model)
    maps = check_maps(maps, images)
    _check_batch_size(batch_size)
    if order not in ("morf", "lerf"):
        raise UserError(f"order must be 'morf' or 'lerf', got {order!r}")
    fractions_t = torch.as_tensor(list(fractions), dtype=torch.float64)
    if fractions_t.numel() == 0 or bool(((fractions_t <= 0) | (fractions_t > 1)).any()):
        raise UserError(f"fractions must be a non-empty list of values in (0, 1], got {list(fractions)}")
    n_images, _, height, width = images.shape
    device = images.device
    n_fractions = fractions_t.numel()

    targets, clean = _clean_probability(model, images, targets, batch_size)
    counts = torch.round(fractions_t * height * width).long().to(device)
    rank = pixel_rank(maps.to(device), descending=(order == "morf"))
    copy_source = torch.arange(n_images, device=device).repeat_interleave(n_fractions)
    copy_count = counts.repeat(n_images)
    perturbed = _perturbed_probability(
        model, images, _fill_value(fill, images, "fill"), rank, targets, copy_source, copy_count, batch_size
    ).view(n_images, n_fractions)

    drop = clean[:, None] - perturbed
    # Softmax probabilities are > 0 except on underflow; guard the division anyway.
    relative_drop = drop.abs() / clean[:, None].clamp_min(torch.finfo(clean.dtype).tiny)
    return {
        "fractions": fractions_t.to(device=device, dtype=torch.float32),
        "D": 100.0 * relative_drop.mean(dim=0),
        "relative_drop": relative_drop,
        "drop": drop,
        "probability": clean,
        "perturbed_probability": perturbed,
        "aopc": drop.sum(dim=1) / (n_fractions + 1),
        "targets": targets,
    }

