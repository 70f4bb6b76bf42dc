"""Faithfulness: does removing what the map calls important change the prediction?

Deletion / insertion AUC (Petsiuk et al., RISE, 2018), MoRF / LeRF region perturbation with AOPC
(Samek et al., 2017) and its pixel-fraction variant. Each builds every perturbed copy of every
image as one stream of (image, step) pairs and sends it through the network in chunks of
`batch_size`, so the cost is the forwards of the copies and nothing else.

Ties (one policy for every ranking here and in ROAR): pixels (or Samek's regions) are ranked by
attribution; equal values are ordered by a random permutation of the pixels drawn per image from
a generator seeded with ``tie_seeds(seed, N)[n]`` (``ties="random"``, the default; step 7 derives
``seed`` from the run's seed, the round and the method: ``SeedPurpose.METRICS``), or by the
row-major pixel index (``ties="raster"``: the earlier pixel counts as more important in
descending order and as less important in ascending order; TorchRay's argmax and ROAR's
``tf.nn.top_k`` order ties this way). None of the references breaks ties at random: RISE sorts
with numpy's default (unstable) argsort and reverses it, Samek et al.'s group (iNNvestigate) the
same; random ties make a flat region (a zero Grad-CAM patch, a constant map) count as unordered
instead of as "the top rows first". Maps must be finite; the scores depend only on the ranking,
so any positive scaling of a map gives the same scores.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from lottery_xai.errors import UserError
from lottery_xai.seeds import derived_seed
from lottery_xai.metrics.base import check_eval_mode, check_maps

DEFAULT_FRACTIONS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10)
TIES = ("random", "raster")
PROTOCOLS = ("samek", "pixels")


def tie_seeds(seed: int, n_images: int) -> list[int]:
    """The per-image seeds of the random tie-breaking permutations: image n's is ``derived_seed(seed, n)``."""
    return [derived_seed(int(seed), n) for n in range(n_images)]


