"""MNIST even/odd (``mnist_eo``): class = parity of the digit, concepts = the ten digit identities (one-hot);
and MNIST itself (``mnist``): class = the digit, no concepts (the Lottery Ticket paper's LeNet task). Both
read the same prepared splits.

Two sources: the standard MNIST IDX files in data_root (the real 10k test set
is the test split: never the training set twice), or, offline, scikit-learn's
bundled 8x8 digits upsampled to 28x28 with a seeded stratified train/test split.
Dataset ids: IDX training images keep their index (0..59999), IDX test images
are TEST_ID_OFFSET + index; sklearn images keep their index in `load_digits`.
"""
from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import torch

from lottery_xai.config import SPLIT_NAMES as SPLITS
from lottery_xai.data.cub import check_splits, read_json_file, stratified_val_split, write_json_atomic
from lottery_xai.data.transforms import apply_transform
from lottery_xai.errors import UserError

CLASS_NAMES = ("even", "odd")
CONCEPT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_ID_OFFSET = 60000
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_URL = "https://yann.lecun.com/exdb/mnist/ (or any mirror of the four IDX files)"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or .gz): magic 0 0 <dtype code> <ndim>, big-endian int32 dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (EOFError, gzip.BadGzipFile) as error:  # a truncated or corrupt .gz
        raise UserError(f"{path} cannot be read ({error or type(error).__name__}): re-download it from {MNIST_URL}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number): re-download it from {MNIST_URL}")
    ndim = raw[3]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    try:
        dims = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
        count = int(np.prod(dims)) if dims else 1
        data = np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim)
    except (struct.error, ValueError):
        raise UserError(f"{path} is truncated (shorter than its header says): re-download it from {MNIST_URL}") from None
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(data_root: str | os.PathLike) -> dict[str, Path] | None:
    """Paths of the four IDX files (plain or .gz) in data_root, data_root/MNIST/raw or data_root/mnist; None if any is missing."""
    data_root = Path(data_root)
    found = {}
    for key, name in IDX_FILES.items():
        for folder in (data_root, data_root / "MNIST" / "raw", data_root / "mnist"):
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found.setdefault(key, candidate)
    return found if len(found) == len(IDX_FILES) else None


def upsample_digits(images_8x8: np.ndarray) -> np.ndarray:
    """sklearn 8x8 digits (0..16) -> MNIST-like uint8 [N, 28, 28]: the digit fills a centred 20x20 box."""
    scaled = np.clip(np.asarray(images_8x8, dtype=np.float32) * (255.0 / 16.0), 0, 255)
    out = np.zeros((len(scaled), 28, 28), dtype=np.uint8)
    for i, image in enumerate(scaled):  # 1797 tiny images, once per process
        out[i, 4:24, 4:24] = np.clip(cv2.resize(image, (20, 20), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=2)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes a second; bundled data, no download

    digits = load_digits()
    return upsample_digits(digits.images), digits.target.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _idx_arrays(paths: tuple) -> tuple[np.ndarray, np.ndarray]:
    """All MNIST images [70000, 28, 28] and digits, train first, test at TEST_ID_OFFSET."""
    train_images, train_labels, test_images, test_labels = (read_idx(p) for p in paths)
    if len(train_images) != len(train_labels) or len(test_images) != len(test_labels):
        raise UserError("MNIST IDX image and label files disagree in length: re-download them")
    if len(train_images) > TEST_ID_OFFSET:
        raise UserError(f"MNIST training file has {len(train_images)} images, more than {TEST_ID_OFFSET}")
    images = np.zeros((TEST_ID_OFFSET + len(test_images), *train_images.shape[1:]), dtype=np.uint8)
    digits = np.full(len(images), -1, dtype=np.int64)
    images[:len(train_images)], digits[:len(train_labels)] = train_images, train_labels
    images[TEST_ID_OFFSET:], digits[TEST_ID_OFFSET:] = test_images, test_labels
    return images, digits


def prepare_mnist_eo(data_root, json_root, source: str = "auto", seed: int = 0, val_fraction: float = 0.1,
                     test_fraction: float = 0.25) -> dict:
    """Write `splits.json` (dataset ids per split) and `source.json` for MNIST even/odd.

    source: `idx` (the four MNIST IDX files in data_root), `sklearn` (bundled
    8x8 digits; `test_fraction` of them, stratified by digit, become the test
    split) or `auto` (idx when the files are there, else sklearn). Validation
    is carved out of train, stratified by digit, with a seeded generator.
    """
    if source not in ("auto", "idx", "sklearn"):
        raise UserError(f"unknown MNIST source {source!r}: use auto, idx or sklearn")
    files = find_idx_files(data_root)
    if source == "idx" and files is None:
        names = ", ".join(f"{n}[.gz]" for n in IDX_FILES.values())
        raise UserError(f"MNIST IDX files missing in {data_root} (need {names}): get them from {MNIST_URL} "
                        "or use --source sklearn")
    use_idx = files is not None and source != "sklearn"
    if use_idx:
        key = tuple(str(files[k]) for k in IDX_FILES)
        _, digits = _idx_arrays(key)
        train_pool = np.flatnonzero(digits[:TEST_ID_OFFSET] >= 0)
        test = np.arange(TEST_ID_OFFSET, len(digits))  # the real 10k test set
        info = {"source": "idx", "files": {k: str(Path(v).resolve()) for k, v in files.items()},
                "test_id_offset": TEST_ID_OFFSET}
    else:
        _, digits = _sklearn_digits()
        if not 0 < test_fraction < 1:
            raise UserError(f"test_fraction must be in (0, 1), got {test_fraction}")
        train_pool, test = stratified_val_split(np.arange(len(digits)), digits, test_fraction, seed + 1)
        train_pool, test = np.asarray(train_pool), np.asarray(test)
        info = {"source": "sklearn", "test_fraction": test_fraction}
    train, val = stratified_val_split(train_pool, digits[train_pool], val_fraction, seed)
    splits = {"train": train, "val": val, "test": [int(i) for i in test]}
    info.update({"seed": seed, "val_fraction": val_fraction, "image_size": 28,
                 "class_names": list(CLASS_NAMES), "concept_names": list(CONCEPT_NAMES)})
    json_root = Path(json_root)
    write_json_atomic(json_root / "splits.json", splits)
    write_json_atomic(json_root / "source.json", info)
    return {"source": info["source"], "json_root": str(json_root), **{f"n_{k}": len(v) for k, v in splits.items()}}


def load_mnist_arrays(source_info: dict) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [M, 28, 28], digits [M]) indexed by dataset id, for a prepared `source.json`."""
    if source_info["source"] == "idx":
        paths = tuple(source_info["files"][k] for k in IDX_FILES)
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise UserError(f"MNIST file {missing[0]} is gone: restore it or rerun scripts_data/download_mnist_E_O.py")
        return _idx_arrays(paths)
    return _sklearn_digits()


def digit_boxes(images: np.ndarray) -> np.ndarray:
    """[N, 4] x0, y0, x1, y1 of each image's nonzero pixels (whole image when blank)."""
    on = images > 0
    rows, cols = on.any(2), on.any(1)
    height, width = images.shape[1:]

    def extent(mask, size):
        first = np.where(mask.any(1), mask.argmax(1), 0)
        last = np.where(mask.any(1), size - mask[:, ::-1].argmax(1), size)
        return first, last

    y0, y1 = extent(rows, height)
    x0, x1 = extent(cols, width)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


