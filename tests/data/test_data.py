"""Datasets: the synthetic CUB generator, CUB preparation and loader, MNIST even/odd, transforms."""
import gzip
import importlib.util
import json
import shutil
import struct
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lottery_xai.data import build_datasets, denormalize
from lottery_xai.data.cub import majority_concepts, prepare_cub, read_cub_tables
from lottery_xai.data.imagefile import load_rgb
from lottery_xai.data.mnist import TEST_ID_OFFSET, prepare_mnist_eo, read_idx
from lottery_xai.data.synthetic import (
    ALWAYS_ON_ATTRIBUTES, ATTRIBUTE_GROUPS, DISTRACTOR_ATTRIBUTES, PART_NAMES, RANDOM_ATTRIBUTES,
    assign_class_attributes, generate_synthetic_cub)
from lottery_xai.data.transforms import EvalTransform, TrainTransform
from lottery_xai.errors import UserError

TINY = dict(n_classes=4, images_per_class=12, image_size=64, seed=0, train_fraction=0.6)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_cub(tmp_path_factory):
    """A tiny synthetic dataset and its prepared JSONs (min_classes=1: 4 classes cannot give a value to 2)."""
    base = tmp_path_factory.mktemp("synthetic")
    data_root, json_root = base / "cub", base / "json"
    generate_synthetic_cub(data_root, **TINY)
    summary = prepare_cub(None, data_root, json_root, seed=0, val_fraction=0.1, min_classes=1)
    return data_root, json_root, summary


def _table(path):
    return np.array([line.split() for line in Path(path).read_text().splitlines() if line.strip()], dtype=float)


def _all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# Synthetic generator
# ------------------------------------------------------------------------------------------------

def test_generator_is_deterministic_to_the_byte(tmp_path):
    small = dict(TINY, images_per_class=6)
    generate_synthetic_cub(tmp_path / "a", **small)
    generate_synthetic_cub(tmp_path / "b", **small)
    generate_synthetic_cub(tmp_path / "c", **dict(small, seed=1))
    a, b, c = (_all_files(tmp_path / name) for name in "abc")
    assert len(a) == 4 * 6 + 13  # images + every table of the layout
    assert a == b
    assert any(a[name] != c.get(name) for name in a if name.endswith(".png"))


def test_generator_skips_an_identical_dataset_and_refuses_to_clobber(tmp_path):
    small = dict(TINY, images_per_class=3)
    assert generate_synthetic_cub(tmp_path / "d", **small)["skipped"] is False
    assert generate_synthetic_cub(tmp_path / "d", **small)["skipped"] is True
    with pytest.raises(UserError, match="overwrite"):
        generate_synthetic_cub(tmp_path / "d", **dict(small, seed=5))
    assert generate_synthetic_cub(tmp_path / "d", **dict(small, seed=5), overwrite=True)["skipped"] is False


@pytest.mark.parametrize("n_classes", [4, 12, 60])
def test_classes_differ_in_two_groups_and_spread_values(n_classes):
    classes = assign_class_attributes(n_classes, seed=0)
    assert classes == assign_class_attributes(n_classes, seed=0)
    groups = list(ATTRIBUTE_GROUPS)
    table = np.array([[ATTRIBUTE_GROUPS[g].index(c.values[g]) for g in groups] for c in classes])
    differences = (table[:, None] != table[None, :]).sum(-1) + np.eye(n_classes, dtype=int) * len(groups)
    assert differences.min() >= 2
    assert len({c.name for c in classes}) == n_classes
    for g, values in ATTRIBUTE_GROUPS.items():
        counts = np.bincount(table[:, groups.index(g)], minlength=len(values))
        assert counts.max() - counts.min() <= 1  # even spread
    if n_classes <= 16:
        assert len({(c.values["wing_color"], c.values["crown_color"]) for c in classes}) == n_classes


