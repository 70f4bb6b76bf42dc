"""Input-gradient attributions: saliency and integrated gradients."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lottery_xai.attribution._hooks import TargetsLike, check_eval, check_images, check_logits, resolve_targets
from lottery_xai.errors import UserError

INTEGRATION_RULES = ("gauss_legendre", "trapezoid")
IG_BASELINES = ("black", "mean", "blur", "uniform")
IG_OUTPUTS = ("logit", "probability")
IG_DETAILS = ("completeness", "delta", "output_difference", "steps")


def saliency(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
) -> torch.Tensor:
    """Saliency maps [N, H, W]: max over channels of |dz_c/dx| (Simonyan et al. 2014). `layer` is ignored."""
    check_images(images)
    check_eval(model)
    inputs = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs)
    check_logits(logits, images.shape[0])
    targets = resolve_targets(targets, logits)
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), inputs)
    return grad.abs().amax(dim=1).float()


def _integration_nodes(steps: int, rule: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Points alpha in [0, 1] and weights of a quadrature rule for int_0^1 f(alpha) d alpha."""
    if not isinstance(steps, int) or steps < 2:
        raise UserError(f"steps must be an integer >= 2, got {steps!r}")
    if rule == "gauss_legendre":
        points, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (points + 1) / 2, weights / 2  # map [-1, 1] to [0, 1]
    elif rule == "trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
    else:
        raise UserError(f"rule must be one of {', '.join(INTEGRATION_RULES)}, got {rule!r}")
    as_tensor = lambda values: torch.as_tensor(values, dtype=torch.float32, device=device)  # noqa: E731
    return as_tensor(alphas), as_tensor(weights)


def _channel_values(values, name: str, images: torch.Tensor) -> torch.Tensor:
    """Per-channel values (one, or one per channel of the images) as a tensor [1, C or 1, 1, 1]."""
    try:
        tensor = torch.as_tensor(values, dtype=images.dtype, device=images.device).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{name} must be per-channel numbers, got {values!r}") from None
    if tensor.numel() not in (1, images.shape[1]):
        raise UserError(f"{name} must hold 1 or {images.shape[1]} (the images' channels) values, got {tensor.numel()}")
    return tensor.view(1, -1, 1, 1)


def _baseline_images(images: torch.Tensor, baseline, mean, std, samples: int, generator, seed: int) -> torch.Tensor:
    """Baselines [N * samples, C, H, W] (image-major: rows i * samples ... i * samples + samples - 1 are image i's)."""
    if (mean is None) != (std is None):
        raise UserError("pass both mean and std (the images' per-channel normalisation) or neither")
    if mean is not None:
        mean, std = _channel_values(mean, "mean", images), _channel_values(std, "std", images)
        if not bool((std > 0).all()):
            raise UserError(f"std must be positive, got {std.flatten().tolist()}")
    to_input = (lambda pixels: pixels) if mean is None else (lambda pixels: (pixels - mean) / std)  # noqa: E731
    if isinstance(baseline, str):
        if baseline == "black":
            return to_input(torch.zeros_like(images)).expand_as(images).repeat_interleave(samples, dim=0)
        if baseline == "mean":
            if mean is None:
                raise UserError("baseline 'mean' (the dataset's mean colour) needs the images' normalisation: "
                                "pass mean and std")
            return torch.zeros_like(images).repeat_interleave(samples, dim=0)
        if baseline == "blur":
            # Gaussian blur, kernel 11, sigma 5 (the insertion metric's start image at the time of writing);
            # linear and constant-preserving, so blurring the normalised image is normalising the blurred one.
            from torchvision.transforms.functional import gaussian_blur  # lazy: torchvision costs seconds to import

            blurred = gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
            return blurred.repeat_interleave(samples, dim=0)
        if baseline == "uniform":
            generator = generator if generator is not None else torch.Generator().manual_seed(seed)
            n, c, h, w = images.shape
            pixels = torch.rand((n * samples, c, h, w), generator=generator, device=generator.device)
            return to_input(pixels.to(images.device, images.dtype))
        raise UserError(f"baseline must be one of {', '.join(IG_BASELINES)} or a tensor, got {baseline!r}")
    if not isinstance(baseline, torch.Tensor):
        raise UserError(f"baseline must be one of {', '.join(IG_BASELINES)} or a tensor, got {type(baseline).__name__}")
    try:
        base = torch.broadcast_to(baseline.to(images.device, images.dtype), images.shape)
    except RuntimeError:
        raise UserError(
            f"baseline of shape {tuple(baseline.shape)} does not broadcast to the images' {tuple(images.shape)}"
        ) from None
    return base.repeat_interleave(samples, dim=0)


