"""Complexity: how concentrated a map is (Quantus's complexity family).

- Sparseness (Chalasani et al. 2020, "Concise Explanations of Neural Networks using Adversarial
  Training"): the Gini index of the map's absolute values; 1 when one pixel holds everything, 0 when
  all are equal. Higher is better (a concise map).
- Complexity (Bhatt et al. 2020, "Evaluating and Aggregating Feature-based Model Explanations"): the
  Shannon entropy of the fractional contributions |a_i| / sum |a|; lower is better.

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
