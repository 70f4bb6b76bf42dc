"""ROAD: remove and debias (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022).

MoRF / LeRF without retraining, but the removed pixels are not filled with a constant (which, as the
paper shows, leaks the removed pixels' positions and so the class): they are imputed by noisy linear
imputation. Each removed pixel takes the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct,
1/12 for the 4 diagonal neighbours, over the neighbours inside the image), removed neighbours being
unknowns too, so all removed pixels come from one sparse linear system per image (one right-hand side
per channel); then Gaussian noise of standard deviation 0.01 is added to the imputed values.

Reference code: tleemann/road_evaluation (``imputations.NoisyLinearImputer(noise=0.01)``,
``imputed_dataset.ImputedDataset``, ``road.run_road``, ``retraining.road_eval``) and its copy in
pytorch-grad-cam (``metrics/road.py``). road_evaluation ranks the pixels of the channel-summed,
min-max-rescaled map plus a fixed 1e-4 x N(0, 1) pattern (tie-breaking), removes the top
``int(H*W*p)`` pixels (MoRF) or all but the top ``int(H*W*p)`` (LeRF, whose ``th_p`` is the fraction
kept), imputes on the images before normalisation (the noise is 0.01 in pixel units) and reports the
accuracy and the mean softmax probability of the class predicted on the original image, for p in
10 %, ..., 90 %. pytorch-grad-cam's ``ROADMostRelevantFirst(percentile=q)`` instead removes the pixels at
or above ``np.percentile(map, q)`` (LeRF: of ``1 - map``), imputes the network's (normalised) input with
noise 0.01 in those units, and scores the change of ``target(output)``; ``ROADCombined`` is
(LeRF - MoRF) / 2 averaged over q = 10, ..., 90.

Here, per image and percentage p (the fraction *removed*, for both orders): `selection` 'rank' (default,
road_evaluation's counts: MoRF removes floor(H*W*p) pixels, LeRF H*W - floor(H*W*(1-p)); ties by this
package's policy ``ties``, see `lottery_xai.metrics.faithfulness`, instead of road_evaluation's 1e-4
noise) or 'threshold' (pytorch-grad-cam's percentile rule); imputation as above, solved exactly with
scipy's sparse LU in float64 on the CPU (the reference's ``spsolve``); the noise (`noise`: per-channel
standard deviations in the images' units; step 7 passes 0.01 / std, the reference's 0.01 in pixel
units) is drawn from a generator seeded with ``derived_seed(noise_seed, n)`` per image, one
``torch.randn((C, H*W))`` per (order, percentage) in that order, of which the removed pixels take their
values. Score: the softmax probability of the class predicted on the clean image (or `targets`); with
`labels`, also whether the copy is classified correctly (the paper's accuracy). The imputed copies go
through the network in batches of `batch_size`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lottery_xai.errors import UserError
from lottery_xai.metrics.base import check_eval_mode, check_maps
from lottery_xai.metrics.faithfulness import _clean_probability, _rank, tie_seeds

ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROAD_ORDERS = ("morf", "lerf")
ROAD_SELECTIONS = ("rank", "threshold")
# (row offset, column offset) -> weight of a neighbour in the imputation (road_evaluation's neighbors_weights)
NEIGHBOUR_WEIGHTS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                     ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The removed pixels of ``image`` [C, H, W] (``removed`` [H, W] bool) as the solution of road_evaluation's
    linear system: each removed value is the weighted mean of its neighbours inside the image (`NEIGHBOUR_WEIGHTS`).
    Returns [C, number removed] float64, in row-major order of the removed pixels. Needs at least one kept pixel."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    height, width = removed.shape
    flat_removed = removed.reshape(-1)
    unknown = np.flatnonzero(flat_removed)
    if len(unknown) == 0:
        return np.zeros((image.shape[0], 0))
    if len(unknown) == flat_removed.size:
        raise UserError("ROAD cannot impute an image with every pixel removed; use percentages below 1")
    values = image.reshape(image.shape[0], -1).astype(np.float64)
    index_of = np.full(flat_removed.size, -1, dtype=np.int64)
    index_of[unknown] = np.arange(len(unknown))
    rows, cols = unknown // width, unknown % width
    diagonal = np.zeros(len(unknown))
    rhs = np.zeros((len(unknown), image.shape[0]))
    entry_rows, entry_cols, entry_values = [], [], []
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
        r, c = rows + dy, cols + dx
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        neighbour = np.where(inside, r * width + c, 0)
        diagonal += np.where(inside, weight, 0.0)
        known = inside & ~flat_removed[neighbour]
        rhs[known] -= weight * values[:, neighbour[known]].T
        variable = inside & flat_removed[neighbour]
        entry_rows.append(np.flatnonzero(variable))
        entry_cols.append(index_of[neighbour[variable]])
        entry_values.append(np.full(int(variable.sum()), weight))
    entry_rows.append(np.arange(len(unknown)))
    entry_cols.append(np.arange(len(unknown)))
    entry_values.append(-diagonal)
    system = csc_matrix((np.concatenate(entry_values), (np.concatenate(entry_rows), np.concatenate(entry_cols))),
                        shape=(len(unknown), len(unknown)))
    solution = spsolve(system, rhs)
    return np.asarray(solution).reshape(len(unknown), -1).T


def _removal_masks(maps: torch.Tensor, p: float, order: str, selection: str, ties: str, seed: int) -> torch.Tensor:
    """Boolean [N, H, W]: the pixels removed at fraction `p` (see the module)."""
    n, height, width = maps.shape
    n_pixels = height * width
    if selection == "threshold":
        values = maps if order == "morf" else 1 - maps
        flat = values.reshape(n, -1)
        threshold = torch.quantile(flat.double(), 1 - p, dim=1, keepdim=True).to(flat.dtype)
        return ~(flat < threshold).view(n, height, width)
    if order == "morf":
        count = int(np.floor(n_pixels * p))
        rank = _rank(maps, True, ties, seed)
    else:
        count = n_pixels - int(np.floor(n_pixels * (1 - p)))
        rank = _rank(maps, False, ties, seed)
    return (rank < count).view(n, height, width)


@torch.no_grad()
def road(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    orders: Sequence[str] = ROAD_ORDERS,
    noise: float | Sequence[float] = 0.01,
    selection: str = "rank",
    targets: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    ties: str = "random",
    seed: int = 0,
    noise_seed: int = 0,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """ROAD MoRF / LeRF curves and their means per image (see the module).

    Returns, for each order o in `orders`: ``{o} [N]`` the mean over `percentages` of the target's softmax
    probability on the imputed copies (MoRF: lower is better; LeRF: higher is better), ``{o}_curve [N, P]``
    and, with `labels`, ``{o}_accuracy [N]`` (the share of percentages at which the copy is still classified
    as its label); with both orders ``combined [N]`` = (lerf - morf) / 2 (pytorch-grad-cam's ``ROADCombined``,
    whose clean-image terms cancel; higher is better); and ``probability [N]`` (clean), ``targets [N]``.
    """
    check_eval_mode(model)
    maps = check_maps(maps, images)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    orders = list(orders)
    if not orders or any(o not in ROAD_ORDERS for o in orders):
        raise UserError(f"orders must name morf and/or lerf, got {orders!r}")
    if selection not in ROAD_SELECTIONS:
        raise UserError(f"selection must be one of {', '.join(ROAD_SELECTIONS)}, got {selection!r}")
    percentages = [float(p) for p in percentages]
    if not percentages or any(not 0 < p < 1 for p in percentages):
        raise UserError(f"percentages must be fractions in (0, 1), got {percentages!r}")
    n_images, channels, height, width = images.shape
    device = images.device
    noise_t = torch.as_tensor(noise, dtype=torch.float64).flatten()
    if noise_t.numel() not in (1, channels) or bool((noise_t < 0).any()):
        raise UserError(f"noise needs 1 or {channels} non-negative per-channel values, got {noise!r}")
    noise_np = noise_t.expand(channels).numpy()[:, None]

    targets, clean = _clean_probability(model, images, targets, batch_size)
    image_np = images.detach().cpu().double().numpy()
    masks = {(o, k): _removal_masks(maps.to(device), p, o, selection, ties, seed).cpu().numpy()
             for o in orders for k, p in enumerate(percentages)}
    # image n's noise generator: seeded with derived_seed(noise_seed, n), as tie_seeds makes them
    generators = [torch.Generator().manual_seed(s) for s in tie_seeds(int(noise_seed), n_images)]
    copies, sources = [], []
    out: dict[str, torch.Tensor] = {}
    probabilities = torch.empty(len(orders), n_images, len(percentages), device=device)
    correct = torch.empty_like(probabilities, dtype=torch.bool)

    def flush():
        if not copies:
            return
        batch = torch.from_numpy(np.stack(copies)).to(device, images.dtype)
        index = torch.as_tensor(sources, device=device)
        logits = model(batch)
        probs = logits.float().softmax(dim=1).gather(1, targets[index[:, 1]][:, None])[:, 0]
        probabilities[index[:, 0], index[:, 1], index[:, 2]] = probs
        if labels is not None:
            correct[index[:, 0], index[:, 1], index[:, 2]] = logits.argmax(dim=1) == labels_t[index[:, 1]]
        copies.clear()
        sources.clear()

    labels_t = None if labels is None else torch.as_tensor(labels, device=device).long().reshape(-1)
    if labels_t is not None and labels_t.shape != (n_images,):
        raise UserError(f"labels must hold one class per image ({n_images}), got {tuple(labels_t.shape)}")
    for n in range(n_images):
        for o_index, order in enumerate(orders):
            for k in range(len(percentages)):
                removed = masks[(order, k)][n]
                draw = torch.randn((channels, height * width), generator=generators[n], dtype=torch.float64).numpy()
                imputed = image_np[n].reshape(channels, -1).copy()
                where = np.flatnonzero(removed.reshape(-1))
                imputed[:, where] = linear_imputation(image_np[n], removed) + noise_np * draw[:, where]
                copies.append(imputed.reshape(channels, height, width))
                sources.append((o_index, n, k))
                if len(copies) == batch_size:
                    flush()
    flush()
    for o_index, order in enumerate(orders):
        out[f"{order}_curve"] = probabilities[o_index]
        out[order] = probabilities[o_index].mean(dim=1)
        if labels is not None:
            out[f"{order}_accuracy"] = correct[o_index].float().mean(dim=1)
    if "morf" in out and "lerf" in out:
        out["combined"] = (out["lerf"] - out["morf"]) / 2
    out["probability"] = clean
    out["targets"] = targets
    return out
