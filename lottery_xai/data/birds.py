"""Drawing of the synthetic birds (:mod:`lottery_xai.data.synthetic` writes them in CUB's file layout).

A bird is drawn with OpenCV from parts (body, head, bill, wing, tail, crown,
breast, eye, legs) on a cluttered, class-independent background. The drawing is
set by the class's attribute values (``values``: attribute group -> value, e.g.
``{"bill_shape": "hooked", "wing_color": "red", ...}``); every per-image choice
(placement, pose, colour jitter, clutter) comes from the ``numpy.random.Generator``
passed in, so an image is bit-identical for the same values, size and generator state.

Six groups are always drawn (bill shape, wing colour, tail shape, crown colour,
breast pattern, size). Four more are drawn when ``values`` has them (the
CUB-scale attribute set of the generator): bill colour, wing pattern, head
pattern and throat colour; without them the bird is drawn exactly as before
(same shapes, same random draws).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# CUB's 15 parts, in CUB's order (part ids 1..15).
PART_NAMES = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
    "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat",
)

# RGB colours, chosen to stay apart at 64 px.
WING_RGB = {"red": (215, 35, 35), "blue": (35, 75, 225), "yellow": (240, 215, 35), "green": (35, 160, 55)}
CROWN_RGB = {"black": (20, 20, 20), "white": (245, 245, 245), "orange": (255, 135, 0), "purple": (180, 60, 240)}
BODY_RGB = ((125, 95, 65), (150, 125, 95), (115, 115, 110), (160, 150, 130), (95, 85, 75), (130, 120, 85))
BILL_RGB = (60, 55, 50)
BREAST_RGB = (235, 225, 200)
MARK_RGB = (70, 45, 25)
# The optional groups (drawn only when the values name them).
BILL_COLOR_RGB = {"black": (35, 30, 28), "grey": (150, 150, 150), "orange": (245, 125, 20), "yellow": (240, 200, 30)}
THROAT_RGB = {"white": (245, 245, 240), "black": (25, 25, 25), "yellow": (245, 210, 40), "rufous": (185, 80, 30)}
WING_PATTERNS = ("solid", "striped", "spotted")
HEAD_PATTERNS = ("plain", "eyebrow", "eyeline", "masked")
# Head marks lie on the crown cap: pale on a dark crown, dark on a light one, so that they show on every crown.
HEAD_MARK_RGB = {"pale": (245, 245, 235), "dark": (20, 20, 20)}

# Bird geometry in bird units (L = 1), facing +x, y down; extent used for placement.
_LOCAL_EXTENT = ((-0.66, -0.41), (0.70, 0.47))
_SUBPIXEL_SHIFT = 4  # cv2 fixed-point bits: smooth shapes at 64 px
_SCALE = 1 << _SUBPIXEL_SHIFT


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
    bill = _jitter(rng, BILL_COLOR_RGB[values["bill_color"]] if "bill_color" in values else BILL_RGB, 10)
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
    wing_pattern, head_pattern = values.get("wing_pattern", "solid"), values.get("head_pattern", "plain")
    if wing_pattern not in WING_PATTERNS or head_pattern not in HEAD_PATTERNS:
        raise ValueError(f"cannot draw wing pattern {wing_pattern!r} / head pattern {head_pattern!r}")
    # Optional wing pattern, pale like the breast: two wing bars or pale spots.
    if wing_pattern == "striped":
        painter.line(0.05, -0.12, -0.02, 0.10, 0.03, breast, mask=False)
        painter.line(-0.07, -0.10, -0.14, 0.12, 0.03, breast, mask=False)
    elif wing_pattern == "spotted":
        for dx, dy in ((0.06, -0.06), (-0.04, -0.02), (0.08, 0.03), (-0.14, 0.02), (-0.02, 0.07), (-0.22, 0.05)):
            painter.ellipse(dx, dy, 0.022, 0.022, 0, breast)

    painter.ellipse(0.30, -0.19, 0.16, 0.15, 0, neutral)  # head
    if "throat_color" in values:  # optional throat patch under the bill
        painter.ellipse(0.37, -0.09, 0.07, 0.045, -20, _jitter(rng, THROAT_RGB[values["throat_color"]], 12))
    painter.ellipse(0.28, -0.25, 0.17, 0.115, -10, crown)  # crown cap over the top of the head
    # Optional head pattern: a stripe over the eye, a line through it, or a mask around it.
    if head_pattern != "plain":
        red, green, blue = CROWN_RGB[values["crown_color"]]
        luma = 0.299 * red + 0.587 * green + 0.114 * blue
        head_mark = HEAD_MARK_RGB["pale" if luma < 128 else "dark"][::-1]  # BGR for OpenCV
        if head_pattern == "eyebrow":
            painter.line(0.25, -0.27, 0.44, -0.265, 0.03, head_mark, mask=False)
        elif head_pattern == "eyeline":
            painter.line(0.20, -0.215, 0.45, -0.225, 0.03, head_mark, mask=False)
        elif head_pattern == "masked":
            painter.ellipse(0.35, -0.215, 0.085, 0.055, -5, head_mark)

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

