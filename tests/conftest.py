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


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def browser_screenshot(html, png, tmp_path, width=1280, height=1600):
    """Render a local HTML file in headless chromium and return the screenshot as an RGB array.

    Skips the calling test, with the reason, where chromium is absent (``.ci/run`` installs Debian's)."""
    import shutil
    import subprocess

    import cv2

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    profile = Path(tmp_path) / "chromium-profile"
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
           f"--screenshot={png}", "--virtual-time-budget=5000", Path(html).resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert Path(png).is_file(), f"chromium wrote no screenshot: {done.stderr[-2000:]}"
    image = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert image is not None, f"unreadable screenshot {png}"
    return image[..., ::-1]


def not_blank(image, min_std=10.0) -> bool:
    """A rendered page with figures: pixel values vary (a blank page is one colour)."""
    return float(image.astype("float32").std()) > min_std
