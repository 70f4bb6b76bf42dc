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
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lottery_xai.data.birds import PART_NAMES, render_bird_image
from lottery_xai.errors import UserError
from lottery_xai.rundir import atomic_dir

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


def attribute_names() -> list[str]:
    """All attribute names in id order (1-based ids follow this order)."""
    names = [f"has_{group}::{value}" for group, values in ATTRIBUTE_GROUPS.items() for value in values]
    return names + list(DISTRACTOR_ATTRIBUTES) + list(ALWAYS_ON_ATTRIBUTES) + list(RANDOM_ATTRIBUTES)


@dataclass(frozen=True)
class SyntheticClass:
    """One class: its CUB-style folder name and one value per attribute group."""

    name: str
    values: dict

    @property
    def attributes(self) -> list[str]:
        """The class's defining attribute names (one per group)."""
        return [f"has_{group}::{value}" for group, value in self.values.items()]


def _assignment_conflicts(table: np.ndarray, unique_colours: bool) -> tuple[int, np.ndarray]:
    """(number of violations, classes involved) for a [classes, groups] table of value indices."""
    same = table[:, None, :] == table[None, :, :]
    differences = (~same).sum(-1)
    np.fill_diagonal(differences, table.shape[1])
    bad = differences < 2
    if unique_colours:
        wing, crown = list(ATTRIBUTE_GROUPS).index("wing_color"), list(ATTRIBUTE_GROUPS).index("crown_color")
        colour_clash = same[:, :, wing] & same[:, :, crown]
        np.fill_diagonal(colour_clash, False)
        bad |= colour_clash
    return int(bad.sum()) // 2, np.flatnonzero(bad.any(1))


def assign_class_attributes(n_classes: int, seed: int = 0, max_steps: int = 20000) -> list[SyntheticClass]:
    """Choose one value per group for each class, deterministically from `seed`.

    Guarantees: any two classes differ in at least 2 groups; values are spread
    evenly over classes (so each value is used by >= 2 classes when
    n_classes >= 8); while n_classes <= 16, no two classes share both the wing
    and the crown colour, so colour alone tells the classes apart.
    """
    if not 2 <= n_classes <= 100:
        raise UserError(f"n_classes={n_classes} is out of range: use 2 to 100 synthetic classes")
    rng = np.random.default_rng([seed, 101])
    groups = list(ATTRIBUTE_GROUPS)
    unique_colours = n_classes <= len(ATTRIBUTE_GROUPS["wing_color"]) * len(ATTRIBUTE_GROUPS["crown_color"])
    # Even spread: each column repeats its values cyclically, then is shuffled.
    table = np.stack([rng.permutation(np.arange(n_classes) % len(ATTRIBUTE_GROUPS[g])) for g in groups], axis=1)
    conflicts, involved = _assignment_conflicts(table, unique_colours)
    # Local search: swapping two classes' values within a group keeps the spread even.
    for _ in range(max_steps):
        if conflicts == 0:
            break
        i = int(rng.choice(involved))
        j, g = int(rng.integers(n_classes)), int(rng.integers(len(groups)))
        table[[i, j], g] = table[[j, i], g]
        new_conflicts, new_involved = _assignment_conflicts(table, unique_colours)
        if new_conflicts <= conflicts:
            conflicts, involved = new_conflicts, new_involved
        else:
            table[[i, j], g] = table[[j, i], g]
    if conflicts:
        raise UserError(f"could not find {n_classes} distinct synthetic classes: use fewer classes")
    classes, used = [], set()
    for c in range(n_classes):
        values = {g: ATTRIBUTE_GROUPS[g][table[c, k]] for k, g in enumerate(groups)}
        bird = BIRD_NAME[values["bill_shape"]]
        base = f"{values['wing_color'].title()}_winged_{values['crown_color'].title()}_crowned_{bird}"
        name = base if base not in used else f"{base}_{c + 1}"
        used.add(name)
        classes.append(SyntheticClass(name=name, values=values))
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
                           flip_probability: float = 0.1) -> np.ndarray:
    """Per-image 0/1 labels [n_images, n_attributes], noisy like CUB's.

    Each (class, attribute) has ~flip_probability of its image labels flipped,
    drawn as an exact count per class so the class-level majority vote recovers
    the class attributes at any dataset size.
    """
    names = attribute_names()
    rng = np.random.default_rng([seed, 202])
    labels = np.zeros((len(classes) * images_per_class, len(names)), dtype=np.uint8)
    for c, cls in enumerate(classes):
        rows = slice(c * images_per_class, (c + 1) * images_per_class)
        truth = np.zeros((images_per_class, len(names)), dtype=bool)
        for a, name in enumerate(names):
            if name in cls.attributes or name in ALWAYS_ON_ATTRIBUTES:
                truth[:, a] = True
            elif name in RANDOM_ATTRIBUTES:
                truth[:, a] = _exact_subset(rng, images_per_class, RANDOM_ATTRIBUTE_PREVALENCE)
            truth[:, a] ^= _exact_subset(rng, images_per_class, flip_probability)
        labels[rows] = truth
    return labels


