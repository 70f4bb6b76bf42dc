"""Robustness: how much a map changes when the input changes a little (Quantus's robustness family).

- Max-sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations"):
  max over perturbations x' of ||e(x') - e(x)|| / ||e(x)||; lower is better.
- Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018, "On the Robustness of Interpretability
  Methods"): max over x' of ||e(x') - e(x)||_2 / ||x' - x||_2; lower is better.

Reference code, Quantus 0.6 (``MaxSensitivity``, ``LocalLipschitzEstimate``, batched ``evaluate_batch``):

=====================  ================================================  ===============================================
                        MaxSensitivity                                    LocalLipschitzEstimate
=====================  ================================================  ===============================================
perturbation            uniform noise on every input value, U(-r, r),     Gaussian noise on every input value,
                        ``lower_bound`` r = 0.2 (``batch_uniform_noise``)  N(0, 0.1^2) (``batch_gaussian_noise``)
samples                 ``nr_samples`` 200                                ``nr_samples`` 200
maps                    raw (``normalise=False, abs=False``)              divided by their max |value|
                                                                          (``normalise=True``), not abs
score per sample        Frobenius norm of e(x) - e(x') over the           ||e(x) - e(x')||_2 / (||x - x'||_2 + 1e-10)
                        flattened map, divided by that of e(x)            (``lipschitz_constant``)
aggregation             max over samples (``np.nanmax``)                  max over samples (``np.nanmax``)
prediction changes      ignored (``return_nan_when_prediction_changes``   ignored (likewise)
                        False); True makes the image NaN
=====================  ================================================  ===============================================

The noise is in the units of the tensor the network sees (normalised images), as Quantus adds it to
``x_batch``. Captum's ``sensitivity_max`` is the same max-sensitivity with radius 0.02, 10 samples, raw
maps and ``||e(x)|| = 0`` replaced by 1 (done here too: Quantus would divide by zero).

Differences from Quantus 0.6: ``normalise_by_max`` there divides by the largest |value| of the whole
batch (no ``normalise_axes``); here each map by its own (``normalise='max'``), so a score does not
depend on the other images of its batch. Noise: Quantus draws one array per sample for the whole batch
from numpy's global generator; here every (image, sample) copy draws its own ``torch.rand`` /
``torch.randn((C, H, W))`` from `generator` (or a CPU generator seeded with `seed`) in image-major order
(image n's copies are rows n * samples ... n * samples + samples - 1), whatever `batch_size` is.

Cost: the attribution of every copy (N x samples), in batches of `batch_size` copies, plus the
attribution of the clean images when `maps` is not given; the prediction check (``prediction_change``
other than 'keep') reuses the logits of the attribution's own forward when the method forwards the
copies itself (gradient methods) and adds one forward per batch otherwise.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from lottery_xai.errors import UserError
from lottery_xai.metrics.base import check_eval_mode, check_maps

AttributionFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
NORMALISE = ("none", "max")
PREDICTION_CHANGES = ("keep", "nan", "skip")


def _normalised(maps: torch.Tensor, normalise: str, absolute: bool) -> torch.Tensor:
    maps = maps.float()
    if normalise == "max":
        peak = maps.flatten(1).abs().amax(dim=1).view(-1, *([1] * (maps.dim() - 1)))
        maps = torch.where(peak > 0, maps / torch.where(peak > 0, peak, torch.ones_like(peak)), maps)
    return maps.abs() if absolute else maps


class _LogitsOf:
    """A forward hook on the model that keeps the logits of the forward whose input is `batch` (same
    tensor values), so the prediction on a perturbed copy comes from the attribution's own forward."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.batch, self.logits, self.handle = model, None, None, None

    def __enter__(self):
        self.handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False

    def watch(self, batch: torch.Tensor) -> None:
        self.batch, self.logits = batch, None

    def _hook(self, module, inputs, output):
        if self.logits is None and inputs and isinstance(inputs[0], torch.Tensor) \
                and inputs[0].shape == self.batch.shape and torch.equal(inputs[0].detach(), self.batch):
            self.logits = output.detach()

    def predictions(self, batch: torch.Tensor) -> torch.Tensor:
        if self.logits is None:
            with torch.no_grad():
                self.logits = self.model(batch).detach()
        return self.logits.argmax(dim=1)


