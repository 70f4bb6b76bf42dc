"""Complexity: how concentrated a map is (Quantus's complexity family).

- Sparseness (Chalasani et al. 2020, "Concise Explanations of Neural Networks using Adversarial
  Training"): the Gini index of the map's absolute values; 1 when one pixel holds everything, 0 when
  all are equal. Higher is better (a concise map).
- Complexity (Bhatt et al. 2020, "Evaluating and Aggregating Feature-based Model Explanations"): the
  Shannon entropy of the fractional contributions |a_i| / sum |a|; lower is better.
- Discrete entropy (Quantus's ``discrete_entropy``, the complexity that Efficient MPRT reads, Hedström et al.
  2024; see `lottery_xai.metrics.randomisation.efficient_mprt`): the Shannon entropy of the histogram of the
  map's signed values in 100 equal-width bins between its minimum and maximum (``np.histogram(a, bins=100)``
  then ``scipy.stats.entropy``); a constant map has entropy 0.

Reference code: Quantus 0.6 ``Sparseness`` and ``Complexity`` (``abs=True, normalise=True``), whose batched
``evaluate_batch`` computes, on the flattened map a (after |.| and ``normalise_by_max``):
Gini = sum_i (2 i - n - 1) a_(i) / (n sum_i a_(i)) with a sorted ascending after adding 1e-7 to every
entry, and entropy = -sum_i p_i log(p_i + 1e-12), p = a / sum |a| (natural log). Both are unchanged by
scaling the map, up to those epsilons. One difference: Quantus 0.6's ``normalise_by_max`` without
``normalise_axes`` divides by the largest |value| of the whole *batch*; here each map is divided by its
own (the documented intent, "normalise by the maximum absolute value of the explanation"), so a score does
not depend on the other maps of the batch. All-zero maps give NaN (0/0), as in Quantus.
"""
from __future__ import annotations

import torch

from lottery_xai.metrics.base import check_maps


def _absolute_normalised(maps: torch.Tensor) -> torch.Tensor:
    """|maps| flattened to [N, H*W] float64, each divided by its own max (all-zero maps stay 0)."""
    flat = check_maps(maps).to(torch.float64).flatten(1).abs()
    peak = flat.amax(dim=1, keepdim=True)
    return torch.where(peak > 0, flat / torch.where(peak > 0, peak, torch.ones_like(peak)), flat)


def sparseness(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of each map's absolute values, [N] float64 (Quantus ``Sparseness``; see the module)."""
    a = torch.sort(_absolute_normalised(maps) + 1e-7, dim=1).values
    n = a.shape[1]
    weights = 2 * torch.arange(1, n + 1, dtype=a.dtype, device=a.device) - n - 1
    return (weights * a).sum(dim=1) / (n * a.sum(dim=1))


def complexity(maps: torch.Tensor) -> torch.Tensor:
    """Entropy of each map's fractional absolute contributions, [N] float64 (Quantus ``Complexity``)."""
    a = _absolute_normalised(maps)
    p = a / a.sum(dim=1, keepdim=True)
    return -(p * torch.log(p + 1e-12)).sum(dim=1)


def discrete_entropy(maps: torch.Tensor, n_bins: int = 100) -> torch.Tensor:
    """Entropy (natural log) of each map's histogram in ``n_bins`` equal-width bins between its own minimum
    and maximum, [N] float64: Quantus 0.6 ``discrete_entropy``, i.e. ``scipy.stats.entropy(np.histogram(a,
    bins=n_bins)[0])`` per map, batched. The bin of a value follows ``np.histogram`` in the maps' dtype
    (the scaled index, then the correction against the ``np.linspace`` edges), so values on a bin edge land
    where NumPy puts them; a constant map falls in one bin (entropy 0)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    a = check_maps(maps).flatten(1)
    a = a if a.is_floating_point() else a.double()
    low, high = a.amin(dim=1, keepdim=True), a.amax(dim=1, keepdim=True)
    constant = high == low
    low, high = torch.where(constant, low - 0.5, low), torch.where(constant, high + 0.5, high)
    index = ((a - low) / (high - low) * n_bins).to(torch.int64).clamp(0, n_bins - 1)
    step = (high - low) / n_bins  # np.linspace(low, high, n_bins + 1): k * step + low, the last edge = high
    edges = torch.arange(n_bins + 1, dtype=a.dtype, device=a.device) * step + low
    edges[:, -1:] = high
    index = index - (a < edges.gather(1, index)).long()
    index = index + ((a >= edges.gather(1, index + 1)) & (index != n_bins - 1)).long()
    counts = torch.zeros(a.shape[0], n_bins, dtype=torch.float64, device=a.device)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    p = counts / counts.sum(dim=1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(dim=1)
