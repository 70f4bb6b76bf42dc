"""The human study end to end: the export on the embedded synthetic data in the folder layout and on a
tiny VGG-16 run of config/BB_imagenette.yaml (every stimulus file exists, left/right balanced, no task
without its key, the preview page renders in headless chromium), the simulator's round trip through the
analysis, and the thesis's weight accounting (rate 64 of the conv weights = about 11 % of all of VGG-16's)."""
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DEVICE, ROOT, browser_screenshot, not_blank, tiny_overrides
from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.pipeline.human_study import BATCH_COLUMNS, KEY_COLUMNS, export_stimuli, simulate_results
from lottery_xai.report.human_study import analyse, write_task_pages
from lottery_xai.safe_io import load_torch, read_csv
from lottery_xai.stats.human import krippendorff_alpha, recognition_test, share_standard_error

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    """The synthetic birds (4 classes) written in the ImageFolder layout and prepared for dataset: folder."""
    from lottery_xai.data.synthetic import prepare_synthetic_folder

    root = tmp_path_factory.mktemp("hs") / "folder"
    prepare_synthetic_folder(root, root / "prepared", n_classes=4, images_per_class=16, image_size=32,
                             train_fraction=0.5)
    return root


@pytest.fixture(scope="module")
def folder_run(folder_data, tmp_path_factory):
    """A finished 3-round small-ResNet run on the folder data, exported (stimuli, keys, pages)."""
    from lottery_xai.pipeline.prune import prune_step

    logs = tmp_path_factory.mktemp("hs_logs")
    cfg = load_config(None, tiny_overrides(folder_data, logs, "dataset=folder", f"json_root={folder_data}/prepared",
                                           "train.epochs=4", "data.batch_size=16", "human_study.images_per_class=3",
                                           "human_study.display_size=48"))
    prune_step(rd.RunDir(cfg), DEVICE, [0, 1, 2], **QUIET)
    run = rd.RunDir(cfg)
    summary = export_stimuli(run, DEVICE, **QUIET)
    write_task_pages(run, **QUIET)
    return run, summary


def check_export(run: rd.RunDir, summary: dict) -> None:
    """The issue's export checks: every stimulus file exists, left/right balanced, no task without its key."""
    rounds = summary["rounds"]
    stimuli = read_csv(run.human_study_stimuli_index())
    assert len(stimuli) == summary["images"] * len(rounds) * 2 and summary["images"] > 0
    assert all(run.human_study_stimulus(f).is_file() for f in stimuli["file"])
    assert not any("round" in f for f in stimuli["file"])  # a file name does not tell the round
    for experiment in (1, 2):
        batch = read_csv(run.human_study_batch(experiment))
        key = read_csv(run.human_study_key(experiment))
        assert list(batch.columns) == BATCH_COLUMNS[experiment] and list(key.columns) == KEY_COLUMNS[experiment]
        assert batch["item_id"].tolist() == key["item_id"].tolist() and batch["item_id"].is_unique
        urls = ["left_url", "right_url"] if experiment == 1 else ["image_url"]
        files = ["left_file", "right_file"] if experiment == 1 else ["file"]
        for url, file in zip(urls, files):
            assert (batch[url] == "stimuli/" + key[file]).all()  # the image a task shows is the key's
            assert all((run.human_study_dir / u).is_file() for u in batch[url])
        assert set(key["image_id"]) == set(stimuli["image_id"])
    key = read_csv(run.human_study_key(1))
    pairs = key.groupby(["round_a", "round_b"])
    assert len(pairs) == len(rounds) * (len(rounds) - 1) // 2
    for (a, b), group in pairs:
        assert a < b and len(group) == summary["images"]
        denser_left = int((group["left_round"] == a).sum())
        assert denser_left == math.ceil(len(group) / 2)  # balanced: exactly half (one more when odd)
        assert ((group["left_round"] == a) == (group["right_round"] == b)).all()
    assert len(read_csv(run.human_study_key(2))) == summary["images"] * len(rounds)


