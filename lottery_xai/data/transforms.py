"""Box-aware image transforms: images, boxes and part locations move together.

Images enter as uint8 RGB tensors [3, H, W]; boxes as float [4] (x0, y0, x1, y1)
and parts as float [P, 3] (x, y, visible), in continuous pixel coordinates
(pixel column j spans [j, j+1)). They leave as a normalised float32 image
[3, S, S], the box clipped to the image, and the parts with visible = 0 (and
x = y = 0) where they were hidden or cropped out.
"""
from __future__ import annotations

import functools
import math
import platform

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


def _map_coordinates(box, parts, top, left, scale_y, scale_x, out_h, out_w, flip=False):
    """Apply crop-at-(top, left), scale, optional horizontal flip to a box and parts."""
    box = box.clone()
    box[0::2] = (box[0::2] - left) * scale_x
    box[1::2] = (box[1::2] - top) * scale_y
    parts = parts.clone()
    parts[:, 0] = (parts[:, 0] - left) * scale_x
    parts[:, 1] = (parts[:, 1] - top) * scale_y
    if flip:
        box = torch.stack([out_w - box[2], box[1], out_w - box[0], box[3]])
        parts[:, 0] = out_w - parts[:, 0]
    box[0::2] = box[0::2].clamp(0, out_w)
    box[1::2] = box[1::2].clamp(0, out_h)
    inside = (parts[:, 0] >= 0) & (parts[:, 0] <= out_w) & (parts[:, 1] >= 0) & (parts[:, 1] <= out_h)
    visible = (parts[:, 2] > 0) & inside
    parts = torch.where(visible[:, None], parts, torch.zeros_like(parts))
    parts[:, 2] = visible.to(parts.dtype)
    return box, parts


@functools.lru_cache(maxsize=1)
def _native_uint8_bilinear() -> bool:
    """Whether torch's uint8 antialiased bilinear kernel is the one torchvision would use here (asked once:
    ``resize`` runs for every training item)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of a [C, H, W] image, bit-identical to torchvision's
    ``transforms.v2.functional.resize(image, [height, width], antialias=True)`` (tested), without
    importing torchvision, which costs every step seconds of start-up."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    dtype = image.dtype
    # torchvision interpolates float32/64 directly, uint8 directly where torch has the native CPU kernel,
    # and anything else in float32, rounding back to integer types
    native = dtype in (torch.float32, torch.float64) or (
        dtype == torch.uint8 and image.device.type == "cpu" and _native_uint8_bilinear())
    batch = image.reshape(-1, *image.shape[-3:])
    out = F.interpolate(batch if native else batch.float(), size=[height, width], mode="bilinear",
                        align_corners=False, antialias=True)
    if not native:
        out = (out if dtype.is_floating_point else out.round_()).to(dtype)
    return out.reshape(*image.shape[:-2], height, width)


def resize_shorter_side(image: torch.Tensor, box: torch.Tensor, parts: torch.Tensor, size: int):
    """Resize (antialiased) so the shorter side is `size`; box and parts are scaled with it."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = (size, max(size, round(width * scale))) if height <= width else (max(size, round(height * scale)), size)
    resized = resize(image, new_h, new_w)
    box, parts = _map_coordinates(box, parts, 0, 0, new_h / height, new_w / width, new_h, new_w)
    return resized, box, parts


def _normalise(image: torch.Tensor, mean, std) -> torch.Tensor:
    image = image.to(torch.float32) / 255.0
    mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (image - mean) / std


class EvalTransform:
    """Resize the shorter side to `size`, then centre-crop `size` x `size` (never pads), then normalise."""

    random = False

    def __init__(self, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)

    def __call__(self, image: torch.Tensor, box: torch.Tensor, parts: torch.Tensor, generator=None):
        """Transform one uint8 image [3, H, W] with its box [4] and parts [P, 3]."""
        height, width = image.shape[-2:]
        if min(height, width) != self.size:
            image, box, parts = resize_shorter_side(image, box, parts, self.size)
            height, width = image.shape[-2:]
        # Same rounding as torchvision's center_crop.
        top = int(round((height - self.size) / 2.0))
        left = int(round((width - self.size) / 2.0))
        image = image[:, top:top + self.size, left:left + self.size]
        box, parts = _map_coordinates(box, parts, top, left, 1.0, 1.0, self.size, self.size)
        return _normalise(image, self.mean, self.std), box, parts


def random_resized_crop_params(height: int, width: int, scale, ratio, generator: torch.Generator):
    """(top, left, crop_h, crop_w) as torchvision's RandomResizedCrop draws them, from `generator`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
            return top, left, crop_h, crop_w
    # Fallback: the largest centred crop with an aspect ratio in range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_h, crop_w = height, int(round(height * ratio[1]))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class TrainTransform:
    """RandomResizedCrop(size, scale) + horizontal flip (p = 0.5), boxes and parts included, then normalise.

    Every random draw comes from the `generator` passed per call, so an item's
    augmentation is reproducible.
    """

    random = True

    def __init__(self, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=(0.6, 1.0),
                 ratio=(3 / 4, 4 / 3), hflip: bool = True):
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip

    def __call__(self, image: torch.Tensor, box: torch.Tensor, parts: torch.Tensor, generator=None):
        """Transform one uint8 image [3, H, W] with its box [4] and parts [P, 3]."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        height, width = image.shape[-2:]
        top, left, crop_h, crop_w = random_resized_crop_params(height, width, self.scale, self.ratio, generator)
        flip = self.hflip and bool(torch.rand(1, generator=generator) < 0.5)
        crop = image[:, top:top + crop_h, left:left + crop_w]
        out = resize(crop, self.size, self.size)
        if flip:
            out = out.flip(-1)
        box, parts = _map_coordinates(box, parts, top, left, self.size / crop_h, self.size / crop_w,
                                      self.size, self.size, flip=flip)
        return _normalise(out, self.mean, self.std), box, parts


def denormalize(images: torch.Tensor, info=None, mean=None, std=None) -> torch.Tensor:
    """Undo the dataset normalisation: [N, 3, H, W] or [3, H, W] back to [0, 1] for plots.

    Pass the `DatasetInfo` (its mean/std are used) or mean and std directly.
    """
    if info is not None:
        mean, std = info.mean, info.std
    if mean is None or std is None:
        raise ValueError("denormalize needs a DatasetInfo or both mean and std")
    shape = (-1, 1, 1)
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images * std + mean).clamp(0.0, 1.0)


def item_generator(seed: int, epoch: int | None, index: int) -> torch.Generator:
    """Generator for one item's augmentation.

    After `set_epoch`, seeded from (seed, epoch, index): identical whatever the
    number of workers. Before it, seeded from torch's global RNG, which the
    DataLoader reseeds per epoch and per worker (so epochs still differ and a
    seeded run repeats).
    """
    generator = torch.Generator()
    if epoch is None:
        generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    else:
        generator.manual_seed(int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1))
    return generator


def apply_transform(transform, image, box, parts, seed: int, epoch: int | None, index: int):
    """Call a box-aware transform for one dataset item; only random transforms get (and use) a generator."""
    # Eval items leave torch's global RNG untouched.
    generator = item_generator(seed, epoch, index) if getattr(transform, "random", False) else None
    return transform(image, box, parts, generator=generator)