def _check_common(samples, batch_size, normalise, prediction_change):
    for name, value in (("samples", samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if normalise not in NORMALISE:
        raise UserError(f"normalise must be one of {', '.join(NORMALISE)}, got {normalise!r}")
    if prediction_change not in PREDICTION_CHANGES:
        raise UserError(f"prediction_change must be one of {', '.join(PREDICTION_CHANGES)}, got {prediction_change!r}")


def _stability(model, images, attribution_fn, maps, targets, noise_fn, score_fn, samples, normalise, absolute,
               prediction_change, generator, seed, batch_size) -> dict[str, torch.Tensor]:
    """The per-sample scores [N, samples] of every perturbed copy and their max per image."""
    check_eval_mode(model)
    _check_common(samples, batch_size, normalise, prediction_change)
    if images.ndim != 4:
        raise UserError(f"images must be a tensor of shape [N,C,H,W], got {tuple(images.shape)}")
    images = images.detach()
    n = images.shape[0]
    device = images.device
    with torch.no_grad():
        clean_logits = torch.cat([model(chunk) for chunk in images.split(batch_size)])
    predicted = clean_logits.argmax(dim=1)
    targets = predicted if targets is None else torch.as_tensor(targets, device=device).long().reshape(-1)
    if targets.shape != (n,):
        raise UserError(f"targets must hold one class per image ({n}), got {tuple(targets.shape)}")
    if maps is None:
        maps = torch.cat([attribution_fn(model, chunk, t).detach()
                          for chunk, t in zip(images.split(batch_size), targets.split(batch_size))])
    maps = _normalised(check_maps(maps, images).to(device), normalise, absolute)
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)

    rows = n * samples
    scores = torch.empty(rows, dtype=torch.float64, device=device)
    changed = torch.zeros(rows, dtype=torch.bool, device=device)
    watch = prediction_change != "keep"
    with _LogitsOf(model) if watch else contextlib.nullcontext() as logits_of:
        for start in range(0, rows, batch_size):
            flat = torch.arange(start, min(start + batch_size, rows), device=device)
            image = flat // samples
            noise = torch.stack([noise_fn(images.shape[1:], generator) for _ in range(len(flat))]).to(device,
                                                                                                          images.dtype)
            copies = images[image] + noise
            if watch:
                logits_of.watch(copies)
            perturbed = _normalised(attribution_fn(model, copies, targets[image]).detach(), normalise, absolute)
            if watch:
                changed[flat] = logits_of.predictions(copies) != predicted[image]
            scores[flat] = score_fn(maps[image], perturbed, noise)
    scores = scores.view(n, samples)
    changed = changed.view(n, samples)
    if prediction_change == "keep":
        value = scores.amax(dim=1)
    else:
        masked = torch.where(changed, torch.full_like(scores, float("nan")), scores)
        if prediction_change == "nan":
            value = torch.where(changed.any(dim=1), float("nan"), scores.amax(dim=1))
        else:
            value = torch.where(changed.all(dim=1), float("nan"), masked.nan_to_num(float("-inf")).amax(dim=1))
        scores = masked
    return {"value": value, "scores": scores, "prediction_changed": changed, "targets": targets}


def max_sensitivity(
    model: torch.nn.Module,
    images: torch.Tensor,
    attribution_fn: AttributionFn,
    maps: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    radius: float = 0.2,
    samples: int = 200,
    normalise: str = "none",
    absolute: bool = False,
    prediction_change: str = "keep",
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Max-sensitivity per image as Quantus 0.6's ``MaxSensitivity`` (see the module); lower is better.

    Copies x + U(-`radius`, `radius`) of every value; ``attribution_fn(model, copies, targets) -> maps``
    explains each copy for its image's target (the class predicted on x unless `targets` is given);
    `maps` are the maps of x (None: computed with `attribution_fn`). Score of a copy: ||e(x') - e(x)||_F
    / ||e(x)||_F (a zero norm counts as 1, as Captum). `normalise` ('none', Quantus's default here, or
    'max': each map over its max |value|) and `absolute` apply to every map before the norms.
    ``prediction_change``: 'keep' (Quantus's default: every copy counts), 'nan' (Quantus's
    ``return_nan_when_prediction_changes=True``: NaN for an image when any copy changes its prediction)
    or 'skip' (the max over the copies that keep it). Returns ``value [N], scores [N, samples],
    prediction_changed [N, samples], targets [N]``.
    """
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or radius <= 0:
        raise UserError(f"radius must be a positive number, got {radius!r}")

    def noise_fn(shape, generator):
        return (2 * torch.rand(tuple(shape), generator=generator, device=generator.device) - 1) * radius

    def score_fn(original, perturbed, noise):
        norm = original.flatten(1).double().norm(dim=1)
        norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        return (original - perturbed).flatten(1).double().norm(dim=1) / norm

    return _stability(model, images, attribution_fn, maps, targets, noise_fn, score_fn, samples, normalise,
                      absolute, prediction_change, generator, seed, batch_size)


def local_lipschitz_estimate(
    model: torch.nn.Module,
    images: torch.Tensor,
    attribution_fn: AttributionFn,
    maps: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    noise_std: float = 0.1,
    noise_mean: float = 0.0,
    samples: int = 200,
    normalise: str = "max",
    absolute: bool = False,
    prediction_change: str = "keep",
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Local Lipschitz estimate per image as Quantus 0.6's ``LocalLipschitzEstimate`` (see the module);
    lower is better.

    Copies x + N(`noise_mean`, `noise_std`^2) of every value; score of a copy: ||e(x) - e(x')||_2 /
    (||x - x'||_2 + 1e-10), max over the copies. `normalise` 'max' (Quantus's default: each map over its
    max |value|) or 'none'; the other arguments and the result as `max_sensitivity`.
    """
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or noise_std <= 0:
        raise UserError(f"noise_std must be a positive number, got {noise_std!r}")

    def noise_fn(shape, generator):
        return noise_mean + noise_std * torch.randn(tuple(shape), generator=generator, device=generator.device)

    def score_fn(original, perturbed, noise):
        distance = (original - perturbed).flatten(1).double().norm(dim=1)
        return distance / (noise.flatten(1).double().norm(dim=1) + 1e-10)

    return _stability(model, images, attribution_fn, maps, targets, noise_fn, score_fn, samples, normalise,
                      absolute, prediction_change, generator, seed, batch_size)
