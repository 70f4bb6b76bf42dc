"""Step 7's per-image values, intervals and tests on a tiny run, and the replicates over seeds
(main_aggregate.py): hand-computed means and intervals, null bands of identical dense models."""
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.errors import UserError
from lottery_xai.pipeline.aggregate import aggregate_step, parse_seeds, seed_runs
from lottery_xai.pipeline.heatmaps import heatmaps_step
from lottery_xai.pipeline.metrics import metrics_step
from lottery_xai.report import aggregate_plots
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.pipeline.test import evaluate_rounds
from lottery_xai.report import plot_metrics
from lottery_xai.safe_io import read_csv, save_csv, save_npz

from conftest import tiny_overrides

CPU = torch.device("cpu")
EXTRA = ["prune_iterations=1", "train.epochs=1", "heatmaps.methods=[gradcam,random]", "metrics.transform_methods=[]", "heatmaps.images_per_class=2",
         "metrics.n_steps=4", "stats.n_bootstrap=500"]
quiet = lambda *_: None  # noqa: E731


def _steps(cfg, rounds=(0, 1), explain=True):
    LotteryRun(rd.RunDir(cfg), CPU, log=quiet).run_rounds(list(rounds))
    evaluate_rounds(rd.RunDir(cfg), CPU, list(rounds), log=quiet)
    heatmaps_step(rd.RunDir(cfg), CPU, list(rounds), log=quiet)
    if explain:
        metrics_step(rd.RunDir(cfg), CPU, list(rounds), log=quiet)


@pytest.fixture(scope="module")
def seeds_run(tiny_data, tmp_path_factory):
    """Seeds 0 and 1 of a tiny run (steps 1, 2, 6, 7) and the random-pruning control of seed 0 (1, 2, 6)."""
    logs = tmp_path_factory.mktemp("logs")
    cfg = load_config(None, tiny_overrides(tiny_data, logs, *EXTRA))
    for seed in (0, 1):
        _steps(load_config(None, tiny_overrides(tiny_data, logs, *EXTRA, f"seed={seed}")))
    _steps(load_config(None, tiny_overrides(tiny_data, logs, *EXTRA, "pruning.method=random")), explain=False)
    return cfg