class MNISTEvenOddDataset(torch.utils.data.Dataset):
    """One split of MNIST even/odd; items are dicts (see `lottery_xai.data`), images as 3-channel RGB.

    bbox = the digit's nonzero extent; parts is an empty [0, 3] tensor. ``label='digit'``: the class is
    the digit itself (ten classes, the dataset ``mnist``) and ``concepts`` is empty ([0]).
    """

    def __init__(self, data_root, json_root, split: str, transform, seed: int = 0, label: str = "parity"):
        if label not in ("parity", "digit"):
            raise ValueError(f"label must be parity or digit, got {label!r}")
        self.label = label
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        json_root = Path(json_root)
        for name in ("splits.json", "source.json"):
            if not (json_root / name).is_file():
                raise UserError(f"missing {json_root / name}: run: python scripts_data/download_mnist_E_O.py "
                                f"--data_root {data_root} --json_root {json_root}")
        fix = f"prepare it again: python scripts_data/download_mnist_E_O.py --data_root {data_root} --json_root {json_root}"
        splits = check_splits(read_json_file(json_root / "splits.json", fix), json_root / "splits.json", fix)
        self.ids = np.asarray(splits[split], dtype=np.int64)
        self.source = read_json_file(json_root / "source.json", fix)
        if self.source.get("source") not in ("idx", "sklearn") or (
                self.source["source"] == "idx" and not (isinstance(self.source.get("files"), dict)
                                                        and all(k in self.source["files"] for k in IDX_FILES))):
            raise UserError(f"{json_root / 'source.json'} names no MNIST source (idx with its files, or sklearn): {fix}")
        images, digits = load_mnist_arrays(self.source)
        if len(self.ids) and (self.ids.min() < 0 or self.ids.max() >= len(images) or (digits[self.ids] < 0).any()):
            raise UserError(f"{json_root / 'splits.json'} lists image ids the MNIST source does not have "
                            f"(prepared from other files?): {fix}")
        # One contiguous copy of this split's pixels (the whole dataset is small).
        self.images = torch.from_numpy(np.ascontiguousarray(images[self.ids]))
        self.digits = digits[self.ids]
        self.boxes = torch.from_numpy(digit_boxes(images[self.ids]))
        self.transform, self.seed, self.epoch = transform, seed, None
        self.class_names, self.concept_names, self.part_names = list(CLASS_NAMES), list(CONCEPT_NAMES), []
        self._concepts = torch.eye(len(CONCEPT_NAMES), dtype=torch.float32)
        if label == "digit":
            self.class_names, self.concept_names = list(CONCEPT_NAMES), []
            self._concepts = torch.zeros((len(CONCEPT_NAMES), 0), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Make training augmentation a function of (seed, epoch, index), whatever the worker count."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index].unsqueeze(0).expand(3, -1, -1)
        parts = torch.zeros((0, 3), dtype=torch.float32)
        image, box, parts = apply_transform(self.transform, image, self.boxes[index], parts, self.seed, self.epoch, index)
        digit = int(self.digits[index])
        return {"image": image, "label": torch.tensor(digit if self.label == "digit" else digit % 2, dtype=torch.int64),
                "concepts": self._concepts[digit].clone(), "bbox": box, "parts": parts,
                "id": torch.tensor(int(self.ids[index]), dtype=torch.int64),
                "index": torch.tensor(index, dtype=torch.int64)}
