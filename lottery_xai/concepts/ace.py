"""ACE (Ghorbani et al. 2019): concepts a network found itself, from superpixels of a class's images.

Pure functions (no run directory, no model loading): the step ``lottery_xai.pipeline.ace`` strings them
together. The method, as the original does it, with the differences named:

- Superpixels: scikit-image SLIC at several resolutions (``n_segments`` 15, 50, 80; compactness 20,
  sigma 1). A segment of at most ``min_fraction`` (0.1 %) of the image is dropped, and so is one whose
  Jaccard overlap with a segment kept at an earlier (coarser) resolution exceeds ``max_jaccard`` (0.5).
  Every label is considered (the original's ``range(segments.max())`` skips the last one).
- A patch is the segment's bounding box (both ends included; the original drops the last row and
  column) with the pixels outside the segment set to ``fill`` (117/255), resized bilinearly to the
  image size (the original resizes with PIL bicubic), all patches of a batch in one operator.
- k-means (scikit-learn, seeded) on the spatially averaged activations; a cluster with more than
  ``min_patches`` patches is kept by ACE's rules (:data:`CLUSTER_RULES`), and its ``max_patches``
  patches closest to the centre form the concept.
- Significance (:func:`concept_significance`), by default as ACE's ``test_and_remove_concepts`` does it:
  ``do_statistical_testings`` is ``scipy.stats.ttest_rel(concept[:m], random[:m])`` (paired, two-sided)
  of the concept's TCAV scores (its CAV against random set i, i = 0 .. num_random_exp - 1) against the
  scores of the random concept ``random_discovery``'s CAVs (a further random image set against the same
  random set i), and a concept with ``p > 0.01`` is removed: no correction for the number of concepts.
  Our stricter option: Welch's t-test (``ttest_ind(equal_var=False)``) with Bonferroni over the class's
  concepts; either test can be one-sided (concept > random).
- Concepts of two rounds are matched one to one (Hungarian assignment) by the Jaccard overlap of
  their patches or by the cosine of their mean CAVs.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import optimize, stats
from skimage.segmentation import slic
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from ..crops import resized_crop
from ..errors import UserError
from .patch_grid import snap_to_patches

# ACE's rules (amiratag/ACE ace.py, ConceptDiscovery.discover_concepts), for a cluster with more than
# min_imgs patches (``len(label_idxs) > self.min_imgs``): n_images = len(concept_image_numbers), the
# distinct discovery images among ALL the cluster's patches; n_patches = len(label_idxs), the cluster's
# size; n_discovery = discovery_size = len(self.discovery_images). Kept when one holds:
#   highly_common_concept                                   n_images > 0.5 * n_patches
#   cond2 = mildly_common and mildly_populated              n_images > 0.25 * n_patches and n_images > 0.25 * n_discovery
#   cond3 = non_common and highly_populated                 n_images > 0.1 * n_patches and n_images > 0.5 * n_discovery
CLUSTER_RULES = {
    "highly_common": lambda n_images, n_patches, n_discovery: n_images > 0.5 * n_patches,
    "common_and_populated": lambda n_images, n_patches, n_discovery: (n_images > 0.25 * n_patches
                                                                        and n_images > 0.25 * n_discovery),
    "highly_populated": lambda n_images, n_patches, n_discovery: (n_images > 0.1 * n_patches
                                                                    and n_images > 0.5 * n_discovery),
}
TESTS = ("paired", "welch")
SIDES = ("two", "one")
CORRECTIONS = ("none", "bonferroni")


# ---------------------------------------------------------------- discovery images

def discovery_indices(labels: np.ndarray, classes: Sequence[int], per_class: int, seed: int) -> dict[int, np.ndarray]:
    """For each class, ``per_class`` positions of ``labels`` (a split's labels) drawn without replacement
    by a generator seeded from ``seed`` and the class (all of the class's images when it has fewer),
    sorted. The same arguments give the same images, so every round and step sees the same ones."""
    labels = np.asarray(labels)
    out = {}
    for c in classes:
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, int(c)])
        take = min(per_class, len(members))
        out[int(c)] = np.sort(rng.choice(members, size=take, replace=False)) if take else members
    return out


# ---------------------------------------------------------------- superpixels and patches

def segment_image(image: np.ndarray, n_segments: Sequence[int] = (15, 50, 80), *, compactness: float = 20.0,
                  sigma: float = 1.0, min_fraction: float = 0.001, max_jaccard: float = 0.5,
                  patch: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SLIC superpixels of one RGB image [H, W, 3] (floats in [0, 1]) at every resolution.

    ``patch`` > 0 (a transformer's patch side, ``ace.superpixels: patch_grid``): each label map is snapped to
    the token grid first (:func:`lottery_xai.concepts.patch_grid.snap_to_patches`), then filtered as below.

    Returns (label maps [R, H, W] int16, kept [S, 2] as (resolution, label)): a segment is kept when it
    covers more than ``min_fraction`` of the image and its Jaccard overlap with every segment kept at an
    earlier resolution is at most ``max_jaccard``. The overlaps are one matrix product per resolution.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"segment_image expects an RGB image [H, W, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    maps = np.stack([slic(image, n_segments=int(n), compactness=compactness, sigma=sigma, start_label=0,
                          channel_axis=-1) for n in n_segments]).astype(np.int16)
    if patch:
        maps = np.stack([snap_to_patches(m, patch) for m in maps])
    kept_masks = np.zeros((0, h * w), dtype=np.float32)
    kept = []
    for res, labels in enumerate(maps):
        ids = np.unique(labels)
        masks = (labels.reshape(1, -1) == ids[:, None]).astype(np.float32)  # [n_labels, HW]
        area = masks.sum(1)
        ok = area > min_fraction * h * w
        if len(kept_masks):
            inter = masks @ kept_masks.T
            union = area[:, None] + kept_masks.sum(1)[None, :] - inter
            ok &= ~((inter / np.maximum(union, 1)) > max_jaccard).any(1)
        kept += [(res, int(i)) for i in ids[ok]]
        kept_masks = np.concatenate([kept_masks, masks[ok]])
    return maps, np.asarray(kept, dtype=np.int64).reshape(-1, 2)


def segment_masks(label_maps: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Boolean masks [S, H, W] of the kept (resolution, label) segments of one image's label maps."""
    kept = np.asarray(kept).reshape(-1, 2)
    return label_maps[kept[:, 0]] == kept[:, 1][:, None, None]


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Bounding boxes (top, left, height, width) [S] of non-empty boolean masks [S, H, W], ends included."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    if not bool(rows.any(dim=1).all()):
        raise UserError("an empty segment has no patch")
    idx_r = torch.arange(masks.shape[1], device=masks.device)
    idx_c = torch.arange(masks.shape[2], device=masks.device)
    big = masks.shape[1] + masks.shape[2]
    top = torch.where(rows, idx_r, big).amin(1)
    bottom = torch.where(rows, idx_r, -1).amax(1)
    left = torch.where(cols, idx_c, big).amin(1)
    right = torch.where(cols, idx_c, -1).amax(1)
    return top, left, bottom - top + 1, right - left + 1


def make_patches(images: torch.Tensor, masks: torch.Tensor, owner: torch.Tensor, fill: float = 117 / 255) -> torch.Tensor:
    """Patches [S, 3, H, W] of segments ``masks`` [S, H, W] of ``images`` [B, 3, H, W] (values in [0, 1];
    ``owner`` [S] says whose): the pixels outside the segment set to ``fill``, the segment's bounding box
    cropped and resized to the image size, every patch through one batched bilinear operator."""
    masks = masks.to(images.device, torch.bool)
    owner = torch.as_tensor(owner, device=images.device, dtype=torch.long)
    filled = torch.where(masks[:, None], images[owner], torch.full((), float(fill), dtype=images.dtype,
                                                                   device=images.device))
    top, left, height, width = mask_boxes(masks)
    return resized_crop(filled, top, left, height, width)


def patch_locations(masks: torch.Tensor, boxes: torch.Tensor, parts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Where each patch lies on its image: (share of the segment's pixels inside the object box [S],
    the part nearest to the segment's centroid [S], -1 where most of the segment is outside the box or
    no part is visible). ``boxes`` [S, 4] (x0, y0, x1, y1) and ``parts`` [S, P, 3] (x, y, visible) in
    pixel coordinates of the segment's image (pixel column j spans [j, j + 1))."""
    masks = masks.to(torch.float32)
    s, h, w = masks.shape
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    inside = (((xs[None, None, :] >= boxes[:, 0, None, None]) & (xs[None, None, :] <= boxes[:, 2, None, None]))
              & ((ys[None, :, None] >= boxes[:, 1, None, None]) & (ys[None, :, None] <= boxes[:, 3, None, None])))
    area = masks.sum((1, 2)).clamp(min=1)
    in_box = (masks * inside).sum((1, 2)) / area
    cy = (masks * ys[None, :, None]).sum((1, 2)) / area
    cx = (masks * xs[None, None, :]).sum((1, 2)) / area
    parts = torch.as_tensor(parts, dtype=torch.float32)
    if parts.shape[1] == 0:
        return in_box.numpy(), np.full(s, -1, dtype=np.int64)
    dist = (parts[..., 0] - cx[:, None]) ** 2 + (parts[..., 1] - cy[:, None]) ** 2
    dist = torch.where(parts[..., 2] > 0, dist, torch.inf)
    nearest = dist.argmin(1)
    part = torch.where((in_box > 0.5) & torch.isfinite(dist.amin(1)), nearest, -1)
    return in_box.numpy(), part.numpy().astype(np.int64)


# ---------------------------------------------------------------- clustering and ACE's rules

def cluster_patches(acts: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means (scikit-learn, 10 starts) of activations [n, D]: (cluster of each row [n], its
    distance to that cluster's centre [n]). At most one cluster per row."""
    acts = np.asarray(acts, dtype=np.float64)
    k = max(1, min(int(n_clusters), len(acts)))
    with threadpool_limits(limits=1):  # a few hundred rows: threads cost more than they save (4x on 2 cores)
        km = KMeans(n_clusters=k, n_init=10, random_state=int(seed) % (2**32)).fit(acts)
    distance = np.linalg.norm(acts - km.cluster_centers_[km.labels_], axis=1)
    return km.labels_.astype(np.int64), distance


def kept_clusters(assignment: np.ndarray, patch_image: np.ndarray, n_discovery: int,
                  rules: Sequence[str] = tuple(CLUSTER_RULES), min_patches: int = 20) -> list[int]:
    """The clusters that form concepts: more than ``min_patches`` patches, and one of ``rules`` holds
    (see :data:`CLUSTER_RULES`). Ordered by the number of distinct images, then the number of patches
    (most first), then the cluster id."""
    unknown = [r for r in rules if r not in CLUSTER_RULES]
    if unknown:
        raise UserError(f"unknown cluster rule {unknown[0]!r}; use some of {', '.join(CLUSTER_RULES)}")
    assignment, patch_image = np.asarray(assignment), np.asarray(patch_image)
    found = []
    for cluster in np.unique(assignment):
        members = assignment == cluster
        n_patches, n_images = int(members.sum()), len(np.unique(patch_image[members]))
        if n_patches > min_patches and any(CLUSTER_RULES[r](n_images, n_patches, n_discovery) for r in rules):
            found.append((-n_images, -n_patches, int(cluster)))
    return [c for *_, c in sorted(found)]


def closest_members(assignment: np.ndarray, distance: np.ndarray, cluster: int, count: int) -> np.ndarray:
    """The ``count`` rows of ``cluster`` closest to its centre (ties by row), closest first."""
    rows = np.flatnonzero(np.asarray(assignment) == cluster)
    order = np.lexsort((rows, np.asarray(distance)[rows]))
    return rows[order][:count]


def draw_random_sets(pool: np.ndarray, n_sets: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n_sets`` random subsets [n_sets, size] of ``pool`` (each without replacement, sorted)."""
    pool = np.asarray(pool)
    size = min(int(size), len(pool))
    if size < 4:
        raise UserError(f"{len(pool)} candidates are too few for random sets (need 4)")
    return np.stack([np.sort(rng.choice(pool, size=size, replace=False)) for _ in range(n_sets)])


# ---------------------------------------------------------------- significance

def _p_value(concept: np.ndarray, random: np.ndarray, test: str, sided: str) -> float:
    a, b = np.asarray(concept, dtype=np.float64), np.asarray(random, dtype=np.float64)
    alternative = "greater" if sided == "one" else "two-sided"
    if test == "paired":
        m = min(len(a), len(b))
        a, b = a[:m], b[:m]
        keep = ~(np.isnan(a) | np.isnan(b))
        a, b = a[keep], b[keep]
        if len(a) < 2:
            return 1.0
        diff = a - b
        if np.ptp(diff) == 0:  # no variance: a constant difference is as clear as it gets
            if diff[0] == 0 or (sided == "one" and diff[0] < 0):
                return 1.0
            return 0.0
        p = stats.ttest_rel(a, b, alternative=alternative).pvalue
    else:
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        if len(a) < 2 or len(b) < 2:
            return 1.0
        if np.ptp(a) == 0 and np.ptp(b) == 0:
            if a[0] == b[0] or (sided == "one" and a[0] < b[0]):
                return 1.0
            return 0.0
        p = stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue
    return 1.0 if not np.isfinite(p) else float(p)


def concept_significance(concept_scores: np.ndarray, random_scores: np.ndarray, *, alpha: float = 0.01,
                         test: str = "paired", sided: str = "two", correction: str = "none") -> pd.DataFrame:
    """Per concept (rows of ``concept_scores`` [n_concepts, n_runs]): tcav_mean, tcav_std, random_mean,
    p_value and significant, testing the runs' TCAV scores against ``random_scores`` [n_random].

    The defaults are amiratag/ACE's (``do_statistical_testings`` and ``test_and_remove_concepts``):
    ``paired`` is ``scipy.stats.ttest_rel`` of run i against random run i (both cut to the shorter
    length, as ACE does; pairs with a NaN dropped), two-sided, and a concept is significant when
    ``p <= alpha`` (ACE removes those with ``p > 0.01``), no correction. ``welch`` is
    ``scipy.stats.ttest_ind(equal_var=False)``; ``bonferroni`` makes it ``p < alpha / the number of
    concepts tested`` (step 5's rule); ``sided="one"`` asks whether the concept scores higher than random.
    Where the test has no variance (every paired difference, or both samples, constant) a difference of
    0 (or one against the one-sided alternative) gives p = 1 and any other p = 0, where scipy gives NaN
    (which ACE's ``p > 0.01`` would keep)."""
    if test not in TESTS or sided not in SIDES or correction not in CORRECTIONS:
        raise UserError(f"significance test {test!r}/{sided!r}/{correction!r} is unknown; use test {TESTS}, "
                        f"sided {SIDES} and correction {CORRECTIONS}")
    concept_scores = np.atleast_2d(np.asarray(concept_scores, dtype=np.float64))
    random_scores = np.asarray(random_scores, dtype=np.float64).ravel()
    valid = (~np.isnan(concept_scores)).sum(axis=1)
    n_tested = max(int((valid >= 2).sum()), 1)
    if correction == "none":
        passes = lambda p: p <= alpha  # noqa: E731  (ACE: removed when p > 0.01)
    else:
        passes = lambda p: p < alpha / n_tested  # noqa: E731
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        random_mean = float(np.nanmean(random_scores)) if (~np.isnan(random_scores)).any() else np.nan
        for i, (scores, k) in enumerate(zip(concept_scores, valid)):
            p = _p_value(scores, random_scores, test, sided)
            rows.append(dict(concept=i, tcav_mean=float(np.nanmean(scores)) if k else np.nan,
                             tcav_std=float(np.nanstd(scores, ddof=1)) if k >= 2 else (0.0 if k else np.nan),
                             random_mean=random_mean, p_value=p, significant=bool(k >= 2 and passes(p))))
    return pd.DataFrame(rows, columns=["concept", "tcav_mean", "tcav_std", "random_mean", "p_value", "significant"])


# ---------------------------------------------------------------- concepts across rounds

def unit_mean(cavs: np.ndarray) -> np.ndarray:
    """The unit mean direction [..., D] of CAV runs [..., n_runs, D] (NaN runs ignored; NaN if none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(np.asarray(cavs, dtype=np.float64), axis=-2)
    norm = np.linalg.norm(mean, axis=-1, keepdims=True)
    return np.where(norm > 0, mean / np.where(norm > 0, norm, 1), np.nan)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity [n_a, n_b] of the rows of two [n, D] arrays (NaN rows give NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a / np.where(na > 0, na, np.nan)) @ (b / np.where(nb > 0, nb, np.nan)).T


def jaccard_matrix(sets_a: Sequence[np.ndarray], sets_b: Sequence[np.ndarray], universe: int) -> np.ndarray:
    """Jaccard overlap [n_a, n_b] of index sets (each a subset of range(universe)), one matrix product."""
    def indicator(sets):
        m = np.zeros((len(sets), universe), dtype=np.float32)
        for i, s in enumerate(sets):
            m[i, np.asarray(s, dtype=np.int64)] = 1
        return m

    a, b = indicator(sets_a), indicator(sets_b)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_concepts(score: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one matches (row, column, score) maximising the total ``score`` [n_rows, n_cols]
    (Hungarian assignment; NaN scores never match), kept when the score reaches ``threshold``."""
    score = np.asarray(score, dtype=np.float64)
    if score.size == 0:
        return []
    filled = np.where(np.isnan(score), -1e9, score)
    rows, cols = optimize.linear_sum_assignment(filled, maximize=True)
    return [(int(r), int(c), float(score[r, c])) for r, c in zip(rows, cols)
            if np.isfinite(score[r, c]) and score[r, c] >= threshold]
