"""Synthetic birds-like dataset written in the CUB-200-2011 file layout.

No machine that tests this project can download CUB, so the embedded default
dataset is generated here: birds drawn with OpenCV from parts (body, head,
bill, wing, tail, crown, breast, eye, legs) on cluttered backgrounds (the
drawing is :mod:`lottery_xai.data.birds`; this module chooses the classes and
labels and writes the files). Each class is one value per attribute group
(bill shape, wing colour, ...), the drawing is faithful to the class, and the
per-image attribute labels are noisy like CUB's. The files follow CUB exactly, so `cub.prepare_cub` and
`cub.CUBDataset` read them unchanged, and `class_attributes.json` holds the
ground truth that makes explanations checkable.

Output is bit-identical for the same arguments: every random choice comes from
a `numpy.random.Generator` seeded by (seed, purpose, class, image).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lottery_xai.data.birds import PART_NAMES, render_bird_image
from lottery_xai.errors import UserError
from lottery_xai.safe_io import atomic_dir

# Attribute groups that define classes: group -> values (one per class).
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "bill_shape": ("hooked", "cone", "needle"),
    "wing_color": ("red", "blue", "yellow", "green"),
    "tail_shape": ("forked", "rounded", "pointed"),
    "crown_color": ("black", "white", "orange", "purple"),
    "breast_pattern": ("solid", "striped", "spotted"),
    "size": ("small", "large"),
}
# Values of the same groups that no class has: the majority filter must drop them.
DISTRACTOR_ATTRIBUTES = (
    "has_bill_shape::spatulate",
    "has_wing_color::iridescent",
    "has_tail_shape::fan-shaped",
)
# Drawn on every bird (a black eye): on for every class, carries no class information.
ALWAYS_ON_ATTRIBUTES = ("has_eye_color::black",)
# Labelled at random (30 % of each class's images), never drawn: dropped by the filter.
RANDOM_ATTRIBUTES = ("has_back_pattern::multi-colored", "has_leg_color::grey")
RANDOM_ATTRIBUTE_PREVALENCE = 0.3

# The default `min_classes` for the synthetic data: keeps every class attribute
# (each value is given to at least two classes when n_classes >= 8) and drops the
# distractors and the random attributes (on in no class).
SYNTHETIC_MIN_CLASSES = 2

CERTAINTIES = ("not visible", "guessing", "probably", "definitely")

BIRD_NAME = {"hooked": "Shrike", "cone": "Finch", "needle": "Warbler"}

# ----------------------------------------------------------------------------------------------
# CUB's 312 attributes (the CUB-scale attribute set, n_attributes=312)
# ----------------------------------------------------------------------------------------------

# CUB-200-2011's 28 attribute groups and their values in CUB's order (attributes.txt, ids 1..312); the
# values our birds draw are spelt as in ATTRIBUTE_GROUPS (CUB writes "forked_tail", "small_(5_-_9_in)").
_CUB_COLORS = ("blue", "brown", "iridescent", "purple", "rufous", "grey", "yellow", "olive", "green", "pink",
               "orange", "black", "white", "red", "buff")
_CUB_PATTERNS = ("solid", "spotted", "striped", "multi-colored")
CUB_ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "bill_shape": ("curved", "dagger", "hooked", "needle", "hooked_seabird", "spatulate", "all-purpose", "cone",
                   "specialized"),
    "wing_color": _CUB_COLORS,
    "upperparts_color": _CUB_COLORS,
    "underparts_color": _CUB_COLORS,
    "breast_pattern": _CUB_PATTERNS,
    "back_color": _CUB_COLORS,
    "tail_shape": ("forked", "rounded", "notched", "fan-shaped", "pointed", "squared"),
    "upper_tail_color": _CUB_COLORS,
    "head_pattern": ("spotted", "malar", "crested", "masked", "unique_pattern", "eyebrow", "eyering", "plain",
                     "eyeline", "striped", "capped"),
    "breast_color": _CUB_COLORS,
    "throat_color": _CUB_COLORS,
    "eye_color": tuple(c for c in _CUB_COLORS if c != "iridescent"),
    "bill_length": ("about_the_same_as_head", "longer_than_head", "shorter_than_head"),
    "forehead_color": _CUB_COLORS,
    "under_tail_color": _CUB_COLORS,
    "nape_color": _CUB_COLORS,
    "belly_color": _CUB_COLORS,
    "wing_shape": ("rounded-wings", "pointed-wings", "broad-wings", "tapered-wings", "long-wings"),
    "size": ("large", "small", "very_large", "medium", "very_small"),
    "shape": ("upright-perching_water-like", "chicken-like-marsh", "long-legged-like", "duck-like", "owl-like",
              "gull-like", "hummingbird-like", "pigeon-like", "tree-clinging-like", "hawk-like", "sandpiper-like",
              "upland-ground-like", "swallow-like", "perching-like"),
    "back_pattern": _CUB_PATTERNS,
    "tail_pattern": _CUB_PATTERNS,
    "belly_pattern": _CUB_PATTERNS,
    "primary_color": _CUB_COLORS,
    "leg_color": _CUB_COLORS,
    "bill_color": _CUB_COLORS,
    "crown_color": _CUB_COLORS,
    "wing_pattern": _CUB_PATTERNS,
}
# The groups the CUB-scale birds draw besides ATTRIBUTE_GROUPS' six (see data/birds.py): one value per class.
EXTRA_DRAWN_GROUPS: dict[str, tuple[str, ...]] = {
    "bill_color": ("black", "grey", "orange", "yellow"),
    "wing_pattern": ("solid", "striped", "spotted"),
    "head_pattern": ("plain", "eyebrow", "eyeline", "masked"),
    "throat_color": ("white", "black", "yellow", "rufous"),
}
# Label-only groups (CUB's other groups, never drawn): each class has one value, on in a share of its images
# drawn from LABEL_ON_PREVALENCE, the group's other values in a share drawn from LABEL_OFF_PREVALENCE; so the
# class-level majority vote keeps a class's value and drops the others. How many classes share a value follows
# Zipf's law (count of the r-th most common value ~ r ** -LABEL_POPULARITY_EXPONENT): common values are on in
# many classes and kept by the min_classes filter, rare ones are on in a few classes and dropped, as in CUB
# (the filter keeps 112 of CUB's 312 attributes at min_classes 10; this set keeps 115 at 200 classes).
LABEL_ON_PREVALENCE = (0.7, 1.0)
LABEL_OFF_PREVALENCE = (0.0, 0.3)
LABEL_POPULARITY_EXPONENT = 1.2
CUB_MIN_CLASSES = 10  # CUB's min_classes (Koh et al. 2020), the cap of the CUB-scale set's recommendation


@dataclass(frozen=True)
class AttributeSet:
    """The attributes of a synthetic dataset and the role of each.

    ``names``: every attribute in id order. ``drawn``: group -> values given to classes, one per class, and
    drawn (a class's defining attributes). ``label_only``: group -> values given to classes, one per class,
    labelled with a per-class prevalence and never drawn. ``always_on`` / ``random``: names on in every image /
    in RANDOM_ATTRIBUTE_PREVALENCE of each class's images. Every other name is a distractor (no class has it).
    ``max_classes``: the most classes it can tell apart. ``min_classes``: the cap of the recommended min_classes.
    """

    names: tuple[str, ...]
    drawn: dict
    label_only: dict
    always_on: tuple[str, ...]
    random: tuple[str, ...]
    max_classes: int
    min_classes: int

    @property
    def distractors(self) -> list[str]:
        used = {_name(g, v) for groups in (self.drawn, self.label_only) for g, values in groups.items() for v in values}
        used |= set(self.always_on) | set(self.random)
        return [name for name in self.names if name not in used]


def _name(group: str, value: str) -> str:
    return f"has_{group}::{value}"


DEFAULT_ATTRIBUTES = AttributeSet(
    names=tuple([_name(g, v) for g, values in ATTRIBUTE_GROUPS.items() for v in values] + list(DISTRACTOR_ATTRIBUTES)
                + list(ALWAYS_ON_ATTRIBUTES) + list(RANDOM_ATTRIBUTES)),
    drawn=ATTRIBUTE_GROUPS, label_only={}, always_on=ALWAYS_ON_ATTRIBUTES, random=RANDOM_ATTRIBUTES,
    max_classes=100, min_classes=SYNTHETIC_MIN_CLASSES)
_CUB_DRAWN = {**ATTRIBUTE_GROUPS, **EXTRA_DRAWN_GROUPS}
CUB_ATTRIBUTES = AttributeSet(
    names=tuple(_name(g, v) for g, values in CUB_ATTRIBUTE_GROUPS.items() for v in values),
    drawn=_CUB_DRAWN,
    label_only={g: values for g, values in CUB_ATTRIBUTE_GROUPS.items() if g not in _CUB_DRAWN and g != "eye_color"},
    always_on=ALWAYS_ON_ATTRIBUTES, random=(), max_classes=1000, min_classes=CUB_MIN_CLASSES)
ATTRIBUTE_SETS = {len(DEFAULT_ATTRIBUTES.names): DEFAULT_ATTRIBUTES, len(CUB_ATTRIBUTES.names): CUB_ATTRIBUTES}
DEFAULT_N_ATTRIBUTES = len(DEFAULT_ATTRIBUTES.names)  # 25
# CUB-200-2011's size (200 classes, 11,788 images, 312 attributes, about half of each class for training):
# the scale benchmark's dataset.
CUB_SCALE = {"n_classes": 200, "images_per_class": 60, "n_attributes": len(CUB_ATTRIBUTES.names), "train_fraction": 0.5}


def attribute_set(n_attributes: int = DEFAULT_N_ATTRIBUTES) -> AttributeSet:
    """The attribute set with this many attributes: 25 (the default birds) or 312 (CUB's attributes)."""
    if n_attributes not in ATTRIBUTE_SETS:
        raise UserError(f"n_attributes={n_attributes}: the synthetic generator has {DEFAULT_N_ATTRIBUTES} "
                        f"(the default birds) or {len(CUB_ATTRIBUTES.names)} attributes (CUB's)")
    return ATTRIBUTE_SETS[n_attributes]


def attribute_names(n_attributes: int = DEFAULT_N_ATTRIBUTES) -> list[str]:
    """All attribute names in id order (1-based ids follow this order)."""
    return list(attribute_set(n_attributes).names)


@dataclass(frozen=True)
class SyntheticClass:
    """One class: its CUB-style folder name, one value per drawn group and one per label-only group."""

    name: str
    values: dict
    label_values: dict = field(default_factory=dict)

    @property
    def attributes(self) -> list[str]:
        """The class's defining (drawn) attribute names (one per group)."""
        return [_name(group, value) for group, value in self.values.items()]

    @property
    def label_attributes(self) -> list[str]:
        """The class's label-only attribute names (one per label-only group; none in the default set)."""
        return [_name(group, value) for group, value in self.label_values.items()]


def _assignment_conflicts(table: np.ndarray, colour_columns: tuple[int, int] | None) -> tuple[int, np.ndarray]:
    """(number of violations, classes involved) for a [classes, groups] table of value indices."""
    same = table[:, None, :] == table[None, :, :]
    differences = (~same).sum(-1)
    np.fill_diagonal(differences, table.shape[1])
    bad = differences < 2
    if colour_columns is not None:
        wing, crown = colour_columns
        colour_clash = same[:, :, wing] & same[:, :, crown]
        np.fill_diagonal(colour_clash, False)
        bad |= colour_clash
    return int(bad.sum()) // 2, np.flatnonzero(bad.any(1))


def _zipf_counts(n: int, n_values: int, exponent: float) -> np.ndarray:
    """n split over n_values in proportion to rank ** -exponent (largest remainders round)."""
    weights = np.arange(1, n_values + 1, dtype=np.float64) ** -exponent
    quota = n * weights / weights.sum()
    counts = np.floor(quota).astype(np.int64)
    counts[np.argsort(-(quota - counts), kind="stable")[: n - int(counts.sum())]] += 1
    return counts


def assign_class_attributes(n_classes: int, seed: int = 0, max_steps: int = 20000,
                            n_attributes: int = DEFAULT_N_ATTRIBUTES) -> list[SyntheticClass]:
    """Choose one value per drawn group (and per label-only group) for each class, deterministically from `seed`.

    Guarantees: any two classes differ in at least 2 drawn groups; drawn values are spread
    evenly over classes (so each value is used by >= 2 classes when n_classes >= 8); while
    n_classes <= 16, no two classes share both the wing and the crown colour, so colour alone
    tells the classes apart. Label-only values (n_attributes=312) are shared as LABEL_POPULARITY_EXPONENT says.
    """
    attributes = attribute_set(n_attributes)
    if not 2 <= n_classes <= attributes.max_classes:
        more = "" if attributes.max_classes == CUB_ATTRIBUTES.max_classes else \
            f" (up to {CUB_ATTRIBUTES.max_classes} with {len(CUB_ATTRIBUTES.names)} attributes)"
        raise UserError(f"n_classes={n_classes} is out of range: use 2 to {attributes.max_classes} synthetic "
                        f"classes{more}")
    drawn = attributes.drawn
    rng = np.random.default_rng([seed, 101])
    groups = list(drawn)
    unique_colours = n_classes <= len(drawn["wing_color"]) * len(drawn["crown_color"])
    colour_columns = (groups.index("wing_color"), groups.index("crown_color")) if unique_colours else None
    # Even spread: each column repeats its values cyclically, then is shuffled.
    table = np.stack([rng.permutation(np.arange(n_classes) % len(drawn[g])) for g in groups], axis=1)
    conflicts, involved = _assignment_conflicts(table, colour_columns)
    # Local search: swapping two classes' values within a group keeps the spread even.
    for _ in range(max_steps):
        if conflicts == 0:
            break
        i = int(rng.choice(involved))
        j, g = int(rng.integers(n_classes)), int(rng.integers(len(groups)))
        table[[i, j], g] = table[[j, i], g]
        new_conflicts, new_involved = _assignment_conflicts(table, colour_columns)
        if new_conflicts <= conflicts:
            conflicts, involved = new_conflicts, new_involved
        else:
            table[[i, j], g] = table[[j, i], g]
    if conflicts:
        raise UserError(f"could not find {n_classes} distinct synthetic classes: use fewer classes")
    # Label-only groups: a random popularity order of the values, Zipf counts, the classes shuffled.
    label_rng = np.random.default_rng([seed, 102])
    label_table = {}
    for group, values in attributes.label_only.items():
        ranked = label_rng.permutation(len(values))
        label_table[group] = label_rng.permutation(np.repeat(ranked, _zipf_counts(n_classes, len(values),
                                                                                   LABEL_POPULARITY_EXPONENT)))
    classes, used = [], set()
    for c in range(n_classes):
        values = {g: drawn[g][table[c, k]] for k, g in enumerate(groups)}
        bird = BIRD_NAME[values["bill_shape"]]
        base = f"{values['wing_color'].title()}_winged_{values['crown_color'].title()}_crowned_{bird}"
        name = base if base not in used else f"{base}_{c + 1}"
        used.add(name)
        label_values = {g: attributes.label_only[g][column[c]] for g, column in label_table.items()}
        classes.append(SyntheticClass(name=name, values=values, label_values=label_values))
    return classes


# ----------------------------------------------------------------------------------------------
# Labels and files
# ----------------------------------------------------------------------------------------------

def _exact_subset(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """Boolean mask with round(fraction * n) (stochastically rounded) True entries at random places."""
    count = int(math.floor(fraction * n + rng.random()))
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:count]] = True
    return mask


def noisy_attribute_labels(classes: list[SyntheticClass], images_per_class: int, seed: int,
                           flip_probability: float = 0.1, n_attributes: int = DEFAULT_N_ATTRIBUTES) -> np.ndarray:
    """Per-image 0/1 labels [n_images, n_attributes], noisy like CUB's.

    Each (class, attribute) has ~flip_probability of its image labels flipped,
    drawn as an exact count per class so the class-level majority vote recovers
    the class attributes at any dataset size. Label-only attributes (n_attributes=312)
    are first on in a share of the class's images drawn from LABEL_ON_PREVALENCE
    (the class's value) or LABEL_OFF_PREVALENCE (the group's other values).
    """
    attributes = attribute_set(n_attributes)
    names = attributes.names
    label_only = {_name(g, v) for g, values in attributes.label_only.items() for v in values}
    always_on, random = set(attributes.always_on), set(attributes.random)
    rng = np.random.default_rng([seed, 202])
    prevalence_rng = np.random.default_rng([seed, 203])  # its own stream: the default set's labels stay as they were
    labels = np.zeros((len(classes) * images_per_class, len(names)), dtype=np.uint8)
    for c, cls in enumerate(classes):
        rows = slice(c * images_per_class, (c + 1) * images_per_class)
        truth = np.zeros((images_per_class, len(names)), dtype=bool)
        defining, own_labels = set(cls.attributes), set(cls.label_attributes)
        for a, name in enumerate(names):
            if name in defining or name in always_on:
                truth[:, a] = True
            elif name in random:
                truth[:, a] = _exact_subset(rng, images_per_class, RANDOM_ATTRIBUTE_PREVALENCE)
            elif name in label_only:
                low, high = LABEL_ON_PREVALENCE if name in own_labels else LABEL_OFF_PREVALENCE
                truth[:, a] = _exact_subset(rng, images_per_class, prevalence_rng.uniform(low, high))
            truth[:, a] ^= _exact_subset(rng, images_per_class, flip_probability)
        labels[rows] = truth
    return labels


def _write_text(path: Path, lines) -> None:
    """One line per item, each ended by a newline, written as they come (a CUB-scale table has millions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="\n") as handle:
        handle.writelines(f"{line}\n" for line in lines)


# Bump when the drawing or the labels change, so that an older dataset is not taken for this one.
GENERATOR_VERSION = 2


def _generation_settings(n_classes, images_per_class, image_size, seed, train_fraction,
                         n_attributes=DEFAULT_N_ATTRIBUTES) -> dict:
    settings = {"n_classes": n_classes, "images_per_class": images_per_class, "image_size": image_size,
                "seed": seed, "train_fraction": train_fraction}
    if n_attributes != DEFAULT_N_ATTRIBUTES:  # recorded only when not the default: a default dataset stays as it was
        settings["n_attributes"] = n_attributes
    return {**settings, "version": GENERATOR_VERSION}


def is_complete(out: str | os.PathLike, **settings) -> bool:
    """True when `out` holds a finished synthetic dataset made with exactly these settings."""
    marker = Path(out) / "class_attributes.json"
    if not marker.is_file():
        return False
    try:
        truth = json.loads(marker.read_bytes().decode("utf-8"))
    except ValueError:  # a truncated or binary marker: not this dataset (regenerating it needs --overwrite)
        return False
    return isinstance(truth, dict) and truth.get("generator") == _generation_settings(**settings)


def generate_synthetic_cub(out: str | os.PathLike, n_classes: int = 12, images_per_class: int = 150,
                           image_size: int = 96, seed: int = 0, train_fraction: float = 0.6,
                           overwrite: bool = False, n_attributes: int = DEFAULT_N_ATTRIBUTES) -> dict:
    """Write the synthetic dataset to `out` in the CUB-200-2011 layout; returns a summary.

    ``n_attributes``: 25 (the default birds: 6 drawn groups) or 312 (CUB's 28 attribute groups:
    10 drawn, 17 label-only, see CUB_ATTRIBUTE_GROUPS; up to 1000 classes). The CUB-scale
    dataset of CUB's size is CUB_SCALE (200 classes x 60 images, 312 attributes, train_fraction 0.5).

    Skips the work when `out` already holds the same dataset. The dataset is
    built in a temporary sibling folder and renamed into place, so a killed run
    never leaves half a dataset behind.
    """
    if images_per_class < 2 or image_size < 32 or not 0 < train_fraction < 1:
        raise UserError("synthetic data needs images_per_class >= 2, image_size >= 32 and 0 < train_fraction < 1")
    attribute_set(n_attributes)  # a one-line error before anything is written
    out = Path(out)
    settings = _generation_settings(n_classes, images_per_class, image_size, seed, train_fraction, n_attributes)
    if is_complete(out, **{k: v for k, v in settings.items() if k != "version"}):
        return {"out": str(out), "skipped": True, "n_images": n_classes * images_per_class}
    if out.exists() and any(out.iterdir()) and not overwrite:
        if (out / "class_attributes.json").is_file():
            raise UserError(f"{out} holds a synthetic dataset made with other settings or an older generator: "
                            "pass --overwrite to regenerate it (then prepare it again) or choose another --out")
        raise UserError(f"{out} is not empty and holds no synthetic dataset: choose another --out or pass --overwrite")
    classes = assign_class_attributes(n_classes, seed, n_attributes=n_attributes)
    with atomic_dir(out) as tmp:
        _write_dataset(tmp, classes, images_per_class, image_size, seed, train_fraction, settings, n_attributes)
    return {"out": str(out), "skipped": False, "n_images": n_classes * images_per_class,
            "classes": [cls.name for cls in classes]}


def _write_dataset(root: Path, classes, images_per_class, size, seed, train_fraction, settings,
                   n_attributes=DEFAULT_N_ATTRIBUTES) -> None:
    attributes = attribute_set(n_attributes)
    names = attributes.names
    image_lines, label_lines, split_lines, box_lines, part_lines = [], [], [], [], []
    png = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # noisy pixels barely compress: favour speed
    image_id = 0
    for c, cls in enumerate(classes):
        folder = f"{c + 1:03d}.{cls.name}"
        (root / "images" / folder).mkdir(parents=True)
        split_rng = np.random.default_rng([seed, 303, c])
        is_train = _exact_subset(split_rng, images_per_class, train_fraction)
        for k in range(images_per_class):
            image_id += 1
            rng = np.random.default_rng([seed, 404, c, k])
            image, box, parts = render_bird_image(cls.values, size, rng)
            relative = f"{folder}/{cls.name}_{k + 1:04d}_{image_id}.png"
            if not cv2.imwrite(str(root / "images" / relative), image, png):
                raise OSError(f"could not write {root / 'images' / relative}")
            image_lines.append(f"{image_id} {relative}")
            label_lines.append(f"{image_id} {c + 1}")
            split_lines.append(f"{image_id} {int(is_train[k])}")
            box_lines.append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
            for p, (x, y, visible) in enumerate(parts):
                part_lines.append(f"{image_id} {p + 1} {x:.1f} {y:.1f} {int(visible)}")
    _write_text(root / "images.txt", image_lines)
    _write_text(root / "classes.txt", [f"{c + 1} {c + 1:03d}.{cls.name}" for c, cls in enumerate(classes)])
    _write_text(root / "image_class_labels.txt", label_lines)
    _write_text(root / "train_test_split.txt", split_lines)
    _write_text(root / "bounding_boxes.txt", box_lines)
    _write_text(root / "parts" / "parts.txt", [f"{p + 1} {name}" for p, name in enumerate(PART_NAMES)])
    _write_text(root / "parts" / "part_locs.txt", part_lines)

    attribute_lines = [f"{a + 1} {name}" for a, name in enumerate(names)]
    _write_text(root / "attributes.txt", attribute_lines)  # where the CUB archive keeps it
    _write_text(root / "attributes" / "attributes.txt", attribute_lines)
    _write_text(root / "attributes" / "certainties.txt", [f"{i + 1} {name}" for i, name in enumerate(CERTAINTIES)])
    labels = noisy_attribute_labels(classes, images_per_class, seed, n_attributes=n_attributes)
    rng = np.random.default_rng([seed, 505])
    certainty = rng.choice(np.arange(1, 5), size=labels.shape, p=[0.05, 0.15, 0.3, 0.5])
    seconds = rng.uniform(1.0, 20.0, size=labels.shape)

    def rows():  # image by image (Python numbers format as NumPy's do)
        for i, (present, sure, time) in enumerate(zip(labels.tolist(), certainty.tolist(), seconds.tolist())):
            yield from (f"{i + 1} {a + 1} {v} {k} {t:.3f}" for a, (v, k, t) in enumerate(zip(present, sure, time)))

    _write_text(root / "attributes" / "image_attribute_labels.txt", rows())
    percentages = 100.0 * labels.reshape(len(classes), images_per_class, -1).mean(1)
    _write_text(root / "attributes" / "class_attribute_labels_continuous.txt",
                [" ".join(f"{v:.12f}" for v in row) for row in percentages])

    usage = {name: sum(name in cls.attributes for cls in classes) for name in names}
    truth = {
        "classes": [cls.name for cls in classes],
        "defining_attributes": {cls.name: cls.attributes for cls in classes},
        "attribute_groups": {group: [_name(group, v) for v in values] for group, values in attributes.drawn.items()},
        "distractor_attributes": attributes.distractors,
        "always_on_attributes": list(attributes.always_on),
        "random_attributes": list(attributes.random),
    }
    if attributes.label_only:  # only in the CUB-scale set: the default's file stays as it was
        truth["label_only_groups"] = {group: [_name(group, v) for v in values]
                                      for group, values in attributes.label_only.items()}
        truth["label_only_attributes"] = {cls.name: cls.label_attributes for cls in classes}
    # Largest min_classes (up to the set's cap) that still keeps every drawn attribute used by some class.
    truth["recommended_min_classes"] = int(min(attributes.min_classes, min(v for v in usage.values() if v > 0)))
    truth["generator"] = settings
    # Written last: its presence marks a finished dataset.
    with open(root / "class_attributes.json", "w", newline="\n") as handle:
        json.dump(truth, handle, indent=1)
        handle.write("\n")


def prepare_synthetic_cub(data_root: str | os.PathLike, json_root: str | os.PathLike, seed: int = 0,
                          n_classes: int = 12, images_per_class: int = 150, image_size: int = 96,
                          train_fraction: float = 0.6, val_fraction: float = 0.1,
                          min_classes: int | None = None, n_attributes: int = DEFAULT_N_ATTRIBUTES) -> dict:
    """Generate the synthetic dataset into `data_root` (skipped when present) and prepare its splits and concepts.

    `min_classes=None` uses the dataset's recommended value (SYNTHETIC_MIN_CLASSES, CUB's 10 with
    n_attributes=312, unless some drawn value belongs to fewer classes).
    """
    from lottery_xai.data.cub import prepare_cub  # cub imports nothing from here; keep the dependency one-way

    generated = generate_synthetic_cub(data_root, n_classes=n_classes, images_per_class=images_per_class,
                                       image_size=image_size, seed=seed, train_fraction=train_fraction,
                                       n_attributes=n_attributes)
    summary = prepare_cub(None, data_root, json_root, seed=seed, val_fraction=val_fraction, min_classes=min_classes)
    summary["generated"] = not generated["skipped"]
    return summary


# ----------------------------------------------------------------------------------------------
# The same images in the ImageFolder layout (dataset: folder), so the folder loader is tested offline
# ----------------------------------------------------------------------------------------------

FOLDER_MARKER = "image_folder.json"


def write_image_folder(cub_root: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> dict:
    """Write the images of the CUB-layout dataset at ``cub_root`` to ``out`` in the ImageFolder layout:
    CUB's training images to ``train/<class folder>/``, its test images to ``val/<class folder>/`` (the
    folder loader splits them into val and test, as it does Imagenette's val), and ``classes.txt``
    (the class folder and its name). Files are hard links where the file system allows, else copies.
    Skipped when ``out`` already holds this export; built in a temporary sibling and renamed into place."""
    from lottery_xai.data.cub import find_cub_root, read_cub_tables  # cub imports nothing from here

    root = find_cub_root(cub_root)
    if root is None:
        raise UserError(f"no CUB-layout images.txt in {cub_root}: generate the synthetic dataset there first")
    tables = read_cub_tables(root)
    source = json.loads((root / "class_attributes.json").read_text()).get("generator") \
        if (root / "class_attributes.json").is_file() else None
    out = Path(out)
    marker = out / FOLDER_MARKER
    record = {"source": str(root.resolve()), "generator": source, "n_images": int(len(tables["ids"]))}
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == record:
                return {"out": str(out), "skipped": True, "n_images": record["n_images"]}
        except ValueError:
            pass
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty and holds no ImageFolder export of {root}: choose another folder "
                        "or pass --overwrite")
    with atomic_dir(out) as tmp:
        folders = sorted({Path(p).parent.name for p in tables["paths"]})
        for path, is_train in zip(tables["paths"], tables["is_train"]):
            target = tmp / ("train" if is_train else "val") / path  # path = <class folder>/<file>
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(root / "images" / path, target)
            except OSError:
                shutil.copyfile(root / "images" / path, target)
        names = {f: f.split(".", 1)[1] if "." in f and f.split(".", 1)[0].isdigit() else f for f in folders}
        _write_text(tmp / "classes.txt", [f"{f} {names[f]}" for f in folders])
        _write_text(tmp / FOLDER_MARKER, [json.dumps(record)])  # written last: marks a finished export
    return {"out": str(out), "skipped": False, "n_images": record["n_images"], "classes": folders}


def prepare_synthetic_folder(out: str | os.PathLike, json_root: str | os.PathLike, cub_root: str | os.PathLike | None = None,
                             seed: int = 0, test_fraction: float = 0.5, **generator) -> dict:
    """Generate the synthetic dataset (CUB layout, in ``cub_root``, default ``<out>_cub``), write it to ``out``
    in the ImageFolder layout and prepare it for ``dataset: folder`` in ``json_root``; the preparation summary."""
    from lottery_xai.data.folder import prepare_folder

    out = Path(out)
    cub_root = Path(cub_root) if cub_root is not None else out.parent / f"{out.name}_cub"
    generate_synthetic_cub(cub_root, seed=seed, **generator)
    exported = write_image_folder(cub_root, out)
    summary = prepare_folder(out, json_root, test_fraction=test_fraction, seed=seed)
    summary["exported"] = not exported["skipped"]
    return summary
