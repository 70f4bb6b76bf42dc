"""Steps 1-8 end to end on a tiny run: the run-directory contract, resuming, and the notebooks."""
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.pipeline.test import evaluate_rounds
from lottery_xai.pipeline.metrics import metrics_step
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.report import make_all_plots
from lottery_xai.pipeline.cavs import cavs_step
from lottery_xai.pipeline.heatmaps import heatmaps_step

from conftest import run_steps, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
EXTRA = ["cav.n_random=3", "heatmaps.images_per_class=2", "heatmaps.ig_steps=4", "heatmaps.grid_images=3"]
quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    overrides = tiny_overrides(tiny_data, logs, *EXTRA)
    cfg = load_config(None, overrides)
    rounds = [0, 1, 2]
    LotteryRun(rd.RunDir(cfg), CPU, log=quiet).run_rounds(rounds)
    control = load_config(None, overrides + ["pruning.rewind=reinit"])
    LotteryRun(rd.RunDir(control), CPU, log=quiet).run_rounds(rounds)
    evaluate_rounds(rd.RunDir(control), CPU, rounds, log=quiet)
    run_steps(rd.RunDir(cfg), rounds)
    make_all_plots(rd.RunDir(cfg), log=quiet)
    return cfg, overrides


def test_run_directory_contract(tiny_run):
    cfg, _ = tiny_run
    run = rd.RunDir(cfg)
    summary = pd.read_csv(run.pruning_summary())
    assert list(summary.columns) == ["round", "weights_remaining", "total_weights_remaining", "best_val_acc",
                                     "last_val_acc", "train_seconds"]
    assert list(summary["round"]) == [0, 1, 2]
    assert np.all(np.diff(summary["weights_remaining"]) < 0)
    metrics = pd.read_csv(run.test_metrics())
    assert list(metrics.columns) == ["round", "weights_remaining", "test_acc", "test_loss", "n_images"]
    assert (metrics["n_images"] == metrics["n_images"].iloc[0]).all()
    assert run.test_per_class().is_file()
    for r in (0, 2):
        for split in cfg.activations.splits:
            acts = np.load(run.activation_file(r, split, "layer3"), mmap_mode="r")
            ids = np.load(run.activation_meta(r, split, "ids"))
            assert acts.shape == (len(ids), 64) and np.isfinite(acts).all()
        cavs = np.load(run.cav_file(r, "layer3"))
        assert set(cavs.files) >= {"concepts", "cavs", "random_cavs", "accuracy"}
        norms = np.linalg.norm(cavs["cavs"], axis=-1)
        assert np.allclose(norms[np.isfinite(norms)], 1, atol=1e-5)
        for method in cfg.heatmaps.methods:
            maps = np.load(run.heatmap_file(r, method))
            assert maps["maps"].dtype == np.float32 and maps["maps"].shape[1:] == (32, 32)
            assert len(maps["ids"]) == len(maps["targets"]) == len(maps["maps"]) == 8
    acc = pd.read_csv(run.cav_accuracy())
    assert list(acc.columns) == ["round", "layer", "concept", "run", "accuracy", "kind"]
    assert set(acc["kind"]) == {"concept", "random"}
    tcav = pd.read_csv(run.tcav_scores())
    assert list(tcav.columns) == ["round", "weights_remaining", "layer", "class", "concept", "tcav_mean", "tcav_std",
                                  "random_mean", "p_value", "significant", "n_images", "protocol"]
    assert set(tcav["round"]) == {0, 1, 2} and (tcav["n_images"] > 0).all() and set(tcav["protocol"]) == {"reference"}
    plots = {p.name for p in (run.root / "plots").glob("*.png")}
    assert {"accuracy_vs_weights.png", "cav_accuracy.png", "heatmaps_gradcam.png"} <= plots
    assert any(name.startswith("tcav_layer3_") for name in plots)
    expl = pd.read_csv(run.explanation_metrics())
    assert list(expl.columns) == ["round", "weights_remaining", "method", "metric", "value", "n_images", "ci_low", "ci_high"]
    assert {"deletion_auc", "insertion_auc", "energy_in_box", "pointing_game", "energy_in_parts", "spearman", "tcav_flip",
            "transform_spearman", "transform_top_iou", "transform_ssim"} <= set(expl["metric"])
    transformed = expl[expl["metric"].str.startswith("transform_")]
    assert set(transformed["method"]) == {"gradcam", "gradcampp", "grad_x_activation", "saliency", "random"}
    assert transformed["value"].between(-1, 1).all()
    same = expl[(expl["round"] == 0) & expl["metric"].isin(["spearman", "top_iou", "ssim"])]
    assert np.allclose(same["value"], 1.0)  # round 0 compared with itself
    assert any(name.startswith("metric_") for name in plots)
    for step in ("pruning", "test", "activations", "cavs", "tcav", "heatmaps", "metrics"):
        assert run.config_file(step).is_file()


