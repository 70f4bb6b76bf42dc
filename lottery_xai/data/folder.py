"""Datasets in the ImageFolder layout (``dataset: folder``): Imagenette's, torchvision's.

    data_root/train/<class>/*.jpg|png|...     the training split
    data_root/val/<class>/*                   validation; split into val and test (seeded, per class)
    data_root/test/<class>/*                  optional: when present, it is the test split and val stays whole
    data_root/classes.txt                     optional: "<folder> <display name>" per line (Imagenette's
                                              folders are WordNet ids such as n01440764)

Preparation (``scripts_data/prepare_folder.py``, :func:`prepare_folder`) lists the images once and writes
``folder_index.json`` (class folders and names; every image's path and class; ids are 1-based positions)
and ``splits.json`` to json_root. Classes are the sorted folder names of ``train/`` (ImageFolder's order).
Without a ``test/`` folder, ``test_fraction`` of each class's validation images (the thesis: 2,800 of
Imagenette's 3,925) become the test split, chosen with a generator seeded by ``seed``.

There are no boxes, parts or concepts: an item's ``bbox`` is the whole image, ``parts`` is empty
([0, 3]) and ``concepts`` is empty ([0]); :data:`lottery_xai.data.DATASETS` declares them absent, so the
steps that need them say so (see :func:`lottery_xai.data.require_annotations`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lottery_xai.config import SPLIT_NAMES as SPLITS
from lottery_xai.data.cub import check_splits, read_json_file, stratified_val_split, write_json_atomic
from lottery_xai.data.imagefile import ImageFileDataset
from lottery_xai.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
INDEX_FILE = "folder_index.json"
# The thesis split Imagenette's 3,925 validation images into 2,800 test and 1,125 validation images.
THESIS_TEST_FRACTION = 2800 / 3925


def prepare_command(data_root, json_root) -> str:
    return f"python scripts_data/prepare_folder.py --data_root {data_root} --json_root {json_root}"


def _images_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _display_names(root: Path, folders: list[str]) -> list[str]:
    """The class names: ``classes.txt`` ("<folder> <name>" lines) when present, else the folder names."""
    path = root / "classes.txt"
    if not path.is_file():
        return list(folders)
    names = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            folder, _, name = line.strip().partition(" ")
            if not name.strip():
                raise UserError(f"{path} line {number} is {line.strip()[:40]!r}; expected '<folder> <class name>'")
            names[folder] = name.strip().replace(" ", "_")
    missing = [f for f in folders if f not in names]
    if missing:
        raise UserError(f"{path} names no class for folder '{missing[0]}'; add a line '{missing[0]} <class name>' "
                        "or delete the file to use the folder names")
    return [names[f] for f in folders]


def scan_folder(data_root: str | os.PathLike) -> dict:
    """The class folders, class names and (split folder, class index, relative path) of every image."""
    root = Path(data_root)
    for needed in ("train", "val"):
        if not (root / needed).is_dir():
            raise UserError(f"no '{needed}' folder in {root}: dataset: folder needs {root}/train/<class>/* and "
                            f"{root}/val/<class>/* (optional {root}/test/<class>/*)")
    folders = _class_folders(root / "train")
    if len(folders) < 2:
        raise UserError(f"{root / 'train'} holds {len(folders)} class folder(s); a classifier needs at least two")
    images = {}
    for split in ("train", "val", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        extra = [f for f in _class_folders(split_dir) if f not in folders]
        if extra:
            raise UserError(f"{split_dir / extra[0]} is a class that {root / 'train'} does not have; "
                            "every class needs training images")
        entries = [(c, f"{split}/{folder}/{name}") for c, folder in enumerate(folders)
                   if (split_dir / folder).is_dir() for name in _images_of(split_dir / folder)]
        if not entries:
            raise UserError(f"{split_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}) in class folders")
        images[split] = entries
    return {"folders": folders, "class_names": _display_names(root, folders), "images": images}


def prepare_folder(data_root, json_root, test_fraction: float = THESIS_TEST_FRACTION, seed: int = 0) -> dict:
    """List an ImageFolder tree and write ``folder_index.json`` and ``splits.json`` to json_root; a summary."""
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    scan = scan_folder(data_root)
    order = [s for s in ("train", "val", "test") if s in scan["images"]]
    entries = [entry for split in order for entry in scan["images"][split]]
    ids, start = {}, 1
    for split in order:
        ids[split] = np.arange(start, start + len(scan["images"][split]), dtype=np.int64)
        start += len(scan["images"][split])
    if "test" in ids:
        splits = {"train": ids["train"].tolist(), "val": ids["val"].tolist(), "test": ids["test"].tolist()}
    else:
        labels = np.array([c for c, _ in scan["images"]["val"]], dtype=np.int64)
        val, test = stratified_val_split(ids["val"], labels, test_fraction, seed)
        splits = {"train": ids["train"].tolist(), "val": val, "test": test}
    index = {"class_folders": scan["folders"], "class_names": scan["class_names"],
             "images": [[path, int(c)] for c, path in entries], "test_fraction": None if "test" in ids else test_fraction,
             "seed": seed}
    json_root = Path(json_root)
    write_json_atomic(json_root / INDEX_FILE, index)
    write_json_atomic(json_root / "splits.json", splits)
    return {"json_root": str(json_root), "n_classes": len(scan["folders"]), "n_images": len(entries),
            "test_folder": "test" in ids, **{f"n_{name}": len(splits[name]) for name in SPLITS}}


def read_index(json_root, data_root) -> dict:
    """The prepared ``folder_index.json``, checked."""
    path = Path(json_root) / INDEX_FILE
    fix = f"prepare it again: {prepare_command(data_root, json_root)}"
    index = read_json_file(path, fix)
    names, images = index.get("class_names"), index.get("images")
    if not isinstance(names, list) or not isinstance(images, list) or not all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int)
            and 0 <= e[1] < len(names) for e in images):
        raise UserError(f"{path} lacks class_names or a list of [path, class] images: {fix}")
    return index


class FolderDataset(ImageFileDataset):
    """One split of a prepared ImageFolder tree; items are the package's dicts (see :mod:`lottery_xai.data`).

    ``load_size`` resizes each decoded image so its shorter side is at most that many pixels before
    ``transform``; ``cache`` keeps the decoded images in memory (default: splits under 5000 images)."""

    def __init__(self, data_root, json_root, split: str, transform, load_size: int | None = None,
                 cache: bool | None = None, seed: int = 0):
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        super().__init__(split, transform, load_size, seed)
        self.root = self.image_dir = Path(data_root)
        index = read_index(json_root, data_root)
        fix = f"prepare it again: {prepare_command(data_root, json_root)}"
        splits = check_splits(read_json_file(Path(json_root) / "splits.json", fix), Path(json_root) / "splits.json", fix)
        images = index["images"]
        bad = [i for i in splits[split] if not 1 <= i <= len(images)]
        if bad:
            raise UserError(f"{Path(json_root) / 'splits.json'} lists image id {bad[0]}, which "
                            f"{Path(json_root) / INDEX_FILE} ({len(images)} images) does not have: {fix}")
        self.ids = np.asarray(splits[split], dtype=np.int64)
        self.paths = [images[i - 1][0] for i in self.ids]
        self.labels = np.array([images[i - 1][1] for i in self.ids], dtype=np.int64)
        self.class_names = list(index["class_names"])
        self.read_fix = f"restore it or {fix}"
        self.fill_cache(cache)

    def annotations(self, index: int, image: torch.Tensor, scale: tuple[float, float]):
        box = torch.tensor([0.0, 0.0, float(image.shape[2]), float(image.shape[1])])  # the whole image
        return box, torch.zeros(0, 3)

    def concepts_of(self, label: int) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.float32)
