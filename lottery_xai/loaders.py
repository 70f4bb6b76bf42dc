"""Data loaders built the same way by every step: seeded shuffling, pinned memory on CUDA."""
from __future__ import annotations

from enum import IntEnum, unique

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .config import Config


@unique  # two purposes sharing a value would draw the same random numbers
class SeedPurpose(IntEnum):
    """What a derived seed is for: ``derived_seed(cfg.seed, SeedPurpose.PRUNE, r)``. The values are
    part of every run's results: never renumber one, only add new ones."""
    AUGMENT = 1          # step 1: the global generator of round r (augmentation draws)
    PRUNE = 2            # step 1: random pruning / tie-breaking of round r's masks
    REINIT = 3           # step 1: the reinit control's fresh weights of round r
    DATA_ORDER = 4       # step 1: the data order of round r
    CAV = 6              # step 4: CAV runs and random sets of round r
    HEATMAPS = 7         # step 6: the random baseline (and other seeded maps) of round r
    ROAR_RANK_TIES = 17  # ROAR: tie-breaking permutation of the pixel ranks (round, split)
    ROAR_MAPS = 19       # ROAR: seeded maps of a batch (round, split, start)
    ROAR_INIT = 23       # ROAR: a dense retrain's fresh weights (seed index)
    ROAR_ORDER = 29      # ROAR: the retrain's batch order and flips (seed index)
    ROAR_TRAIN = 31      # ROAR: the retrain's global generator (seed index)
    TRANSFORMS = 37      # step 7: random transformations of the consistency check of round r
    UNLABELED = 41       # step 1: which training images are used without their labels (every round alike)
    ACE_DISCOVERY = 43   # ACE and the occlusion study: which train images of each class are used
    ACE_KMEANS = 47      # ACE: k-means of class c's patches
    ACE_RANDOM_SETS = 53  # ACE: the random patch sets of class c
    ACE_CAV_FITS = 59    # ACE: the CAV fits of round r
    OCCLUSION_SQUARES = 61  # the occlusion study: the squares (the same every round)
    REPORT_VERDICTS = 67  # the report: the verdicts' paired bootstrap (sparsest round)
    HUMAN_STUDY = 71     # the human study: its draws (image choice, side order, ties, task order, simulation)
    SANITY = 73          # sanity checks: the fresh weights of the randomised layers of round r
    STATS_BOOTSTRAP = 79  # step 7 and main_aggregate.py: the bootstrap over images of round r
    METRICS = 83         # step 7: tie-breaking permutations of the rankings (round, method) and the region noise
    IG_NOISE = 89        # integrated gradients' uniform-noise baselines (below a map seed)


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


def subset(dataset: Dataset, indices) -> Subset:
    return Subset(dataset, list(indices))
