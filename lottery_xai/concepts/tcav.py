"""TCAV (Kim et al. 2018): directional derivatives of a class logit along CAVs, scores and their significance.

What the reference does (Kim et al. 2018, arXiv:1711.11279 sections 3.3-3.5; tensorflow/tcav tcav/tcav.py,
tcav/model.py, tcav/utils.py, tcav/utils_plot.py, as released in tcav 0.2.2), and what we do:

- Gradient. The paper's conceptual sensitivity is the directional derivative of the class LOGIT h_k along the unit
  CAV, S = grad h_k(f_l(x)) . v (section 3.3, eq. 1), and the TCAV score the fraction of the class's inputs with
  S > 0 (3.4, eq. 2). tensorflow/tcav differentiates the LOSS instead: ``model.loss`` is the softmax cross-entropy of
  the target class (model.py lines 253-264, ``_make_gradient_tensors`` lines 134-140) and an input counts when
  ``dot(grad_loss, cav) < 0`` (tcav.py ``get_direction_dir_sign``, lines 56-60: "Grad points in the direction which
  DECREASES probability of class"). ``gradient="logit"`` (default) is the paper's; ``gradient="loss"`` is the code's:
  we return MINUS the gradient of the cross-entropy, so the same "> 0" count means the same thing (moving along the
  CAV lowers the loss of the class = raises its probability). The two differ where the other classes' logits move
  along the CAV too. (tensorflow/tcav's public image wrappers feed the softmax OUTPUT as the "logits" of
  ``softmax_cross_entropy_with_logits``, model.py lines 256-263 with ``prediction='output2:0'`` / ``'softmax:0'``;
  we use the cross-entropy of the model's logits, what that code means to compute.)
- Gradients are taken once per image and class, at one layer, of the image's own target (the class scored); every
  CAV is then scored by one matrix product. Flattening must match the CAVs: ``flatten`` uses the flattened gradient
  (the paper flattens, footnote 1). For ``avg_pool`` CAVs the pooled activation is p = mean_hw A_hw; moving p by
  eps * v means moving every spatial position A_hw by eps * v, so the exact directional derivative is
  sum_hw g_hw . v = HW * (mean_hw g) . v. The spatial mean of the gradient therefore has the derivative's sign,
  which is all the TCAV score counts. ``max_pool`` has no such derivative (it only sees the arg-max position), so it
  is refused.
- Vision transformers: at a token layer the gradient is reduced as the activations were (``token_features``,
  :func:`lottery_xai.tokens.token_features`): the class token's gradient for ``cls`` (exactly the gradient with
  respect to the feature), the mean of the patch tokens' gradients for ``mean`` (moving the mean by eps * v moves
  every patch token by eps * v: T times that mean, . v, is the derivative, of the same sign), the patch grid for
  ``grid`` (then the flattening above).
- Significance. Paper 3.5: "we perform a two-sided t-test of the TCAV scores based on these multiple samples. If we
  can reject the null hypothesis of a TCAV score of 0.5 [...] Note that we also perform a Bonferroni correction for
  our hypotheses (at p < alpha/m with m = 2)". tensorflow/tcav (utils.py ``print_results`` line 219 and
  utils_plot.py ``plot_results`` line 96): ``scipy.stats.ttest_ind(random_i_ups, i_ups)``, i.e. a two-sided STUDENT
  two-sample t-test (equal variances, scipy's default) of the concept's run scores against the scores of all
  random-vs-random CAVs, significant when ``p <= min_p_val`` (default 0.05), with no correction. The paper's "null of
  0.5" is what the code tests in practice: the ordered random pairs make the null sample symmetric about 0.5.
  Our ``test="student"`` is that test (``"welch"``: equal_var=False). For the threshold, the code and the paper
  differ: ``correction="paper"`` is the paper's p < alpha / 2 (our reference protocol's default: the paper states
  it as the protocol all its results passed; the code's helpers leave the threshold to the caller),
  ``"none"`` the code's p < alpha (we compare strictly, the code with <=), ``"concepts"`` Bonferroni over every
  concept tested for the class and layer (the strict protocol).
- This module's function defaults (Welch, Bonferroni over concepts, logit) are the strict protocol's, kept for the
  callers that rely on them; the pipeline passes ``config.cav_protocol``'s settings (default: reference).
"""
from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..activations import eval_mode, forward_with_capture, model_device
from ..errors import UserError
from ..models import get_layer
from ..tokens import resolve_mode, token_features as reduce_tokens, token_layout
from .cav import select_concepts

