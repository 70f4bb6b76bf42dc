"""CUB-200-2011: preparation (concept denoising, splits) and the dataset loader.

The same code reads the real CUB and the synthetic dataset (`synthetic.py`),
which is written in CUB's layout. Coordinates: CUB boxes and part locations are
taken as continuous pixel coordinates where pixel column j spans [j, j+1).
"""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from lottery_xai.config import SPLIT_NAMES as SPLITS
from lottery_xai.data.imagefile import ImageFileDataset
from lottery_xai.errors import UserError
from lottery_xai.safe_io import write_text

CUB_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
CUB_MIN_CLASSES = 10


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    """Write JSON so that a killed process leaves the old file or the new one, never half of one."""
    write_text(path, json.dumps(payload, indent=1) + "\n")


def _missing_cub_message(where) -> str:
    return (f"no CUB-200-2011 data at {where}: download CUB_200_2011.tgz from {CUB_URL} and pass its path "
            "(or the extracted CUB_200_2011 folder) with --src")


def find_cub_root(path: str | os.PathLike) -> Path | None:
    """The folder holding `images.txt` at `path` or in `path/CUB_200_2011`, else None."""
    path = Path(path)
    for candidate in (path, path / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    return None


def _extract_archive(archive: Path, data_root: Path) -> Path:
    """Extract CUB_200_2011.tgz into data_root (skipped when already extracted there)."""
    root = find_cub_root(data_root)
    if root is not None:
        return root
    data_root.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(data_root, filter="data")  # refuses absolute paths and links out of data_root
            else:  # pragma: no cover - Python < 3.11.4
                for member in tar.getmembers():
                    if member.name.startswith("/") or ".." in Path(member.name).parts:
                        raise UserError(f"{archive} holds an unsafe path {member.name!r}: re-download it")
                tar.extractall(data_root)
    except (tarfile.TarError, OSError) as error:
        raise UserError(f"could not extract {archive}: {error}; re-download it from {CUB_URL}") from error
    root = find_cub_root(data_root)
    if root is None:
        raise UserError(_missing_cub_message(archive))
    return root


def locate_cub(src: str | os.PathLike | None, data_root: str | os.PathLike) -> Path:
    """Resolve where the CUB files are, extracting an archive or linking a folder into data_root.

    `src` may be None (the data is already in data_root), an extracted
    CUB_200_2011 folder (linked as data_root/CUB_200_2011 when it lives
    elsewhere, so the loader finds it from data_root) or CUB_200_2011.tgz.
    """
    data_root = Path(data_root)
    if src is None:
        root = find_cub_root(data_root)
        if root is None:
            raise UserError(_missing_cub_message(data_root))
        return root
    src = Path(src)
    if src.is_file() and (src.name.endswith((".tgz", ".tar.gz", ".tar"))):
        return _extract_archive(src, data_root)
    root = find_cub_root(src) if src.is_dir() else None
    if root is None:
        raise UserError(_missing_cub_message(src))
    existing = find_cub_root(data_root)
    if existing is not None:
        if existing.resolve() != root.resolve():
            raise UserError(f"{data_root} already holds CUB data at {existing}: pass --src {existing} "
                            "or choose another --data_root")
        return existing
    data_root.mkdir(parents=True, exist_ok=True)
    (data_root / "CUB_200_2011").symlink_to(root.resolve(), target_is_directory=True)
    return data_root / "CUB_200_2011"


# ----------------------------------------------------------------------------------------------
# Reading the CUB tables
# ----------------------------------------------------------------------------------------------

def _require(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"missing CUB file {path}: the dataset is incomplete; re-extract CUB_200_2011.tgz from {CUB_URL}")
    return path


REDO = "re-extract the dataset (or regenerate the synthetic one with --overwrite)"


def _read_text(path: Path) -> str:
    """A CUB text table; binary junk is a UserError naming the file."""
    try:
        return _require(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (binary data): {REDO}") from None


def read_json_file(path: Path, fix: str, kind: type = dict):
    """A prepared JSON file; a missing, binary, truncated or wrongly shaped one is a UserError naming it and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing {path}: {fix}")
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} cannot be read ({reason}); it may be truncated: {fix}") from None
    if not isinstance(obj, kind):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not a{'n object' if kind is dict else ' ' + kind.__name__}: {fix}")
    return obj


def check_splits(splits: dict, path: Path, fix: str) -> dict[str, list[int]]:
    """The ``{split: [image ids]}`` of a splits.json, checked."""
    out = {}
    for name in SPLITS:
        ids = splits.get(name)
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise UserError(f"{path} has no list of image ids for split '{name}': {fix}")
        out[name] = ids
    return out


def check_concepts(concepts: dict, path: Path, fix: str) -> dict:
    """A concepts.json: class and attribute names and a [classes, attributes] 0/1 table, checked."""
    names, attributes = concepts.get("class_names"), concepts.get("attribute_names")
    table = concepts.get("class_concepts")
    if not isinstance(names, list) or not isinstance(attributes, list) or not isinstance(table, list):
        raise UserError(f"{path} lacks class_names, attribute_names or class_concepts: {fix}")
    try:
        shape = np.asarray(table, dtype=np.float64).shape
    except (TypeError, ValueError):
        shape = None
    if shape != (len(names), len(attributes)):
        raise UserError(f"{path}: class_concepts has shape {shape}, expected ({len(names)}, {len(attributes)}): {fix}")
    return concepts


def _read_pairs(path: Path) -> tuple[list[int], list[str]]:
    """`<id> <text>` lines -> (ids, texts); the text may contain spaces."""
    ids, texts = [], []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        line = line.strip()
        if line:
            first, _, rest = line.partition(" ")
            if not first.isdigit() or not rest.strip():
                raise UserError(f"{path} line {number} is malformed ({line[:40]!r}, expected '<id> <text>'): {REDO}")
            ids.append(int(first))
            texts.append(rest.strip())
    return ids, texts


def _read_numbers(path: Path, columns: int) -> np.ndarray:
    """Whitespace-separated numeric table with a fixed number of columns, read in one pass."""
    try:
        values = np.array(_read_text(path).split(), dtype=np.float64)
    except ValueError:
        raise UserError(f"{path} holds something that is not a number: {REDO}") from None
    if values.size % columns:
        raise UserError(f"{path} is malformed (expected {columns} numbers per line): re-extract the dataset")
    return values.reshape(-1, columns)


def _attribute_names_path(root: Path) -> Path:
    """attributes.txt: inside the CUB folder, or beside it (where CUB_200_2011.tgz puts it).

    "Beside" is looked up both next to ``root`` as given and next to the folder it resolves to, so
    a CUB_200_2011 folder linked into data_root still finds the attributes.txt of its real parent.
    """
    candidates = [root / "attributes" / "attributes.txt", root / "attributes.txt", root.parent / "attributes.txt"]
    real = root.resolve()
    if real != root:
        candidates += [real / "attributes" / "attributes.txt", real / "attributes.txt"]
    candidates.append(real.parent / "attributes.txt")
    candidates = list(dict.fromkeys(candidates))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"missing CUB file attributes.txt (looked for {', '.join(map(str, candidates))}): CUB_200_2011.tgz "
                    f"holds it beside the CUB_200_2011 folder; pass the archive, or the folder that holds both, with "
                    f"--src (or re-extract CUB_200_2011.tgz from {CUB_URL})")


def read_class_names(root: Path) -> list[str]:
    """Class names without CUB's number prefix ('001.Black_footed_Albatross' -> 'Black_footed_Albatross')."""
    _, names = _read_pairs(root / "classes.txt")
    return [name.split(".", 1)[1] if "." in name and name.split(".", 1)[0].isdigit() else name for name in names]


def read_part_names(root: Path) -> list[str]:
    """Part names in part-id order (parts/parts.txt)."""
    return _read_pairs(root / "parts" / "parts.txt")[1]


def read_attribute_names(root: Path) -> list[str]:
    """Attribute names in attribute-id order."""
    return _read_pairs(_attribute_names_path(root))[1]


def read_class_attribute_percentages(root: Path) -> np.ndarray:
    """class_attribute_labels_continuous.txt as a float array [n_classes, n_attributes] of percentages."""
    path = root / "attributes" / "class_attribute_labels_continuous.txt"
    rows = [line.split() for line in _read_text(path).splitlines() if line.strip()]
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        raise UserError(f"{path} is malformed (rows of unequal length or not numbers): {REDO}") from None


def read_cub_tables(root: str | os.PathLike) -> dict:
    """Image-level tables of a CUB folder, as arrays indexed by image id - 1.

    Keys: ids [N] int64, paths [N] (relative to images/), labels [N] (0-based
    class), is_train [N] bool, boxes [N, 4] (x0, y0, x1, y1), parts [N, P, 3]
    (x, y, visible), class_names, part_names.
    """
    root = Path(root)
    ids, paths = _read_pairs(root / "images.txt")
    ids = np.asarray(ids, dtype=np.int64)
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
        raise UserError(f"{root / 'images.txt'} must number images 1..N in order")
    n = len(ids)
    labels = _read_numbers(root / "image_class_labels.txt", 2)
    split = _read_numbers(root / "train_test_split.txt", 2)
    boxes = _read_numbers(root / "bounding_boxes.txt", 5)
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)):
        if len(table) != n:
            raise UserError(f"{root / name} has {len(table)} rows for the {n} images of {root / 'images.txt'} "
                            f"(one of them is truncated): {REDO}")
    order = np.argsort(labels[:, 0])
    label = labels[order, 1].astype(np.int64) - 1
    is_train = split[np.argsort(split[:, 0]), 1] > 0
    boxes = boxes[np.argsort(boxes[:, 0]), 1:]
    boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    _, part_names = _read_pairs(root / "parts" / "parts.txt")
    locs = _read_numbers(root / "parts" / "part_locs.txt", 5)
    image_index, part_index = locs[:, 0].astype(np.int64) - 1, locs[:, 1].astype(np.int64) - 1
    if len(locs) and (image_index.min() < 0 or image_index.max() >= n or part_index.min() < 0
                      or part_index.max() >= len(part_names)):
        raise UserError(f"{root / 'parts' / 'part_locs.txt'} names images or parts that images.txt and parts.txt "
                        f"do not have: {REDO}")
    parts = np.zeros((n, len(part_names), 3), dtype=np.float64)
    parts[locs[:, 0].astype(np.int64) - 1, locs[:, 1].astype(np.int64) - 1] = locs[:, 2:]
    parts[parts[:, :, 2] <= 0] = 0.0
    return {"ids": ids, "paths": paths, "labels": label, "is_train": is_train, "boxes": boxes,
            "parts": parts, "class_names": read_class_names(root), "part_names": part_names}


