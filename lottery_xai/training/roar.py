"""ROAR's measurement (Hooker et al. 2019): images with their top-ranked pixels replaced, batch-wise,
and a retrain on them scored on the modified test split. The step that walks rounds, methods,
percentages and seeds is :mod:`lottery_xai.pipeline.roar`."""
from __future__ import annotations

import math

import numpy as np
import torch

from .loop import evaluate, train_round

def rank_dtype(n_pixels: int):
    """uint16 ranks while they fit (up to 256 x 256 pixels), int32 beyond."""
    return np.uint16 if n_pixels <= np.iinfo(np.uint16).max + 1 else np.int32



def remove_top(images: torch.Tensor, ranks: torch.Tensor, percent: float, fill: torch.Tensor) -> torch.Tensor:
    """Images [N,C,H,W] with their top ``percent`` % pixels (by ``ranks`` [N,H*W]) set to ``fill`` [C]."""
    n, c, h, w = images.shape
    k = int(round(percent / 100.0 * h * w))
    if k == 0:
        return images
    removed = (ranks.reshape(n, 1, h, w) < k)
    return torch.where(removed, fill.to(images.dtype).view(1, c, 1, 1), images)


class RemovedBatches:
    """Batches ``{"image", "label"}`` of stored images with their top pixels removed, built batch-wise.

    ``images`` [N,C,H,W] and ``ranks`` [N,H*W] may be numpy memory maps (only one batch is in
    memory at a time). With ``shuffle`` the order is a fresh permutation each pass, drawn from a
    generator seeded with ``seed``; with ``flip`` each image is mirrored with probability 0.5.
    """

    def __init__(self, images, ranks, labels, percent: float, fill: torch.Tensor, batch_size: int, *,
                 shuffle: bool = False, flip: bool = False, seed: int = 0):
        self.images, self.ranks, self.labels = images, ranks, np.asarray(labels)
        self.percent, self.fill, self.batch_size = percent, torch.as_tensor(fill, dtype=torch.float32), batch_size
        self.shuffle, self.flip = shuffle, flip
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator).numpy() if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            idx = np.sort(order[start:start + self.batch_size])
            images = torch.from_numpy(np.asarray(self.images[idx], dtype=np.float32))
            ranks = torch.from_numpy(np.asarray(self.ranks[idx]).astype(np.int64))
            images = remove_top(images, ranks, self.percent, self.fill)
            if self.flip:
                mirrored = torch.rand(len(idx), generator=self.generator) < 0.5
                images = torch.where(mirrored.view(-1, 1, 1, 1), images.flip(-1), images)
            yield {"image": images, "label": torch.from_numpy(self.labels[idx].astype(np.int64))}


def retrain(model: torch.nn.Module, train: RemovedBatches, val: RemovedBatches, test: RemovedBatches, tc, device,
            num_classes: int, masks: dict | None = None, desc: str = "roar") -> dict:
    """Train ``model`` on the modified data, keep its best-val state, return its modified-test accuracy."""
    model = model.to(device)
    result = train_round(model, train, val, tc, masks or {}, device, num_classes, desc=desc)
    model.load_state_dict(result.best_state)
    scored = evaluate(model, test, device, num_classes, tc.amp)
    return {"test_acc": scored["acc"], "best_val_acc": result.best_val_acc, "n_test": scored["n"],
            "train_seconds": result.seconds}