TCAV_FLATTENINGS = ("flatten", "avg_pool")
GRADIENTS = ("logit", "loss")
TESTS = ("student", "welch")
CORRECTIONS = ("paper", "none", "concepts")
PAPER_M = 2  # Kim et al. 2018 section 3.5: Bonferroni "at p < alpha/m with m = 2"


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
    gradient: str = "logit",
    token_features: str = "auto",
) -> torch.Tensor:
    """d z_target / d A at `layer` for each image, [N, D] reshaped the way the CAVs were fitted.

    ``gradient="loss"``: minus d CE(z, target) / d A instead (tensorflow/tcav's loss, sign flipped so that
    a positive directional derivative still means towards the class). One forward and one
    ``torch.autograd.grad`` of the summed per-image targets (each image gets its own gradient). The part
    of the network before the layer runs without autograd; no parameter gradient is computed and
    parameters need not require grad. The model is used in its current mode. A transformer's token gradient
    is reduced by ``token_features`` as :func:`lottery_xai.activations.save_activations` reduces the tokens.
    """
    _check_flattening(flattening)
    layout = token_layout(model)
    resolve_mode(token_features, layout)
    if gradient not in GRADIENTS:
        raise UserError(f"TCAV gradient '{gradient}' is unknown; use one of {', '.join(GRADIENTS)}")
    n = images.shape[0]
    targets = torch.as_tensor(targets, dtype=torch.long, device=images.device)
    if targets.dim() == 0:
        targets = targets.expand(n)
    if targets.shape != (n,):
        raise UserError(f"{targets.shape[0]} targets for {n} images")
    # the layer's output as a fresh leaf: autograd stops there (a module run twice: its first call)
    activation, logits = forward_with_capture(model, images, layer, repeat="first")
    if gradient == "logit":
        selected = logits.gather(1, targets[:, None]).sum()
    else:  # minus the summed per-image losses: each image's gradient is minus that of its own loss
        selected = -F.cross_entropy(logits.float(), targets, reduction="sum")
    (grad,) = torch.autograd.grad(selected, activation)
    grad = reduce_tokens(grad, layout, token_features, layer)
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
    gradient: str = "logit",
    token_features: str = "auto",
) -> dict[int, np.ndarray]:
    """One pass over a loader of dict batches (``image``, ``label``): each image of a requested class gets
    the gradient of its own class logit (or minus that of its loss, ``gradient="loss"``). Returns
    {class: float32 numpy [n_class, D]} in loader order, at most `max_images` per class. Runs in eval
    mode on `device` (default: where the model is)."""
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
            grads = layer_gradients(model, layer, images, kept_labels.to(device), flattening, gradient,
                                    token_features)
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
    gradient: str = "logit",
    token_features: str = "auto",
) -> np.ndarray:
    """Gradients of class `class_index`'s logit (or minus its loss) at `layer` for all of the class's images.

    `loader_or_images` is either an image tensor [n, 3, H, W] (all taken as the class's images, run in
    batches of `batch_size`) or a loader of dict batches (images whose ``label`` is the class are used).
    Returns float32 numpy [n, D] on the CPU (one transfer at the end).
    """
    if isinstance(loader_or_images, torch.Tensor):
        images = loader_or_images[:max_images] if max_images is not None else loader_or_images
        batches = [{"image": chunk, "label": torch.full((len(chunk),), class_index)}
                   for chunk in images.split(batch_size)]
        return gradients_by_class(model, layer, batches, [class_index], flattening=flattening, device=device,
                                  gradient=gradient, token_features=token_features)[class_index]
    return gradients_by_class(model, layer, loader_or_images, [class_index], flattening=flattening,
                              device=device, max_images=max_images, gradient=gradient,
                              token_features=token_features)[class_index]


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


