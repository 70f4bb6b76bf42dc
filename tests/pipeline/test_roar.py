"""ROAR: ranks, removal, a planted-evidence dataset where the true map must beat random, and the step."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lottery_xai import rundir as rd
from lottery_xai.config import load_config, replace
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.metrics import pixel_rank
from lottery_xai.pipeline.roar import fresh_model, roar_step
from lottery_xai.safe_io import load_torch
from lottery_xai.training.roar import RemovedBatches, rank_dtype, remove_top, retrain

from conftest import tiny_overrides

CPU = torch.device("cpu")
quiet = lambda *_: None  # noqa: E731


def test_ranks_are_a_permutation_with_seeded_random_ties():
    maps = torch.zeros(3, 8, 8)
    maps[:, 2, 5] = 1.0
    ranks = pixel_rank(maps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ranks.sort(dim=1).values, torch.arange(64).expand(3, 64))
    assert (ranks[:, 2 * 8 + 5] == 0).all()  # the maximum is removed first
    again = pixel_rank(maps, generator=torch.Generator().manual_seed(0))
    other = pixel_rank(maps, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ranks, again) and not torch.equal(ranks, other)
    # the flat region is not removed row by row: the 10 next pixels are not the first 10 of the raster
    assert set(torch.nonzero(ranks[0] < 11).flatten().tolist()) != set(range(11)) | {21}
    assert rank_dtype(224 * 224) == np.uint16 and rank_dtype(512 * 512) == np.int32


def test_remove_top_replaces_exactly_the_top_pixels():
    images = torch.randn(4, 3, 10, 10)
    ranks = pixel_rank(torch.rand(4, 10, 10), generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([7.0, 8.0, 9.0])
    out = remove_top(images, ranks, 30, fill)
    removed = (out != images).any(dim=1)
    assert removed.flatten(1).sum(1).tolist() == [30] * 4
    assert torch.equal(removed.flatten(1), ranks < 30)
    assert torch.equal(out[:, 1][removed], torch.full((120,), 8.0))
    assert torch.equal(remove_top(images, ranks, 0, fill), images)


def _planted(n: int, generator: torch.Generator):
    """Noise images whose class (0/1) is written only in a 4x4 patch at the top left."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 3, 16, 16, generator=generator)
    images[:, :, 2:6, 2:6] += (2.0 * labels - 1.0).view(-1, 1, 1, 1) * 2.0
    return images, labels


def test_roar_drops_faster_for_the_true_evidence_than_for_random():
    cfg = load_config(None, ["train.epochs=8", "train.lr=0.05", "train.weight_decay=0", "device=cpu"])
    generator = torch.Generator().manual_seed(0)
    data = {split: _planted(n, generator) for split, n in (("train", 240), ("val", 80), ("test", 160))}
    truth = torch.zeros(16, 16)
    truth[2:6, 2:6] = 1.0  # the true evidence: the 16 pixels of the patch
    rank_gen = torch.Generator().manual_seed(1)
    ranks = {"true": {s: pixel_rank(truth.expand(len(y), 16, 16), generator=rank_gen) for s, (x, y) in data.items()},
             "random": {s: pixel_rank(torch.rand(len(y), 16, 16, generator=rank_gen), generator=rank_gen) for s, (x, y) in data.items()}}
    fill = data["train"][0].mean(dim=(0, 2, 3))
    accuracy = {}
    for method in ("true", "random"):
        for percent in (0, 10, 50):
            batches = {s: RemovedBatches(x.numpy(), ranks[method][s].numpy(), y.numpy(), percent, fill, 32,
                                         shuffle=s == "train", seed=3) for s, (x, y) in data.items()}
            torch.manual_seed(0)
            model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
            accuracy[method, percent] = retrain(model, batches["train"], batches["val"], batches["test"], cfg.train, CPU,
                                                2)["test_acc"]
    assert accuracy["true", 0] > 0.95 and accuracy["random", 0] > 0.95
    # 10 % = 26 pixels: the whole patch is gone for the true map, ~10 % of it for random
    assert accuracy["true", 10] < 0.7 and accuracy["true", 50] < 0.7
    assert accuracy["random", 10] > 0.9 and accuracy["random", 50] > 0.85


def test_roar_step_on_a_tiny_run(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, tmp_path, "prune_iterations=1", "train.epochs=1", "roar.percents=[0,50]",
                               "roar.seeds=1", "roar.methods=[gradcam]", "heatmaps.batch_size=16")
    cfg = load_config(None, overrides)
    LotteryRun(rd.RunDir(cfg), CPU, log=quiet).run_rounds([0, 1])
    table = roar_step(rd.RunDir(cfg), CPU, [0, 1], log=quiet)
    run = rd.RunDir(cfg)
    assert list(table.columns) == ["round", "weights_remaining", "retrain", "epochs", "method", "percent_removed", "seed",
                                   "test_acc", "best_val_acc", "n_test", "train_seconds"]
    assert len(table) == 2 * 2 * 2  # rounds x {gradcam, random} x percents
    zero = table[table["percent_removed"] == 0]
    # p = 0 is trained once and shared by the methods and, for a dense retrain, by the rounds
    assert len(zero) == 4 and zero["test_acc"].nunique() == 1 and zero["train_seconds"].nunique() == 1
    for split in ("train", "val", "test"):
        ranks = np.load(run.roar_ranks(1, "gradcam", split))
        assert ranks.dtype == np.uint16 and ranks.shape[1] == 32 * 32
        assert (np.sort(ranks[:3], axis=1) == np.arange(32 * 32)).all()
    assert not run.plot("roar").exists()  # the step computes only; main_roar.py (or step 8) draws
    from lottery_xai.report import plot_roar

    plot_roar(run)
    assert run.plot("roar").is_file()
    assert len(pd.read_csv(run.roar_results())) == len(table)
    # a rerun resumes: nothing left to train, same table
    again = roar_step(rd.RunDir(cfg), CPU, [0, 1], log=quiet)
    assert again["train_seconds"].tolist() == table["train_seconds"].tolist()
    # the ticket variant adds its own rows (same run directory) and starts from the round's mask on the initial weights
    ticket = replace(cfg, **{"roar.retrain": "ticket"})
    ckpt = load_torch(run.checkpoint(1, "best"))
    model, masks = fresh_model(rd.RunDir(ticket), ckpt, 4, 0)
    init = load_torch(run.init_state())["state_dict"]
    for name, mask in masks.items():
        weight = dict(model.named_parameters())[name]
        assert (weight[~mask] == 0).all() and torch.equal(weight[mask], init[name][mask])
    both = roar_step(rd.RunDir(ticket), CPU, [1], log=quiet)
    assert len(both) == len(table) + 4 and set(both["retrain"]) == {"dense", "ticket"}


