"""Synthetic birds-like dataset written in the CUB-200-2011 file layout.

No machine that tests this project can download CUB, so the embedded default
dataset is generated here: birds drawn with OpenCV from parts (body, head,
bill, wing, tail, crown, breast, eye, legs) on cluttered backgrounds. Each
class is one value per attribute group (bill shape, wing colour, ...), the
drawing is faithful to the class, and the per-image attribute labels are noisy
like CUB's. The files follow CUB exactly, so `cub.prepare_cub` and
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

from lottery_xai.errors import UserError
from lottery_xai.rundir import atomic_dir

# CUB's 15 parts, in CUB's order (part ids 1..15).
PART_NAMES = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
    "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat",
)

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

# RGB colours, chosen to stay apart at 64 px.
WING_RGB = {"red": (215, 35, 35), "blue": (35, 75, 225), "yellow": (240, 215, 35), "green": (35, 160, 55)}
CROWN_RGB = {"black": (20, 20, 20), "white": (245, 245, 245), "orange": (255, 135, 0), "purple": (180, 60, 240)}
BODY_RGB = ((125, 95, 65), (150, 125, 95), (115, 115, 110), (160, 150, 130), (95, 85, 75), (130, 120, 85))
BILL_RGB = (60, 55, 50)
BREAST_RGB = (235, 225, 200)
MARK_RGB = (70, 45, 25)
BIRD_NAME = {"hooked": "Shrike", "cone": "Finch", "needle": "Warbler"}

# Bird geometry in bird units (L = 1), facing +x, y down; extent used for placement.
_LOCAL_EXTENT = ((-0.66, -0.41), (0.70, 0.47))
_SUBPIXEL_SHIFT = 4  # cv2 fixed-point bits: smooth shapes at 64 px
_SCALE = 1 << _SUBPIXEL_SHIFT


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
    unique_colours = n_classes <= len(WING_RGB) * len(CROWN_RGB)
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
# Drawing
# ----------------------------------------------------------------------------------------------

def _jitter(rng: np.random.Generator, rgb, amount: int) -> tuple:
    """An RGB colour with a small per-channel jitter, as a BGR tuple for OpenCV."""
    r, g, b = (np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255)).tolist()
    return (b, g, r)


def _muted_bgr(rng: np.random.Generator) -> tuple:
    """A random low-saturation colour: clutter stays apart from the birds' saturated part colours."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(10, 110), rng.integers(60, 235)]]], dtype=np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cluttered background: colour gradient, smooth texture, lines and blobs, all class-independent."""
    c0 = np.array(_muted_bgr(rng), dtype=np.float32)
    c1 = np.array(_muted_bgr(rng), dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    coords = np.arange(size, dtype=np.float32) / max(size - 1, 1)
    t = np.float32(np.cos(angle)) * coords[None, :] + np.float32(np.sin(angle)) * coords[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0 + (c1 - c0) * t[..., None]
    # Mostly-luminance texture: colourful blotches would mimic the birds' part colours.
    coarse = (rng.normal(0, 22, (8, 8, 1)) + rng.normal(0, 7, (8, 8, 3))).astype(np.float32)
    image += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image += rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(6)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 15))):  # twigs and lines
        p0 = rng.uniform(-0.1, 1.1, 2) * size
        p1 = p0 + rng.normal(0, 0.4, 2) * size
        thickness = int(rng.integers(1, max(2, size // 32) + 1))
        cv2.line(image, _fixed(p0), _fixed(p1), _muted_bgr(rng), thickness, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    for _ in range(int(rng.integers(3, 9))):  # blobs, some translucent
        centre = rng.uniform(0, 1, 2) * size
        axes = rng.uniform(0.03, 0.18, 2) * size
        colour, tilt, alpha = _muted_bgr(rng), float(rng.uniform(0, 180)), float(rng.uniform(0.4, 1.0))
        # Blend only the blob's neighbourhood.
        r = int(math.ceil(axes.max())) + 2
        x0, y0 = max(int(centre[0]) - r, 0), max(int(centre[1]) - r, 0)
        x1, y1 = min(int(centre[0]) + r + 1, size), min(int(centre[1]) + r + 1, size)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = image[y0:y1, x0:x1]
        layer = roi.copy()
        cv2.ellipse(layer, _fixed(centre - (x0, y0)), _fixed(axes), tilt, 0, 360, colour, -1, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        image[y0:y1, x0:x1] = cv2.addWeighted(layer, alpha, roi, 1 - alpha, 0)
    return image


def _fixed(point) -> tuple:
    """Point (or size) in pixels -> OpenCV fixed-point integers."""
    return tuple(int(round(float(v) * _SCALE)) for v in point)


class _BirdPainter:
    """Draws shapes given in bird units onto the image and onto a mask (for the box)."""

    def __init__(self, image, centre, length, facing, angle):
        self.image = image
        self.mask = np.zeros(image.shape[:2], np.uint8)
        self.centre = np.asarray(centre, dtype=np.float64)
        self.length = float(length)
        self.facing = facing
        cos, sin = math.cos(angle), math.sin(angle)
        self.rotation = np.array([[cos, -sin], [sin, cos]])
        self.angle_deg = math.degrees(angle)

    def point(self, x, y) -> np.ndarray:
        """Bird units -> image coordinates in OpenCV's convention (pixel centres on integers)."""
        local = np.array([self.facing * x, y]) * self.length
        return self.centre + self.rotation @ local

    def polygon(self, points, colour):
        pts = np.array([[_fixed(self.point(x, y)) for x, y in points]], dtype=np.int32)
        cv2.fillPoly(self.image, pts, colour, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        cv2.fillPoly(self.mask, pts, 255, cv2.LINE_8, _SUBPIXEL_SHIFT)

    def ellipse(self, x, y, ax, ay, tilt_deg, colour):
        axes = (max(ax * self.length, 0.5), max(ay * self.length, 0.5))
        angle = self.angle_deg + self.facing * tilt_deg
        centre = _fixed(self.point(x, y))
        cv2.ellipse(self.image, centre, _fixed(axes), angle, 0, 360, colour, -1, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        cv2.ellipse(self.mask, centre, _fixed(axes), angle, 0, 360, 255, -1, cv2.LINE_8, _SUBPIXEL_SHIFT)

    def line(self, x0, y0, x1, y1, width, colour, mask=True):
        thickness = max(1, int(round(width * self.length)))
        p0, p1 = _fixed(self.point(x0, y0)), _fixed(self.point(x1, y1))
        cv2.line(self.image, p0, p1, colour, thickness, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        if mask:
            cv2.line(self.mask, p0, p1, 255, thickness, cv2.LINE_8, _SUBPIXEL_SHIFT)


def _draw_bird(painter: _BirdPainter, values: dict, rng: np.random.Generator) -> None:
    """Draw a bird facing +x from its parts; colours jittered per image, shapes set by the class."""
    neutral = _jitter(rng, BODY_RGB[int(rng.integers(len(BODY_RGB)))], 15)
    wing = _jitter(rng, WING_RGB[values["wing_color"]], 18)
    # The plumage is tinted with the wing colour and the flight feathers share it, so
    # colour (what a CNN picks up first) carries most of the class.
    body = tuple(int(0.45 * n + 0.55 * w) for n, w in zip(neutral, wing))
    tail_colour = tuple(int(c * 0.8) for c in wing)
    crown = _jitter(rng, CROWN_RGB[values["crown_color"]], 12)
    breast = _jitter(rng, BREAST_RGB, 12)
    mark = _jitter(rng, MARK_RGB, 10)
    bill = _jitter(rng, BILL_RGB, 10)
    leg = _jitter(rng, (90, 80, 70), 10)

    # Legs first (behind the body).
    painter.line(-0.02, 0.15, -0.06, 0.44, 0.035, leg)
    painter.line(0.08, 0.15, 0.10, 0.44, 0.035, leg)
    painter.line(-0.12, 0.44, 0.0, 0.44, 0.03, leg)
    painter.line(0.04, 0.44, 0.16, 0.44, 0.03, leg)

    tail = values["tail_shape"]
    if tail == "forked":
        painter.polygon([(-0.25, -0.04), (-0.62, -0.20), (-0.46, 0.0), (-0.62, 0.18), (-0.25, 0.08)], tail_colour)
    elif tail == "rounded":
        painter.ellipse(-0.42, 0.02, 0.2, 0.1, -8, tail_colour)
    else:  # pointed
        painter.polygon([(-0.25, -0.05), (-0.64, 0.03), (-0.25, 0.09)], tail_colour)

    painter.ellipse(0.0, 0.04, 0.33, 0.2, -12, body)
    # Breast: a lighter patch on the front-bottom of the body, with its pattern.
    painter.ellipse(0.15, 0.09, 0.15, 0.11, -25, breast)
    pattern = values["breast_pattern"]
    if pattern == "striped":
        for k in range(4):
            x = 0.07 + 0.055 * k
            painter.line(x, 0.02 + 0.015 * k, x - 0.02, 0.16, 0.022, mark, mask=False)
    elif pattern == "spotted":
        for dx, dy in ((0.09, 0.05), (0.17, 0.03), (0.13, 0.11), (0.21, 0.10), (0.08, 0.14), (0.2, 0.16)):
            painter.ellipse(dx, dy, 0.022, 0.022, 0, mark)

    painter.polygon([(-0.26, -0.09), (0.02, -0.15), (0.2, -0.09), (0.1, 0.1), (-0.14, 0.16), (-0.4, 0.07)], wing)

    painter.ellipse(0.30, -0.19, 0.16, 0.15, 0, neutral)  # head
    painter.ellipse(0.28, -0.25, 0.17, 0.115, -10, crown)  # crown cap over the top of the head

    shape = values["bill_shape"]
    if shape == "hooked":
        painter.polygon([(0.42, -0.24), (0.58, -0.22), (0.60, -0.14), (0.55, -0.17), (0.42, -0.15)], bill)
    elif shape == "cone":
        painter.polygon([(0.41, -0.26), (0.53, -0.19), (0.41, -0.12)], bill)
    else:  # needle
        painter.polygon([(0.42, -0.21), (0.70, -0.185), (0.42, -0.165)], bill)

    painter.ellipse(0.35, -0.22, 0.035, 0.035, 0, (235, 235, 235))  # eye ring
    painter.ellipse(0.35, -0.22, 0.022, 0.022, 0, (10, 10, 10))  # black eye (always on)


# Part positions in bird units (facing +x). Side parts: "near" is visible, "far" hidden.
_PART_LOCAL = {
    "back": (-0.10, -0.13), "belly": (-0.02, 0.19), "breast": (0.15, 0.09), "crown": (0.28, -0.30),
    "forehead": (0.40, -0.28), "nape": (0.17, -0.24), "tail": (-0.47, 0.02), "throat": (0.38, -0.08),
    "eye": (0.35, -0.22), "leg": (0.03, 0.36), "wing": (-0.08, 0.01),
}
_BEAK_LOCAL = {"hooked": (0.52, -0.19), "cone": (0.46, -0.19), "needle": (0.56, -0.19)}


def _part_locations(painter: _BirdPainter, values: dict, size: int) -> np.ndarray:
    """[15, 3] (x, y, visible) in continuous pixel coordinates (pixel j spans [j, j+1))."""
    # Facing +x shows the bird's right side; facing -x its left side.
    near, far = ("right", "left") if painter.facing > 0 else ("left", "right")
    parts = np.zeros((len(PART_NAMES), 3), dtype=np.float64)
    for index, name in enumerate(PART_NAMES):
        side, _, base = name.partition(" ")
        if name == "beak":
            local = _BEAK_LOCAL[values["bill_shape"]]
        elif base:  # a left/right part
            if side == far and base in ("eye", "wing"):
                continue  # hidden behind the bird: CUB writes 0 0 0
            local = _PART_LOCAL[base]
            if base == "leg" and side == far:
                local = (local[0] - 0.05, local[1])
            elif base == "leg":
                local = (local[0] + 0.05, local[1])
        else:
            local = _PART_LOCAL[name]
        x, y = painter.point(*local) + 0.5  # OpenCV pixel centres are integers
        if 0 <= x < size and 0 <= y < size:
            parts[index] = (x, y, 1)
    return parts


def render_bird_image(values: dict, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image of a bird with the given attribute values.

    Returns (BGR uint8 image [size, size, 3], box [x, y, width, height] in
    continuous pixel coordinates, parts [15, 3] as (x, y, visible)).
    """
    image = _background(rng, size)
    small = values["size"] == "small"
    fraction = rng.uniform(0.42, 0.56) if small else rng.uniform(0.64, 0.8)  # drawn extent: 85-100 % of this
    width_units = _LOCAL_EXTENT[1][0] - _LOCAL_EXTENT[0][0]
    length = fraction * size / width_units
    facing = 1 if rng.random() < 0.5 else -1
    angle = math.radians(rng.uniform(-12, 12))
    # Place the bird so that its whole extent (rotated) stays inside the image.
    probe = _BirdPainter(image, (0.0, 0.0), length, facing, angle)
    (x0, y0), (x1, y1) = _LOCAL_EXTENT
    corners = np.array([probe.point(x, y) for x in (x0, x1) for y in (y0, y1)])
    low, high = -corners.min(0) + 1, size - 2 - corners.max(0)
    centre = np.array([rng.uniform(lo, max(lo, hi)) for lo, hi in zip(low, high)])
    if rng.random() < 0.6:  # a perch under the feet, part of the background
        perch_y = centre[1] + math.cos(angle) * 0.46 * length
        cv2.line(image, _fixed((rng.uniform(-0.1, 0.3) * size, perch_y)),
                 _fixed((rng.uniform(0.7, 1.1) * size, perch_y + rng.normal(0, 2))),
                 _jitter(rng, (100, 75, 50), 20), max(1, size // 40), cv2.LINE_AA, _SUBPIXEL_SHIFT)
    painter = _BirdPainter(image, centre, length, facing, angle)
    _draw_bird(painter, values, rng)
    rows = np.flatnonzero(painter.mask.any(1))
    cols = np.flatnonzero(painter.mask.any(0))
    box = np.array([cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]], dtype=np.float64)
    parts = _part_locations(painter, values, size)
    # A little global brightness and contrast variation.
    gain, bias = rng.uniform(0.85, 1.1), rng.uniform(-12, 12)
    image = np.clip(image.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    return image, box, parts


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