def test_steps_skip_complete_rounds(tiny_run):
    cfg, _ = tiny_run
    run = rd.RunDir(cfg)
    stamp = {p: p.stat().st_mtime_ns for p in [run.checkpoint(1), run.cav_file(1, "layer3"), run.heatmap_file(1, "gradcam")]}
    LotteryRun(rd.RunDir(cfg), CPU, log=quiet).run_rounds([0, 1, 2])
    cavs_step(rd.RunDir(cfg), [0, 1, 2], log=quiet)
    heatmaps_step(rd.RunDir(cfg), CPU, [0, 1, 2], log=quiet)
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    assert not list(run.root.rglob("*.tmp"))


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "iPython").glob("*.ipynb")))
def test_notebooks_execute(tiny_run, notebook, monkeypatch):
    _, overrides = tiny_run
    monkeypatch.setenv("LOTTERY_XAI_SET", " ".join(overrides))
    nb = nbformat.read(ROOT / "iPython" / notebook, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_loss_comparison_table_and_figure(tiny_run, tmp_path):
    from lottery_xai.report import compare_losses

    cfg, _ = tiny_run
    run = rd.RunDir(cfg)
    table = compare_losses({"cross_entropy": run, "again": run}, tmp_path, log=lambda *_: None)
    assert list(table.columns) == ["loss", "round", "weights_remaining", "test_acc", "transform_spearman",
                                   "energy_in_box", "insertion_auc", "spearman"]
    assert len(table) == 2 * 3 and table["test_acc"].notna().all()
    assert (table.loc[table["round"] == 0, "spearman"] == 1).all()  # the dense map against itself
    assert (tmp_path / "loss_comparison.csv").is_file() and (tmp_path / "loss_comparison.png").is_file()


def test_a_new_image_selection_remakes_the_maps_and_step7_follows_its_inputs(tiny_run, tmp_path):
    """Changing heatmaps.images_per_class is not ignored: step 7 refuses the old maps, step 6 stores the new
    images and makes the maps again (the rounds it was not asked for lose theirs), and step 7 measures
    again because its inputs changed; unchanged inputs are skipped."""
    import shutil

    from lottery_xai.errors import UserError

    cfg, overrides = tiny_run
    shutil.copytree(cfg.logs, tmp_path / "logs")
    copy = load_config(None, overrides + [f"logs={tmp_path / 'logs'}"])
    run = rd.RunDir(copy)
    table = run.explanation_metrics()
    before = table.stat().st_mtime_ns
    metrics_step(rd.RunDir(copy), CPU, [0, 1, 2], log=quiet)  # same inputs: nothing is measured again
    assert table.stat().st_mtime_ns == before
    fewer = load_config(None, overrides + [f"logs={tmp_path / 'logs'}", "heatmaps.images_per_class=1"])
    with pytest.raises(UserError, match="images_per_class=1 select 4: run step 6"):
        metrics_step(rd.RunDir(fewer), CPU, [0, 1], log=quiet)
    heatmaps_step(rd.RunDir(fewer), CPU, [0, 1], log=quiet)
    assert len(np.load(run.heatmap_images())["ids"]) == 4
    assert np.load(run.heatmap_file(1, "gradcam"))["maps"].shape[0] == 4
    assert not run.heatmap_file(2, "gradcam").is_file()  # of the old images: deleted, step 6 makes it when asked
    metrics_step(rd.RunDir(fewer), CPU, [0, 1], log=quiet)
    measured = pd.read_csv(table)
    assert set(measured.loc[measured["method"] == "gradcam", "n_images"]) >= {4}
    assert (measured.loc[(measured["round"] <= 1) & (measured["method"] == "gradcam"), "n_images"] == 4).all()
