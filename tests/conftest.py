"""Shared fixtures: a tiny synthetic dataset (CUB layout) and a tiny finished run on it."""
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """4 classes x 12 images at 32 px, prepared (splits + concepts)."""
    from lottery_xai.data.synthetic import prepare_synthetic_cub

    root = tmp_path_factory.mktemp("synth") / "data"
    prepare_synthetic_cub(root, root / "prepared", seed=0, n_classes=4, images_per_class=12, image_size=32,
                          train_fraction=0.6, val_fraction=0.2)
    return root


def tiny_overrides(data, logs, *extra):
    return [f"data_root={data}", f"json_root={data}/prepared", f"logs={logs}", "img_size=32", "train.epochs=2",
            "data.batch_size=8", "prune_iterations=2", "prune_percent=50", "device=cpu", *extra]


def iteration_hook(fn):
    """``LotteryRun(..., callbacks=iteration_hook(fn))``: ``fn(round, iteration, model)`` after every training step."""
    from lottery_xai.training import every_iteration

    return lambda r: [every_iteration(lambda it, model: fn(r, it, model))]


ROOT = Path(__file__).resolve().parent.parent
DEVICE = torch.device("cpu")


class Interrupt(Exception):
    """Raised by a test's training callback to kill a run at a chosen step."""


def tiny_cfg(data, logs, *overrides):
    """The tiny config with augmentation on (the round loop's tests)."""
    from lottery_xai.config import load_config

    return load_config(None, tiny_overrides(data, logs, "data.augment=true", *overrides))
