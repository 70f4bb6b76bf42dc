"""The synthetic birds generator: its default output pinned to the byte, and the CUB-scale dataset."""
import hashlib
import importlib.util
import itertools
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from lottery_xai.data.birds import render_bird_image
from lottery_xai.data.synthetic import (
    assign_class_attributes, attribute_names, generate_synthetic_cub, noisy_attribute_labels)
from lottery_xai.errors import UserError

REPO = Path(__file__).resolve().parents[2]

PINNED = dict(n_classes=4, images_per_class=3, image_size=32)

# sha256 of the files written by the generator for PINNED (seed 0, train_fraction 0.6), recorded from the code of
# commit 04c11dc, before the drawing was split into its own module and the CUB-scale options were added.
PINNED_FILES = {
    "attributes.txt": "e8b33abe7203eee0a1d260857041a643c85fbf044355cda97e38eeb82d20b18a",
    "attributes/attributes.txt": "e8b33abe7203eee0a1d260857041a643c85fbf044355cda97e38eeb82d20b18a",
    "attributes/certainties.txt": "219c52fbf28945796b0dda505765754c5f7116e883f911366ee11fb0e7714984",
    "attributes/class_attribute_labels_continuous.txt":
        "bac424b6f00bed27c04ac7e9f16f27570d19bac7b9016ab8ffc13aafd0c5379f",
    "attributes/image_attribute_labels.txt": "a6a07cc9a7d47a5b6ed522dc6583634fc7b4edb7fc29bb4c2c355044693bb9a0",
    "bounding_boxes.txt": "da176e0991cee11b3c700a0025c9cc7f774fefc95b32c5960545ff937d371d08",
    "class_attributes.json": "dc23bf2b38e031ff0da7c64014a1020763a6aec7a6a5928bfa78e58b6bb24097",
    "classes.txt": "378f295d35b4a174dc9ffc003866468e8c5cf1d3ddaf9ce6bc836567a29863b6",
    "image_class_labels.txt": "8ea85f0aa4d8d8e00e3882a66ba1831ddc43688f53bb7a2c22bdb8d35ad65f5f",
    "images.txt": "1474cf22f668d4a04c19728ad6f62711f9094ad418d2586ab6267e62e2ab074d",
    "parts/part_locs.txt": "3de5f9b668dff475e9241b6f86881c0db0d219ccd6bd8be3996e09fb6d4cd677",
    "parts/parts.txt": "411a4ab5c7622c1b93bf84dd1e9f69a8a2feaecd79753ed13cfc27ec0c2aeef0",
    "train_test_split.txt": "634036fdce91327180d835d417c86a3493ea42f627f4954579849bf4aeeae885",
}
# sha256 of the decoded pixels (BGR uint8, as cv2.imread returns them) rather than of the PNG files, whose bytes
# depend on the zlib/libpng build; recorded from the same code (OpenCV 5.1.0, NumPy 2.4.6).
PINNED_PIXELS = {
    "001.Red_winged_Black_crowned_Finch/Red_winged_Black_crowned_Finch_0001_1.png":
        "b535329b834ba37d1d55e662e30775225f2000738c1b3ce6ffa1fa83750aafd7",
    "002.Yellow_winged_Orange_crowned_Warbler/Yellow_winged_Orange_crowned_Warbler_0002_5.png":
        "7a874b3211076abbba7588b80e65c64281b41323048c7755b4f7e32e4012e5fe",
    "004.Blue_winged_White_crowned_Shrike/Blue_winged_White_crowned_Shrike_0003_12.png":
        "30cf709a0d349cca379d884b44a59277ca0683c55fc7f5d48fc65d16035e4aed",
}
PINNED_ALL_PIXELS = "a1053de4728e59540d2ed07b695215f918e3483e3dfe08e3775837457554b45e"  # every image, in path order


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts_data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_default_generator_output_is_unchanged(tmp_path):
    """The default attribute set (6 drawn groups, 25 attributes) writes what the code of 04c11dc wrote."""
    generate_synthetic_cub(tmp_path, **PINNED)
    files = {p.relative_to(tmp_path).as_posix(): p for p in sorted(Path(tmp_path).rglob("*")) if p.is_file()}
    tables = {name: _sha256(path.read_bytes()) for name, path in files.items() if not name.startswith("images/")}
    assert tables == PINNED_FILES
    images = sorted(name[len("images/"):] for name in files if name.startswith("images/"))
    assert len(images) == 12 and set(PINNED_PIXELS) <= set(images)
    everything = hashlib.sha256()
    for name in images:
        pixels = cv2.imread(str(tmp_path / "images" / name), cv2.IMREAD_UNCHANGED)
        assert pixels.shape == (32, 32, 3)
        if name in PINNED_PIXELS:
            assert _sha256(pixels.tobytes()) == PINNED_PIXELS[name], name
        everything.update(pixels.tobytes())
    assert everything.hexdigest() == PINNED_ALL_PIXELS