def _two_sided_p(a: np.ndarray, b: np.ndarray, test: str = "welch") -> float:
    """Two-sided two-sample t-test p-value (scipy.stats.ttest_ind, equal_var for ``student``); 1.0 where it
    cannot be computed (NaN, < 2 values, identical constants)."""
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return 1.0
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        # both constant: no variance to test against; different constants are as far apart as it gets
        return 1.0 if a[0] == b[0] else 0.0
    p = stats.ttest_ind(a, b, equal_var=test == "student").pvalue
    return 1.0 if not np.isfinite(p) else float(p)


def significance_threshold(alpha: float, correction: str, n_tested: int) -> float:
    """The p-value a test must stay below: ``paper`` alpha / 2 (Kim et al. 2018, m = 2), ``none`` alpha,
    ``concepts`` alpha / n_tested (Bonferroni over the concepts tested)."""
    if correction not in CORRECTIONS:
        raise UserError(f"TCAV correction '{correction}' is unknown; use one of {', '.join(CORRECTIONS)}")
    return {"paper": alpha / PAPER_M, "none": alpha, "concepts": alpha / max(n_tested, 1)}[correction]


def tcav_significance(
    concept_scores: np.ndarray,
    random_scores: np.ndarray,
    *,
    alpha: float = 0.05,
    bonferroni: bool = True,
    concept_names: Sequence[str] | None = None,
    test: str = "welch",
    correction: str | None = None,
) -> pd.DataFrame:
    """Per concept: tcav_mean, tcav_std, random_mean, p_value (two-sided t-test of the concept's run scores
    [n_concepts, n_runs] against the random scores [n_random]: ``test`` ``welch`` or ``student``) and
    `significant` (p < the `significance_threshold` of ``correction``: ``concepts``, alpha / number of
    concepts tested; ``paper``, alpha / 2; ``none``, alpha). ``correction=None`` keeps the older switch:
    ``concepts`` with `bonferroni`, else ``none``. NaN runs are ignored; a concept with fewer than 2 valid
    runs is not tested (p = 1, not significant, not counted by the correction over concepts)."""
    if test not in TESTS:
        raise UserError(f"TCAV test '{test}' is unknown; use one of {', '.join(TESTS)}")
    correction = correction or ("concepts" if bonferroni else "none")
    concept_scores = np.atleast_2d(np.asarray(concept_scores, dtype=np.float64))
    random_scores = np.asarray(random_scores, dtype=np.float64).ravel()
    names = list(concept_names) if concept_names is not None else list(range(len(concept_scores)))
    if len(names) != len(concept_scores):
        raise UserError(f"{len(names)} concept names for {len(concept_scores)} rows of scores")
    valid = (~np.isnan(concept_scores)).sum(axis=1)
    threshold = significance_threshold(alpha, correction, int((valid >= 2).sum()))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nan-means of all-NaN concepts are expected
        random_mean = float(np.nanmean(random_scores)) if (~np.isnan(random_scores)).any() else np.nan
        for name, scores, k in zip(names, concept_scores, valid):
            p = _two_sided_p(scores, random_scores, test)
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
    test: str = "welch",
    correction: str | None = None,
) -> pd.DataFrame:
    """TCAV for every class in `grads_by_class` ({class name: gradients [n, D]}) and every concept of a
    `fit_all_cavs` result (or the `concept_names` listed; None or ["all"] for all), with significance
    against the result's random CAVs (`tcav_significance`'s ``test`` and ``correction``, per class).
    Columns: class, concept, tcav_mean, tcav_std, random_mean, p_value, significant, n_images."""
    chosen = select_concepts(cav_result, list(concept_names) if concept_names is not None else None)
    names = [cav_result["concepts"][i] for i in chosen]
    cavs = np.asarray(cav_result["cavs"])[chosen]
    random_cavs = np.asarray(cav_result["random_cavs"])
    tables = []
    for class_name, grads in grads_by_class.items():
        if len(grads) == 0:
            raise UserError(f"class '{class_name}' has no images to score; check labels_for_tcav and tcav.splits")
        table = tcav_significance(tcav_scores(grads, cavs), tcav_scores(grads, random_cavs),
                                  alpha=alpha, bonferroni=bonferroni, concept_names=names, test=test,
                                  correction=correction)
        table.insert(0, "class", class_name)
        table["n_images"] = len(grads)
        tables.append(table)
    columns = ["class", "concept", "tcav_mean", "tcav_std", "random_mean", "p_value", "significant", "n_images"]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
