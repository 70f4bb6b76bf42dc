"""Input-gradient attributions: saliency and integrated gradients."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lottery_xai.attribution._hooks import TargetsLike, check_eval, check_images, check_logits, resolve_targets
from lottery_xai.errors import UserError

INTEGRATION_RULES = ("gauss_legendre", "trapezoid")


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


def _baseline_images(images: torch.Tensor, baseline) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(images)
        if baseline == "blur":
            # The same blur as the insertion metric's start image (kernel 11, sigma 5).
            from torchvision.transforms.functional import gaussian_blur  # lazy: torchvision costs seconds to import

            return gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
        raise UserError(f"baseline must be 'zeros', 'blur' or a tensor, got {baseline!r}")
    if not isinstance(baseline, torch.Tensor):
        raise UserError(f"baseline must be 'zeros', 'blur' or a tensor, got {type(baseline).__name__}")
    try:
        return torch.broadcast_to(baseline.to(images.device, images.dtype), images.shape)
    except RuntimeError:
        raise UserError(
            f"baseline of shape {tuple(baseline.shape)} does not broadcast to the images' {tuple(images.shape)}"
        ) from None


def integrated_gradients(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    baseline: str | torch.Tensor = "zeros",
    steps: int = 32,
    rule: str = "gauss_legendre",
    batch_size: int = 64,
    reduce_channels: bool = True,
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017): (x - x') * int_0^1 dz_c/dx(x' + a (x - x')) da.

    `baseline`: 'zeros' (default), 'blur' (Gaussian, kernel 11, sigma 5) or a tensor broadcastable
    to the images. The integral uses `steps` points of a Gauss-Legendre rule (default; exact for
    smooth models with few points) or the trapezoid rule on evenly spaced points including both
    ends. The steps x images interpolants go through the network in batches of `batch_size`.
    Returns [N, H, W] (sum over channels) or [N, C, H, W] with reduce_channels=False; either way
    the attributions sum to about z_c(x) - z_c(x') (completeness). `layer` is ignored.
    """
    check_images(images)
    check_eval(model)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = images.shape[0]
    images = images.detach()
    base = _baseline_images(images, baseline)
    alphas, weights = _integration_nodes(steps, rule, images.device)
    if targets is None:
        with torch.no_grad():
            logits = model(images)
        check_logits(logits, n)
        targets = resolve_targets(None, logits)
    else:
        with torch.no_grad():
            logits = model(images[:1])  # only to learn the number of classes for the check
        check_logits(logits, 1)
        targets = resolve_targets(targets, logits.expand(n, -1))
    delta = images - base
    grad_integral = torch.zeros_like(images, dtype=torch.float32)
    for start in range(0, steps * n, batch_size):
        flat = torch.arange(start, min(start + batch_size, steps * n), device=images.device)
        step, image = flat // n, flat % n
        path = (base[image] + alphas[step].view(-1, 1, 1, 1).to(images.dtype) * delta[image]).requires_grad_(True)
        with torch.enable_grad():
            path_logits = model(path)
        (grad,) = torch.autograd.grad(path_logits.gather(1, targets[image][:, None]).sum(), path)
        grad_integral.index_add_(0, image, grad.float() * weights[step].view(-1, 1, 1, 1))
    attributions = delta.float() * grad_integral
    return attributions.sum(dim=1) if reduce_channels else attributions
