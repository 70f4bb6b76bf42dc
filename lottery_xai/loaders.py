"""Data loaders built the same way by every step: seeded shuffling, pinned memory on CUDA."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .config import Config


def derived_seed(seed: int, *parts: int) -> int:
    """A seed for one purpose (e.g. round r, epoch e), stable across runs and resumes."""
    value = seed
    for p in parts:
        value = (value * 1_000_003 + int(p) + 7919) % (2**63 - 1)
    return value


def make_loader(dataset: Dataset, cfg: Config, device: torch.device, *, train: bool, seed: int = 0,
                sampler=None, batch_size: int | None = None) -> DataLoader:
    """A loader; training loaders shuffle with their own generator, so data order is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    bs = batch_size or (cfg.data.batch_size if train else cfg.data.eval_batch_size)
    return DataLoader(
        dataset,
        batch_size=bs,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=False,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
        generator=generator,
    )


def subset(dataset: Dataset, indices) -> Subset:
    return Subset(dataset, list(indices))