def check_preview(run: rd.RunDir, tmp_path) -> None:
    html = run.human_study_preview().read_text()
    assert html.count('class="hs-task hs-experiment1"') == run.cfg.human_study.preview_items
    for layout in (1, 2):
        assert "${" in run.human_study_layout(layout).read_text()  # Mechanical Turk's placeholders
    image = browser_screenshot(run.human_study_preview(), tmp_path / "preview.png", tmp_path, 1100, 1400)
    assert image.shape == (1400, 1100, 3) and not_blank(image)
    # the stimuli are drawn: the jet overlays put saturated colour on the page (a missing image would not)
    saturation = image.max(axis=2).astype(int) - image.min(axis=2).astype(int)
    size = run.cfg.human_study.display_size
    assert (saturation > 60).sum() > 0.5 * size * size  # at least half an overlay's area of (blended) jet colours


def test_export_on_the_folder_layout(folder_run, tmp_path):
    run, summary = folder_run
    assert summary["rounds"] == [0, 1, 2]  # 100 %, 50 %, 25 %: the rounds nearest 1, 0.5 and 0.03125
    check_export(run, summary)
    record = json.loads(run.human_study_export_record().read_text())
    assert record["images"] == summary["images"] and len(record["class_names"]) == 4
    before = {f: run.human_study_stimulus(f).stat().st_mtime_ns for f in read_csv(run.human_study_stimuli_index())["file"]}
    assert export_stimuli(run, DEVICE, **QUIET) == {**summary, "tasks": summary["tasks"]}  # a rerun skips
    assert all(run.human_study_stimulus(f).stat().st_mtime_ns == t for f, t in before.items())
    check_preview(run, tmp_path)


def test_step7_on_a_folder_dataset_skips_the_box_metrics_and_says_so(folder_run, tmp_path):
    """A folder dataset has no object boxes (bbox is the whole image): step 7 measures everything else and
    leaves out energy in box and the pointing game, with a log line, instead of scoring a trivial box."""
    import shutil

    from lottery_xai.pipeline.heatmaps import heatmaps_step
    from lottery_xai.pipeline.metrics import metrics_step

    run, _ = folder_run
    shutil.copytree(run.cfg.logs, tmp_path / "logs")
    from lottery_xai.config import replace

    cfg = replace(run.cfg, **{"logs": str(tmp_path / "logs"), "heatmaps.methods": ["gradcam", "random"],
                              "heatmaps.images_per_class": 1, "metrics.transform_methods": [], "metrics.n_steps": 4,
                              "stats.n_bootstrap": 100})
    lines = []
    heatmaps_step(rd.RunDir(cfg), DEVICE, [0, 1], **QUIET)
    table = metrics_step(rd.RunDir(cfg), DEVICE, [0, 1], log=lines.append)
    assert any("no object boxes" in str(line) for line in lines)
    metrics = set(table["metric"])
    assert {"deletion_auc", "insertion_auc", "spearman"} <= metrics
    assert not metrics & {"energy_in_box", "pointing_game"}