def test_per_image_values_and_intervals_of_step7(seeds_run):
    run = rd.RunDir(seeds_run)
    table = read_csv(run.explanation_metrics())
    per_image = read_csv(run.explanation_per_image())
    assert list(per_image.columns) == ["round", "method", "metric", "image_id", "value"]
    assert per_image.groupby(["round", "method", "metric"]).size().eq(8).all()  # 4 classes x 2 images
    means = per_image.groupby(["round", "method", "metric"])["value"].mean()
    maps = table[table["method"] != "tcav"].set_index(["round", "method", "metric"])
    assert len(maps) == len(means)
    np.testing.assert_allclose(maps["value"].to_numpy(), means.loc[maps.index].to_numpy(), rtol=1e-12, atol=1e-12)
    defined = maps.dropna(subset=["ci_low"])
    spread = per_image.groupby(["round", "method", "metric"])["value"].nunique()
    assert len(defined) == (spread.loc[maps.index] > 0).sum()
    assert (defined["ci_low"] <= defined["value"] + 1e-12).all() and (defined["value"] <= defined["ci_high"] + 1e-12).all()
    # the tests: each pruned round against round 0, and gradcam against random, every metric; scipy's numbers
    tests = read_csv(run.explanation_tests())
    assert set(tests["comparison"]) == {"dense", "random"}
    assert set(tests.loc[tests["comparison"] == "random", "method"]) == {"gradcam"}
    assert set(tests.loc[tests["comparison"] == "dense", "round"]) == {1}
    row = tests[(tests["comparison"] == "random") & (tests["round"] == 0) & (tests["metric"] == "energy_in_box")].iloc[0]
    value = per_image.set_index(["round", "method", "metric", "image_id"]).sort_index()["value"]
    a, b = value[0, "gradcam", "energy_in_box"].to_numpy(), value[0, "random", "energy_in_box"].to_numpy()
    assert row["n"] == 8 and row["p_value"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert (tests["p_adjusted"] >= tests["p_value"] - 1e-15).all()
    # a rerun skips every round and leaves the tables as they are
    before = run.explanation_per_image().read_bytes(), run.explanation_metrics().read_bytes()
    metrics_step(rd.RunDir(seeds_run), CPU, [0, 1], log=quiet)
    assert (run.explanation_per_image().read_bytes(), run.explanation_metrics().read_bytes()) == before


def test_aggregate_of_two_tiny_seeds(seeds_run):
    tables = aggregate_step(rd.RunDir(seeds_run), [0, 1], log=quiet)
    runs = seed_runs(rd.RunDir(seeds_run), [0, 1])
    values = [read_csv(r.explanation_metrics()).set_index(["round", "method", "metric"])["value"] for r in runs.values()]
    metrics = tables["metrics"].set_index(["round", "method", "metric"])
    np.testing.assert_allclose(metrics["mean"], ((values[0] + values[1]) / 2).loc[metrics.index])
    assert (metrics["n_seeds"] == 2).all()
    bands = tables["null_bands"]
    assert set(bands["metric"]) == {"spearman", "top_iou", "ssim"} and set(bands["method"]) == {"gradcam", "random"}
    assert (bands["seed_n_pairs"] == 1).all()  # two seeds: one pair, a mean without an interval
    gradcam = bands[(bands["method"] == "gradcam") & (bands["metric"] == "spearman")].set_index("round")
    assert gradcam.loc[0, "ticket_mean"] == pytest.approx(1.0)  # the dense round against itself
    assert gradcam["random_n"].eq(1).all() and gradcam.loc[0, "random_mean"] == pytest.approx(1.0)  # same dense model
    assert set(tables["accuracy"]["run"]) == {"ticket", "random"}
    # a rerun with unchanged inputs skips; the figures of the replicates and the null bands of step 8
    stamp = rd.RunDir(seeds_run).aggregate_record([0, 1]).stat().st_mtime_ns
    aggregate_step(rd.RunDir(seeds_run), [0, 1], log=quiet)
    assert rd.RunDir(seeds_run).aggregate_record([0, 1]).stat().st_mtime_ns == stamp
    assert all(p.is_file() for p in aggregate_plots(rd.RunDir(seeds_run), [0, 1], log=quiet))
    # step 8's metric figures of a seed in the replicates carry the null bands, the other figures none
    figures = {fig.axes[0].get_title(): fig for fig in plot_metrics(rd.RunDir(seeds_run), save=False)}
    bands = {title for title, fig in figures.items()
             if "seed-to-seed band (gradcam)" in fig.axes[0].get_legend_handles_labels()[1]}
    assert bands == {"spearman", "top_iou", "ssim"} and len(figures) > len(bands)
    plt.close("all")


def _fake_seed(cfg, seed, acc, metric_values, maps):
    """A run folder of seed ``seed`` written by hand: test accuracy, step 7's table, TCAV, dense maps."""
    run = rd.RunDir(load_config(None, [f"logs={cfg.logs}", "prune_iterations=1", "heatmaps.methods=[gradcam]",
                                       f"seed={seed}"]))
    save_csv(run.test_metrics(), pd.DataFrame({"round": [0, 1], "weights_remaining": [1.0, 0.5], "test_acc": acc,
                                                  "test_loss": [1.0, 1.0], "n_images": [10, 10]}))
    rows = [{"round": r, "weights_remaining": w, "method": "gradcam", "metric": "spearman", "value": v, "n_images": 4,
             "ci_low": np.nan, "ci_high": np.nan} for r, w, v in zip((0, 1), (1.0, 0.5), metric_values)]
    save_csv(run.explanation_metrics(), pd.DataFrame(rows))
    tcav = pd.DataFrame({"round": [0, 0], "weights_remaining": 1.0, "layer": "layer3", "class": "a",
                         "concept": ["red", "wing"], "tcav_mean": [0.9, 0.4], "tcav_std": 0.1, "random_mean": 0.5,
                         "p_value": [0.001, 0.5], "significant": [True, False], "n_images": 5})
    save_csv(run.tcav_scores(), tcav)
    save_npz(run.heatmap_file(0, "gradcam"), ids=np.arange(4), maps=maps.astype(np.float16),
             weights_remaining=1.0)
    return run


def test_aggregate_by_hand_and_null_band_of_identical_dense_models(tmp_path):
    cfg = load_config(None, [f"logs={tmp_path}", "prune_iterations=1", "heatmaps.methods=[gradcam]"])
    maps = np.random.default_rng(0).random((4, 16, 16))
    accs = {0: [0.80, 0.60], 1: [0.90, 0.70], 2: [0.70, 0.20]}
    spearmans = {0: [1.0, 0.90], 1: [1.0, 0.99], 2: [1.0, 0.96]}
    for s in accs:
        _fake_seed(cfg, s, accs[s], spearmans[s], maps)  # every seed's dense model gives the same maps
    tables = aggregate_step(rd.RunDir(cfg), [0, 1, 2], log=quiet)
    assert rd.RunDir(cfg).aggregate_dir([0, 1, 2]).name == "synthetic_cub_small_resnet_magnitude_global_p35_init_seeds0-1-2"
    acc = tables["accuracy"].set_index("round")
    t = stats.t.ppf(0.975, 2)
    # round 1: 0.6, 0.7, 0.2 -> mean 0.5, sd sqrt(0.07)
    assert acc.loc[1, "mean"] == pytest.approx(0.5)
    assert (acc.loc[1, "ci_low"], acc.loc[1, "ci_high"]) == pytest.approx((0.5 - t * math.sqrt(0.07 / 3),
                                                                           0.5 + t * math.sqrt(0.07 / 3)))
    assert acc.loc[0, "mean"] == pytest.approx(0.8) and (acc["n_seeds"] == 3).all()
    m = tables["metrics"].set_index("round")
    assert m.loc[1, "mean"] == pytest.approx(0.95)
    half = t * np.std([0.90, 0.99, 0.96], ddof=1) / math.sqrt(3)
    assert (m.loc[1, "ci_low"], m.loc[1, "ci_high"]) == pytest.approx((0.95 - half, 0.95 + half))
    tcav = tables["tcav"].set_index("concept")
    assert tcav.loc["red", "mean"] == pytest.approx(0.9) and tcav.loc["red", "significant_share"] == 1.0
    # identical dense models: perfect agreement, no TCAV change, an interval of width 0 over the 3 pairs
    seed = read_csv(rd.RunDir(cfg).aggregate_file([0, 1, 2], "null_bands"))
    spear = seed[(seed["metric"] == "spearman")].set_index("round")
    assert spear.loc[0, ["seed_mean", "seed_ci_low", "seed_ci_high"]].to_numpy(float) == pytest.approx([1, 1, 1])
    assert spear.loc[0, "seed_n_pairs"] == 3
    assert bool(spear.loc[0, "within_seed_band"]) and not bool(spear.loc[1, "within_seed_band"])
    from lottery_xai.pipeline.aggregate import seed_band
    band = seed_band(rd.RunDir(cfg), [0, 1, 2], ["gradcam"], log=quiet).set_index(["method", "metric"])
    assert band.loc[("gradcam", "top_iou"), "seed_mean"] == pytest.approx(1.0)
    assert band.loc[("gradcam", "ssim"), "seed_mean"] == pytest.approx(1.0)
    assert band.loc[("tcav", "tcav_abs_diff"), "seed_mean"] == 0.0
    assert band.loc[("tcav", "tcav_flip"), "seed_mean"] == 0.0


def test_aggregate_user_errors(tmp_path):
    with pytest.raises(UserError, match="at least two seeds"):
        parse_seeds("3")
    with pytest.raises(UserError, match="comma-separated"):
        parse_seeds("0,x")
    cfg = load_config(None, [f"logs={tmp_path}"])
    with pytest.raises(UserError, match="run the seeds first"):
        aggregate_step(rd.RunDir(cfg), [0, 1], log=quiet)
    with pytest.raises(UserError, match="experiment_name"):
        seed_runs(rd.RunDir(load_config(None, [f"logs={tmp_path}", "experiment_name=x"])), [0, 1])
