"""dataset: folder (the ImageFolder layout, Imagenette's): class order, the seeded val -> val/test split,
the synthetic generator's folder export, and the one-line errors of the steps that need boxes or concepts."""
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT
from lottery_xai.data import build_datasets, get_dataset, require_annotations
from lottery_xai.data.folder import THESIS_TEST_FRACTION, prepare_folder, scan_folder
from lottery_xai.errors import UserError


def _tree(root, counts, splits=("train", "val"), size=(20, 30)):
    """An ImageFolder tree: ``counts[class] = images per split``; each image's pixels encode its class."""
    for split in splits:
        for c, (name, n) in enumerate(counts.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                image = np.full((*size, 3), 40 * c + k, dtype=np.uint8)
                cv2.imwrite(str(root / split / name / f"img_{k:02d}.png"), image)
    return root


def test_classes_are_the_sorted_train_folders_and_the_split_is_seeded(tmp_path):
    root = _tree(tmp_path / "data", {"n02": 10, "n01": 7, "b_cls": 4})
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    summary = prepare_folder(root, root / "prepared", test_fraction=0.7, seed=3)
    index = json.loads((root / "prepared" / "folder_index.json").read_text())
    assert index["class_folders"] == ["b_cls", "n01", "n02"] == index["class_names"]
    assert summary == {"json_root": str(root / "prepared"), "n_classes": 3, "n_images": 42, "test_folder": False,
                       "n_train": 21, "n_val": 6, "n_test": 15}
    # per class round(0.7 n) of the val images go to test: 4 -> 3, 7 -> 5, 10 -> 7
    datasets, info = build_datasets("folder", root, root / "prepared", 16)
    assert info.class_names == ["b_cls", "n01", "n02"] and info.n_concepts == 0 and info.defining_attributes is None
    labels = {s: np.bincount([int(datasets[s][i]["label"]) for i in range(len(datasets[s]))], minlength=3).tolist()
              for s in ("train", "val", "test")}
    assert labels == {"train": [4, 7, 10], "val": [1, 2, 3], "test": [3, 5, 7]}
    item = datasets["test"][0]
    assert item["image"].shape == (3, 16, 16) and item["concepts"].shape == (0,) and item["parts"].shape == (0, 3)
    assert item["bbox"].tolist() == [0.0, 0.0, 16.0, 16.0]  # no boxes: the whole (centre-cropped) image
    # the image of a class really is that class's (pixel value 40 c + k before normalisation)
    splits = json.loads((root / "prepared" / "splits.json").read_text())
    assert sorted(splits["val"] + splits["test"]) == list(range(22, 43)) and not set(splits["val"]) & set(splits["test"])
    # seeded: the same seed gives the same split, another seed another one of the same sizes
    prepare_folder(root, tmp_path / "again", test_fraction=0.7, seed=3)
    assert json.loads((tmp_path / "again" / "splits.json").read_text()) == splits
    prepare_folder(root, tmp_path / "other", test_fraction=0.7, seed=4)
    other = json.loads((tmp_path / "other" / "splits.json").read_text())
    assert other["test"] != splits["test"] and len(other["test"]) == 15 and other["train"] == splits["train"]


def test_thesis_fraction_and_a_test_folder(tmp_path):
    assert round(THESIS_TEST_FRACTION * 3925) == 2800  # Imagenette's val: 2,800 test, 1,125 val
    root = _tree(tmp_path / "data", {"a": 3, "b": 2}, splits=("train", "val", "test"))
    (root / "classes.txt").write_text("a tench fish\nb church\n")
    summary = prepare_folder(root, root / "prepared")
    assert summary["test_folder"] and (summary["n_train"], summary["n_val"], summary["n_test"]) == (5, 5, 5)
    _, info = build_datasets("folder", root, root / "prepared", 16, splits=("test",))
    assert info.class_names == ["tench_fish", "church"]  # classes.txt names the folders


def test_user_errors_are_one_line(tmp_path):
    root = _tree(tmp_path / "data", {"a": 2, "b": 2}, splits=("train",))
    with pytest.raises(UserError, match=r"^no 'val' folder in .*train/<class>/\*") as error:
        scan_folder(root)
    assert "\n" not in str(error.value)
    _tree(root, {"a": 2, "zebra": 1}, splits=("val",))
    with pytest.raises(UserError, match=r"zebra is a class that .*train does not have"):
        scan_folder(root)
    with pytest.raises(UserError, match=r"^missing .*splits.json: run: python scripts_data/prepare_folder.py"):
        build_datasets("folder", root, tmp_path / "nothing", 16)
    shutil.rmtree(root / "val" / "zebra")
    (root / "classes.txt").write_text("a fish\n")
    with pytest.raises(UserError, match=r"names no class for folder 'b'"):
        scan_folder(tmp_path / "data")


def test_the_registry_declares_no_boxes_parts_or_concepts():
    spec = get_dataset("folder")
    assert (spec.has_boxes, spec.has_parts, spec.has_concepts, spec.flips_allowed) == (False, False, False, True)
    for what in ("concepts", "boxes", "parts"):
        with pytest.raises(UserError) as error:
            require_annotations("folder", what, "step X")
        assert str(error.value).startswith(f"step X needs {what}, and dataset 'folder' has none") and "\n" not in str(error.value)
        require_annotations("synthetic_cub", what, "step X")  # the embedded default has all three


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    """The synthetic birds written by the generator in the ImageFolder layout, through its command line."""
    out = tmp_path_factory.mktemp("folder")
    cmd = [sys.executable, "scripts_data/make_synthetic_cub.py", "--out", str(out / "cub"), "--n-classes", "3",
           "--images-per-class", "8", "--image-size", "32", "--image-folder", str(out / "folder")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ImageFolder layout in" in done.stdout
    return out


def test_the_generator_writes_the_folder_layout(folder_data):
    from lottery_xai.data.cub import read_cub_tables

    tables = read_cub_tables(folder_data / "cub")
    folder = folder_data / "folder"
    train = sorted(p.relative_to(folder / "train").as_posix() for p in (folder / "train").rglob("*.png"))
    val = sorted(p.relative_to(folder / "val").as_posix() for p in (folder / "val").rglob("*.png"))
    assert train == sorted(np.asarray(tables["paths"])[tables["is_train"]].tolist())  # CUB train -> train/
    assert val == sorted(np.asarray(tables["paths"])[~tables["is_train"]].tolist())  # CUB test -> val/
    datasets, info = build_datasets("folder", folder, folder / "prepared", 32)
    assert info.class_names == tables["class_names"]  # classes.txt strips CUB's 001. prefix
    # the same pixels: the first training image of the folder dataset is CUB's image at that path
    path = datasets["train"].paths[0]
    assert torch.equal(torch.from_numpy(cv2.imread(str(folder / path))),
                       torch.from_numpy(cv2.imread(str(folder_data / "cub" / "images" / path.split("/", 1)[1]))))
    n_val = len(datasets["val"]) + len(datasets["test"])
    per_class = np.bincount(tables["labels"][~tables["is_train"]])  # 3 per class: round(0.5 * 3) = 2 go to test
    assert n_val == int((~tables["is_train"]).sum()) == 9 and per_class.tolist() == [3, 3, 3]
    assert len(datasets["test"]) == 6 and len(datasets["val"]) == 3


def test_step_4_says_in_one_line_that_a_folder_dataset_has_no_concepts(folder_data, tmp_path):
    from lottery_xai.pipeline.cavs import cavs_step
    from lottery_xai.pipeline.prune import prune_step
    from lottery_xai.rundir import open_run

    folder = folder_data / "folder"
    run = open_run(None, ["dataset=folder", f"data_root={folder}", f"json_root={folder}/prepared",
                             f"logs={tmp_path}", "img_size=32", "train.epochs=1", "prune_iterations=0",
                             "data.batch_size=8", "device=cpu"])
    prune_step(run, torch.device("cpu"), [0], log=lambda *_: None)  # training works on folder data
    with pytest.raises(UserError) as error:
        cavs_step(run, [0], log=lambda *_: None)
    assert str(error.value).startswith("step 4 (main_lth_generate_cavs.py, concepts_for_tcav) needs concepts, and "
                                       "dataset 'folder' has none")
    assert "\n" not in str(error.value)
