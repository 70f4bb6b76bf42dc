"""The random attribution: the baseline every explanation metric must beat."""
from __future__ import annotations

import torch
from torch import nn

from lottery_xai.attribution._hooks import TargetsLike, check_images


def random_map(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Uniform [0, 1) noise maps [N, H, W] from `generator` (or a CPU generator seeded with `seed`).

    The model, targets and layer are not used; the signature matches the other methods.
    Drawn on the generator's device, so a seed gives the same maps on every device.
    """
    check_images(images)
    n, _, height, width = images.shape
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    maps = torch.rand((n, height, width), generator=generator, device=generator.device)
    return maps.to(images.device)