def test_simulated_answers_come_back_through_the_analysis(folder_run):
    run, summary = folder_run
    files = simulate_results(run, preference=0.6, equal_share=0.2, agreement=0.3, workers=5,
                             accuracy={0: 0.9, 1: 0.9, 2: 0.5}, dont_know=0.05, **QUIET)
    tables = analyse(run, [files[1], files[2]], **QUIET)
    first, second = tables["experiment1"], tables["experiment2"]
    # the counts of the table are the file's, joined with the key by hand
    raw = pd.read_csv(files[1]).merge(read_csv(run.human_study_key(1)), left_on="Input.item_id", right_on="item_id")
    chosen = np.where(raw["Answer.choice"] == "left", raw["left_round"],
                      np.where(raw["Answer.choice"] == "right", raw["right_round"], -1))
    for row in first.itertuples():
        pair = (raw["round_a"] == row.round_a) & (raw["round_b"] == row.round_b)
        assert row.votes_a == int((pair & (chosen == row.round_a)).sum())
        assert row.votes_b == int((pair & (chosen == row.round_b)).sum())
        assert row.votes_equal == int((pair & (chosen == -1)).sum()) and row.n_answers == 5 * summary["images"]
        assert row.n_answers == row.votes_a + row.votes_b + row.votes_equal
    # 60/40 comes back within the sampling error (pooled over the comparisons; design effect of 5 workers)
    decisive = int((first["votes_a"] + first["votes_b"]).sum())
    share = first["votes_b"].sum() / decisive
    assert abs(share - 0.6) < 3.5 * share_standard_error(0.6, decisive, 5, 0.3)
    raw2 = pd.read_csv(files[2]).merge(read_csv(run.human_study_key(2)), left_on="Input.item_id", right_on="item_id")
    correct = (raw2["Answer.choice"] == raw2["class"]).groupby(raw2["round"]).sum()
    assert second["n_correct"].tolist() == correct.tolist()
    dense = second.iloc[0]
    for row in second.iloc[1:].itertuples():  # the thesis's unpaired 2x2 chi-square: a secondary column
        assert (row.chi2_naive, row.p_naive) == pytest.approx(recognition_test(row.n_correct, row.n_answers,
                                                                               int(dense.n_correct), int(dense.n_answers)))
    # the primary p-values: least squares with statsmodels' two-way cluster-robust covariance, clustered by
    # task and worker (experiment 1: the share of decisive votes for the sparser round against 1/2) and by
    # image and worker (experiment 2: the accuracy difference with the dense round, paired by image)
    sm = pytest.importorskip("statsmodels.api")

    def clustered_fit(y, x, groups):
        return sm.OLS(y, x).fit(cov_type="cluster", use_t=True, cov_kwds={"groups": np.column_stack(groups)})

    raw["vote_b"] = chosen == raw["round_b"]
    for row in first.itertuples():
        d = raw[(raw["round_a"] == row.round_a) & (raw["round_b"] == row.round_b) & (chosen != -1)]
        codes = [pd.factorize(d[c])[0] for c in ("item_id", "WorkerId")]
        fit = clustered_fit(d["vote_b"].to_numpy(float) - 0.5, np.ones((len(d), 1)), codes)
        assert (row.share_b - 0.5, row.p_value) == pytest.approx((fit.params[0], fit.pvalues[0]), rel=1e-8)
        assert row.share_b_low == pytest.approx(fit.conf_int()[0, 0] + 0.5, rel=1e-8)
    raw2["right"] = (raw2["Answer.choice"] == raw2["class"]).astype(float)
    for row in second.iloc[1:].itertuples():
        d = raw2[raw2["round"].isin([int(dense["round"]), row.round])]
        codes = [pd.factorize(d[c])[0] for c in ("image_id", "WorkerId")]
        fit = clustered_fit(d["right"].to_numpy(), sm.add_constant((d["round"] == row.round).to_numpy(float)), codes)
        assert (row.difference, row.p_value) == pytest.approx((fit.params[1], fit.pvalues[1]), rel=1e-8)
        assert row.difference == pytest.approx(row.accuracy - dense.accuracy)
    assert second["accuracy"].iloc[-1] < second["accuracy"].iloc[0]  # 0.5 against 0.9
    assert all(run.human_study_figure(n).is_file() for n in ("experiment1", "experiment2"))


@pytest.mark.parametrize("agreement", [0.0, 0.9])
def test_alpha_follows_the_agreement_set(folder_run, agreement):
    run, summary = folder_run
    files = simulate_results(run, preference=0.6, agreement=agreement, workers=5, seed=7, **QUIET)
    answers = pd.read_csv(files[1])
    alpha = krippendorff_alpha(answers["Input.item_id"], answers["Answer.choice"])
    # few items (3 comparisons x the exported images): a wide tolerance; the stats tests use 1,500 items
    assert abs(alpha - agreement) < 0.3
    table = analyse(run, [files[1]], draw=False, **QUIET)["experiment1"]
    assert table["alpha"].between(agreement - 0.45, agreement + 0.3).all()


# ---------------------------------------------------------------- VGG-16, the thesis's config

def test_rate_64_of_the_conv_weights_is_about_11_percent_of_all_of_vgg16():
    import torchvision

    from lottery_xai.pruning import prunable_names, target_fractions

    with torch.device("meta"):
        model = torchvision.models.vgg16_bn(num_classes=10)  # Imagenette's 10 classes
    params = dict(model.named_parameters())
    conv = prunable_names(model, conv_only=True)
    assert len(conv) == 13 and all(params[n].ndim == 4 for n in conv)  # VGG-16's 13 conv layers, no linear one
    n_conv, n_all = sum(params[n].numel() for n in conv), sum(p.numel() for p in params.values())
    keep, _ = target_fractions(6, "compression_rates", 0.0, 0.5, [2, 4, 8, 16, 32, 64])
    assert keep == 1 / 64
    removed = n_conv * (1 - keep) / n_all
    assert n_conv == 14_710_464 and 0.10 < removed < 0.12  # "about 11 % of all of VGG-16's weights"