def test_files_follow_the_cub_layout(tiny_cub):
    root, _, _ = tiny_cub
    n, k = TINY["n_classes"] * TINY["images_per_class"], TINY["n_classes"]
    images = [line.split() for line in (root / "images.txt").read_text().splitlines()]
    assert [int(i) for i, _ in images] == list(range(1, n + 1))
    assert all((root / "images" / path).is_file() for _, path in images)
    classes = (root / "classes.txt").read_text().splitlines()
    assert [line.split()[1].split(".")[0] for line in classes] == [f"{c:03d}" for c in range(1, k + 1)]
    labels = _table(root / "image_class_labels.txt")
    assert np.array_equal(np.bincount(labels[:, 1].astype(int))[1:], [TINY["images_per_class"]] * k)
    split = _table(root / "train_test_split.txt")
    per_class_train = np.bincount(labels[:, 1].astype(int), weights=split[:, 1])[1:]
    assert set(per_class_train) <= {7, 8}  # 60 % of 12, stochastically rounded

    boxes = _table(root / "bounding_boxes.txt")
    sizes = np.array([cv2.imread(str(root / "images" / path)).shape[:2] for _, path in images])
    assert np.all(sizes == TINY["image_size"])
    assert np.all(boxes[:, 1:3] >= 0) and np.all(boxes[:, 3:] > 0)
    assert np.all(boxes[:, 1] + boxes[:, 3] <= sizes[:, 1]) and np.all(boxes[:, 2] + boxes[:, 4] <= sizes[:, 0])
    side = np.maximum(boxes[:, 3], boxes[:, 4]) / TINY["image_size"]
    assert side.min() > 0.33 and side.max() < 0.82  # the bird fills roughly 35-80 % of the side

    assert (root / "parts" / "parts.txt").read_text().split("\n")[0] == "1 back"
    locs = _table(root / "parts" / "part_locs.txt")
    assert len(locs) == n * len(PART_NAMES)
    assert np.array_equal(locs[:, 1], np.tile(np.arange(1, 16), n))
    visible = locs[locs[:, 4] == 1]
    assert np.all(locs[locs[:, 4] == 0, 2:4] == 0)
    box = boxes[visible[:, 0].astype(int) - 1, 1:]
    inside = ((visible[:, 2] >= box[:, 0] - 1) & (visible[:, 2] <= box[:, 0] + box[:, 2] + 1)
              & (visible[:, 3] >= box[:, 1] - 1) & (visible[:, 3] <= box[:, 1] + box[:, 3] + 1))
    assert inside.mean() > 0.95
    assert len(visible) >= n * 13  # one eye and one wing hidden per image

    names = (root / "attributes" / "attributes.txt").read_text()
    assert names == (root / "attributes.txt").read_text()
    n_attributes = len(names.splitlines())
    per_image = _table(root / "attributes" / "image_attribute_labels.txt")
    assert per_image.shape == (n * n_attributes, 5)
    assert set(np.unique(per_image[:, 2])) <= {0, 1} and set(np.unique(per_image[:, 3])) <= {1, 2, 3, 4}
    assert len((root / "attributes" / "certainties.txt").read_text().splitlines()) == 4
    # The class percentages are those of the noisy per-image labels.
    present = per_image[:, 2].reshape(n, n_attributes)
    recomputed = np.stack([present[labels[:, 1] == c + 1].mean(0) * 100 for c in range(k)])
    percentages = _table(root / "attributes" / "class_attribute_labels_continuous.txt")
    np.testing.assert_allclose(percentages, recomputed, atol=1e-9)
    truth = json.loads((root / "class_attributes.json").read_text())
    assert truth["classes"] == [line.split(".", 1)[1] for line in classes]
    all_names = [line.split(" ", 1)[1] for line in names.splitlines()]
    defining = np.zeros_like(present, dtype=bool)
    for cls, attributes in truth["defining_attributes"].items():
        assert len(attributes) == len(ATTRIBUTE_GROUPS) and set(attributes) <= set(all_names)
        columns = [all_names.index(a) for a in attributes]
        defining[np.ix_(labels[:, 1] == truth["classes"].index(cls) + 1, columns)] = True
    # Labels are noisy like CUB's (about 10 % flipped) but faithful at class level.
    missed = 1 - present[defining].mean()
    assert 0.04 < missed < 0.16
    assert percentages[defining.reshape(k, -1, n_attributes).any(1)].min() > 75


# ------------------------------------------------------------------------------------------------
# CUB preparation
# ------------------------------------------------------------------------------------------------

