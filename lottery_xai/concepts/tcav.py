"""TCAV (Kim et al. 2018): directional derivatives of a class logit along CAVs, scores and their significance.

Gradients are taken once per image and class, at one layer, of the image's own target LOGIT (not the
loss, not the softmax); every CAV is then scored by one matrix product.

Flattening must match the CAVs: ``flatten`` uses the flattened gradient. For ``avg_pool`` CAVs the
pooled activation is p = mean_hw A_hw; moving p by eps * v means moving every spatial position A_hw by
eps * v, so the exact directional derivative is sum_hw g_hw . v = HW * (mean_hw g) . v. The spatial
mean of the gradient therefore has the derivative's sign, which is all the TCAV score counts.
``max_pool`` has no such derivative (it only sees the arg-max position), so it is refused.

Significance: a two-sided Welch t-test (``equal_var=False``: the concept runs and the random runs need
not share a variance) between the scores of the concept's CAV runs and of the random CAVs, significant
when p < alpha / (number of concepts tested), the Bonferroni correction over concepts.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from ..activations import eval_mode, forward_with_capture, model_device
from ..errors import UserError
from ..models import get_layer
from .cav import select_concepts

TCAV_FLATTENINGS = ("flatten", "avg_pool")


def _check_flattening(flattening: str) -> None:
    if flattening == "max_pool":
        raise UserError("TCAV needs cav_flattening_type flatten or avg_pool: a max-pooled activation has no "
                        "directional derivative; refit the CAVs with one of those")
    if flattening not in TCAV_FLATTENINGS:
        raise UserError(f"cav_flattening_type '{flattening}' is unknown; use flatten or avg_pool for TCAV")


def layer_gradients(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    flattening: str = "flatten",
) -> torch.Tensor:
    """d z_target / d A at `layer` for each image, [N, D] reshaped the way the CAVs were fitted.

    One forward and one ``torch.autograd.grad`` of the summed target logits (each image gets its own
    gradient). The part of the network before the layer runs without autograd; no parameter gradient
    is computed and parameters need not require grad. The model is used in its current mode.
    """
    _check_flattening(flattening)
    n = images.shape[0]
    targets = torch.as_tensor(targets, dtype=torch.long, device=images.device)
    if targets.dim() == 0:
        targets = targets.expand(n)
    if targets.shape != (n,):
        raise UserError(f"{targets.shape[0]} targets for {n} images")
    # the layer's output as a fresh leaf: autograd stops there (a module run twice: its first call)
    activation, logits = forward_with_capture(model, images, layer, repeat="first")
    selected = logits.gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(selected, activation)
    if flattening == "avg_pool" and grad.dim() > 2:
        return grad.mean(dim=tuple(range(2, grad.dim())))
    return grad.reshape(n, -1)


def gradients_by_class(
    model: nn.Module,
    layer: str,
    loader: Iterable[Mapping],
    class_indices: Sequence[int],
    *,
    flattening: str,
    device: str | torch.device | None = None,
    max_images: int | None = None,
    progress: bool = False,
) -> dict[int, np.ndarray]:
    """One pass over a loader of dict batches (``image``, ``label``): each image of a requested class gets
    the gradient of its own class logit. Returns {class: float32 numpy [n_class, D]} in loader order,
    at most `max_images` per class. Runs in eval mode on `device` (default: where the model is)."""
    _check_flattening(flattening)
    get_layer(model, layer)
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    wanted = torch.as_tensor(list(class_indices), dtype=torch.long)
    collected: dict[int, list[torch.Tensor]] = {int(c): [] for c in class_indices}
    counts = dict.fromkeys(collected, 0)
    with eval_mode(model):
        for batch in tqdm(loader, desc="gradients", unit="batch", disable=not progress, leave=False):
            labels = torch.as_tensor(batch["label"]).long().cpu()
            keep = torch.isin(labels, wanted)
            if max_images is not None:  # drop a class's images beyond the cap (CPU labels: no device sync)
                for c in labels[keep].unique().tolist():
                    members = torch.nonzero(labels == c).flatten()
                    keep[members[max(max_images - counts[c], 0):]] = False
                    counts[c] += min(len(members), max(max_images - counts[c], 0))
            if not keep.any():
                continue
            images = batch["image"][keep].to(device, non_blocking=True)
            kept_labels = labels[keep]
            grads = layer_gradients(model, layer, images, kept_labels.to(device), flattening)
            for c in kept_labels.unique().tolist():  # rows picked by a CPU-built index: no device sync
                rows = torch.nonzero(kept_labels == c).flatten().to(device, non_blocking=True)
                collected[c].append(grads.index_select(0, rows))
    d = None
    out = {}
    for c, parts in collected.items():
        g = torch.cat(parts) if parts else None
        out[c] = g.float().cpu().numpy() if g is not None else None  # one transfer per class, after the loop
        d = g.shape[1] if g is not None else d
    for c in out:
        if out[c] is None:
            out[c] = np.zeros((0, d or 0), dtype=np.float32)
    return out


def class_gradients(
    model: nn.Module,
    layer: str,
    loader_or_images,
    class_index: int,
    *,
    flattening: str,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    max_images: int | None = None,
) -> np.ndarray:
    """Gradients of class `class_index`'s logit at `layer` for all of the class's images, computed once.

    `loader_or_images` is either an image tensor [n, 3, H, W] (all taken as the class's images, run in
    batches of `batch_size`) or a loader of dict batches (images whose ``label`` is the class are used).
    Returns float32 numpy [n, D] on the CPU (one transfer at the end).
    """
    if isinstance(loader_or_images, torch.Tensor):
        images = loader_or_images[:max_images] if max_images is not None else loader_or_images
        batches = [{"image": chunk, "label": torch.full((len(chunk),), class_index)}
                   for chunk in images.split(batch_size)]
        return gradients_by_class(model, layer, batches, [class_index], flattening=flattening, device=device)[class_index]
    return gradients_by_class(model, layer, loader_or_images, [class_index], flattening=flattening,
                              device=device, max_images=max_images)[class_index]


def tcav_scores(grads, cavs) -> np.ndarray:
    """Fraction of the n images whose directional derivative ``grads @ cav`` is > 0, for every CAV.

    `grads` [n, D] (numpy or torch, any device), `cavs` [..., D]; returns numpy [...]. All CAVs are
    scored by one matrix product; a CAV containing NaN (an unfittable concept) scores NaN.
    """
    g = grads if isinstance(grads, torch.Tensor) else torch.from_numpy(np.asarray(grads))
    v = torch.as_tensor(np.asarray(cavs) if not isinstance(cavs, torch.Tensor) else cavs)
    if g.dim() != 2 or v.shape[-1] != g.shape[1]:
        raise UserError(f"gradients {tuple(g.shape)} and CAVs {tuple(v.shape)} disagree on D "
                        "(same layer and cav_flattening_type for both?)")
    if g.shape[0] == 0:
        raise UserError("no images to score: the class has no images in the TCAV splits")
    flat = v.reshape(-1, v.shape[-1]).to(g.device, g.dtype)
    bad = torch.isnan(flat).any(dim=1)
    positive = (g @ torch.where(bad[:, None], 0.0, flat).T > 0).double().mean(dim=0)
    scores = torch.where(bad, torch.nan, positive)
    return scores.reshape(v.shape[:-1]).cpu().numpy()


def _two_sided_p(a: np.ndarray, b: np.ndarray) -> float:
    """Welch t-test p-value; 1.0 where it cannot be computed (NaN, < 2 values, identical constants)."""
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return 1.0
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        # both constant: no variance to test against; different constants are as far apart as it gets
        return 1.0 if a[0] == b[0] else 0.0
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return 1.0 if not np.isfinite(p) else float(p)


def tcav_significance(
    concept_scores: np.ndarray,
    random_scores: np.ndarray,
    *,
    alpha: float = 0.05,
    bonferroni: bool = True,
    concept_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per concept: tcav_mean, tcav_std, random_mean, p_value (two-sided Welch t-test of the concept's
    run scores [n_concepts, n_runs] against the random scores [n_random]) and `significant`
    (p < alpha / number of concepts tested, with Bonferroni). NaN runs are ignored; a concept with
    fewer than 2 valid runs is not tested (p = 1, not significant, not counted by Bonferroni)."""
    concept_scores = np.atleast_2d(np.asarray(concept_scores, dtype=np.float64))
    random_scores = np.asarray(random_scores, dtype=np.float64).ravel()
    names = list(concept_names) if concept_names is not None else list(range(len(concept_scores)))
    if len(names) != len(concept_scores):
        raise UserError(f"{len(names)} concept names for {len(concept_scores)} rows of scores")
    valid = (~np.isnan(concept_scores)).sum(axis=1)
    n_tested = max(int((valid >= 2).sum()), 1)
    threshold = alpha / n_tested if bonferroni else alpha
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nan-means of all-NaN concepts are expected
        random_mean = float(np.nanmean(random_scores)) if (~np.isnan(random_scores)).any() else np.nan
        for name, scores, k in zip(names, concept_scores, valid):
            p = _two_sided_p(scores, random_scores)
            rows.append(dict(
                concept=name,
                tcav_mean=float(np.nanmean(scores)) if k else np.nan,
                tcav_std=float(np.nanstd(scores, ddof=1)) if k >= 2 else (0.0 if k else np.nan),
                random_mean=random_mean,
                p_value=p,
                significant=bool(k >= 2 and p < threshold),
            ))
    return pd.DataFrame(rows, columns=["concept", "tcav_mean", "tcav_std", "random_mean", "p_value", "significant"])


