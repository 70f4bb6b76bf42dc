"""The dataset registry: one consistent DatasetSpec per dataset, and the names derived from it."""
from __future__ import annotations

import dataclasses

import pytest

from lottery_xai.config import SPLIT_NAMES, Config
from lottery_xai.data import DATASET_NAMES, DATASETS, DatasetSpec, build_datasets, build_transform, get_dataset
from lottery_xai.data.transforms import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, TrainTransform
from lottery_xai.errors import UserError

CUB_STYLE = ("synthetic_cub", "cub")


def test_names_come_from_the_registry_in_order():
    assert DATASET_NAMES == ("synthetic_cub", "cub", "mnist_eo", "mnist", "folder")
    assert DATASET_NAMES == tuple(DATASETS)
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(Config)}["dataset"]
    assert tuple(choices) == DATASET_NAMES  # the config's choices and the registry agree


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_spec_is_consistent(name):
    spec = get_dataset(name)
    assert isinstance(spec, DatasetSpec) and spec is DATASETS[name] and spec.name == name
    assert callable(spec.builder) and callable(spec.describe)
    assert len(spec.mean) == len(spec.std) == 3 and all(s > 0 for s in spec.std)
    assert all(isinstance(flag, bool) for flag in
               (spec.has_boxes, spec.has_parts, spec.has_concepts, spec.flips_allowed, spec.cub_layout))
    assert "splits.json" in spec.needed_files and len(set(spec.needed_files)) == len(spec.needed_files)
    assert ("concepts.json" in spec.needed_files) == spec.cub_layout
    assert spec.train_scale is None or (len(spec.train_scale) == 2 and 0 < spec.train_scale[0] <= spec.train_scale[1] <= 1)
    command = spec.prepare_command("DATA", "JSON")
    assert "scripts_data/" in command and "--data_root DATA" in command and "--json_root JSON" in command
    assert "{" not in command
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.flips_allowed = not spec.flips_allowed


def test_dataset_specific_fields():
    for name in CUB_STYLE:
        spec = get_dataset(name)
        assert spec.flips_allowed and spec.has_parts and spec.cub_layout
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert spec.needed_files == ("splits.json", "concepts.json")
    mnist = get_dataset("mnist_eo")
    assert not mnist.flips_allowed and not mnist.has_parts and not mnist.cub_layout
    assert (mnist.mean, mnist.std) == (HALF_MEAN, HALF_STD)
    assert mnist.needed_files == ("splits.json", "source.json")
    assert mnist.train_scale == (0.8, 1.0)


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_train_transform_follows_the_flips_flag(name):
    spec = get_dataset(name)
    transform = build_transform(True, 32, spec.mean, spec.std, name)
    assert isinstance(transform, TrainTransform) and transform.hflip == spec.flips_allowed
    default = TrainTransform(32).scale
    assert transform.scale == (default if spec.train_scale is None else spec.train_scale)


def test_unknown_dataset_is_a_one_line_error_with_a_suggestion():
    with pytest.raises(UserError) as error:
        get_dataset("mnist_oe")
    message = str(error.value)
    assert "\n" not in message
    assert message == "unknown dataset 'mnist_oe'; did you mean 'mnist_eo'?"
    with pytest.raises(UserError) as error:
        get_dataset("imagenet")
    assert str(error.value) == "unknown dataset 'imagenet'; use one of synthetic_cub, cub, mnist_eo, mnist, folder"


def test_build_datasets_checks_the_name_first(tmp_path):
    with pytest.raises(UserError, match=r"^unknown dataset 'cub2'; did you mean 'cub'\?$"):
        build_datasets("cub2", tmp_path, tmp_path, 32)


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_missing_files_name_the_registered_command(name, tmp_path):
    spec = get_dataset(name)
    with pytest.raises(UserError) as error:
        build_datasets(name, tmp_path / "data", tmp_path / "json", 32)
    message = str(error.value)
    assert message == (f"missing {tmp_path / 'json' / 'splits.json'}: run: "
                       f"{spec.prepare_command(tmp_path / 'data', tmp_path / 'json')}")


def test_split_names_are_the_config_ones():
    import lottery_xai.data as data
    import lottery_xai.data.cub as cub
    import lottery_xai.data.mnist as mnist

    assert data.SPLITS is SPLIT_NAMES and cub.SPLITS is SPLIT_NAMES and mnist.SPLITS is SPLIT_NAMES