def test_majority_concepts_known_answer():
    percentages = np.array([[90, 10, 51, 50, 100],
                            [80, 60, 49, 50, 100],
                            [70, 55, 20, 0, 100]], dtype=float)
    concepts, kept = majority_concepts(percentages, min_classes=2)
    assert kept.tolist() == [0, 1, 4]  # column 2 is on in one class only, column 3 never (> 50 is strict)
    assert concepts.tolist() == [[1, 0, 1], [1, 1, 1], [1, 1, 1]]
    _, kept_one = majority_concepts(percentages, min_classes=1)
    assert kept_one.tolist() == [0, 1, 2, 4]
    with pytest.raises(UserError):
        majority_concepts(percentages, min_classes=0)


@pytest.mark.parametrize("min_classes", [1, 2])
def test_preparation_keeps_exactly_the_majority_attributes(tiny_cub, tmp_path, min_classes):
    root, _, _ = tiny_cub
    prepare_cub(None, root, tmp_path, min_classes=min_classes)
    concepts = json.loads((tmp_path / "concepts.json").read_text())
    percentages = np.loadtxt(root / "attributes" / "class_attribute_labels_continuous.txt")
    on = percentages > 50
    expected = np.flatnonzero(on.sum(0) >= min_classes)
    assert concepts["attribute_ids"] == (expected + 1).tolist()
    assert np.array_equal(np.array(concepts["class_concepts"]), on[:, expected].astype(int))
    assert concepts["min_classes"] == min_classes
    truth = json.loads((root / "class_attributes.json").read_text())
    kept = set(concepts["attribute_names"])
    assert not kept & set(DISTRACTOR_ATTRIBUTES + RANDOM_ATTRIBUTES)
    assert set(ALWAYS_ON_ATTRIBUTES) <= kept
    if min_classes == 1:
        assert set().union(*truth["defining_attributes"].values()) <= kept


def test_splits_are_official_stratified_and_seeded(tiny_cub, tmp_path):
    root, json_root, summary = tiny_cub
    splits = json.loads((json_root / "splits.json").read_text())
    split = _table(root / "train_test_split.txt")
    labels = _table(root / "image_class_labels.txt")[:, 1].astype(int)
    official_train = set(split[split[:, 1] == 1, 0].astype(int))
    assert set(splits["test"]) == set(split[split[:, 1] == 0, 0].astype(int))
    assert set(splits["train"]) | set(splits["val"]) == official_train
    assert not set(splits["train"]) & set(splits["val"])
    for c in range(1, TINY["n_classes"] + 1):  # every class gives round(10 %) (at least one) to val
        n_class_train = sum(labels[i - 1] == c for i in official_train)
        assert sum(labels[i - 1] == c for i in splits["val"]) == max(1, round(0.1 * n_class_train))
    assert summary["n_val"] == len(splits["val"])
    prepare_cub(None, root, tmp_path / "same", seed=0, min_classes=1)
    prepare_cub(None, root, tmp_path / "other", seed=1, min_classes=1)
    assert json.loads((tmp_path / "same" / "splits.json").read_text()) == splits
    assert json.loads((tmp_path / "other" / "splits.json").read_text())["val"] != splits["val"]


def test_preparation_reads_the_archive_and_a_linked_folder(tiny_cub, tmp_path):
    root, json_root, _ = tiny_cub
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="CUB_200_2011")
    prepare_cub(archive, tmp_path / "extracted", tmp_path / "json_a", min_classes=1)
    assert (tmp_path / "extracted" / "CUB_200_2011" / "images.txt").is_file()
    prepare_cub(root, tmp_path / "linked", tmp_path / "json_b", min_classes=1)
    for name in ("splits.json", "concepts.json"):
        reference = (json_root / name).read_text()
        assert (tmp_path / "json_a" / name).read_text() == reference
        assert (tmp_path / "json_b" / name).read_text() == reference
    datasets, _ = build_datasets("synthetic_cub", tmp_path / "linked", tmp_path / "json_b", 32, splits=("val",))
    assert datasets["val"].ids.tolist() == json.loads((json_root / "splits.json").read_text())["val"]
    with pytest.raises(UserError, match="cub_200_2011"):
        prepare_cub(tmp_path / "nowhere", tmp_path / "x", tmp_path / "y")