def run_tcav(
    grads_by_class: Mapping[str, np.ndarray],
    cav_result: Mapping,
    concept_names: Sequence[str] | None = None,
    *,
    alpha: float = 0.05,
    bonferroni: bool = True,
) -> pd.DataFrame:
    """TCAV for every class in `grads_by_class` ({class name: gradients [n, D]}) and every concept of a
    `fit_all_cavs` result (or the `concept_names` listed; None or ["all"] for all), with significance
    against the result's random CAVs. Columns: class, concept, tcav_mean, tcav_std, random_mean,
    p_value, significant, n_images."""
    chosen = select_concepts(cav_result, list(concept_names) if concept_names is not None else None)
    names = [cav_result["concepts"][i] for i in chosen]
    cavs = np.asarray(cav_result["cavs"])[chosen]
    random_cavs = np.asarray(cav_result["random_cavs"])
    tables = []
    for class_name, grads in grads_by_class.items():
        if len(grads) == 0:
            raise UserError(f"class '{class_name}' has no images to score; check labels_for_tcav and tcav.splits")
        table = tcav_significance(tcav_scores(grads, cavs), tcav_scores(grads, random_cavs),
                                  alpha=alpha, bonferroni=bonferroni, concept_names=names)
        table.insert(0, "class", class_name)
        table["n_images"] = len(grads)
        tables.append(table)
    columns = ["class", "concept", "tcav_mean", "tcav_std", "random_mean", "p_value", "significant", "n_images"]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
