"""What every dataset of image files shares: decoding, the in-memory decode cache and seeded augmentation.

:class:`ImageFileDataset` is the base of the CUB-layout set (:mod:`lottery_xai.data.cub`, which the
synthetic data also uses) and of ImageFolder trees (:mod:`lottery_xai.data.folder`). A subclass fills
``ids``, ``paths``, ``labels`` and ``image_dir`` and says what an image's box, parts and concept
vector are; the base decodes (optionally at reduced size), caches, augments and builds the item dict.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lottery_xai.data.transforms import apply_transform, resize_shorter_side
from lottery_xai.errors import UserError

# Above this many images a split is not cached in memory unless asked (real CUB train/test, Imagenette).
CACHE_MAX_IMAGES = 5000


def load_rgb(path: str | os.PathLike, load_size: int | None = None) -> tuple[torch.Tensor, tuple[float, float]]:
    """Decode an image as uint8 RGB [3, H, W] (grayscale, palette and RGBA become RGB).

    With `load_size`, JPEGs are decoded at a reduced scale whose shorter side
    stays >= load_size (much faster for big photos). Returns the image and the
    (x, y) scale from original to decoded pixel coordinates.
    """
    with Image.open(path) as image:
        width, height = image.size
        if load_size is not None and image.format == "JPEG":
            image.draft("RGB", (load_size, load_size))  # keeps both sides >= the request
        rgb = image.convert("RGB")
        array = np.asarray(rgb, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    return tensor, (array.shape[1] / width, array.shape[0] / height)


class ImageFileDataset(torch.utils.data.Dataset):
    """One split of image files; items are the package's dicts (see :mod:`lottery_xai.data`).

    Subclasses set ``image_dir``, ``ids`` (int64), ``paths`` (relative to ``image_dir``), ``labels``
    (int64), ``read_fix`` (what to do when an image cannot be read) and implement
    :meth:`annotations` and :meth:`concepts_of`, then call :meth:`fill_cache`."""

    image_dir: Path
    ids: np.ndarray
    paths: list[str]
    labels: np.ndarray
    read_fix: str

    def __init__(self, split: str, transform, load_size: int | None, seed: int):
        self.split, self.transform, self.load_size = split, transform, load_size
        self.seed, self.epoch = seed, None
        self._cache = None

    def annotations(self, index: int, image: torch.Tensor, scale: tuple[float, float]):
        """The (box [4], parts [P, 3]) of image ``index`` in the decoded image's pixel coordinates."""
        raise NotImplementedError

    def concepts_of(self, label: int) -> torch.Tensor:
        """The concept vector of an image of class ``label``."""
        raise NotImplementedError

    def fill_cache(self, cache: bool | None) -> None:
        """Decode every image now when ``cache`` is true, or by default when the split is small."""
        if cache if cache is not None else len(self.ids) < CACHE_MAX_IMAGES:
            self._cache = [self._decode(i) for i in range(len(self.ids))]

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Make training augmentation a function of (seed, epoch, index), whatever the worker count."""
        self.epoch = int(epoch)

    def _decode(self, index: int):
        path = self.image_dir / self.paths[index]
        try:
            image, scale = load_rgb(path, self.load_size)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
            # missing, truncated or foreign file (PIL's UnidentifiedImageError is an OSError, a broken PNG a SyntaxError)
            reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            raise UserError(f"cannot read image {path} ({reason}): {self.read_fix}") from None
        box, parts = self.annotations(index, image, scale)
        box = torch.as_tensor(box, dtype=torch.float32)
        parts = torch.as_tensor(parts, dtype=torch.float32)
        if self.load_size is not None and min(image.shape[-2:]) > self.load_size:
            image, box, parts = resize_shorter_side(image, box, parts, self.load_size)
        return image, box, parts

    def __getitem__(self, index: int) -> dict:
        image, box, parts = self._cache[index] if self._cache is not None else self._decode(index)
        image, box, parts = apply_transform(self.transform, image, box, parts, self.seed, self.epoch, index)
        label = int(self.labels[index])
        return {"image": image, "label": torch.tensor(label, dtype=torch.int64),
                "concepts": self.concepts_of(label), "bbox": box, "parts": parts,
                "id": torch.tensor(int(self.ids[index]), dtype=torch.int64),
                "index": torch.tensor(index, dtype=torch.int64)}