# ------------------------------------------------------------------------------------------------
# The CUB-scale attribute set (n_attributes=312)
# ------------------------------------------------------------------------------------------------

# CUB-200-2011's attributes.txt: its 28 groups in id order and their sizes (ids 1-9 bill shape, 10-24 wing colour, ...).
CUB_GROUP_SIZES = [
    ("bill_shape", 9), ("wing_color", 15), ("upperparts_color", 15), ("underparts_color", 15), ("breast_pattern", 4),
    ("back_color", 15), ("tail_shape", 6), ("upper_tail_color", 15), ("head_pattern", 11), ("breast_color", 15),
    ("throat_color", 15), ("eye_color", 14), ("bill_length", 3), ("forehead_color", 15), ("under_tail_color", 15),
    ("nape_color", 15), ("belly_color", 15), ("wing_shape", 5), ("size", 5), ("shape", 14), ("back_pattern", 4),
    ("tail_pattern", 4), ("belly_pattern", 4), ("primary_color", 15), ("leg_color", 15), ("bill_color", 15),
    ("crown_color", 15), ("wing_pattern", 4)]
DRAWN_GROUP_SIZES = {"bill_shape": 3, "wing_color": 4, "tail_shape": 3, "crown_color": 4, "breast_pattern": 3, "size": 2,
                     "bill_color": 4, "wing_pattern": 3, "head_pattern": 4, "throat_color": 4}  # 34 drawn values


