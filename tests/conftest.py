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
    # tiny runs keep the costly reference settings small: no doubling of IG's steps, 10 Samek steps
    return [f"data_root={data}", f"json_root={data}/prepared", f"logs={logs}", "img_size=32", "train.epochs=2",
            "data.batch_size=8", "prune_iterations=2", "prune_percent=50", "device=cpu", "heatmaps.ig_max_steps=2",
            "metrics.samek_steps=10", *extra]


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


# ---------------------------------------------------------------- sanity checks and the run report (issue 13, 4-5)

SANITY_EXTRA = ["cav.n_random=3", "heatmaps.images_per_class=2", "heatmaps.grid_images=3",
                "heatmaps.methods=[gradcam,saliency,random]", "metrics.transform_methods=[gradcam]",
                "metrics.n_steps=4", "metrics.n_transforms=1", "metrics.fractions=[0.05,0.1]",
                "stats.n_bootstrap=100", "sanity.n_images=0"]


def run_steps(run, rounds, last: int = 7, log=lambda *_: None) -> None:
    """Steps 2 (test) to ``last`` of a trained run's ``rounds`` (a ``RunDir``), in order, on the CPU (the
    fixtures' builder)."""
    from lottery_xai.pipeline.activations import activations_step
    from lottery_xai.pipeline.cavs import cavs_step
    from lottery_xai.pipeline.heatmaps import heatmaps_step
    from lottery_xai.pipeline.metrics import metrics_step
    from lottery_xai.pipeline.tcav import tcav_step
    from lottery_xai.pipeline.test import evaluate_rounds

    steps = [lambda: evaluate_rounds(run, DEVICE, rounds, log=log), lambda: activations_step(run, DEVICE, rounds, log=log),
             lambda: cavs_step(run, rounds, log=log), lambda: tcav_step(run, DEVICE, rounds, log=log),
             lambda: heatmaps_step(run, DEVICE, rounds, log=log), lambda: metrics_step(run, DEVICE, rounds, log=log)]
    for step in steps[:last - 1]:
        step()


@pytest.fixture(scope="session")
def sanity_run(tiny_data, tmp_path_factory):
    """Steps 1-8 of a tiny run (as tests/pipeline/test_pipeline.py's ``tiny_run``, with three methods and no
    reinit control, so that it builds in seconds), shared by the sanity-check and report tests; returns the
    overrides."""
    from lottery_xai.pipeline.prune import LotteryRun
    from lottery_xai.report import make_all_plots
    from lottery_xai.rundir import open_run

    overrides = tiny_overrides(tiny_data, tmp_path_factory.mktemp("sanity_logs"), *SANITY_EXTRA)
    run, rounds, quiet = open_run(None, overrides), [0, 1, 2], (lambda *_: None)
    LotteryRun(run, DEVICE, log=quiet).run_rounds(rounds)
    run_steps(run, rounds)
    make_all_plots(run, log=quiet)
    return overrides


LAUNCH_TIME_COLUMNS = {"train_seconds", "seconds"}


def launch_tables(root: Path) -> dict:
    """Every CSV table under a logs folder (time columns dropped, launch folders skipped) and the units of
    every fingerprint record, by path: what two launchers must write alike."""
    import pandas as pd

    out = {}
    for path in sorted(root.rglob("*.csv")):
        if "launch" in path.relative_to(root).parts:
            continue
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        out[str(path.relative_to(root))] = frame[[c for c in frame.columns
                                                  if c not in LAUNCH_TIME_COLUMNS]].to_csv(index=False)
    for path in sorted(root.rglob("fingerprints.json")):
        out[str(path.relative_to(root))] = sorted(pd.read_json(path, typ="series").index)
    return out


def launch_main(args, overrides, capsys):
    """``python -m lottery_xai.launch ARGS --set OVERRIDE ...`` in this process: (exit status, its output)."""
    from lottery_xai import launch

    argv = [*args]
    for o in overrides:
        argv += ["--set", o]
    code = launch.main(argv)
    return code, capsys.readouterr().out
