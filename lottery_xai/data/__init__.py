"""Datasets behind one interface: `build_datasets(name, ...) -> (datasets per split, DatasetInfo)`.

Every item is a dict that the default collate batches:
  image    float32 [3, S, S], normalised with the dataset mean/std
  label    int64
  concepts float32 [n_concepts]
  bbox     float32 [4], x0, y0, x1, y1 in output pixels (pixel column j spans [j, j+1)), clipped
  parts    float32 [P, 3], (x, y, visible) in output pixels; visible = 0 where hidden or cropped out
           (P = 15 for CUB-style data, 0 for MNIST)
  id       int64, the dataset's image id
  index    int64, the position in the split
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lottery_xai.data.cub import REDO, CUBDataset, check_concepts, check_splits, find_cub_root, read_json_file, read_part_names
from lottery_xai.data.folder import FolderDataset, read_index
from lottery_xai.data.mnist import CLASS_NAMES as MNIST_CLASS_NAMES
from lottery_xai.data.mnist import CONCEPT_NAMES as MNIST_CONCEPT_NAMES
from lottery_xai.data.mnist import MNISTEvenOddDataset
from lottery_xai.data.transforms import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform, denormalize
from lottery_xai.config import SPLIT_NAMES as SPLITS
from lottery_xai.errors import UserError
from lottery_xai.names import unknown_name

__all__ = ["DATASETS", "DATASET_NAMES", "DatasetInfo", "DatasetSpec", "build_datasets", "build_transform",
           "denormalize", "get_dataset", "require_annotations"]


@dataclass
class DatasetInfo:
    """What a step needs to know about a dataset besides its items."""

    name: str
    class_names: list
    concept_names: list
    part_names: list
    num_classes: int
    n_concepts: int
    mean: tuple
    std: tuple
    class_concepts: np.ndarray  # [num_classes, n_concepts], 0/1
    defining_attributes: dict | None  # class name -> concept names, when the ground truth is known
    split_ids: dict  # split -> list of dataset ids, in split order


# ----------------------------------------------------------------------------------------------
# The dataset registry: what differs between datasets is data here, not branches on names
# ----------------------------------------------------------------------------------------------

def _build_cub_split(data_root: Path, json_root: Path, split: str, transform, *, train: bool, img_size: int,
                     cache: bool | None, seed: int):
    # Decode once at the resolution the transform needs: more for random crops, which zoom in.
    load_size = math.ceil(1.5 * img_size) if train else int(img_size)
    return CUBDataset(data_root, json_root, split, transform, load_size=load_size, cache=cache, seed=seed)


def _build_mnist_split(data_root: Path, json_root: Path, split: str, transform, *, train: bool, img_size: int,
                       cache: bool | None, seed: int):
    return MNISTEvenOddDataset(data_root, json_root, split, transform, seed=seed)


def _build_mnist_digit_split(data_root: Path, json_root: Path, split: str, transform, *, train: bool, img_size: int,
                             cache: bool | None, seed: int):
    return MNISTEvenOddDataset(data_root, json_root, split, transform, seed=seed, label="digit")


def _build_folder_split(data_root: Path, json_root: Path, split: str, transform, *, train: bool, img_size: int,
                        cache: bool | None, seed: int):
    load_size = math.ceil(1.5 * img_size) if train else int(img_size)  # as CUB: more for random crops
    return FolderDataset(data_root, json_root, split, transform, load_size=load_size, cache=cache, seed=seed)


def _describe_folder(data_root: Path, json_root: Path, fix: str) -> tuple:
    class_names = list(read_index(json_root, data_root)["class_names"])
    return class_names, [], [], np.zeros((len(class_names), 0), dtype=np.uint8), None


def _describe_cub(data_root: Path, json_root: Path, fix: str) -> tuple:
    concepts = check_concepts(read_json_file(json_root / "concepts.json", fix), json_root / "concepts.json", fix)
    class_names, concept_names = list(concepts["class_names"]), list(concepts["attribute_names"])
    class_concepts = np.asarray(concepts["class_concepts"], dtype=np.uint8).reshape(len(class_names), -1)
    root = find_cub_root(data_root)
    part_names = read_part_names(root)
    defining = _defining_attributes(root, set(concept_names))
    return class_names, concept_names, part_names, class_concepts, defining


def _describe_mnist(data_root: Path, json_root: Path, fix: str) -> tuple:
    class_names, concept_names, part_names = list(MNIST_CLASS_NAMES), list(MNIST_CONCEPT_NAMES), []
    class_concepts = np.array([[int(d % 2 == k) for d in range(10)] for k in range(2)], dtype=np.uint8)
    defining = {c: [n for d, n in enumerate(concept_names) if d % 2 == k] for k, c in enumerate(class_names)}
    return class_names, concept_names, part_names, class_concepts, defining


def _describe_mnist_digits(data_root: Path, json_root: Path, fix: str) -> tuple:
    class_names = list(MNIST_CONCEPT_NAMES)  # the digits' names are the classes
    return class_names, [], [], np.zeros((len(class_names), 0), dtype=np.uint8), None


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset: how it is prepared, checked, loaded and augmented.

    builder(data_root, json_root, split, transform, *, train, img_size, cache, seed) -> one split's Dataset;
    describe(data_root, json_root, fix) -> (class_names, concept_names, part_names, class_concepts, defining).
    prep_command is formatted with data_root and json_root. train_scale is the random-resized-crop scale of
    training augmentation (None: TrainTransform's default).
    """

    name: str
    builder: Callable
    describe: Callable
    mean: tuple
    std: tuple
    has_boxes: bool  # bbox is a real object box (not the whole image)
    has_parts: bool  # parts holds part locations (P > 0)
    has_concepts: bool  # concepts are known per class
    flips_allowed: bool  # a mirrored image is still an image of its class
    needed_files: tuple  # files in json_root that preparation writes
    cub_layout: bool  # data_root must hold a CUB-layout images.txt
    prep_command: str
    train_scale: tuple | None = None

    def prepare_command(self, data_root, json_root) -> str:
        """The command line that prepares this dataset in data_root / json_root."""
        return self.prep_command.format(data_root=data_root, json_root=json_root)


