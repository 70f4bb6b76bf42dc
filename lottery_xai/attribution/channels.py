"""How per-channel input attributions [N, C, H, W] become one map per image [N, H, W].

The input-space methods (gradients, the noise tunnel, guided backprop, LRP) attribute every colour
channel of every pixel; the maps of this package hold one value per pixel. The references reduce
the channels differently, so each method names its default:

- ``abs_sum``: sum over channels of |a|. PAIR's saliency library (``VisualizeImageGrayscale``: the
  SmoothGrad paper's figures, Adebayo et al.'s sanity checks' ``abs_grayscale_norm``) before its
  99th-percentile clip, which is a display step and is not applied here.
- ``sum``: the signed sum over channels (relevance is additive: LRP's conservation; the sanity
  checks' ``diverging_norm``; integrated gradients here).
- ``abs_max``: max over channels of |a| (Simonyan et al. 2014; `saliency`).
- ``none``: the per-channel attributions [N, C, H, W] unchanged (for tests and for the noise tunnel's
  per-channel statistics).
"""
from __future__ import annotations

import torch

from lottery_xai.errors import UserError

CHANNEL_REDUCTIONS = ("abs_sum", "sum", "abs_max", "none")


def check_channels(channels: str) -> None:
    if channels not in CHANNEL_REDUCTIONS:
        raise UserError(f"channels must be one of {', '.join(CHANNEL_REDUCTIONS)}, got {channels!r}")


def reduce_channels(attributions: torch.Tensor, channels: str) -> torch.Tensor:
    """[N, C, H, W] -> [N, H, W] by `channels` (see the module); 'none' returns the input. float32."""
    check_channels(channels)
    attributions = attributions.float()
    if channels == "none" or attributions.dim() == 3:
        return attributions
    if channels == "abs_sum":
        return attributions.abs().sum(dim=1)
    if channels == "sum":
        return attributions.sum(dim=1)
    return attributions.abs().amax(dim=1)