# ----------------------------------------------------------------------------------------------
# Preparation
# ----------------------------------------------------------------------------------------------

def majority_concepts(class_attribute_percentages: np.ndarray, min_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-level majority vote over noisy attribute labels.

    Attribute a is on for class c iff percentage[c, a] > 50; attributes on in
    at least `min_classes` classes are kept. Returns (class_concepts [K, A_kept]
    as uint8 0/1, kept attribute indices (0-based) [A_kept]).
    """
    percentages = np.asarray(class_attribute_percentages, dtype=np.float64)
    if percentages.ndim != 2:
        raise UserError(f"class attribute percentages must be a 2-d array [classes, attributes], got shape {percentages.shape}")
    if int(min_classes) != min_classes or min_classes < 1:
        raise UserError(f"min_classes must be a positive integer, got {min_classes!r}")
    on = percentages > 50.0
    kept = np.flatnonzero(on.sum(axis=0) >= min_classes)
    return on[:, kept].astype(np.uint8), kept


def stratified_val_split(ids: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ids into (train, val), class by class, with a seeded generator.

    Each class gives round(val_fraction * n_c) images to val (at least one when
    val_fraction > 0 and the class has two or more images). Lists are sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    ids, labels = np.asarray(ids), np.asarray(labels)
    val = []
    for label in np.unique(labels):
        members = np.sort(ids[labels == label])
        count = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        val.extend(rng.permutation(members)[:count].tolist())
    val_set = set(val)
    train = [int(i) for i in np.sort(ids) if int(i) not in val_set]
    return train, sorted(int(i) for i in val)


def _recommended_min_classes(root: Path) -> int:
    """min_classes recorded by the synthetic generator, else CUB's 10."""
    truth = root / "class_attributes.json"
    if truth.is_file():
        value = read_json_file(truth, REDO).get("recommended_min_classes", CUB_MIN_CLASSES)
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{truth}: recommended_min_classes is {value!r}, not an integer: {REDO}")
        return value
    return CUB_MIN_CLASSES


def prepare_cub(src, data_root, json_root, seed: int = 0, val_fraction: float = 0.1,
                min_classes: int | None = CUB_MIN_CLASSES) -> dict:
    """Denoise CUB's concepts and write `splits.json` and `concepts.json` to json_root.

    `src`: CUB_200_2011.tgz (extracted into data_root), an extracted folder, or
    None when data_root already holds the data. `min_classes=None` takes the
    value the synthetic generator recommends (10 for real CUB). Returns a summary dict.
    """
    root = locate_cub(src, data_root)
    if min_classes is None:
        min_classes = _recommended_min_classes(root)
    tables = read_cub_tables(root)
    attribute_names = read_attribute_names(root)
    percentages = read_class_attribute_percentages(root)
    n_classes = len(tables["class_names"])
    if percentages.shape != (n_classes, len(attribute_names)):
        raise UserError(f"class_attribute_labels_continuous.txt has shape {percentages.shape}, expected "
                        f"({n_classes}, {len(attribute_names)}): re-extract the dataset")
    class_concepts, kept = majority_concepts(percentages, min_classes)
    if kept.size == 0:
        raise UserError(f"no attribute is on in {min_classes} or more classes: lower --min-classes")
    ids, labels, is_train = tables["ids"], tables["labels"], tables["is_train"]
    train, val = stratified_val_split(ids[is_train], labels[is_train], val_fraction, seed)
    splits = {"train": train, "val": val, "test": [int(i) for i in ids[~is_train]]}
    concepts = {
        "attribute_ids": [int(a) + 1 for a in kept],
        "attribute_names": [attribute_names[a] for a in kept],
        "class_names": tables["class_names"],
        "class_concepts": class_concepts.tolist(),
        "min_classes": int(min_classes),
    }
    json_root = Path(json_root)
    write_json_atomic(json_root / "splits.json", splits)
    write_json_atomic(json_root / "concepts.json", concepts)
    return {"cub_root": str(root), "json_root": str(json_root), "n_images": int(len(ids)),
            "n_classes": n_classes, "n_attributes": len(attribute_names), "n_concepts": int(kept.size),
            "min_classes": int(min_classes), **{f"n_{name}": len(v) for name, v in splits.items()}}


# ----------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------

class CUBDataset(ImageFileDataset):
    """One split of a CUB-layout dataset; items are dicts (see `lottery_xai.data`).

    The concept vector of an image is its class's denoised vector. `transform`
    is a box-aware transform from `transforms.py` (called as
    `transform(image_uint8, box, parts, generator)`). `load_size` resizes each
    decoded image so its shorter side is at most that many pixels before the
    transform; `cache` keeps those decoded images in memory (default: when the
    split has fewer than `imagefile.CACHE_MAX_IMAGES` images).
    """

    def __init__(self, data_root, json_root, split: str, transform, load_size: int | None = None,
                 cache: bool | None = None, seed: int = 0):
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        root = find_cub_root(data_root)
        if root is None:
            raise UserError(_missing_cub_message(data_root))
        json_root = Path(json_root)
        fix = "rerun scripts_data/download_cub.py (or make_synthetic_cub.py) to prepare it again"
        splits = check_splits(_read_json(json_root / "splits.json"), json_root / "splits.json", fix)
        concepts = check_concepts(_read_json(json_root / "concepts.json"), json_root / "concepts.json", fix)
        tables = read_cub_tables(root)
        bad = [i for name in SPLITS for i in splits[name] if not 1 <= i <= len(tables["ids"])]
        if bad:
            raise UserError(f"{json_root / 'splits.json'} lists image id {bad[0]}, which {root / 'images.txt'} "
                            f"({len(tables['ids'])} images) does not have: it was prepared from another dataset; {fix}")
        if len(concepts["class_names"]) != len(tables["class_names"]):
            raise UserError(f"{json_root / 'concepts.json'} has {len(concepts['class_names'])} classes, "
                            f"{root / 'classes.txt'} {len(tables['class_names'])}: it was prepared from another "
                            f"dataset; {fix}")
        super().__init__(split, transform, load_size, seed)
        self.root, self.image_dir, self.read_fix = root, root / "images", REDO
        self.ids = np.asarray(splits[split], dtype=np.int64)
        rows = self.ids - 1
        self.paths = [tables["paths"][r] for r in rows]
        self.labels = tables["labels"][rows]
        self.boxes = tables["boxes"][rows].astype(np.float32)
        self.parts = tables["parts"][rows].astype(np.float32)
        self.class_names = concepts["class_names"]
        self.concept_names = concepts["attribute_names"]
        self.part_names = tables["part_names"]
        self.class_concepts = np.asarray(concepts["class_concepts"], dtype=np.float32).reshape(len(self.class_names), -1)
        self.fill_cache(cache)

    def annotations(self, index: int, image: torch.Tensor, scale: tuple[float, float]):
        sx, sy = scale
        box = self.boxes[index] * np.array([sx, sy, sx, sy], dtype=np.float32)
        parts = self.parts[index].copy()
        parts[:, :2] *= np.array([sx, sy], dtype=np.float32)
        return box, parts

    def concepts_of(self, label: int) -> torch.Tensor:
        return torch.from_numpy(self.class_concepts[label].copy())


def _read_json(path: Path):
    return read_json_file(path, "run scripts_data/download_cub.py (or make_synthetic_cub.py) to prepare it again")