@pytest.fixture(scope="module")
def vgg_run(tmp_path_factory):
    """config/BB_imagenette.yaml at a tiny size (32 px, 1 epoch, dense + rate 2, from scratch) on the synthetic
    birds in the folder layout, through the scripts: steps 1 and 2, then the human study export, simulate, analyse."""
    from lottery_xai.data.synthetic import prepare_synthetic_folder

    tmp = tmp_path_factory.mktemp("vgg")
    data = tmp / "folder"
    prepare_synthetic_folder(data, data / "prepared", n_classes=2, images_per_class=12, image_size=32,
                             train_fraction=0.6)
    overrides = [f"data_root={data}", f"json_root={data}/prepared", f"logs={tmp / 'logs'}", "img_size=32",
                 "pretrained=false", "train.epochs=1", "pruning.compression_rates=[2]", "data.batch_size=32",
                 "data.eval_batch_size=32", "data.num_workers=0", "device=cpu", "human_study.display_size=32",
                 "human_study.images_per_class=2", "human_study.preview_items=1"]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    start, outputs = time.perf_counter(), {}
    for script in (["main_lth_pruning.py"], ["main_lth_test.py"], ["main_human_study.py", "export"],
                   ["main_human_study.py", "simulate", "--workers", "5"]):
        cmd = [sys.executable, *script, "--config", "config/BB_imagenette.yaml"]
        for o in overrides:
            cmd += ["--set", o]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (script, done.stderr[-3000:])
        outputs[script[1] if len(script) > 1 else script[0]] = done.stdout
    cfg = load_config(ROOT / "config" / "BB_imagenette.yaml", overrides)
    return rd.RunDir(cfg), outputs, time.perf_counter() - start


def test_the_thesis_config_runs_end_to_end_with_vgg16(vgg_run, tmp_path):
    run, outputs, seconds = vgg_run
    assert run.name == "folder_vgg16_bn_magnitude_layerwise_cr2_finetune_convonly_es0.01-10_seed0"
    summary = read_csv(run.pruning_summary())
    assert summary["round"].tolist() == [0, 1]
    # both weight columns: the conv weights (the prunable ones) and all weights
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.vgg16_bn(num_classes=2)
    n_conv = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 4)
    n_all = sum(p.numel() for p in model.parameters())
    assert summary["weights_remaining"].tolist() == [1.0, 0.5]
    assert summary["total_weights_remaining"].tolist() == pytest.approx([1.0, 1 - 0.5 * n_conv / n_all], abs=1e-9)
    ckpt = load_torch(run.checkpoint(1), keys=("masks", "state_dict"))
    assert sorted(ckpt["masks"]) == sorted(n for n, p in model.named_parameters() if p.ndim == 4)
    assert all(float(m.float().mean()) == pytest.approx(0.5, abs=1e-3) for m in ckpt["masks"].values())  # layerwise
    assert read_csv(run.test_metrics())["round"].tolist() == [0, 1]
    export = json.loads(run.human_study_export_record().read_text())
    check_export(run, {"rounds": export["settings"]["rounds"], "images": export["images"]})
    check_preview(run, tmp_path)
    files = [run.human_study_simulated(e) for e in (1, 2)]
    assert "power of one comparison" in outputs["simulate"]
    done = subprocess.run([sys.executable, "main_human_study.py", "analyse", *map(str, files), "--config",
                           "config/BB_imagenette.yaml", *sum((["--set", o] for o in _overrides(run)), [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "experiment1:" in done.stdout and run.human_study_table("experiment1").is_file()
    print(f"BB_imagenette smoke run (steps 1-2, export, simulate): {seconds:.0f} s")


def _overrides(run: rd.RunDir) -> list[str]:
    c = run.cfg
    return [f"data_root={c.data_root}", f"json_root={c.json_root}", f"logs={c.logs}", "img_size=32",
            "pretrained=false", "train.epochs=1", "pruning.compression_rates=[2]", "device=cpu",
            "human_study.display_size=32", "human_study.images_per_class=2", "human_study.preview_items=1"]