_CUB_FILES = ("splits.json", "concepts.json")
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("synthetic_cub", _build_cub_split, _describe_cub, IMAGENET_MEAN, IMAGENET_STD, has_boxes=True,
                has_parts=True, has_concepts=True, flips_allowed=True, needed_files=_CUB_FILES, cub_layout=True,
                prep_command="python scripts_data/make_synthetic_cub.py --out {data_root} && python "
                             "scripts_data/download_cub.py --src {data_root} --data_root {data_root} "
                             "--json_root {json_root}"),
    DatasetSpec("cub", _build_cub_split, _describe_cub, IMAGENET_MEAN, IMAGENET_STD, has_boxes=True, has_parts=True,
                has_concepts=True, flips_allowed=True, needed_files=_CUB_FILES, cub_layout=True,
                prep_command="python scripts_data/download_cub.py --src PATH/TO/CUB_200_2011.tgz "
                             "--data_root {data_root} --json_root {json_root}"),
    # MNIST digits are not flipped (a mirrored digit is another shape) and are cropped more gently
    # (scale 0.8-1) so that the digit survives.
    DatasetSpec("mnist_eo", _build_mnist_split, _describe_mnist, HALF_MEAN, HALF_STD, has_boxes=True,
                has_parts=False, has_concepts=True, flips_allowed=False, needed_files=("splits.json", "source.json"),
                cub_layout=False, prep_command="python scripts_data/download_mnist_E_O.py --data_root {data_root} "
                                               "--json_root {json_root}", train_scale=(0.8, 1.0)),
    # MNIST's ten digits (the Lottery Ticket paper's LeNet task), from the same prepared splits as mnist_eo:
    # the IDX files when present, scikit-learn's 8x8 digits upsampled otherwise; no concepts
    DatasetSpec("mnist", _build_mnist_digit_split, _describe_mnist_digits, HALF_MEAN, HALF_STD, has_boxes=True,
                has_parts=False, has_concepts=False, flips_allowed=False, needed_files=("splits.json", "source.json"),
                cub_layout=False, prep_command="python scripts_data/download_mnist_E_O.py --data_root {data_root} "
                                               "--json_root {json_root}", train_scale=(0.8, 1.0)),
    # ImageFolder trees (Imagenette): no boxes, parts or concepts (lottery_xai.data.folder)
    DatasetSpec("folder", _build_folder_split, _describe_folder, IMAGENET_MEAN, IMAGENET_STD, has_boxes=False,
                has_parts=False, has_concepts=False, flips_allowed=True, needed_files=("splits.json", "folder_index.json"),
                cub_layout=False, prep_command="python scripts_data/prepare_folder.py --data_root {data_root} "
                                               "--json_root {json_root}"),
)}
DATASET_NAMES = tuple(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset `name`; an unknown name is a one-line UserError with the close match."""
    if name not in DATASET_NAMES:
        raise unknown_name(f"unknown dataset {name!r}", name, DATASET_NAMES, n=1, cutoff=0.6,
                           otherwise=f"use one of {', '.join(DATASET_NAMES)}")
    return DATASETS[name]


def require_annotations(name: str, what: str, purpose: str) -> None:
    """A one-line UserError when dataset ``name`` has no ``what`` (``concepts``, ``boxes`` or ``parts``),
    which ``purpose`` (a step) needs."""
    spec = get_dataset(name)
    if not {"concepts": spec.has_concepts, "boxes": spec.has_boxes, "parts": spec.has_parts}[what]:
        raise UserError(f"{purpose} needs {what}, and dataset '{name}' has none; use a dataset with {what} "
                        f"(e.g. {', '.join(n for n, s in DATASETS.items() if getattr(s, 'has_' + what))}) or skip this step")


def _require_prepared(spec: DatasetSpec, data_root: Path, json_root: Path) -> None:
    for file in spec.needed_files:
        if not (json_root / file).is_file():
            raise UserError(f"missing {json_root / file}: run: {spec.prepare_command(data_root, json_root)}")
    if spec.cub_layout and find_cub_root(data_root) is None:
        raise UserError(f"no CUB-layout images.txt in {data_root}: run: {spec.prepare_command(data_root, json_root)}")


def build_transform(train: bool, img_size: int, mean, std, name: str = "cub"):
    """The box-aware transform for a split: random resized crop + flip for training, resize + centre crop otherwise.

    MNIST digits are not flipped (a mirrored digit is another shape) and are
    cropped more gently (scale 0.8-1) so that the digit survives.
    """
    if not train:
        return EvalTransform(img_size, mean, std)
    spec = DATASETS.get(name, DATASETS["cub"])  # as before: a name that is not registered is augmented like CUB
    options = {} if spec.train_scale is None else {"scale": spec.train_scale}
    return TrainTransform(img_size, mean, std, hflip=spec.flips_allowed, **options)


def build_datasets(name: str, data_root, json_root, img_size: int, splits=SPLITS, augment_train: bool = True,
                   seed: int = 0, cache: bool | None = None):
    """Datasets of the prepared dataset `name` (`synthetic_cub`, `cub`, `mnist_eo`, `mnist` or `folder`) for the given splits.

    Returns ({split: Dataset}, DatasetInfo). The train split gets augmentation
    when `augment_train`; the others get the eval transform. `seed` fixes the
    augmentation once `dataset.set_epoch(epoch)` is called; `cache` forces
    (True) or forbids (False) the in-memory image cache of CUB-style splits
    (default: splits under 5000 images).
    """
    spec = get_dataset(name)
    if int(img_size) != img_size or img_size < 8:
        raise UserError(f"img_size must be an integer >= 8, got {img_size!r}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise UserError(f"unknown split {unknown[0]!r}: use some of {', '.join(SPLITS)}")
    data_root, json_root = Path(data_root), Path(json_root)
    _require_prepared(spec, data_root, json_root)
    mean, std = spec.mean, spec.std
    fix = f"prepare it again: {spec.prepare_command(data_root, json_root)}"
    split_ids = check_splits(read_json_file(json_root / "splits.json", fix), json_root / "splits.json", fix)

    datasets = {}
    for split in splits:
        train = split == "train" and augment_train
        transform = build_transform(train, img_size, mean, std, name)
        datasets[split] = spec.builder(data_root, json_root, split, transform, train=train, img_size=img_size,
                                       cache=cache, seed=seed)

    class_names, concept_names, part_names, class_concepts, defining = spec.describe(data_root, json_root, fix)
    info = DatasetInfo(name=name, class_names=class_names, concept_names=concept_names, part_names=part_names,
                       num_classes=len(class_names), n_concepts=len(concept_names), mean=tuple(mean), std=tuple(std),
                       class_concepts=class_concepts, defining_attributes=defining, split_ids=split_ids)
    return datasets, info


def _defining_attributes(root: Path, kept: set) -> dict | None:
    """The synthetic data's ground truth (class -> defining attributes among the kept concepts), else None."""
    path = root / "class_attributes.json"
    if not path.is_file():
        return None
    truth = read_json_file(path, REDO).get("defining_attributes")
    if not isinstance(truth, dict) or not all(isinstance(v, list) for v in truth.values()):
        raise UserError(f"{path} has no defining_attributes mapping (class -> attribute names): {REDO}")
    return {cls: [a for a in attributes if a in kept] for cls, attributes in truth.items()}
