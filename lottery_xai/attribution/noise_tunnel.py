"""The noise tunnel: SmoothGrad, SmoothGrad-squared and VarGrad over any gradient method.

References:
- SmoothGrad (Smilkov, Thorat, Kim, Viegas & Wattenberg 2017, "SmoothGrad: removing noise by adding
  noise"): the mean of a method's attributions over `samples` copies x + N(0, sigma^2) of the image,
  sigma = noise level x (x_max - x_min). The paper recommends a noise level of 10-20 % and finds
  little gain beyond n = 50 samples; its code (PAIR-code/saliency, ``GetSmoothedMask``) takes
  ``stdev = stdev_spread * (np.max(x_value) - np.min(x_value))`` over the one image it explains
  (all channels and pixels of the network's input), with ``stdev_spread=.2, nsamples=50`` at the
  paper's release and ``.15, 25`` in the library since.
- SmoothGrad-squared (Hooker, Erhan, Kindermans & Kim 2019, ROAR): the mean of the squared
  attributions (PAIR's ``magnitude=True``); VarGrad (Adebayo et al. 2018, "Local explanation
  methods for deep neural networks lack sensitivity to parameter values"): their variance. Hooker et
  al. found only these two beat a random ranking in ROAR.
- Captum's ``NoiseTunnel(method).attribute(nt_type=..., nt_samples=..., stdevs=...)``: the same three
  statistics, per channel, with an absolute ``stdevs`` (noise_range 'absolute' here), VarGrad as
  E[a^2] - E[a]^2, noisy copies drawn with ``torch.normal`` from the global generator.

Here the copies of all images go through the base method in batches of `batch_size` rows (image-major:
row i * samples + s is image i's s-th copy), so the cost is the base method's on N x samples images.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from lottery_xai.attribution._hooks import (TargetsLike, as_target_tensor, check_eval, check_images, check_logits,
                                            resolve_targets)
from lottery_xai.attribution.channels import check_channels, reduce_channels
from lottery_xai.attribution.gradients import _channel_values, integrated_gradients
from lottery_xai.attribution.guided import guided_gradients
from lottery_xai.errors import UserError
from lottery_xai.names import unknown_name

NOISE_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
NOISE_RANGES = ("image", "valid", "absolute")


def input_gradient(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *,
                   layer: str | None = None) -> torch.Tensor:
    """The raw gradient of the target logit with respect to the input, [N, C, H, W] float32 (signed, per
    channel: SmoothGrad's base, Captum's ``Saliency(abs=False)``). `layer` is ignored."""
    check_images(images)
    inputs = images.detach().requires_grad_(True)
    with torch.enable_grad():  # also under a caller's torch.no_grad() (Captum's metrics call methods so)
        logits = model(inputs)
        check_logits(logits, images.shape[0])
        targets = resolve_targets(targets, logits)
        selected = logits.gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(selected, inputs)
    return grad.float()


def gradient_x_input(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *,
                     layer: str | None = None) -> torch.Tensor:
    """x * dz_c/dx, [N, C, H, W] float32 (Captum's ``InputXGradient``). `layer` is ignored."""
    return input_gradient(model, images, targets) * images.detach().float()


def _guided_base(model, images, targets=None, *, layer=None):
    return guided_gradients(model, images, targets)[0]


def _integrated_gradients_base(model, images, targets=None, *, layer=None, **options):
    return integrated_gradients(model, images, targets, reduce_channels=False, **options)


# Base methods by name: fn(model, images, targets, *, layer=None, **base_options) -> [B, C, H, W] (or [B, H, W]).
NOISE_BASES: dict[str, Callable[..., torch.Tensor]] = {
    "gradient": input_gradient,
    "gradient_x_input": gradient_x_input,
    "guided_backprop": _guided_base,
    "integrated_gradients": _integrated_gradients_base,
}


def _base_method(base) -> Callable[..., torch.Tensor]:
    if callable(base):
        return base
    if base in NOISE_BASES:
        return NOISE_BASES[base]
    raise unknown_name(f"unknown noise tunnel base {base!r}", str(base), NOISE_BASES,
                       otherwise=f"choose from {', '.join(NOISE_BASES)} or pass a function")


def noise_sigma(images: torch.Tensor, noise_level: float, noise_range: str = "image",
                mean: Sequence[float] | torch.Tensor | None = None,
                std: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """The noise's standard deviation, broadcastable to the images: [N, 1, 1, 1] or [1, C, 1, 1].

    'image' (default, SmoothGrad's code): noise_level x (max - min) of each image over all its channels
    and pixels, taken on the tensor the network sees (for normalised images, the normalised values,
    as PAIR's code takes ``x_value``, the network input). 'valid': noise_level x the range of valid
    pixel values [0, 1] per channel in the images' units, i.e. noise_level / std_c with the
    normalisation ``(pixels - mean) / std`` (noise_level in pixel units; needs `std`, without it the
    images are taken as pixels in [0, 1]). 'absolute': noise_level itself (Captum's ``stdevs``).
    """
    if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float)) or noise_level < 0:
        raise UserError(f"noise_level must be a number >= 0, got {noise_level!r}")
    if noise_range == "image":
        flat = images.detach().flatten(1)
        return (noise_level * (flat.amax(dim=1) - flat.amin(dim=1))).view(-1, 1, 1, 1)
    if noise_range == "valid":
        if std is None:
            return torch.full((1, 1, 1, 1), float(noise_level), dtype=images.dtype, device=images.device)
        std_t = _channel_values(std, "std", images)
        if not bool((std_t > 0).all()):
            raise UserError(f"std must be positive, got {std_t.flatten().tolist()}")
        return noise_level / std_t
    if noise_range == "absolute":
        return torch.full((1, 1, 1, 1), float(noise_level), dtype=images.dtype, device=images.device)
    raise UserError(f"noise_range must be one of {', '.join(NOISE_RANGES)}, got {noise_range!r}")


