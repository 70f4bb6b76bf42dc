"""Sanity checks: the model-parameter randomisation test (Adebayo et al. 2018), cascading and independent."""
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from scipy import stats
from skimage.metrics import structural_similarity
from torch import nn

from lottery_xai import rundir as rd
from lottery_xai.config import configured_rounds, load_config
from lottery_xai.errors import UserError
from lottery_xai.pipeline.maps import configured_maps
from lottery_xai.pipeline.sanity import (CHANGES, CONTROL, NO_CHANGE, cascade, cascade_blocks, image_subset, independent,
                                         randomisation_test, sanity_rounds, sanity_step, stage_seed, verdict,
                                         verdict_stage)
from lottery_xai.safe_io import load_npz

CPU = torch.device("cpu")
quiet = lambda *_: None  # noqa: E731


class SquaredNorm(nn.Module):
    """logit_c = s_c * ||x||^2 / 2 with s_c > 0: the input gradient is s_c * x, so the max-normalised
    saliency map is |x| / max |x| whatever the weights s: a map that ignores the weights."""

    def __init__(self, n_classes: int, generator: torch.Generator):
        super().__init__()
        self.head = nn.Linear(1, n_classes, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(0.5 + torch.rand(n_classes, 1, generator=generator))

    def forward(self, x):
        return self.head(0.5 * x.square().flatten(1).sum(1, keepdim=True))


def _tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


def test_cascade_blocks_run_from_the_logits_down():
    from lottery_xai.models import build_model

    assert cascade_blocks(build_model("small_resnet", 4, False, 32)) == \
        ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    # a torchvision ResNet's stages are Sequentials of blocks: each block is one stage of the cascade
    blocks = cascade_blocks(torchvision.models.resnet18(num_classes=3))
    assert blocks[:4] == ["fc", "layer4.1", "layer4.0", "layer3.1"] and blocks[-3:] == ["layer1.0", "bn1", "conv1"]
    assert len(blocks) == 1 + 8 + 2
    assert cascade_blocks(_tiny_cnn(0)) == ["5", "1", "0"]  # the parameter-free modules are not stages
    with pytest.raises(UserError, match="nothing to randomise"):
        cascade_blocks(nn.Sequential(nn.ReLU()))


def test_cascade_replaces_one_more_block_per_stage_and_keeps_the_masks():
    model, fresh = _tiny_cnn(0), _tiny_cnn(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {"0.weight": torch.rand(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.5}
    blocks = cascade_blocks(model)
    stages = [{k: v.clone() for k, v in m.state_dict().items()} for m in cascade(model, fresh, blocks, masks)]
    assert len(stages) == 3
    new = fresh.state_dict()
    for k, state in enumerate(stages, start=1):
        for key, value in state.items():
            randomised = any(key.startswith(b + ".") for b in blocks[:k])
            expected = (new[key] * masks[key] if key in masks else new[key]) if randomised else before[key]
            assert torch.equal(value, expected), (k, key)
    assert torch.equal(stages[-1]["0.weight"][~masks["0.weight"]], torch.zeros(int((~masks["0.weight"]).sum())))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model itself is untouched


def test_independent_randomises_one_block_and_keeps_every_other_trained():
    model, fresh = _tiny_cnn(0), _tiny_cnn(1)
    with torch.no_grad():  # "trained": no value left at its initial one (BatchNorm starts at 1 and 0 in both)
        for value in model.state_dict().values():
            value.add_((torch.rand(value.shape, generator=torch.Generator().manual_seed(value.numel())) + 0.1)
                       if value.is_floating_point() else 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {"0.weight": torch.rand(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.5}
    blocks = cascade_blocks(model)
    stages = [{k: v.clone() for k, v in m.state_dict().items()} for m in independent(model, fresh, blocks, masks)]
    assert len(stages) == len(blocks) == 3
    new = fresh.state_dict()
    for block, state in zip(blocks, stages):
        for key, value in state.items():
            if key.startswith(block + "."):  # this stage's block: the fresh weights (pruned ones still 0)
                expected = new[key] * masks[key] if key in masks else new[key]
                assert torch.equal(value, expected) and not torch.equal(value, before[key]), (block, key)
            else:  # every other parameter and buffer: exactly the trained values
                assert torch.equal(value, before[key]), (block, key)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model itself is untouched


class ConvLinear(nn.Module):
    """x [N,3,H,W] -> 1x1 conv without bias (3 -> 4 channels, weights A [4,3]) -> flatten -> linear without
    bias (weights B [classes, 4*H*W]). Linear in x: d logit_c / d x[ch, p] = sum_k B[c, k, p] A[k, ch], whatever
    x is, so every stage's gradient map is known in closed form from the two weight matrices."""

    def __init__(self, seed: int, size: int = 12, classes: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 1, bias=False)
        self.fc = nn.Linear(4 * size * size, classes, bias=False)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def _gradient(net: ConvLinear, targets: torch.Tensor, size: int = 12) -> torch.Tensor:
    """The closed form: [N, 3, H, W] input gradients of the target logits."""
    a = net.conv.weight.detach()[:, :, 0, 0]  # [4, 3]
    b = net.fc.weight.detach().view(-1, 4, size, size)  # [classes, 4, H, W]
    return torch.einsum("nkhw,kc->nchw", b[targets], a)


def _signed_map(net, x, t, stage):
    """The reference's signed ("diverging") map before its visualisation clip: the input gradient summed
    over the channels, by autograd."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x).gather(1, t[:, None]).sum(), x)
    return grad.sum(1)


@pytest.mark.parametrize("randomization", ["cascading", "independent"])
def test_randomising_a_layer_of_a_hand_built_network_has_its_known_effect(randomization):
    trained, fresh = ConvLinear(0).eval(), ConvLinear(1).eval()
    images = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2])
    result = randomisation_test(trained, images, targets, _signed_map, fresh, randomization=randomization)
    assert result["blocks"] == ["fc", "conv"]
    # the weights of each stage: cascading fc random, then fc and conv; independent fc alone, then conv alone
    nets = []
    for conv, fc in ([(trained, fresh), (fresh, fresh)] if randomization == "cascading" else
                     [(trained, fresh), (fresh, trained)]):
        net = ConvLinear(0).eval().requires_grad_(False)
        net.conv.weight.copy_(conv.conv.weight)
        net.fc.weight.copy_(fc.fc.weight)
        nets.append(net)
    expected = torch.stack([_gradient(n, targets).sum(1) for n in [trained, *nets]])
    assert torch.allclose(result["maps"], expected, atol=1e-5)
    for k in (1, 2):
        for i in range(3):
            signed = stats.spearmanr(expected[k, i].flatten(), expected[0, i].flatten()).statistic
            absolute = stats.spearmanr(expected[k, i].abs().flatten(), expected[0, i].abs().flatten()).statistic
            assert result["similarity"]["spearman"][k - 1, i].item() == pytest.approx(signed, abs=1e-9)
            assert result["similarity"]["spearman_abs"][k - 1, i].item() == pytest.approx(absolute, abs=1e-9)
    assert not torch.allclose(result["similarity"]["spearman"], result["similarity"]["spearman_abs"])  # signed maps
    # the real saliency method through the step's map function: max over channels of |closed-form gradient|
    cfg = load_config(None, ["img_size=16", "device=cpu", "heatmaps.normalize=none"])
    saliency = randomisation_test(trained, images, targets, lambda m, x, t, k: configured_maps(cfg, "saliency", m, x, t, 0),
                                  fresh, randomization=randomization)
    expected = torch.stack([_gradient(n, targets).abs().amax(1) for n in [trained, *nets]])
    assert torch.allclose(saliency["maps"], expected, atol=1e-5)
    # non-negative maps: the Spearman of the absolute values is the signed one
    assert torch.equal(saliency["similarity"]["spearman"], saliency["similarity"]["spearman_abs"])


def test_a_map_that_ignores_the_weights_does_not_change():
    cfg = load_config(None, ["img_size=16", "device=cpu"])
    model, fresh = (SquaredNorm(3, torch.Generator().manual_seed(s)).eval() for s in (0, 1))
    assert not torch.equal(model.head.weight, fresh.head.weight)
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 0, 1])
    expected = images.abs().amax(1)
    for randomization in ("cascading", "independent"):
        result = randomisation_test(model, images, targets,
                                    lambda m, x, t, k: configured_maps(cfg, "saliency", m, x, t, 0), fresh,
                                    randomization=randomization)
        assert result["blocks"] == ["head"] and result["maps"].shape == (2, 5, 16, 16)
        for measure in ("spearman", "spearman_abs", "ssim", "top_iou"):
            assert torch.allclose(result["similarity"][measure], torch.ones(1, 5, dtype=torch.float64), atol=1e-6)
        assert verdict(verdict_stage(result, "spearman")[1], 0.5) == NO_CHANGE
        # eMPRT: the same map up to rounding, so the same histogram and no rise in entropy
        assert torch.allclose(result["similarity"]["emprt"], torch.zeros(1, 5, dtype=torch.float64), atol=1e-6)
        assert verdict(verdict_stage(result, "emprt")[1], 0.0, "emprt") == NO_CHANGE
        assert torch.allclose(result["maps"][1], expected / expected.flatten(1).amax(1)[:, None, None], atol=1e-6)


def test_the_control_is_redrawn_at_every_stage_and_sits_at_the_chance_level():
    """The random baseline ignores the model: reusing stage 0's seed made every stage's control identical
    to stage 0 (similarity exactly 1 by construction). Redrawn per stage, each stage's control is the
    similarity of two independent random maps: about 0 for Spearman, different at every stage."""
    cfg = load_config(None, ["img_size=32", "device=cpu"])
    model, fresh = _tiny_cnn(0), _tiny_cnn(1)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = torch.zeros(6, dtype=torch.int64)
    for randomization in ("cascading", "independent"):
        def map_fn(m, x, t, k, randomization=randomization):
            return configured_maps(cfg, "random", m, x, t, stage_seed(11, "random", randomization, k))

        result = randomisation_test(model, images, targets, map_fn, fresh, randomization=randomization)
        maps = result["maps"]
        assert torch.equal(maps[0], configured_maps(cfg, "random", model, images, targets, 11))  # stage 0: step 6's
        for j in range(len(maps)):
            for k in range(j + 1, len(maps)):
                assert not torch.allclose(maps[j], maps[k])  # a new draw at every stage
        rho = result["similarity"]["spearman"]
        assert len(set(rho.mean(1).tolist())) == len(rho)  # each stage its own control value
        for k in range(len(rho)):
            for i in range(6):
                assert rho[k, i].item() == pytest.approx(
                    stats.spearmanr(maps[k + 1, i].flatten(), maps[0, i].flatten()).statistic, abs=1e-9)
        # two independent uniform maps of 1024 pixels: Spearman ~ N(0, 1/1023) per image
        assert rho.abs().max().item() < 4 / np.sqrt(1023)
    assert stage_seed(11, "gradcam", "cascading", 3) == 11  # other methods keep step 6's seed at every stage


def test_verdict_threshold_and_rounds():
    assert verdict(0.49, 0.5) == CHANGES and verdict(0.5, 0.5) == NO_CHANGE
    # eMPRT measures change, not similarity: a rise above the threshold is a change
    assert verdict(0.01, 0.0, "emprt") == CHANGES and verdict(0.0, 0.0, "emprt") == NO_CHANGE
    assert verdict(-0.2, 0.0, "emprt") == NO_CHANGE
    rise = {"emprt": torch.tensor([[0.1, float("nan")], [0.5, 0.7], [0.2, 0.0]], dtype=torch.float64)}
    # the mean over the images with a value (NaN: a constant original map); independent: the largest rise
    assert verdict_stage({"randomization": "cascading", "similarity": rise}, "emprt") == (3, pytest.approx(0.1))
    assert verdict_stage({"randomization": "independent", "similarity": rise}, "emprt") == (2, pytest.approx(0.6))
    assert verdict_stage({"randomization": "cascading", "similarity": rise}, "emprt", "upper_half") == \
        (1, pytest.approx(0.1))
    similarity = {"spearman": torch.tensor([[0.9, 0.7], [0.2, 0.4], [0.6, 0.6]], dtype=torch.float64)}
    # cascading reads the last stage (every block random); independent the block that changes the maps most
    assert verdict_stage({"randomization": "cascading", "similarity": similarity}, "spearman") == (3, pytest.approx(0.6))
    assert verdict_stage({"randomization": "independent", "similarity": similarity}, "spearman") == (2, pytest.approx(0.3))
    # upper_half: stage floor(K/2) of K blocks (at least 1): 1 of 3 here, 3 of the small ResNet's 7, 5 of ResNet-18's 11
    assert verdict_stage({"randomization": "cascading", "similarity": similarity}, "spearman", "upper_half") == \
        (1, pytest.approx(0.8))
    seven = {"ssim": torch.tensor([[0.9], [0.8], [0.55], [0.3], [0.2], [0.1], [0.0]], dtype=torch.float64)}
    assert verdict_stage({"randomization": "cascading", "similarity": seven}, "ssim", "upper_half") == (3, pytest.approx(0.55))
    assert verdict_stage({"randomization": "cascading", "similarity": seven}, "ssim", "all") == (7, pytest.approx(0.0))
    eleven = {"ssim": torch.linspace(1.0, 0.0, 11, dtype=torch.float64)[:, None]}
    assert verdict_stage({"randomization": "cascading", "similarity": eleven}, "ssim", "upper_half")[0] == 5
    # independent randomisation reads the most affected block under either rule
    assert verdict_stage({"randomization": "independent", "similarity": similarity}, "spearman", "upper_half") == \
        (2, pytest.approx(0.3))
    with pytest.raises(UserError, match="verdict_stage"):
        verdict_stage({"randomization": "cascading", "similarity": similarity}, "spearman", "middle")
    cfg = load_config(None, ["prune_iterations=4"])
    assert sanity_rounds(cfg) == [0, 4]
    with pytest.raises(UserError, match="sanity.rounds"):
        sanity_rounds(load_config(None, ["prune_iterations=2", "sanity.rounds=[0,5]"]))
    # the same rule serves roar.rounds (main_roar.py without --rounds): -2 is the round before the sparsest
    assert configured_rounds(load_config(None, ["prune_iterations=4", "roar.rounds=[-1,0,-2]"]), "roar.rounds") == [0, 3, 4]
    with pytest.raises(UserError, match="'roar.rounds' names rounds \\[-3\\]"):
        configured_rounds(load_config(None, ["prune_iterations=1", "roar.rounds=[-5]"]), "roar.rounds")
    assert image_subset(8, 0).tolist() == list(range(8)) and image_subset(8, 3).tolist() == [0, 4, 7]


def _ssim_with_skimage(maps: np.ndarray, original: np.ndarray) -> float:
    """The mean over images of scikit-image's SSIM (Wang et al.'s Gaussian window) of two map stacks [N, H, W],
    each map first divided by its largest absolute value, the data range that of the pair (the sanity
    check's SSIM, written with the peer library)."""
    values = []
    for a, b in zip(maps.astype(np.float64), original.astype(np.float64)):
        a, b = a / max(np.abs(a).max(), 1e-300), b / max(np.abs(b).max(), 1e-300)
        both = np.concatenate([a.ravel(), b.ravel()])
        values.append(structural_similarity(a, b, data_range=(both.max() - both.min()) or 1.0, gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False))
    return float(np.mean(values))


def test_gradcam_of_a_small_resnet_changes_and_the_step_resumes(sanity_run):
    cfg = load_config(None, sanity_run + ["sanity.methods=[gradcam,random]", "sanity.controls=[]",
                                          "sanity.randomization=both",
                                          "sanity.measures=[spearman,spearman_abs,ssim,top_iou]"])
    run = rd.RunDir(cfg)
    table = sanity_step(run, CPU, log=quiet)
    assert list(table["round"]) == [0] * 4 + [2] * 4
    assert list(table["method"]) == ["gradcam", "gradcam", "random", "random"] * 2
    assert list(table["randomization"]) == ["cascading", "independent"] * 4
    assert (table["measure"] == "ssim").all()  # the default verdict's measure: the SSIM of the maps
    verdicts = table.set_index(["round", "method", "randomization"])
    assert (verdicts.loc[(slice(None), "gradcam", slice(None)), "verdict"] == CHANGES).all()
    assert (verdicts.loc[(slice(None), "gradcam", slice(None)), "similarity"] < 0.5).all()
    # the control: random maps redrawn at every stage, at the chance level, not judged
    assert (verdicts.loc[(slice(None), "random", slice(None)), "verdict"] == CONTROL).all()
    assert (verdicts.loc[(slice(None), "random", slice(None)), "similarity"].abs() < 0.2).all()
    # cascading reads the stage with the upper half of the 7 blocks random (fc, layer4, layer3); independent the
    # block with the lowest mean
    cascading = table[table["randomization"] == "cascading"]
    assert (cascading["stage"] == 3).all() and (cascading["block"] == "layer3").all()
    for t in cascading.itertuples():  # the verdict's number, recomputed from the stored maps with scikit-image
        stored = load_npz(run.sanity_maps(int(t.round), t.method))["maps_cascading"]
        assert t.similarity == pytest.approx(_ssim_with_skimage(stored[3], stored[0]), abs=1e-6)
    summary = pd.read_csv(run.sanity_summary())
    for t in table[table["randomization"] == "independent"].itertuples():
        part = summary[(summary["round"] == t.round) & (summary["method"] == t.method)
                       & (summary["randomization"] == "independent") & (summary["measure"] == "ssim")]
        lowest = part.loc[part["mean"].idxmin()]
        assert (t.stage, t.block, t.similarity) == (lowest["stage"], lowest["block"], pytest.approx(lowest["mean"]))
    # Grad-CAM's maps are non-negative (ReLU): the Spearman of their absolute values is the signed one
    wide = summary.pivot_table(index=["round", "method", "randomization", "stage"], columns="measure", values="mean")
    assert np.allclose(wide.loc[(slice(None), "gradcam"), "spearman"], wide.loc[(slice(None), "gradcam"), "spearman_abs"])
    # the control differs from stage to stage (a new draw each), for both randomisations
    control = summary[(summary["method"] == "random") & (summary["measure"] == "spearman")]
    assert control.groupby(["round", "randomization"])["mean"].nunique().eq(7).all()
    # the original model's maps are step 6's maps of the same images and targets
    stored = load_npz(run.sanity_maps(2, "gradcam"))
    step6 = load_npz(run.heatmap_file(2, "gradcam"))
    assert stored["maps_cascading"].shape == stored["maps_independent"].shape == (8, 8, 32, 32)  # original + 7, 8 images
    assert stored["maps_cascading"].dtype == np.float32
    assert list(stored["blocks"]) == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    assert np.array_equal(stored["ids"], step6["ids"]) and np.array_equal(stored["targets"], step6["targets"])
    for kind in ("cascading", "independent"):
        assert np.allclose(stored[f"maps_{kind}"][0], step6["maps"].astype(np.float32), atol=2e-3)
    # the first stage of both randomisations is the same network (fc alone random): the same maps
    assert np.allclose(stored["maps_cascading"][1], stored["maps_independent"][1])
    per_image = pd.read_csv(run.sanity_per_image())
    assert len(per_image) == 2 * 2 * 2 * 7 * 4 * 8 and per_image["value"].between(-1, 1 + 1e-9).all()
    means = per_image.groupby(["round", "method", "randomization", "stage", "measure"])["value"].mean()
    index = summary.set_index(["round", "method", "randomization", "stage", "measure"])
    assert np.allclose(index["mean"], means.loc[index.index])
    # a rerun skips every (round, method); --force redoes them
    stamp = run.sanity_maps(0, "gradcam").stat().st_mtime_ns
    sanity_step(run, CPU, log=quiet)
    assert run.sanity_maps(0, "gradcam").stat().st_mtime_ns == stamp
    sanity_step(run, CPU, rounds=[0], force=True, log=quiet)
    assert run.sanity_maps(0, "gradcam").stat().st_mtime_ns != stamp
    assert len(pd.read_csv(run.sanity_per_image())) == len(per_image)  # replaced, not appended


def test_the_emprt_verdict_reads_the_fully_randomised_models_entropy_rise(sanity_run):
    """``sanity.verdict_measure: emprt`` (Efficient MPRT, Hedström et al.): the verdict reads the mean over the
    images of the relative entropy rise at the cascade's last stage, against ``sanity.emprt_threshold``; its
    value is the formula applied to the stored maps of the original and the fully randomised model."""
    from lottery_xai.report.sanity import sanity_section

    cfg = load_config(None, sanity_run + ["sanity.methods=[gradcam,random]", "sanity.controls=[]", "sanity.rounds=[0]",
                                          "sanity.verdict_measure=emprt"])
    run = rd.RunDir(cfg)
    table = sanity_step(run, CPU, log=quiet)  # the run's verdict table: other tests' rounds and methods too
    table = table[(table["round"] == 0) & (table["randomization"] == "cascading")].set_index("method")
    assert len(table) == 2 and (table["measure"] == "emprt").all()
    assert (table["threshold"] == 0.0).all() and (table["stage"] == 7).all()
    stored = load_npz(run.sanity_maps(0, "gradcam"))["maps_cascading"]
    before, after = [], []
    for original, randomised in zip(stored[0], stored[-1]):  # the formula, written out with NumPy per image
        h = [stats.entropy(np.histogram(m, bins=100)[0]) for m in (original, randomised)]
        before.append(h[0])
        after.append(h[1])
    before, after = np.array(before), np.array(after)
    expected = np.mean(((after - before) / before)[before > 0])
    assert table.loc["gradcam", "similarity"] == pytest.approx(expected, rel=1e-6)
    assert table.loc["gradcam", "verdict"] == (CHANGES if expected > 0 else NO_CHANGE)
    assert table.loc["random", "verdict"] == CONTROL
    summary = pd.read_csv(run.sanity_summary())
    row = summary[(summary["method"] == "gradcam") & (summary["measure"] == "emprt") & (summary["stage"] == 7)]
    assert int(row["n_images"].iloc[0]) == int((before > 0).sum())  # the images with a value
    section = sanity_section(run)
    assert "eMPRT (relative rise of the maps' entropy) <= 0 once every block is random" in section["intro"]


def test_the_step_needs_step_6_and_known_methods(sanity_run, tmp_path):
    import shutil

    cfg = load_config(None, sanity_run)
    bare = load_config(None, sanity_run + [f"logs={tmp_path}"])
    shutil.copytree(rd.RunDir(cfg).pruning_dir, rd.RunDir(bare).pruning_dir)  # step 1 only
    with pytest.raises(UserError, match=r"run step 6 \(main_heatmap_save.py\) first"):
        sanity_step(rd.RunDir(bare), CPU, log=quiet)
    with pytest.raises(UserError, match="sanity.methods.*gradcamm"):
        sanity_step(rd.RunDir(load_config(None, sanity_run + ["sanity.methods=[gradcamm]"])), CPU, log=quiet)


def test_other_settings_recompute_the_units(sanity_run):
    base = sanity_run + ["sanity.methods=[random]", "sanity.controls=[]", "sanity.rounds=[0]"]
    cfg = load_config(None, base)
    run = rd.RunDir(cfg)
    sanity_step(rd.RunDir(cfg), CPU, log=quiet)
    stamp = run.sanity_maps(0, "random").stat().st_mtime_ns
    sanity_step(rd.RunDir(load_config(None, base + ["heatmaps.grid_images=2"])), CPU, log=quiet)  # a figure setting: skipped
    assert run.sanity_maps(0, "random").stat().st_mtime_ns == stamp
    lines = []
    sanity_step(rd.RunDir(load_config(None, base + ["sanity.n_images=3"])), CPU, log=lines.append)
    assert run.sanity_maps(0, "random").stat().st_mtime_ns != stamp and "recomputing 1 randomisation" in lines[0]
    assert len(load_npz(run.sanity_maps(0, "random"))["ids"]) == 3
    per_image = pd.read_csv(run.sanity_per_image())
    assert per_image[(per_image["method"] == "random") & (per_image["round"] == 0)]["image_id"].nunique() == 3
    # a table written before the randomisation column existed is replaced, and every unit recomputed
    old = pd.read_csv(run.sanity_verdicts()).drop(columns=["randomization", "stage", "block"])
    old.to_csv(run.sanity_verdicts(), index=False)
    lines = []
    table = sanity_step(rd.RunDir(load_config(None, base + ["sanity.n_images=3"])), CPU, log=lines.append)
    assert "older format" in lines[0] and list(table["randomization"]) == ["cascading"]
    sanity_step(rd.RunDir(cfg), CPU, log=quiet)  # back to the settings of the other tests


@pytest.mark.parametrize("override, key", [("sanity.measures=[spearman,foo]", "sanity.measures"),
                                           ("sanity.randomization=top_down", "sanity.randomization"),
                                           ("sanity.verdict_measure=emprt", None), ("sanity.rounds=[]", "sanity.rounds"),
                                           ("sanity.threshold=2", "sanity.threshold"),
                                           ("sanity.verdict_stage=middle", "sanity.verdict_stage")])
def test_bad_sanity_settings_are_one_line_errors(override, key):
    extra = ["sanity.measures=[spearman]"] if key is None else []
    with pytest.raises(UserError, match=key or "sanity.verdict_measure"):
        load_config(None, [override, *extra])


def test_positive_controls_and_the_reports_sentences(sanity_run):
    """Adebayo et al. 2018's findings as the test's controls (``sanity.controls``, tested besides the methods
    asked for by default): with the default verdict (SSIM once the upper half of the blocks is random: fc, layer4
    and layer3) guided backprop does not change on this toy run (0.76: it reconstructs the image), SmoothGrad
    changes (0.15). Guided Grad-CAM is guided backprop times Grad-CAM, whose factor changes at once on this
    two-epoch toy network (0.10), so the product changes too (0.21): the report must then say that the test
    does NOT agree with the paper, not hide it."""
    from lottery_xai.report.sanity import expected_outcome, positive_control

    cfg = load_config(None, sanity_run + ["sanity.methods=[gradcam]", "sanity.rounds=[0]", "heatmaps.noise_samples=8"])
    table = sanity_step(rd.RunDir(cfg), CPU, log=quiet)
    table = table[table["round"] == 0].set_index("method")  # the run's table: other tests' methods too
    assert {"guided_backprop", "guided_gradcam", "smoothgrad", "gradcam"} <= set(table.index)
    assert table.loc["guided_backprop", "verdict"] == NO_CHANGE
    assert table.loc["smoothgrad", "verdict"] == CHANGES
    # guided Grad-CAM follows its Grad-CAM factor here: below the guided backprop it multiplies
    assert table.loc["guided_gradcam", "similarity"] < table.loc["guided_backprop", "similarity"]
    sentences = {s["method"]: s for s in positive_control(table.reset_index())}
    for method in ("guided_backprop", "guided_gradcam", "smoothgrad", "gradcam"):  # each one a control or a pass
        expected = NO_CHANGE if method.startswith("guided") else CHANGES
        agrees = table.loc[method, "verdict"] == expected
        assert sentences[method]["cls"] == ("good" if agrees else "bad")
        assert ("the test agrees" if agrees else "the test does NOT agree") in sentences[method]["text"]
    assert sentences["guided_backprop"]["cls"] == "good" and sentences["smoothgrad"]["cls"] == "good"
    assert expected_outcome("guided_backprop") == f"{NO_CHANGE} (positive control)"
    assert expected_outcome("smoothgrad") == CHANGES and expected_outcome("occlusion") == ""


def test_a_control_that_does_not_apply_is_left_out_and_an_asked_method_is_not(sanity_run, monkeypatch):
    """A control whose method cannot explain the model (here guided Grad-CAM, made to fail as it does on a network
    without a spatial layer) is left out with a log line and the others run; the same method asked for in
    sanity.methods stops the step with its one-line error."""
    import lottery_xai.pipeline.sanity as sanity

    real = sanity.configured_maps

    def maps(cfg, method, *args, **kwargs):
        if method == "guided_gradcam":
            raise UserError("found no layer with a spatial output to explain; pass layer='<module name>'")
        return real(cfg, method, *args, **kwargs)

    monkeypatch.setattr(sanity, "configured_maps", maps)
    cfg = load_config(None, sanity_run + ["sanity.methods=[random]", "sanity.controls=[guided_gradcam,guided_backprop]",
                                          "sanity.rounds=[0]", "sanity.n_images=2"])
    lines = []
    table = sanity_step(rd.RunDir(cfg), CPU, force=True, log=lines.append)
    assert set(table.loc[table["round"] == 0, "method"]) >= {"random", "guided_backprop"}
    assert any(line.startswith("sanity: the control guided_gradcam is left out: it does not apply") for line in lines)
    with pytest.raises(UserError, match="no layer with a spatial output"):
        sanity_step(rd.RunDir(load_config(None, sanity_run + ["sanity.methods=[guided_gradcam]", "sanity.rounds=[0]",
                                                             "sanity.n_images=2"])), CPU, log=quiet)