def test_roar_rejects_bad_percents(tiny_data, tmp_path):
    from lottery_xai.errors import UserError

    with pytest.raises(UserError, match="roar.percents"):  # refused with the config, before any step runs
        load_config(None, tiny_overrides(tiny_data, tmp_path, "roar.percents=[0,120]"))


def test_roar_tie_seeds_are_per_image_and_follow_metrics_ties():
    """One tie policy for every ranking (metrics.ties): ROAR's ranks break ties per image, from (seed, round,
    split, method, image), so a split's ranks do not depend on heatmaps.batch_size; raster = row-major order."""
    from lottery_xai.pipeline.roar import rank_seeds

    cfg = load_config(None, ["device=cpu"])
    whole = rank_seeds(cfg, 1, 0, "gradcam", 0, 6)
    assert rank_seeds(cfg, 1, 0, "gradcam", 0, 4) + rank_seeds(cfg, 1, 0, "gradcam", 4, 2) == whole
    assert len(set(whole)) == 6
    assert rank_seeds(cfg, 1, 0, "random", 0, 6) != whole and rank_seeds(cfg, 2, 0, "gradcam", 0, 6) != whole
    assert rank_seeds(cfg, 1, 1, "gradcam", 0, 6) != whole
    maps = torch.zeros(6, 5, 5)
    ranks = pixel_rank(maps, seeds=whole)
    two_batches = torch.cat([pixel_rank(maps[:4], seeds=whole[:4]), pixel_rank(maps[4:], seeds=whole[4:])])
    assert torch.equal(ranks, two_batches)
    assert rank_seeds(replace(cfg, **{"metrics.ties": "raster"}), 1, 0, "gradcam", 0, 6) is None
    assert torch.equal(pixel_rank(maps, seeds=None)[0], torch.arange(25))


@pytest.mark.parametrize("method", ["smoothgrad_sq", "vargrad"])
def test_roar_ranks_the_noise_tunnel_ensembles(method, tmp_path, monkeypatch):
    """Hooker et al. 2019's two winners run through ROAR's ranking (issue 22, item 3). On a linear model the input
    gradient is the class's weight whatever the noise, so SmoothGrad-squared is sum_c w[c]^2 per pixel and VarGrad
    is 0 everywhere (every pixel tied: the per-image tie seeds decide), written out here."""
    from lottery_xai.pipeline import roar as roar_module
    from lottery_xai.pipeline.roar import SPLITS, compute_ranks, rank_seeds

    side, classes = 8, 3
    model = nn.Sequential(nn.Conv2d(3, classes, side), nn.Flatten()).eval()  # logits = <w_k, x> + b_k
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(classes, 3, side, side, generator=torch.Generator().manual_seed(0)))
    model.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    data = {split: {"images": torch.randn(5, 3, side, side, generator=gen).numpy(),
                    "labels": np.zeros(5, dtype=np.int64)} for split in SPLITS}
    cfg = load_config(None, [f"logs={tmp_path}", "device=cpu", f"img_size={side}", "heatmaps.noise_samples=2",
                             "heatmaps.batch_size=2", f"roar.methods=[{method}]"])
    run = rd.RunDir(cfg)
    monkeypatch.setattr(roar_module, "rank_stamp", lambda run, r: "linear model")  # no checkpoint behind this model
    compute_ranks(run, 0, model, [method], data, CPU, log=quiet)
    weight = model[0].weight.double()
    for split_index, split in enumerate(SPLITS):
        images = torch.from_numpy(data[split]["images"])
        predicted = model(images).argmax(1)
        ranks = np.load(run.roar_ranks(0, method, split))
        for i in range(5):
            if method == "smoothgrad_sq":
                relevance = (weight[predicted[i]] ** 2).sum(0).flatten().numpy()
                expected = np.argsort(np.argsort(-relevance, kind="stable"), kind="stable")
            else:  # all tied: the order of the image's tie permutation (a seeded randperm, first = removed first)
                seed = rank_seeds(cfg, 0, split_index, method, i, 1)[0]
                perm = torch.randperm(side * side, generator=torch.Generator().manual_seed(seed)).numpy()
                expected = np.empty(side * side, dtype=np.int64)
                expected[perm] = np.arange(side * side)
            assert np.array_equal(ranks[i].astype(np.int64), expected), (split, i)