# ------------------------------------------------------------------------------------------------
# Loader and transforms
# ------------------------------------------------------------------------------------------------

def test_loader_items_have_the_documented_shapes(tiny_cub):
    root, json_root, _ = tiny_cub
    datasets, info = build_datasets("synthetic_cub", root, json_root, img_size=32)
    assert info.num_classes == 4 and info.part_names == list(PART_NAMES)
    assert info.class_concepts.shape == (4, info.n_concepts) and info.mean == (0.485, 0.456, 0.406)
    assert set(info.defining_attributes) == set(info.class_names)
    for split, dataset in datasets.items():
        assert dataset.ids.tolist() == info.split_ids[split]
    batch = next(iter(torch.utils.data.DataLoader(datasets["test"], batch_size=5)))
    expected = {"image": ((5, 3, 32, 32), torch.float32), "label": ((5,), torch.int64),
                "concepts": ((5, info.n_concepts), torch.float32), "bbox": ((5, 4), torch.float32),
                "parts": ((5, 15, 3), torch.float32), "id": ((5,), torch.int64), "index": ((5,), torch.int64)}
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == expected
    assert batch["index"].tolist() == list(range(5))
    assert batch["id"].tolist() == info.split_ids["test"][:5]
    tables = read_cub_tables(root)
    assert batch["label"].tolist() == tables["labels"][batch["id"].numpy() - 1].tolist()
    assert torch.equal(batch["concepts"], torch.from_numpy(info.class_concepts[batch["label"].numpy()]).float())
    assert torch.all(batch["bbox"] >= 0) and torch.all(batch["bbox"] <= 32)
    assert torch.all(batch["bbox"][:, 2:] > batch["bbox"][:, :2])
    # The eval box is the source box scaled 64 -> 32 (square images: no crop).
    source = torch.from_numpy(tables["boxes"][batch["id"].numpy() - 1]).float()
    torch.testing.assert_close(batch["bbox"], source / 2)


def test_workers_give_the_same_batches(tiny_cub):
    root, json_root, _ = tiny_cub
    datasets, _ = build_datasets("synthetic_cub", root, json_root, img_size=32, splits=("val", "test"), cache=False)
    loader = lambda workers: torch.utils.data.DataLoader(datasets["test"], batch_size=8, num_workers=workers)  # noqa: E731
    for single, multi in zip(loader(0), loader(2)):
        assert all(torch.equal(single[k], multi[k]) for k in single)


def test_training_augmentation_is_seeded_per_epoch(tiny_cub):
    root, json_root, _ = tiny_cub
    datasets, _ = build_datasets("synthetic_cub", root, json_root, img_size=32, splits=("train",), seed=3)
    train = datasets["train"]
    train.set_epoch(1)
    first = [train[i]["image"] for i in range(4)]
    assert all(torch.equal(a, train[i]["image"]) for i, a in enumerate(first))
    train.set_epoch(2)
    assert not all(torch.equal(a, train[i]["image"]) for i, a in enumerate(first))


