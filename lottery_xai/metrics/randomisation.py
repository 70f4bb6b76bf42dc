"""Randomisation as metrics (Quantus's randomisation family): does the map depend on the class and on the
weights it claims to explain?

- Random-logit test (Sixt, Granz & Landgraf 2020, "When Explanations Lie: Why Many Modified BP
  Attributions Fail"): the similarity of the map for the target class with the map of the same image for
  a class drawn uniformly from the other classes; lower is better (a class-sensitive map). Reference code:
  Quantus 0.6 ``RandomLogit`` (``similarity_func=ssim``, ``normalise=True``, ``abs=False``; the other class
  is ``np.random.randint(0, num_classes - 1)``-th of the remaining classes in ascending order; its ``ssim``
  is ``skimage.metrics.structural_similarity`` on the *flattened* maps, i.e. a 1-D SSIM with a 7-sample
  uniform window, sample covariances and data range max - min of the pair).
- Model-parameter randomisation score (Adebayo et al. 2018; Quantus ``MPRT``: cascading from the top,
  Spearman correlation of the absolute maps, ``return_last_correlation`` / ``return_average_correlation``)
  read from the sanity step's per-image table (``sanity/per_image.csv``): the similarity of each image's map
  under the randomised model with its original map, at the last cascading stage (every block random) or
  averaged over the stages; lower is better.
- Efficient MPRT (Hedström, Weber, Lapuschkin & Höhne, "Sanity Checks Revisited: An Exploration to Repair
  the Model Parameter Randomisation Test", 2023/2024; Quantus 0.6 ``EfficientMPRT`` with its defaults: no
  absolute value, no normalisation, ``discrete_entropy`` with 100 bins): instead of a similarity, the
  relative rise of the map's complexity from the original model to the fully randomised one,
  (H(randomised map) - H(original map)) / H(original map), H = `discrete_entropy`; higher is better (the
  map loses the trained model's structure). The sanity step records it per stage as the measure ``emprt``
  (the cascade's last stage is eMPRT proper).
"""
from __future__ import annotations

from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from lottery_xai.errors import UserError
from lottery_xai.metrics.base import check_eval_mode, check_maps
from lottery_xai.metrics.complexity import discrete_entropy
from lottery_xai.metrics.consistency import spearman, ssim

AttributionFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
RANDOM_LOGIT_SIMILARITIES = ("quantus_ssim", "ssim", "spearman")
MPRT_STAGES = ("last", "average")


