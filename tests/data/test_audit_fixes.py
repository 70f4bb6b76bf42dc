"""Audit fixes: CUB's `NNN.` class-name form, attributes.txt beside CUB_200_2011/, removed data.* keys."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from lottery_xai.config import all_keys, load_config
from lottery_xai.data.cub import prepare_cub
from lottery_xai.errors import UserError
from lottery_xai.pipeline.loading import resolve_names

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["001.Black_footed_Albatross", "036.Northern_Flicker", "047.American_Goldfinch"]
ATTRIBUTES = ["has_bill_shape::curved", "has_wing_color::blue", "has_wing_color::yellow", "has_size::small"]
PERCENT = [[90, 10, 0, 80], [60, 0, 70, 90], [0, 55, 95, 100]]  # class x attribute, % of images with it
PARTS = ["back", "beak"]


def _write(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def fake_cub(base: Path, attributes_beside: bool = True) -> Path:
    """A tiny CUB_200_2011 tree (3 classes x 4 images, no image files: preparation reads only the tables).

    attributes_beside=True is the layout of CUB_200_2011.tgz: ``base/attributes.txt`` next to
    ``base/CUB_200_2011/``; otherwise attributes.txt lies inside the CUB folder.
    """
    root = base / "CUB_200_2011"
    images, labels, split, boxes, locs = [], [], [], [], []
    for c, name in enumerate(CLASSES):
        for k in range(4):
            i = 4 * c + k + 1
            images.append(f"{i} {name}/{name.split('.', 1)[1]}_{k}.jpg")
            labels.append(f"{i} {c + 1}")
            split.append(f"{i} {int(k < 2)}")
            boxes.append(f"{i} 1.0 2.0 30.0 20.0")
            locs += [f"{i} 1 10.0 5.0 1", f"{i} 2 0.0 0.0 0"]
    _write(root / "images.txt", images)
    _write(root / "image_class_labels.txt", labels)
    _write(root / "train_test_split.txt", split)
    _write(root / "bounding_boxes.txt", boxes)
    _write(root / "classes.txt", [f"{c + 1} {name}" for c, name in enumerate(CLASSES)])
    _write(root / "parts" / "parts.txt", [f"{p + 1} {name}" for p, name in enumerate(PARTS)])
    _write(root / "parts" / "part_locs.txt", locs)
    _write(root / "attributes" / "class_attribute_labels_continuous.txt", [" ".join(map(str, row)) for row in PERCENT])
    _write((base if attributes_beside else root) / "attributes.txt", [f"{a + 1} {n}" for a, n in enumerate(ATTRIBUTES)])
    return root


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts_data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ 1. class names with CUB's NNN. prefix

KNOWN = [name.split(".", 1)[1] for name in CLASSES]  # what the CUB loader gives: the prefix stripped


def test_prefixed_and_bare_class_names_resolve_to_the_same_class():
    assert resolve_names(["036.Northern_Flicker"], KNOWN, "class", "labels_for_tcav") == ["Northern_Flicker"]
    assert resolve_names(["Northern_Flicker"], KNOWN, "class", "labels_for_tcav") == ["Northern_Flicker"]
    assert resolve_names(["047.American_Goldfinch", "Black_footed_Albatross"], KNOWN, "class",
                         "labels_for_tcav") == ["American_Goldfinch", "Black_footed_Albatross"]
    assert resolve_names(["all"], KNOWN, "class", "labels_for_tcav") == KNOWN


@pytest.mark.parametrize("name", ["036.Northern_Flickr", "Northern", "036Northern_Flicker", "x.Northern_Flicker",
                                  "036.", "Unknown_Bird"])
def test_unknown_class_names_still_give_one_line_user_error(name):
    with pytest.raises(UserError, match=r"class '.*' in labels_for_tcav is not in the dataset") as info:
        resolve_names([name], KNOWN, "class", "labels_for_tcav")
    assert "\n" not in str(info.value) and name in str(info.value)


def test_the_two_forms_of_one_class_count_as_a_repeat():
    with pytest.raises(UserError, match="Northern_Flicker' twice"):
        resolve_names(["036.Northern_Flicker", "Northern_Flicker"], KNOWN, "class", "labels_for_tcav")


def test_bb_cub_labels_resolve_against_a_prepared_cub(tmp_path):
    """The shipped CUB config's prefixed names pass config validation and match the stripped prepared names."""
    cfg = load_config(REPO / "config" / "BB_cub.yaml")
    assert all(name[:3].isdigit() and name[3] == "." for name in cfg.labels_for_tcav)
    fake_cub(tmp_path / "src")
    prepare_cub(tmp_path / "src", tmp_path / "data", tmp_path / "json", min_classes=1)
    class_names = json.loads((tmp_path / "json" / "concepts.json").read_text())["class_names"]
    assert class_names == KNOWN
    assert resolve_names(cfg.labels_for_tcav, class_names, "class", "labels_for_tcav") == \
        ["Northern_Flicker", "American_Goldfinch"]
    bare = load_config(REPO / "config" / "BB_cub.yaml", ["labels_for_tcav=[Northern_Flicker, 047.American_Goldfinch]"])
    assert resolve_names(bare.labels_for_tcav, class_names, "class", "labels_for_tcav") == \
        ["Northern_Flicker", "American_Goldfinch"]