def test_grayscale_and_rgba_images_become_rgb(tiny_cub, tmp_path):
    gray = np.arange(30 * 20, dtype=np.uint8).reshape(30, 20)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([gray, gray // 2, gray // 3, np.full_like(gray, 128)]), mode="RGBA").save(tmp_path / "rgba.png")
    image, scale = load_rgb(tmp_path / "gray.png")
    assert image.shape == (3, 30, 20) and image.dtype == torch.uint8 and scale == (1.0, 1.0)
    assert torch.equal(image[0], torch.from_numpy(gray)) and torch.equal(image[0], image[2])
    assert load_rgb(tmp_path / "rgba.png")[0].shape == (3, 30, 20)
    # A grayscale image inside the dataset comes out of the loader as RGB.
    root, json_root, _ = tiny_cub
    copy = tmp_path / "cub"
    shutil.copytree(root, copy)
    datasets, info = build_datasets("synthetic_cub", copy, json_root, img_size=32, splits=("test",))
    path = copy / "images" / datasets["test"].paths[0]
    Image.open(path).convert("L").save(path)
    datasets, info = build_datasets("synthetic_cub", copy, json_root, img_size=32, splits=("test",))
    plain = denormalize(datasets["test"][0]["image"], info)
    assert plain.shape == (3, 32, 32)
    torch.testing.assert_close(plain[0], plain[1], atol=1e-5, rtol=0)


def _column_image(height, width):
    """uint8 [3, H, W] whose value encodes the column (x * 2), so crops can be located."""
    columns = torch.arange(width, dtype=torch.float32) * 2
    return columns.expand(3, height, width).to(torch.uint8).clone()


def test_eval_transform_centre_crops_and_never_pads():
    image = _column_image(40, 80)  # wide: resize to 20 x 40, then keep the middle 20 columns
    box = torch.tensor([30.0, 10.0, 50.0, 30.0])
    parts = torch.tensor([[40.0, 20.0, 1.0], [5.0, 20.0, 1.0], [0.0, 0.0, 0.0]])
    out, out_box, out_parts = EvalTransform(20, mean=(0, 0, 0), std=(1, 1, 1))(image, box, parts)
    assert out.shape == (3, 20, 20)
    torch.testing.assert_close(out_box, torch.tensor([5.0, 5.0, 15.0, 15.0]))
    torch.testing.assert_close(out_parts, torch.tensor([[10.0, 10.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # Output column j shows source columns 2(j + 10) .. 2(j + 10) + 1: no padded border anywhere.
    expected = (torch.arange(20, dtype=torch.float32) + 10) * 4 + 1
    torch.testing.assert_close(out[0, 10] * 255, expected, atol=1.0, rtol=0)
    # Tall: resize to 40 x 20, keep the middle 20 rows; every column is kept.
    tall, tall_box, _ = EvalTransform(20, (0, 0, 0), (1, 1, 1))(_column_image(80, 40),
                                                               torch.tensor([0.0, 30.0, 40.0, 50.0]), parts[:0])
    assert tall.shape == (3, 20, 20)
    torch.testing.assert_close(tall_box, torch.tensor([0.0, 5.0, 20.0, 15.0]))
    torch.testing.assert_close(tall[0, 10, 1:-1] * 255, torch.arange(1, 19, dtype=torch.float32) * 4 + 1, atol=1.0, rtol=0)


def test_train_transform_moves_box_and_parts_with_the_content():
    image = torch.zeros(3, 60, 90, dtype=torch.uint8)
    image[:, 20:40, 30:70] = 255
    box = torch.tensor([30.0, 20.0, 70.0, 40.0])
    parts = torch.tensor([[50.0, 30.0, 1.0]])
    transform = TrainTransform(48, mean=(0, 0, 0), std=(1, 1, 1), scale=(0.6, 1.0))
    for seed in range(12):
        generator = torch.Generator().manual_seed(seed)
        out, out_box, out_parts = transform(image, box, parts, generator)
        again = transform(image, box, parts, torch.Generator().manual_seed(seed))
        assert torch.equal(out, again[0]) and torch.equal(out_box, again[1])
        bright = out[0] > 0.5
        rows, cols = torch.nonzero(bright.any(1)).flatten(), torch.nonzero(bright.any(0)).flatten()
        found = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)
        torch.testing.assert_close(out_box, found, atol=1.5, rtol=0)
        centre = (out_box[:2] + out_box[2:]) / 2
        if out_parts[0, 2] == 1:
            torch.testing.assert_close(out_parts[0, :2], centre, atol=1.5, rtol=0)
    assert out.shape == (3, 48, 48)


def test_horizontal_flip_mirrors_box_and_parts():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    image[:, 10:20, 0:10] = 255  # bright square on the left
    box, parts = torch.tensor([0.0, 10.0, 10.0, 20.0]), torch.tensor([[5.0, 15.0, 1.0]])
    transform = TrainTransform(40, (0, 0, 0), (1, 1, 1), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    seen = set()
    for seed in range(16):
        out, out_box, out_parts = transform(image, box, parts, torch.Generator().manual_seed(seed))
        flipped = bool(out[0, 15, 35] > 0.5)
        seen.add(flipped)
        expected = torch.tensor([30.0, 10.0, 40.0, 20.0]) if flipped else box
        torch.testing.assert_close(out_box, expected)
        torch.testing.assert_close(out_parts[0, 0], torch.tensor(35.0 if flipped else 5.0))
    assert seen == {True, False}


def test_denormalize_inverts_the_normalisation(tiny_cub):
    root, json_root, _ = tiny_cub
    _, info = build_datasets("synthetic_cub", root, json_root, img_size=16, splits=())
    image = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    transform = EvalTransform(16, info.mean, info.std)
    normalised = torch.stack([transform(im, torch.zeros(4), torch.zeros(0, 3))[0] for im in image])
    torch.testing.assert_close(denormalize(normalised, info), image.float() / 255, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# MNIST even/odd
# ------------------------------------------------------------------------------------------------

def test_mnist_even_odd_from_sklearn_digits(tmp_path):
    from sklearn.datasets import load_digits

    summary = prepare_mnist_eo(tmp_path / "data", tmp_path / "json", source="auto", seed=0)
    assert summary["source"] == "sklearn"
    splits = json.loads((tmp_path / "json" / "splits.json").read_text())
    ids = [set(splits[s]) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    digits = load_digits().target
    assert set().union(*ids) == set(range(len(digits)))
    test_share = np.bincount(digits[splits["test"]], minlength=10) / np.bincount(digits, minlength=10)
    assert np.all(np.abs(test_share - 0.25) < 0.02)  # stratified by digit

    datasets, info = build_datasets("mnist_eo", tmp_path / "data", tmp_path / "json", img_size=28)
    assert info.class_names == ["even", "odd"] and info.n_concepts == 10 and info.part_names == []
    assert info.mean == (0.5, 0.5, 0.5) and info.class_concepts.tolist()[0] == [1, 0] * 5
    batch = next(iter(torch.utils.data.DataLoader(datasets["test"], batch_size=64)))
    digit = torch.from_numpy(digits[batch["id"].numpy()])
    assert torch.equal(batch["label"], digit % 2)
    assert torch.equal(batch["concepts"], torch.nn.functional.one_hot(digit, 10).float())
    assert batch["parts"].shape == (64, 0, 3) and batch["image"].shape == (64, 3, 28, 28)
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])
    # bbox = the digit's nonzero extent: nothing bright outside it.
    plain = denormalize(batch["image"], info)[:, 0]
    for image, (x0, y0, x1, y1) in zip(plain, batch["bbox"].long().tolist()):
        outside = image.clone()
        outside[y0:y1, x0:x1] = 0
        assert outside.max() < 1e-6 and image[y0:y1, x0:x1].max() > 0.3
    assert datasets["train"][0]["image"].shape == (3, 28, 28)


def _write_idx(path, array, code):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        Path(path).write_bytes(payload)


def test_idx_reader_reads_files_written_by_hand(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "images-idx3-ubyte", images, 0x08)
    _write_idx(tmp_path / "images-idx3-ubyte.gz", images, 0x08)
    ints = np.array([1, -2, 70000], dtype=np.int32)
    _write_idx(tmp_path / "ints-idx1-int", ints, 0x0C)
    assert np.array_equal(read_idx(tmp_path / "images-idx3-ubyte"), images)
    assert np.array_equal(read_idx(tmp_path / "images-idx3-ubyte.gz"), images)
    assert read_idx(tmp_path / "ints-idx1-int").tolist() == [1, -2, 70000]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x00")
    with pytest.raises(UserError, match="IDX"):
        read_idx(tmp_path / "bad")


def test_mnist_idx_source_uses_the_real_test_set(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(1, 256, (30, 28, 28)).astype(np.uint8)
    test = rng.integers(1, 256, (10, 28, 28)).astype(np.uint8)
    data = tmp_path / "data"
    data.mkdir()
    _write_idx(data / "train-images-idx3-ubyte.gz", train, 0x08)
    _write_idx(data / "train-labels-idx1-ubyte.gz", np.arange(30, dtype=np.uint8) % 10, 0x08)
    _write_idx(data / "t10k-images-idx3-ubyte", test, 0x08)
    _write_idx(data / "t10k-labels-idx1-ubyte", np.arange(10, dtype=np.uint8)[::-1].copy(), 0x08)
    summary = prepare_mnist_eo(data, tmp_path / "json", source="auto")
    assert summary["source"] == "idx" and summary["n_test"] == 10
    splits = json.loads((tmp_path / "json" / "splits.json").read_text())
    assert splits["test"] == list(range(TEST_ID_OFFSET, TEST_ID_OFFSET + 10))
    assert sorted(splits["train"] + splits["val"]) == list(range(30)) and len(splits["val"]) == 10  # one per digit
    datasets, info = build_datasets("mnist_eo", data, tmp_path / "json", img_size=28, splits=("test",))
    batch = next(iter(torch.utils.data.DataLoader(datasets["test"], batch_size=10)))
    pixels = torch.round(denormalize(batch["image"], info)[:, 0] * 255).to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(test))  # t10k images, not training images
    assert batch["label"].tolist() == [d % 2 for d in range(10)[::-1]]


def test_mnist_idx_source_requires_the_files(tmp_path):
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte"):
        prepare_mnist_eo(tmp_path, tmp_path / "json", source="idx")


# ------------------------------------------------------------------------------------------------
# Errors and command lines
# ------------------------------------------------------------------------------------------------

def test_unknown_names_and_missing_files_are_user_errors(tiny_cub, tmp_path):
    root, json_root, _ = tiny_cub
    with pytest.raises(UserError, match="did you mean 'cub'"):
        build_datasets("cubb", root, json_root, 32)
    with pytest.raises(UserError, match="download_cub.py"):
        build_datasets("cub", root, tmp_path / "empty", 32)
    with pytest.raises(UserError, match="make_synthetic_cub.py"):
        build_datasets("synthetic_cub", tmp_path / "none", tmp_path / "empty", 32)
    with pytest.raises(UserError, match="download_mnist_E_O.py"):
        build_datasets("mnist_eo", tmp_path, tmp_path / "empty", 28)
    with pytest.raises(UserError, match="unknown split"):
        build_datasets("synthetic_cub", root, json_root, 32, splits=("training",))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts_data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_lines_write_their_outputs_and_fail_with_one_line(tmp_path, capsys):
    out, json_root = tmp_path / "synthetic", tmp_path / "json"
    argv = ["--out", str(out), "--n-classes", "3", "--images-per-class", "4", "--image-size", "48",
            "--json_root", str(json_root)]
    assert _script("make_synthetic_cub").main(argv) == 0
    assert (json_root / "splits.json").is_file() and (json_root / "concepts.json").is_file()
    concepts = json.loads((json_root / "concepts.json").read_text())
    assert concepts["min_classes"] == 1  # 3 classes cannot give each value to two classes
    assert _script("download_cub").main(["--src", str(out), "--data_root", str(out),
                                         "--json_root", str(tmp_path / "j2")]) == 0
    assert (tmp_path / "j2" / "concepts.json").read_text() == (json_root / "concepts.json").read_text()
    assert _script("download_mnist_E_O").main(["--data_root", str(tmp_path), "--json_root", str(tmp_path / "m"),
                                               "--source", "sklearn"]) == 0
    capsys.readouterr()
    assert _script("download_cub").main(["--src", str(tmp_path / "missing.tgz"), "--data_root", str(tmp_path / "d"),
                                         "--json_root", str(tmp_path / "j3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vision.caltech.edu" in err


def test_resize_is_bit_identical_to_torchvision():
    """The data pipeline resizes without importing torchvision (seconds per step); the pixels must not change."""
    from torchvision.transforms.v2 import functional as TF

    from lottery_xai.data.transforms import resize

    generator = torch.Generator().manual_seed(0)
    for shape, size in (((3, 96, 120), (64, 64)), ((3, 37, 53), (64, 80)), ((1, 28, 28), (64, 64)), ((3, 64, 64), (64, 64))):
        image = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        assert torch.equal(resize(image, *size), TF.resize(image, list(size), antialias=True))
        as_float = image.float() / 255
        assert torch.equal(resize(as_float, *size), TF.resize(as_float, list(size), antialias=True))
