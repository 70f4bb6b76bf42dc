"""Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (In)fidelity and Sensitivity of
Explanations"): how well the map, as a linear model of the network's output, predicts the output's change
under random perturbations I of the input:

    INFD = E_I[(I^T phi - (f(x) - f(x - I)))^2],

f the target's logit. Lower is better.

Reference code: Captum's ``captum.metrics.infidelity(forward_func, perturb_func, inputs, attributions,
target=..., n_perturb_samples=10, normalize=False)`` (``perturb_func(inputs) -> (I, x - I)``, the copies
repeat-interleaved image by image; with ``normalize=True`` the map is first scaled by the optimal
beta = E[I^T phi (f(x) - f(x - I))] / E[(I^T phi)^2], giving beta^2 E[(I^T phi)^2] - 2 beta E[I^T phi Df] +
E[Df^2]) and the paper's code (chihkuanyeh/saliency_evaluation, ``get_exp_infid``), which always scales
by that beta ("performs optimal scaling for each explanation") and whose 'Gaussian' perturbation is
I ~ N(0, 0.2^2) per pixel, clipped so that x - I stays a valid image ([0, 1] pixels), over 10,000 copies.

Here: `normalize` True (default, the paper's optimal scaling; the maps of this package are stored
divided by their max, so without it the score would compare a [0, 1] map with logit units); the
perturbation is the paper's Gaussian one, `noise_std` per channel in the images' units (step 7 passes 0.2
/ std, the paper's 0.2 in pixel units) and, with `valid_low` / `valid_high` (per channel, the valid pixel
range in the images' units), clipped to keep x - I inside it; `samples` copies per image (default 10,
Captum's ``n_perturb_samples``; the paper's code uses 10,000 on MNIST). A map [N, H, W] counts for every
channel (I^T phi sums I_c,h,w phi_h,w over channels and pixels, Captum's broadcast of a [N, 1, H, W]
attribution). Draws: one ``torch.randn((C, H, W))`` per (image, copy) from `generator` (or a CPU generator
seeded with `seed`) in image-major order; the copies go through the network in batches of `batch_size`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from lottery_xai.errors import UserError
from lottery_xai.metrics.base import check_eval_mode, check_maps


def _per_channel(value, what: str, images: torch.Tensor) -> torch.Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=images.dtype, device=images.device).flatten()
    if t.numel() not in (1, images.shape[1]):
        raise UserError(f"{what} needs 1 or {images.shape[1]} per-channel values, got {t.numel()}")
    return t.expand(images.shape[1]).view(1, -1, 1, 1)


def gaussian_perturbation(images: torch.Tensor, noise: torch.Tensor, noise_std, valid_low=None, valid_high=None
                          ) -> torch.Tensor:
    """The perturbation I = noise_std * noise [B, C, H, W], clipped to [x - high, x - low] when the bounds are given
    (so that x - I stays in the valid range: the paper's ``set_zero_infid``)."""
    perturbation = _per_channel(noise_std, "noise_std", images) * noise
    low, high = _per_channel(valid_low, "valid_low", images), _per_channel(valid_high, "valid_high", images)
    if high is not None:
        perturbation = torch.maximum(perturbation, images - high)
    if low is not None:
        perturbation = torch.minimum(perturbation, images - low)
    return perturbation


@torch.no_grad()
def infidelity(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | None = None,
    noise_std: float | Sequence[float] = 0.2,
    valid_low: float | Sequence[float] | None = None,
    valid_high: float | Sequence[float] | None = None,
    samples: int = 10,
    normalize: bool = True,
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Infidelity per image (see the module); lower is better. `targets`: the class predicted on x unless given.
    Returns ``value [N]``, ``beta [N]`` (the optimal scale; 1 when `normalize` is False) and ``targets [N]``."""
    check_eval_mode(model)
    maps = check_maps(maps, images)
    for name, value in (("samples", samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    images = images.detach()
    n = images.shape[0]
    device = images.device
    logits = torch.cat([model(chunk) for chunk in images.split(batch_size)])
    targets = logits.argmax(dim=1) if targets is None else torch.as_tensor(targets, device=device).long().reshape(-1)
    if targets.shape != (n,):
        raise UserError(f"targets must hold one class per image ({n}), got {tuple(targets.shape)}")
    clean = logits.gather(1, targets[:, None])[:, 0].double()
    maps = maps.to(device)
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    rows = n * samples
    dot = torch.empty(rows, dtype=torch.float64, device=device)  # I^T phi
    change = torch.empty_like(dot)  # f(x) - f(x - I)
    for start in range(0, rows, batch_size):
        flat = torch.arange(start, min(start + batch_size, rows), device=device)
        image = flat // samples
        noise = torch.stack([torch.randn(tuple(images.shape[1:]), generator=generator, device=generator.device)
                             for _ in range(len(flat))]).to(device, images.dtype)
        base = images[image]
        perturbation = gaussian_perturbation(base, noise, noise_std, valid_low, valid_high)
        output = model(base - perturbation).gather(1, targets[image][:, None])[:, 0].double()
        change[flat] = clean[image] - output
        dot[flat] = (perturbation.double() * maps[image][:, None].double()).flatten(1).sum(dim=1)
    dot, change = dot.view(n, samples), change.view(n, samples)
    if normalize:
        dot_sq = (dot * dot).sum(dim=1)
        safe = torch.where(dot_sq > 0, dot_sq, torch.ones_like(dot_sq))
        beta = torch.where(dot_sq > 0, (dot * change).sum(dim=1) / safe, torch.zeros_like(dot_sq))
    else:
        beta = torch.ones(n, dtype=torch.float64, device=device)
    value = ((beta[:, None] * dot - change) ** 2).mean(dim=1)
    return {"value": value, "beta": beta, "targets": targets}