# ------------------------------------------------------------------ 2. attributes.txt beside CUB_200_2011/

@pytest.mark.parametrize("beside", [True, False], ids=["attributes-beside", "attributes-inside"])
@pytest.mark.parametrize("point_at", ["parent", "cub_folder"])
def test_download_cub_reads_an_extracted_folder_in_both_layouts(tmp_path, capsys, beside, point_at):
    root = fake_cub(tmp_path / "extracted", attributes_beside=beside)
    src = root.parent if point_at == "parent" else root
    argv = ["--src", str(src), "--data_root", str(tmp_path / "data"), "--json_root", str(tmp_path / "json"),
            "--min-classes", "1"]
    assert _script("download_cub").main(argv) == 0, capsys.readouterr().err
    concepts = json.loads((tmp_path / "json" / "concepts.json").read_text())
    assert concepts["attribute_names"] == ATTRIBUTES  # each attribute is on (> 50 %) in at least one class
    assert concepts["class_names"] == KNOWN
    splits = json.loads((tmp_path / "json" / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"]) == [i for i in range(1, 13) if (i - 1) % 4 < 2]
    # data_root now holds the (linked) data: a second preparation needs no --src
    assert prepare_cub(None, tmp_path / "data", tmp_path / "json2", min_classes=1)["n_attributes"] == len(ATTRIBUTES)


def test_prepare_cub_reads_an_archive_in_the_real_layout(tmp_path):
    import tarfile

    root = fake_cub(tmp_path / "extracted")
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:  # CUB_200_2011/... plus attributes.txt at the top level
        tar.add(root, arcname="CUB_200_2011")
        tar.add(root.parent / "attributes.txt", arcname="attributes.txt")
    summary = prepare_cub(archive, tmp_path / "data", tmp_path / "json", min_classes=1)
    assert summary["n_attributes"] == len(ATTRIBUTES) and (tmp_path / "data" / "attributes.txt").is_file()


def test_prepare_cub_with_data_root_as_the_extracted_parent(tmp_path):
    root = fake_cub(tmp_path / "extracted")
    summary = prepare_cub(root.parent, root.parent, tmp_path / "json", min_classes=2)
    assert summary["n_concepts"] == 3  # curved bill, yellow wing and small size are on in >= 2 classes
    summary = prepare_cub(None, root, tmp_path / "json_b", min_classes=2)
    assert summary["n_concepts"] == 3


def test_missing_attributes_txt_names_where_it_was_looked_for(tmp_path, capsys):
    root = fake_cub(tmp_path / "extracted")
    moved = tmp_path / "elsewhere" / "CUB_200_2011"
    moved.parent.mkdir()
    shutil.move(str(root), str(moved))  # the CUB folder without the attributes.txt that lay beside it
    argv = ["--src", str(moved), "--data_root", str(tmp_path / "data"), "--json_root", str(tmp_path / "json")]
    assert _script("download_cub").main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attributes.txt" in err and str(moved.parent / "attributes.txt") in err


# ------------------------------------------------------------------ 3. data.min_classes / data.val_fraction removed

def test_unread_data_keys_are_gone_and_the_shipped_configs_load():
    keys = all_keys()
    assert "data.min_classes" not in keys and "data.val_fraction" not in keys
    for path in sorted((REPO / "config").glob("*.yaml")):
        load_config(path)
        assert "min_classes" not in path.read_text() and "val_fraction" not in path.read_text()
    readme = (REPO / "README.md").read_text()
    assert "data.min_classes" not in readme and "data.val_fraction" not in readme


@pytest.mark.parametrize("key, flag", [("min_classes", "--min-classes"), ("val_fraction", "--val-fraction")])
def test_an_old_config_with_a_removed_key_is_told_where_it_went(tmp_path, key, flag):
    path = tmp_path / "old.yaml"
    path.write_text(f"data:\n  {key}: 3\n")
    with pytest.raises(UserError, match=flag) as info:
        load_config(path)
    assert f"data.{key}" in str(info.value)
    with pytest.raises(UserError, match=flag):
        load_config(None, [f"data.{key}=3"])


def test_the_docs_limit_the_integrated_gradients_completeness_claim_to_trained_networks():
    text = " ".join((REPO / "doc" / "methods.md").read_text().split())
    assert "complete to < 1 % on trained networks; on a randomly initialised network the completeness gap can be larger" in text