def flat_ssim(maps_a: torch.Tensor, maps_b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Quantus 0.6's ``ssim`` of two map batches, [N] float64: ``skimage.metrics.structural_similarity`` of
    each pair of *flattened* maps (1-D; uniform window of `window` samples, K1 0.01, K2 0.03, sample
    covariances, averaged over the positions whose window lies inside the signal), data range max - min
    over both maps (1 when both are constant: skimage would divide by zero)."""
    a = maps_a.reshape(maps_a.shape[0], -1).double()
    b = maps_b.reshape(maps_b.shape[0], -1).double()
    if a.shape[1] < window:
        raise UserError(f"the flattened SSIM needs maps of at least {window} values, got {a.shape[1]}")
    both = torch.cat([a, b], dim=1)
    data_range = both.amax(dim=1) - both.amin(dim=1)
    data_range = torch.where(data_range > 0, data_range, torch.ones_like(data_range))[:, None]
    kernel = torch.full((1, 1, window), 1.0 / window, dtype=a.dtype, device=a.device)

    def smooth(x):
        return F.conv1d(x[:, None], kernel)[:, 0]

    ux, uy, uxx, uyy, uxy = smooth(a), smooth(b), smooth(a * a), smooth(b * b), smooth(a * b)
    cov_norm = window / (window - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return index.mean(dim=1)


def efficient_mprt(maps: torch.Tensor, original: torch.Tensor, n_bins: int = 100) -> torch.Tensor:
    """Efficient MPRT of each image, [N] float64: the relative rise of the discrete entropy (`n_bins`
    equal-width bins) from ``original`` (the trained model's maps [N,H,W]) to ``maps`` (the randomised
    model's), ``(H(maps) - H(original)) / H(original)`` as Quantus 0.6 ``EfficientMPRT`` scores an instance;
    NaN where the original map is constant (H = 0: Quantus divides by zero)."""
    before, after = discrete_entropy(original, n_bins), discrete_entropy(maps, n_bins)
    return torch.where(before > 0, (after - before) / torch.where(before > 0, before, 1.0), float("nan"))


def other_classes(targets: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """For each target, a class drawn uniformly from the other `num_classes` - 1 classes: the j-th of the
    remaining classes in ascending order, j = ``torch.randint(0, num_classes - 1)`` from `generator` (Quantus's
    indexing; its draw is numpy's)."""
    if num_classes < 2:
        raise UserError("the random-logit test needs a model with at least 2 classes")
    j = torch.randint(0, num_classes - 1, (targets.shape[0],), generator=generator, device=generator.device)
    j = j.to(targets.device)
    return j + (j >= targets).long()


def _normalise_max(maps: torch.Tensor) -> torch.Tensor:
    peak = maps.flatten(1).abs().amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, maps / torch.where(peak > 0, peak, torch.ones_like(peak)), maps)


def random_logit(
    model: torch.nn.Module,
    images: torch.Tensor,
    attribution_fn: AttributionFn,
    maps: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    other_targets: torch.Tensor | None = None,
    similarity: str = "quantus_ssim",
    normalise: bool = True,
    absolute: bool = False,
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """The random-logit test per image (see the module); lower is better.

    `maps` are the maps for `targets` (None: the class predicted on each image; maps None: computed with
    ``attribution_fn(model, images, targets)``); the other class comes from `other_classes` with `generator`
    (or a CPU generator seeded with `seed`) unless `other_targets` is given. `normalise` divides each map by
    its max |value| (Quantus's ``normalise_by_max``, which in Quantus 0.6 uses the batch's max: see
    `lottery_xai.metrics.complexity`), `absolute` takes |.| (Quantus's default False). `similarity`:
    'quantus_ssim' (default, `flat_ssim`: Quantus 0.6's SSIM of the flattened maps), 'ssim' (the 2-D SSIM
    of `lottery_xai.metrics.consistency.ssim`) or 'spearman'. Returns ``value [N], targets [N],
    other_targets [N]``.
    """
    check_eval_mode(model)
    if similarity not in RANDOM_LOGIT_SIMILARITIES:
        raise UserError(f"similarity must be one of {', '.join(RANDOM_LOGIT_SIMILARITIES)}, got {similarity!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    images = images.detach()
    device = images.device
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in images.split(batch_size)])
    targets = logits.argmax(dim=1) if targets is None else torch.as_tensor(targets, device=device).long().reshape(-1)
    if other_targets is None:
        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        other_targets = other_classes(targets, logits.shape[1], generator)
    other_targets = torch.as_tensor(other_targets, device=device).long().reshape(-1)
    if bool((other_targets == targets).any()):
        raise UserError("other_targets must differ from targets for every image")

    def explain(classes):
        return torch.cat([attribution_fn(model, chunk, c).detach().float()
                          for chunk, c in zip(images.split(batch_size), classes.split(batch_size))])

    maps = check_maps(explain(targets) if maps is None else maps, images).to(device)
    others = check_maps(explain(other_targets), images)
    prepared = []
    for m in (maps, others):
        m = _normalise_max(m) if normalise else m
        prepared.append(m.abs() if absolute else m)
    measure = {"quantus_ssim": flat_ssim, "ssim": ssim, "spearman": spearman}[similarity]
    return {"value": measure(*prepared), "targets": targets, "other_targets": other_targets}


def parameter_randomisation_score(per_image, method: str, round: int | None = None,
                                  randomization: str = "cascading", measure: str = "spearman_abs",
                                  stage: str = "last"):
    """The model-parameter randomisation score of `method` per image (and round), from the sanity step's
    ``per_image.csv`` table (a DataFrame: round, method, randomization, stage, block, measure, image_id, value).

    `stage` 'last' (default; Quantus ``MPRT(return_last_correlation=True)``, Adebayo et al.'s fully
    randomised network under cascading randomisation) or 'average' (``return_average_correlation``: the
    mean over the stages); `measure` 'spearman_abs' (default: Quantus's ``abs=True`` with Spearman) or any
    measure the sanity step recorded (``sanity.measures``). Returns a DataFrame with columns round,
    image_id, value (lower is better: the maps changed with the weights)."""
    if stage not in MPRT_STAGES:
        raise UserError(f"stage must be one of {', '.join(MPRT_STAGES)}, got {stage!r}")
    rows = per_image[(per_image["method"] == method) & (per_image["randomization"] == randomization)
                     & (per_image["measure"] == measure)]
    if round is not None:
        rows = rows[rows["round"] == round]
    if rows.empty:
        raise UserError(f"the sanity table has no {randomization} {measure!r} rows for method {method!r}"
                        + (f" at round {round}" if round is not None else "")
                        + "; run main_sanity_checks.py with that method and measure")
    if stage == "last":
        last = rows.groupby("round")["stage"].transform("max")
        out = rows[rows["stage"] == last][["round", "image_id", "value"]]
    else:
        out = rows.groupby(["round", "image_id"], as_index=False)["value"].mean()
    return pd.DataFrame(out).sort_values(["round", "image_id"]).reset_index(drop=True)


def randomisation_scores(per_image, method: str, round: int, image_ids, randomization: str = "cascading",
                         measure: str = "spearman_abs", stage: str = "last") -> torch.Tensor:
    """`parameter_randomisation_score` of `method` at `round` as one value per image of `image_ids` [N] (float64),
    NaN for the images the sanity step did not use (``sanity.n_images`` of the step-6 images) and for a round or
    method it did not test (step 7 measures every round; the sanity check ``sanity.rounds``)."""
    ids = [int(i) for i in image_ids]
    rows = per_image[(per_image["method"] == method) & (per_image["randomization"] == randomization)
                     & (per_image["measure"] == measure) & (per_image["round"] == round)]
    if rows.empty:
        return torch.full((len(ids),), float("nan"), dtype=torch.float64)
    scores = parameter_randomisation_score(rows, method, round, randomization, measure, stage)
    lookup = dict(zip(scores["image_id"].astype(int), scores["value"].astype(float)))
    return torch.tensor([lookup.get(i, float("nan")) for i in ids], dtype=torch.float64)