def _write_text(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="\n") as handle:
        handle.write("\n".join(lines) + "\n")


# Bump when the drawing or the labels change, so that an older dataset is not taken for this one.
GENERATOR_VERSION = 2


def _generation_settings(n_classes, images_per_class, image_size, seed, train_fraction) -> dict:
    return {"n_classes": n_classes, "images_per_class": images_per_class, "image_size": image_size,
            "seed": seed, "train_fraction": train_fraction, "version": GENERATOR_VERSION}


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
                           overwrite: bool = False) -> dict:
    """Write the synthetic dataset to `out` in the CUB-200-2011 layout; returns a summary.

    Skips the work when `out` already holds the same dataset. The dataset is
    built in a temporary sibling folder and renamed into place, so a killed run
    never leaves half a dataset behind.
    """
    if images_per_class < 2 or image_size < 32 or not 0 < train_fraction < 1:
        raise UserError("synthetic data needs images_per_class >= 2, image_size >= 32 and 0 < train_fraction < 1")
    out = Path(out)
    settings = _generation_settings(n_classes, images_per_class, image_size, seed, train_fraction)
    if is_complete(out, **{k: v for k, v in settings.items() if k != "version"}):
        return {"out": str(out), "skipped": True, "n_images": n_classes * images_per_class}
    if out.exists() and any(out.iterdir()) and not overwrite:
        if (out / "class_attributes.json").is_file():
            raise UserError(f"{out} holds a synthetic dataset made with other settings or an older generator: "
                            "pass --overwrite to regenerate it (then prepare it again) or choose another --out")
        raise UserError(f"{out} is not empty and holds no synthetic dataset: choose another --out or pass --overwrite")
    classes = assign_class_attributes(n_classes, seed)
    with atomic_dir(out) as tmp:
        _write_dataset(tmp, classes, images_per_class, image_size, seed, train_fraction, settings)
    return {"out": str(out), "skipped": False, "n_images": n_classes * images_per_class,
            "classes": [cls.name for cls in classes]}


def _write_dataset(root: Path, classes, images_per_class, size, seed, train_fraction, settings) -> None:
    names = attribute_names()
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
    labels = noisy_attribute_labels(classes, images_per_class, seed)
    rng = np.random.default_rng([seed, 505])
    certainty = rng.choice(np.arange(1, 5), size=labels.shape, p=[0.05, 0.15, 0.3, 0.5])
    seconds = rng.uniform(1.0, 20.0, size=labels.shape)
    rows = []
    for i in range(labels.shape[0]):
        for a in range(labels.shape[1]):
            rows.append(f"{i + 1} {a + 1} {labels[i, a]} {certainty[i, a]} {seconds[i, a]:.3f}")
    _write_text(root / "attributes" / "image_attribute_labels.txt", rows)
    percentages = 100.0 * labels.reshape(len(classes), images_per_class, -1).mean(1)
    _write_text(root / "attributes" / "class_attribute_labels_continuous.txt",
                [" ".join(f"{v:.12f}" for v in row) for row in percentages])

    usage = {name: sum(name in cls.attributes for cls in classes) for name in names}
    truth = {
        "classes": [cls.name for cls in classes],
        "defining_attributes": {cls.name: cls.attributes for cls in classes},
        "attribute_groups": {group: [f"has_{group}::{v}" for v in values] for group, values in ATTRIBUTE_GROUPS.items()},
        "distractor_attributes": list(DISTRACTOR_ATTRIBUTES),
        "always_on_attributes": list(ALWAYS_ON_ATTRIBUTES),
        "random_attributes": list(RANDOM_ATTRIBUTES),
        # Largest min_classes that still keeps every class attribute used by some class.
        "recommended_min_classes": int(min(SYNTHETIC_MIN_CLASSES, min(v for v in usage.values() if v > 0))),
        "generator": settings,
    }
    # Written last: its presence marks a finished dataset.
    with open(root / "class_attributes.json", "w", newline="\n") as handle:
        json.dump(truth, handle, indent=1)
        handle.write("\n")


def prepare_synthetic_cub(data_root: str | os.PathLike, json_root: str | os.PathLike, seed: int = 0,
                          n_classes: int = 12, images_per_class: int = 150, image_size: int = 96,
                          train_fraction: float = 0.6, val_fraction: float = 0.1,
                          min_classes: int | None = None) -> dict:
    """Generate the synthetic dataset into `data_root` (skipped when present) and prepare its splits and concepts.

    `min_classes=None` uses the dataset's recommended value (SYNTHETIC_MIN_CLASSES
    unless some attribute value belongs to a single class).
    """
    from lottery_xai.data.cub import prepare_cub  # cub imports nothing from here; keep the dependency one-way

    generated = generate_synthetic_cub(data_root, n_classes=n_classes, images_per_class=images_per_class,
                                       image_size=image_size, seed=seed, train_fraction=train_fraction)
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