def pixel_rank(maps: torch.Tensor, descending: bool = True, generator: torch.Generator | None = None,
               seeds: Sequence[int] | None = None) -> torch.Tensor:
    """Rank of every pixel in attribution order, [N, H*W] int64 (0 = first to be perturbed).

    Ties are ordered by a random permutation of the pixels: one per image, drawn from
    ``torch.Generator().manual_seed(seeds[n])`` (``seeds`` [N]: the tie policy of the faithfulness
    metrics and ROAR, independent of the batch an image is ranked in), or one for the whole batch
    drawn from ``generator``; with neither, by a stable sort on the row-major pixel index.
    """
    flat = maps.reshape(maps.shape[0], -1)
    n_images, n_pixels = flat.shape
    if seeds is not None:
        if len(seeds) != n_images:
            raise UserError(f"pixel_rank needs one tie seed per image ({n_images}), got {len(seeds)}")
        perm = torch.stack([torch.randperm(n_pixels, generator=torch.Generator().manual_seed(int(s)))
                            for s in seeds]).to(flat.device)
    elif generator is not None:
        perm = torch.randperm(n_pixels, generator=generator).to(flat.device).expand(n_images, n_pixels)
    else:
        perm = None
    if perm is None:
        order = torch.sort(flat, dim=1, descending=descending, stable=True).indices
    else:
        order = perm.gather(1, torch.sort(flat.gather(1, perm), dim=1, descending=descending, stable=True).indices)
    positions = torch.arange(n_pixels, device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _rank(maps: torch.Tensor, descending: bool, ties: str, seed: int) -> torch.Tensor:
    """`pixel_rank` under the tie policy ``ties`` (random: per-image permutations seeded from ``seed``)."""
    if ties not in TIES:
        raise UserError(f"ties must be one of {list(TIES)}, got {ties!r}")
    seeds = tie_seeds(seed, maps.shape[0]) if ties == "random" else None
    return pixel_rank(maps, descending=descending, seeds=seeds)


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
    """A per-image fill [N,C,H,W] from 'zeros' (0 in normalised units) or per-channel values (normalised)."""
    if isinstance(value, str):
        if value == "zeros":
            return torch.zeros_like(images)
        raise UserError(f"{what} must be 'zeros' (0 after normalisation: the normalisation's mean colour) or "
                        f"{images.shape[1]} per-channel values in normalised units (e.g. the training set's "
                        f"mean), got {value!r}")
    channel = torch.as_tensor(value, device=images.device, dtype=images.dtype).flatten()
    if channel.numel() != images.shape[1]:
        raise UserError(f"{what} needs {images.shape[1]} per-channel values (normalised), got {channel.numel()}")
    return channel.view(1, -1, 1, 1).expand_as(images)


def scaled_blur(scale: float, kernel: int = 11, sigma: float = 5.0) -> tuple[int, float]:
    """RISE's blur (kernel 11, sigma 5 at 224 px) for images of side ``scale * 224``: both scaled by
    `scale`, the kernel rounded to the nearest odd size of at least 3 (at scale 1: unchanged)."""
    if scale == 1:
        return kernel, sigma
    return max(3, 2 * round((kernel * scale - 1) / 2) + 1), sigma * scale


def rise_kernel(size: int, sigma: float, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """RISE's blur kernel [size, size] (eclique/RISE evaluation.py ``gkern``): a unit impulse at the centre of
    a ``size`` x ``size`` array smoothed by ``scipy.ndimage.gaussian_filter(sigma)`` (Gaussian truncated at
    ``int(4 sigma + 0.5)``, 'reflect' boundary), so it sums to 1 and, with sigma 5 over 11 taps, is close to
    a box filter: the mirrored impulses flatten it."""
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise UserError(f"blur kernel size must be a positive odd integer, got {size!r}")
    if sigma <= 0:
        raise UserError(f"blur sigma must be > 0, got {sigma}")
    radius = int(4.0 * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()
    centre, period = size // 2, 2 * size
    positions = torch.arange(size, dtype=torch.float64)
    one_d = torch.zeros(size, dtype=torch.float64)
    wraps = radius // period + 2
    # 'reflect' (d c b a | a b c d | d c b a) repeats the impulse at centre + 2*size*m and -1 - centre + 2*size*m
    for m in range(-wraps, wraps + 1):
        for image in (centre + period * m, -1 - centre + period * m):
            offset = positions - image
            inside = offset.abs() <= radius
            one_d += torch.where(inside, weights[(offset + radius).clamp(0, 2 * radius).long()], 0.0)
    return torch.outer(one_d, one_d).to(dtype=dtype, device=device)


def rise_blur(images: torch.Tensor, kernel: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Images [N,C,H,W] blurred as RISE's insertion substrate: each channel convolved with `rise_kernel`,
    zero padding of kernel // 2 (``nn.functional.conv2d(x, kern, padding=klen // 2)``; 0 is the
    normalisation's mean colour, so the border fades towards it)."""
    if kernel // 2 >= min(images.shape[-2:]):
        raise UserError(f"blur kernel {kernel} is too large for {tuple(images.shape[-2:])} images; use a smaller kernel")
    channels = images.shape[1]
    weight = rise_kernel(kernel, sigma, images.dtype, images.device).expand(channels, 1, kernel, kernel)
    return F.conv2d(images, weight, padding=kernel // 2, groups=channels)


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
    ties: str = "random",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves and AUCs (RISE protocol), batched over all perturbed copies.

    Reference: Petsiuk et al. 2018 and eclique/RISE ``evaluation.py`` (``CausalMetric``, used in its
    ``Evaluation.ipynb`` with ``step = 224 * 8`` pixels, i.e. 28 steps at 224 px, deletion substrate
    ``torch.zeros_like`` and insertion substrate ``conv2d`` with ``gkern(11, 5)``). Pixels are ordered
    by attribution (descending; ties by the policy ``ties``, see the module); one step is
    ``ceil(H*W / n_steps)`` pixels, so step k changes the top ``min(k*step, H*W)`` pixels and the last
    step changes every pixel. Deletion starts from the clean image and replaces the top pixels (all
    channels) with `substrate`: 'zeros' (RISE's: 0 in normalised units, i.e. the normalisation's mean
    colour -- ImageNet's for CUB, not the dataset's own), 'blur' (the blurred image) or per-channel
    values in normalised units (step 7 passes the training set's mean for ``train_mean``). Insertion
    starts from the image blurred by `rise_blur` (`blur_kernel`, `blur_sigma`: RISE's 11 and 5 are for
    224 px; `scaled_blur` gives them for other sizes) and restores the top pixels. The score is the
    softmax probability of the class the model predicts on the clean image (or of the given
    `targets` [N]), as RISE's. AUC: trapezoid rule over n_steps+1 points equally spaced in [0, 1]
    (RISE's ``auc``), so it lies in [0, 1]. Good maps: low deletion AUC, high insertion AUC.

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
    blurred = rise_blur(images, blur_kernel, blur_sigma)
    if isinstance(substrate, str) and substrate == "blur":
        deleted = blurred
    else:
        deleted = _fill_value(substrate, images, "substrate")
    rank = _rank(maps.to(device), True, ties, seed)

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


def _check_order(order: str) -> None:
    if order not in ("morf", "lerf"):
        raise UserError(f"order must be 'morf' or 'lerf', got {order!r}")


@torch.no_grad()
def pixel_perturbation(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    order: str = "morf",
    fill: str | Sequence[float] = "zeros",
    batch_size: int = 64,
    targets: torch.Tensor | None = None,
    ties: str = "random",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """MoRF / LeRF pixel perturbation: replace the top (morf) or bottom (lerf) q of the pixels.

    The pixel-fraction variant of Samek et al.'s region perturbation (``metrics.perturbation:
    pixels``; `region_perturbation` is the reference). For each fraction q the ``round(q*H*W)``
    most (morf) or least (lerf) relevant pixels of the clean image (ties by the policy ``ties``)
    are replaced, all channels, by `fill`: 'zeros' (0 after normalisation: the normalisation's
    mean colour, ImageNet's for CUB) or per-channel values in normalised units (step 7 passes the
    training set's per-channel mean, as ROAR's fill). The sets are nested (same order for every q).
    With c the class predicted on the clean image x (or the given `targets`) and x_q the
    perturbed copy:

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
    _check_order(order)
    fractions_t = torch.as_tensor(list(fractions), dtype=torch.float64)
    if fractions_t.numel() == 0 or bool(((fractions_t <= 0) | (fractions_t > 1)).any()):
        raise UserError(f"fractions must be a non-empty list of values in (0, 1], got {list(fractions)}")
    n_images, _, height, width = images.shape
    device = images.device
    n_fractions = fractions_t.numel()

    targets, clean = _clean_probability(model, images, targets, batch_size)
    counts = torch.round(fractions_t * height * width).long().to(device)
    rank = _rank(maps.to(device), order == "morf", ties, seed)
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


def region_grid(height: int, width: int, region: int, device=None) -> tuple[torch.Tensor, int, int]:
    """The region of every pixel, [H*W] int64 (row-major region index), and the grid's rows and columns.

    Non-overlapping ``region`` x ``region`` squares on a grid centred on the image: when a side is not a
    multiple of ``region`` the grid overhangs it by ``floor(pad/2)`` before and ``ceil(pad/2)`` after
    (as Quantus' and iNNvestigate's padding), so the border regions are partly outside the image.
    """
    if not isinstance(region, int) or region < 1:
        raise UserError(f"the region side must be a positive integer of pixels, got {region!r}")
    pad_h, pad_w = (-height) % region, (-width) % region
    rows, cols = (height + pad_h) // region, (width + pad_w) // region
    row = (torch.arange(height, device=device) + pad_h // 2) // region
    col = (torch.arange(width, device=device) + pad_w // 2) // region
    return (row[:, None] * cols + col[None, :]).flatten(), rows, cols


def scaled_region(scale: float, region: float = 9.0) -> int:
    """Samek et al.'s 9 x 9 regions (at 224 px) for images of side ``scale * 224``: ``max(1, round(region * scale))``."""
    return max(1, round(region * scale))


@torch.no_grad()
def region_perturbation(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    order: str = "morf",
    region: int = 9,
    n_steps: int = 100,
    noise_low: float | Sequence[float] = 0.0,
    noise_high: float | Sequence[float] = 1.0,
    batch_size: int = 64,
    targets: torch.Tensor | None = None,
    ties: str = "random",
    seed: int = 0,
    noise_seed: int = 0,
) -> dict[str, torch.Tensor]:
    """MoRF / LeRF region perturbation and AOPC as Samek et al. 2017 ("Evaluating the visualization of
    what a deep neural network has learned", IEEE TNNLS 28(11)).

    The image is cut into non-overlapping ``region`` x ``region`` squares (`region_grid`; 9 x 9 in the
    paper, at ImageNet's 224 px: `scaled_region` for other sizes); a region's relevance is the sum of
    the map over its pixels. Regions are ordered most relevant first (morf) or least relevant first
    (lerf), ties by the policy ``ties``, and perturbed one per step: x_0 = x, x_k = x_{k-1} with the
    k-th region replaced by uniform noise, for k = 1..L (L = `n_steps`, 100 in the paper). The noise
    is drawn once per image (independently per pixel and channel, uniform on
    ``[noise_low, noise_high]`` per channel, from a generator seeded with ``derived_seed(noise_seed,
    n)``), so a region keeps its noise once replaced; step 7 passes the range of valid pixel values
    [0, 1] through the normalisation. Steps beyond the number of regions change nothing more. With
    f the softmax probability of the class predicted on x (or the given `targets`):
    ``aopc[n] = 1/(L+1) * sum_{k=0..L} (f(x_0) - f(x_k))``; averaged over images it is the AOPC of
    the paper (higher is better under morf, lower under lerf).

    Code that implements it: iNNvestigate's ``tools.Perturbation`` (same group: ``region_shape=(9, 9)``,
    centred padding, regions ranked by their mean relevance) and Quantus' ``RegionPerturbation``
    (``patch_size`` 8, ``regions_evaluation`` 100, summed relevance, black baseline by default).
    Returns ``aopc [N], curve [N, L+1] (f(x_0..x_L)), drop [N, L] (f(x_0) - f(x_k), k >= 1),
    n_regions, targets [N]``.
    """
    check_eval_mode(model)
    maps = check_maps(maps, images)
    _check_batch_size(batch_size)
    _check_order(order)
    if not isinstance(n_steps, int) or n_steps < 1:
        raise UserError(f"n_steps must be a positive integer, got {n_steps!r}")
    n_images, channels, height, width = images.shape
    device = images.device

    def per_channel(value, what):
        v = torch.as_tensor(value, dtype=images.dtype, device=device).flatten()
        if v.numel() not in (1, channels):
            raise UserError(f"{what} needs 1 or {channels} per-channel values, got {v.numel()}")
        return v.expand(channels).view(1, channels, 1, 1)

    low, high = per_channel(noise_low, "noise_low"), per_channel(noise_high, "noise_high")
    if bool((high < low).any()):
        raise UserError("noise_high must not be below noise_low")

    targets, clean = _clean_probability(model, images, targets, batch_size)
    pixel_region, rows, cols = region_grid(height, width, region, device)
    relevance = torch.zeros(n_images, rows * cols, dtype=maps.dtype, device=device)
    relevance.scatter_add_(1, pixel_region.expand(n_images, -1), maps.to(device).reshape(n_images, -1))
    region_rank = _rank(relevance.view(n_images, rows, cols), order == "morf", ties, seed)
    rank = region_rank.gather(1, pixel_region.expand(n_images, -1))  # each pixel takes its region's rank

    noise = torch.stack([torch.rand(channels, height, width, dtype=images.dtype,
                                    generator=torch.Generator().manual_seed(derived_seed(int(noise_seed), n)))
                         for n in range(n_images)]).to(device)
    noise = low + (high - low) * noise
    copy_source = torch.arange(n_images, device=device).repeat_interleave(n_steps)
    copy_count = torch.arange(1, n_steps + 1, device=device).repeat(n_images)
    perturbed = _perturbed_probability(model, images, noise, rank, targets, copy_source, copy_count,
                                       batch_size).view(n_images, n_steps)
    drop = clean[:, None] - perturbed
    return {
        "aopc": drop.sum(dim=1) / (n_steps + 1),
        "curve": torch.cat([clean[:, None], perturbed], dim=1),
        "drop": drop,
        "n_regions": rows * cols,
        "targets": targets,
    }


def perturbation_aopc(protocol: str = "samek", **kwargs) -> dict[str, torch.Tensor]:
    """MoRF / LeRF AOPC by ``protocol``: 'samek' (`region_perturbation`, the reference) or 'pixels'
    (`pixel_perturbation`); the other keyword arguments go to that function."""
    if protocol == "samek":
        return region_perturbation(**kwargs)
    if protocol == "pixels":
        return pixel_perturbation(**kwargs)
    raise UserError(f"the perturbation protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