def _zipf_counts(n, n_values, exponent=1.2):
    """The label-only values' class counts written out: n * r^-s / sum_r r^-s, rounded by largest remainders."""
    quota = [n * r ** -exponent / sum(k ** -exponent for k in range(1, n_values + 1)) for r in range(1, n_values + 1)]
    counts = [int(q // 1) for q in quota]
    for r in sorted(range(n_values), key=lambda r: -(quota[r] - counts[r]))[: n - sum(counts)]:
        counts[r] += 1
    return counts


def _group(name):
    return name[len("has_"):].split("::")[0]


def test_cub_attribute_set_has_cubs_groups():
    names = attribute_names(312)
    assert len(names) == len(set(names)) == 312 == sum(size for _, size in CUB_GROUP_SIZES)
    runs = [(group, len(list(members))) for group, members in itertools.groupby(names, key=_group)]
    assert runs == CUB_GROUP_SIZES  # CUB's order, each group's values contiguous
    assert attribute_names() == attribute_names(25) and len(attribute_names()) == 25
    with pytest.raises(UserError, match="25 .* or 312"):
        attribute_names(100)
    with pytest.raises(UserError, match="312"):
        assign_class_attributes(200)  # the default birds tell at most 100 classes apart


def test_cub_scale_classes_are_distinct_and_share_label_values_as_zipf_says():
    classes = assign_class_attributes(200, seed=0, n_attributes=312)
    assert classes == assign_class_attributes(200, seed=0, n_attributes=312)
    assert len({c.name for c in classes}) == 200
    groups = list(DRAWN_GROUP_SIZES)
    assert all(list(c.values) == groups for c in classes)
    table = np.array([[hash(c.values[g]) for g in groups] for c in classes])
    differences = (table[:, None] != table[None, :]).sum(-1) + np.eye(200, dtype=int) * len(groups)
    assert differences.min() >= 2
    for g, size in DRAWN_GROUP_SIZES.items():
        counts = Counter(c.values[g] for c in classes)
        assert len(counts) == size and max(counts.values()) - min(counts.values()) <= 1  # even spread
    label_groups = [g for g, _ in CUB_GROUP_SIZES if g not in DRAWN_GROUP_SIZES and g != "eye_color"]
    assert all(list(c.label_values) == label_groups for c in classes)
    for g, size in CUB_GROUP_SIZES:
        if g in label_groups:
            counts = sorted(Counter(c.label_values[g] for c in classes).values(), reverse=True)
            assert counts == [k for k in _zipf_counts(200, size) if k > 0]


def test_cub_scale_majority_filter_keeps_about_cubs_number():
    """At 20 images per class the class-level vote is exact: each class's drawn values, its label-only values
    and the black eye are on (> 50 %), everything else off; min_classes 10 then keeps the values on in >= 10
    classes: the 34 drawn ones, the eye and the label-only values Zipf gives >= 10 classes (CUB keeps 112)."""
    classes = assign_class_attributes(200, seed=0, n_attributes=312)
    names = attribute_names(312)
    labels = noisy_attribute_labels(classes, 20, seed=0, n_attributes=312)
    assert labels.shape == (200 * 20, 312)
    on = labels.reshape(200, 20, 312).mean(1) > 0.5
    for c, cls in enumerate(classes):
        expected = set(cls.attributes) | set(cls.label_attributes) | {"has_eye_color::black"}
        assert {names[a] for a in np.flatnonzero(on[c])} == expected, cls.name
    kept = int((on.sum(0) >= 10).sum())
    label_groups = [(g, size) for g, size in CUB_GROUP_SIZES if g not in DRAWN_GROUP_SIZES and g != "eye_color"]
    zipf_kept = sum(k >= 10 for _, size in label_groups for k in _zipf_counts(200, size))
    assert kept == 34 + 1 + zipf_kept == 115
    # Per-image labels are noisy like CUB's: the label-only values are on in only part of the class's images.
    own = np.zeros_like(on)
    for c, cls in enumerate(classes):
        own[c, [names.index(a) for a in cls.label_attributes]] = True
    shares = labels.reshape(200, 20, 312).mean(1)
    assert 0.6 < shares[own].mean() < 0.85 and 0.1 < shares[~own & ~on].mean() < 0.25


def test_cub_scale_command_line_and_cub_preparation(tmp_path):
    """--cub-scale (here with 2 images per class at 32 px) writes 200 classes and CUB's 312 attributes, and
    download_cub.py prepares it unchanged with CUB's min_classes 10, the generator's recommendation."""
    out = tmp_path / "cub"
    assert _script("make_synthetic_cub").main(["--out", str(out), "--cub-scale", "--images-per-class", "2",
                                               "--image-size", "32"]) == 0
    classes = (out / "classes.txt").read_text().splitlines()
    assert len(classes) == 200 and len({line.split(" ", 1)[1] for line in classes}) == 200
    for path in (out / "attributes.txt", out / "attributes" / "attributes.txt"):
        assert [line.split(" ", 1)[1] for line in path.read_text().splitlines()] == attribute_names(312)
    assert len((out / "images.txt").read_text().splitlines()) == 400
    split = np.loadtxt(out / "train_test_split.txt", dtype=int)
    assert split[:, 1].sum() == 200  # train fraction 0.5: one of each class's two images
    with open(out / "attributes" / "image_attribute_labels.txt") as handle:
        assert sum(1 for _ in handle) == 400 * 312
    truth = json.loads((out / "class_attributes.json").read_text())
    assert truth["recommended_min_classes"] == 10 and truth["generator"]["n_attributes"] == 312
    assert len(truth["distractor_attributes"]) == 312 - 34 - 1 - 199

    json_root = tmp_path / "prepared"
    assert _script("download_cub").main(["--data_root", str(out), "--json_root", str(json_root)]) == 0
    concepts = json.loads((json_root / "concepts.json").read_text())
    kept = set(concepts["attribute_names"])
    assert concepts["min_classes"] == 10 and len(concepts["class_names"]) == 200
    # 2 images per class make the vote noisier than CUB-scale's 60 (which keeps 115): still on the order of CUB's 112
    assert 90 <= len(kept) <= 170
    assert set().union(*truth["attribute_groups"].values()) | {"has_eye_color::black"} <= kept
    assert not kept & set(truth["distractor_attributes"])


def test_another_attribute_set_is_another_dataset(tmp_path):
    small = dict(n_classes=4, images_per_class=2, image_size=32)
    generate_synthetic_cub(tmp_path / "d", **small)
    with pytest.raises(UserError, match="overwrite"):
        generate_synthetic_cub(tmp_path / "d", **small, n_attributes=312)
    assert generate_synthetic_cub(tmp_path / "d", **small, n_attributes=312, overwrite=True)["skipped"] is False
    assert generate_synthetic_cub(tmp_path / "d", **small, n_attributes=312)["skipped"] is True


BASE_VALUES = {"bill_shape": "cone", "wing_color": "blue", "tail_shape": "forked", "crown_color": "white",
               "breast_pattern": "solid", "size": "large"}


def _render(**extra):
    return render_bird_image({**BASE_VALUES, **extra}, 64, np.random.default_rng(7))


@pytest.mark.parametrize("extra", [{"wing_pattern": "striped"}, {"wing_pattern": "spotted"},
                                   {"head_pattern": "eyebrow"}, {"head_pattern": "eyeline"},
                                   {"head_pattern": "masked"}, {"bill_color": "orange"}, {"throat_color": "rufous"}])
def test_extra_drawn_groups_are_drawn_on_the_bird(extra):
    plain, box, parts = _render()
    solid, solid_box, solid_parts = _render(wing_pattern="solid", head_pattern="plain")
    assert np.array_equal(plain, solid) and np.array_equal(box, solid_box) and np.array_equal(parts, solid_parts)
    image, new_box, _ = _render(**extra)
    changed = np.abs(image.astype(int) - plain.astype(int)).max(-1) > 0
    assert changed.sum() >= 2
    if "throat_color" not in extra:  # the throat's colour jitter takes random draws: the image's brightness moves
        assert np.array_equal(box, new_box)
        x, y, w, h = box
        inside = np.zeros_like(changed)
        inside[int(y) - 1:int(y + h) + 1, int(x) - 1:int(x + w) + 1] = True
        assert not (changed & ~inside).any()  # only the bird changes