def _explained_output(logits: torch.Tensor, targets: torch.Tensor, output: str) -> torch.Tensor:
    """The explained scalar per row: the target logit, or the target's softmax probability."""
    if output == "probability":
        return F.softmax(logits.float(), dim=1).gather(1, targets[:, None])[:, 0]
    return logits.gather(1, targets[:, None])[:, 0].float()


def _forward(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, output: str,
             batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([_explained_output(model(chunk), t, output)
                          for chunk, t in zip(inputs.split(batch_size), targets.split(batch_size))])


def _path_integral(model, inputs, base, targets, steps, rule, batch_size, output) -> torch.Tensor:
    """(x - x') * sum_k w_k dF/dx(x' + alpha_k (x - x')) for rows of inputs/base/targets, float32 [M, C, H, W]."""
    m = inputs.shape[0]
    alphas, weights = _integration_nodes(steps, rule, inputs.device)
    delta = inputs - base
    grad_integral = torch.zeros_like(inputs, dtype=torch.float32)
    for start in range(0, steps * m, batch_size):
        flat = torch.arange(start, min(start + batch_size, steps * m), device=inputs.device)
        step, row = flat // m, flat % m
        path = (base[row] + alphas[step].view(-1, 1, 1, 1).to(inputs.dtype) * delta[row]).requires_grad_(True)
        with torch.enable_grad():
            explained = _explained_output(model(path), targets[row], output)
        (grad,) = torch.autograd.grad(explained.sum(), path)
        grad_integral.index_add_(0, row, grad.float() * weights[step].view(-1, 1, 1, 1))
    return delta.float() * grad_integral


def integrated_gradients_report(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    baseline: str | torch.Tensor = "black",
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | torch.Tensor | None = None,
    steps: int = 32,
    rule: str = "gauss_legendre",
    output: str = "logit",
    samples: int = 1,
    tolerance: float | None = None,
    max_steps: int | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 64,
    reduce_channels: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Integrated gradients and, per image, how complete they are: (maps, details).

    Same arguments and maps as `integrated_gradients`. `details` holds tensors [N]:
    'output_difference' F(x) - F(x') (averaged over the baselines when samples > 1), 'delta' the
    signed gap sum(attributions) - (F(x) - F(x')) (Captum's convergence delta,
    `IntegratedGradients.attribute(..., return_convergence_delta=True)`), 'completeness' the
    relative gap |delta| / |F(x) - F(x')| (inf when F(x) = F(x') but delta is not 0; 0 when both
    are), and 'steps' the integration points used for the image.
    """
    check_images(images)
    check_eval(model)
    for name, value in (("batch_size", batch_size), ("samples", samples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if output not in IG_OUTPUTS:
        raise UserError(f"output must be one of {', '.join(IG_OUTPUTS)}, got {output!r}")
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise UserError(f"tolerance must be a number >= 0 or None, got {tolerance!r}")
    _integration_nodes(steps, rule, torch.device("cpu"))  # checks steps and rule before any forward
    max_steps = steps if max_steps is None else max_steps
    if not isinstance(max_steps, int) or isinstance(max_steps, bool):
        raise UserError(f"max_steps must be an integer, got {max_steps!r}")
    if not (isinstance(baseline, str) and baseline == "uniform"):
        samples = 1  # a fixed baseline gives the same attributions every time
    n = images.shape[0]
    images = images.detach()
    base = _baseline_images(images, baseline, mean, std, samples, generator, seed)
    with torch.no_grad():
        chunks = [(model(chunk), len(chunk)) for chunk in images.split(batch_size)]
    for chunk_logits, size in chunks:
        check_logits(chunk_logits, size)
    logits = torch.cat([chunk_logits for chunk_logits, _ in chunks])
    targets = resolve_targets(targets, logits)
    row_targets = targets.repeat_interleave(samples)  # row i * samples + s: image i with its baseline s
    # Completeness: F(x) - mean_s F(x'_s) against the sum of the sample-averaged attributions.
    output_difference = (_explained_output(logits, targets, output).double()
                         - _forward(model, base, row_targets, output, batch_size).double().view(n, samples).mean(dim=1))

    def integrate(image_rows: torch.Tensor, k: int) -> torch.Tensor:
        rows = (image_rows[:, None] * samples + torch.arange(samples, device=images.device)).reshape(-1)
        per_row = _path_integral(model, images[rows // samples], base[rows], row_targets[rows], k, rule, batch_size,
                                 output)
        return per_row.view(len(image_rows), samples, *images.shape[1:]).mean(dim=1)

    def gaps(attributions: torch.Tensor, image_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = attributions.double().sum(dim=(1, 2, 3)) - output_difference[image_rows]
        scale = output_difference[image_rows].abs()
        relative = torch.where(scale > 0, delta.abs() / torch.where(scale > 0, scale, torch.ones_like(scale)),
                               torch.where(delta == 0, 0.0, float("inf")).to(delta))
        return delta, relative

    every = torch.arange(n, device=images.device)
    attributions = integrate(every, steps)
    delta, completeness = gaps(attributions, every)
    used = torch.full((n,), steps, dtype=torch.long, device=images.device)
    k = steps
    # Where the gap exceeds the tolerance: double the points for those images (all points anew) up to max_steps.
    while tolerance is not None and k < max_steps:
        redo = torch.nonzero(completeness > tolerance)[:, 0]
        if len(redo) == 0:
            break
        k = min(2 * k, max_steps)
        attributions[redo] = integrate(redo, k)
        delta[redo], completeness[redo] = gaps(attributions[redo], redo)
        used[redo] = k
    details = {"completeness": completeness.float(), "delta": delta.float(),
               "output_difference": output_difference.float(), "steps": used}
    return (attributions.sum(dim=1) if reduce_channels else attributions), details


def integrated_gradients(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    baseline: str | torch.Tensor = "black",
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | torch.Tensor | None = None,
    steps: int = 32,
    rule: str = "gauss_legendre",
    output: str = "logit",
    samples: int = 1,
    tolerance: float | None = None,
    max_steps: int | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 64,
    reduce_channels: bool = True,
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017): (x - x') * int_0^1 dF/dx(x' + a (x - x')) da.

    Reference: the paper's images use the black image as baseline x'; its code
    (ankurtaly/Integrated-Gradients, `integrated_gradients`) integrates with the trapezoid rule on
    steps + 1 = 51 evenly spaced points, and F is the target's softmax probability; its
    `random_baseline_integrated_gradients` averages 10 uniform-noise baselines. Captum's
    `IntegratedGradients` (default method 'gausslegendre', n_steps 50) explains whatever the model
    returns. Here:

    `baseline`: 'black' (default, the paper's: pixel value 0 in every channel, i.e. (0 - mean) / std
    after the normalisation), 'mean' (the normalisation's mean colour, i.e. the all-zero input),
    'blur' (Gaussian blur of the image, kernel 11, sigma 5), 'uniform' (`samples` noise images per
    image, uniform in [0, 1) in pixel space then normalised, drawn from `generator` or a CPU
    generator seeded with `seed`; the attributions are averaged over them) or a tensor broadcastable
    to the images (used as is). `mean`, `std`: the per-channel normalisation the images went
    through (images = (pixels - mean) / std); None means the images are pixel values in [0, 1].
    `output`: F is the target 'logit' (default, as Captum on a model returning logits) or the
    target's softmax 'probability' (the reference code).
    The integral uses `steps` points of a Gauss-Legendre rule (default; Captum's 'gausslegendre',
    the same points and weights) or the trapezoid rule on `steps` evenly spaced points including
    both ends (the reference code's rule with steps - 1 intervals). The steps x images interpolants
    go through the network in batches of `batch_size`.
    Completeness: the attributions sum to about F(x) - F(x'). With `tolerance`, an image whose
    relative gap |sum - (F(x) - F(x'))| / |F(x) - F(x')| exceeds it is integrated again with twice
    the points, up to `max_steps` (None: `steps`, no second pass); images still above it then raise
    one RuntimeWarning. `integrated_gradients_report` also returns the gaps and the points used.
    Returns [N, H, W] (sum over channels) or [N, C, H, W] with reduce_channels=False. `layer` is ignored.
    """
    maps, details = integrated_gradients_report(
        model, images, targets, layer=layer, baseline=baseline, mean=mean, std=std, steps=steps, rule=rule,
        output=output, samples=samples, tolerance=tolerance, max_steps=max_steps, generator=generator, seed=seed,
        batch_size=batch_size, reduce_channels=reduce_channels)
    if tolerance is not None:
        above = details["completeness"] > tolerance
        if bool(above.any()):
            worst = float(details["completeness"].max())
            warnings.warn(f"integrated gradients: {int(above.sum())} of {len(above)} images have a completeness gap "
                          f"above {tolerance:g} with {int(details['steps'].max())} steps (worst {worst:.3g}); "
                          f"raise max_steps (heatmaps.ig_max_steps) or read the gap as the maps' error",
                          RuntimeWarning, stacklevel=2)
    return maps
