"""Data loaders built the same way by every step (seeded shuffling, pinned memory on CUDA), and the
views of a training split that step 1 trains on (labels hidden, the evaluation view beside the augmented one)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import Config


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


IGNORED_LABEL = -100  # cross-entropy's ignore_index: an image whose label is hidden


class HideLabels(Dataset):
    """A training split in which a seeded share of the images is unlabelled (label ``IGNORED_LABEL``):
    cross-entropy skips them, and a loss that needs no label (CGC's pseudo-labels) still uses them."""

    def __init__(self, dataset: Dataset, fraction: float, seed: int):
        self.dataset = dataset
        n = len(dataset)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        self.hidden = torch.zeros(n, dtype=torch.bool)
        self.hidden[order[:int(round(fraction * n))]] = True

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if self.hidden[index]:
            item = {**item, "label": torch.as_tensor(IGNORED_LABEL, dtype=torch.as_tensor(item["label"]).dtype)}
        return item

    def __getattr__(self, name):  # set_epoch, labels, ... of the wrapped split
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class WithOriginalView(Dataset):
    """A training split whose items also carry ``original``: the same image through the evaluation
    transform (``views`` is the split built without augmentation, same order), beside the augmented
    ``image``. CGC makes its maps consistent on the original view and its crop."""

    def __init__(self, dataset: Dataset, views: Dataset):
        if len(dataset) != len(views):
            raise ValueError(f"the two views of a split differ in length ({len(dataset)} != {len(views)})")
        self.dataset, self.views = dataset, views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], "original": self.views[index]["image"]}

    def __getattr__(self, name):  # set_epoch, labels, ... of the wrapped split
        if name in ("dataset", "views"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