def standard_normal_rows(count: int, shape: Sequence[int], generator: torch.Generator, device) -> torch.Tensor:
    """``count`` draws of ``torch.randn(shape, generator=generator)``, one call per row in order, stacked and
    moved to `device`: the same numbers whatever batches the rows are later split into.

    On a CPU generator with a row size that is a multiple of 16 (images of 28, 32, 64 or 224 px)
    one call ``torch.randn((count, *shape))`` draws the same numbers (torch fills normals 16 at a time
    from one uniform stream; tests/attribution check it) without a call per row."""
    shape = tuple(shape)
    if generator.device.type == "cpu" and math.prod(shape) % 16 == 0:
        return torch.randn((count, *shape), generator=generator).to(device)
    rows = [torch.randn(shape, generator=generator, device=generator.device) for _ in range(count)]
    return torch.stack(rows).to(device)


def noise_tunnel(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    kind: str = "smoothgrad",
    base: str | Callable[..., torch.Tensor] = "gradient",
    base_options: dict | None = None,
    samples: int = 50,
    noise_level: float = 0.15,
    noise_range: str = "image",
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | torch.Tensor | None = None,
    channels: str | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Noise-tunnel maps [N, H, W] of `base` over `samples` noisy copies per image (see the module).

    `kind`: 'smoothgrad' (mean), 'smoothgrad_sq' (mean of squares) or 'vargrad' (variance, E[a^2] -
    E[a]^2 as Captum), per channel. `base`: 'gradient' (the raw input gradient, SmoothGrad's), a
    name in `NOISE_BASES` ('gradient_x_input', 'guided_backprop', 'integrated_gradients') or a
    function with the methods' convention returning [B, C, H, W] or [B, H, W]; `base_options` go
    to it (and `layer`). Noise: N(0, sigma^2) with sigma from `noise_sigma(images, noise_level,
    noise_range, mean, std)`; defaults 50 samples (the paper's n) and 15 % (the middle of the paper's
    10-20 %, PAIR's current default; the paper's code used 20 %). The standard-normal draws come
    from `generator` (or a CPU generator seeded with `seed`), one ``torch.randn((C, H, W))`` per copy
    in image-major order (`standard_normal_rows`). `targets`: the class predicted on the clean image
    unless given; every copy explains its image's target. `channels` (None: 'abs_sum' for
    smoothgrad, as PAIR's visualisation; 'sum' for the non-negative smoothgrad_sq and vargrad;
    'none' returns [N, C, H, W]) reduces per-channel statistics (`lottery_xai.attribution.channels`).
    """
    check_images(images)
    check_eval(model)
    if kind not in NOISE_KINDS:
        raise UserError(f"kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    for name, value in (("samples", samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    channels = channels if channels is not None else ("abs_sum" if kind == "smoothgrad" else "sum")
    check_channels(channels)
    method = _base_method(base)
    base_options = dict(base_options or {})
    images = images.detach()
    n = images.shape[0]
    sigma = noise_sigma(images, noise_level, noise_range, mean, std).expand(n, -1, -1, -1)
    if targets is None:  # the clean image's class: one forward, 1 / samples of a backward pass's cost
        with torch.no_grad():
            logits = torch.cat([model(chunk) for chunk in images.split(batch_size)])
        check_logits(logits, n)
        targets = resolve_targets(None, logits)
    else:  # given: the base method checks their range against the logits of each batch of copies
        targets = as_target_tensor(targets, n, images.device)
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)

    rows = n * samples
    total = total_sq = None
    for start in range(0, rows, batch_size):
        flat = torch.arange(start, min(start + batch_size, rows), device=images.device)
        image = flat // samples
        noise = standard_normal_rows(len(flat), images.shape[1:], generator, images.device).to(images.dtype)
        noisy = images[image] + sigma[image] * noise
        attributions = method(model, noisy, targets[image], layer=layer, **base_options).detach().double()
        if total is None:
            total = torch.zeros((n, *attributions.shape[1:]), dtype=torch.float64, device=images.device)
            total_sq = torch.zeros_like(total)
        total.index_add_(0, image, attributions)
        total_sq.index_add_(0, image, attributions * attributions)
    expected, expected_sq = total / samples, total_sq / samples
    if kind == "smoothgrad":
        stat = expected
    elif kind == "smoothgrad_sq":
        stat = expected_sq
    else:
        stat = expected_sq - expected * expected
    return reduce_channels(stat.float(), channels)


def smoothgrad(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *, layer: str | None = None,
               base: str = "gradient", samples: int = 50, noise_level: float = 0.15, noise_range: str = "image",
               mean=None, std=None, channels: str = "abs_sum", generator: torch.Generator | None = None,
               seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean of `base`'s attributions over noisy copies; see `noise_tunnel`.
    Default: raw input gradients, 50 samples, sigma 15 % of each image's range, |.| summed over channels."""
    return noise_tunnel(model, images, targets, layer=layer, kind="smoothgrad", base=base, samples=samples,
                        noise_level=noise_level, noise_range=noise_range, mean=mean, std=std, channels=channels,
                        generator=generator, seed=seed, batch_size=batch_size)


def smoothgrad_sq(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *, layer: str | None = None,
                  base: str = "gradient", samples: int = 50, noise_level: float = 0.15, noise_range: str = "image",
                  mean=None, std=None, channels: str = "sum", generator: torch.Generator | None = None,
                  seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """SmoothGrad-squared (Hooker et al. 2019): the mean of the squared attributions, summed over channels;
    see `noise_tunnel` for the arguments."""
    return noise_tunnel(model, images, targets, layer=layer, kind="smoothgrad_sq", base=base, samples=samples,
                        noise_level=noise_level, noise_range=noise_range, mean=mean, std=std, channels=channels,
                        generator=generator, seed=seed, batch_size=batch_size)


def vargrad(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *, layer: str | None = None,
            base: str = "gradient", samples: int = 50, noise_level: float = 0.15, noise_range: str = "image",
            mean=None, std=None, channels: str = "sum", generator: torch.Generator | None = None,
            seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """VarGrad (Adebayo et al. 2018): the variance of the attributions over noisy copies, summed over channels;
    see `noise_tunnel` for the arguments."""
    return noise_tunnel(model, images, targets, layer=layer, kind="vargrad", base=base, samples=samples,
                        noise_level=noise_level, noise_range=noise_range, mean=mean, std=std, channels=channels,
                        generator=generator, seed=seed, batch_size=batch_size)
