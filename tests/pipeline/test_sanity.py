"""Sanity checks: the cascading model-parameter randomisation test (Adebayo et al. 2018)."""
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

from lottery_xai import rundir as rd
from lottery_xai.config import configured_rounds, load_config
from lottery_xai.errors import UserError
from lottery_xai.pipeline.rounds import configured_maps
from lottery_xai.pipeline.sanity import (CHANGES, NO_CHANGE, cascade, cascade_blocks, image_subset, randomisation_test,
                                         sanity_rounds, sanity_step, verdict)

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


def test_a_map_that_ignores_the_weights_does_not_change():
    cfg = load_config(None, ["img_size=16", "device=cpu"])
    model, fresh = (SquaredNorm(3, torch.Generator().manual_seed(s)).eval() for s in (0, 1))
    assert not torch.equal(model.head.weight, fresh.head.weight)
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 0, 1])
    for method in ("saliency", "random"):  # random: the same seed at every stage, no model at all
        result = randomisation_test(model, images, targets, lambda m, x, t: configured_maps(cfg, method, m, x, t, 7),
                                    fresh)
        assert result["blocks"] == ["head"] and result["maps"].shape == (2, 5, 16, 16)
        for measure in ("spearman", "ssim", "top_iou"):
            assert torch.allclose(result["similarity"][measure], torch.ones(1, 5, dtype=torch.float64), atol=1e-6)
        assert verdict(result["similarity"]["spearman"][-1].mean().item(), 0.5) == NO_CHANGE
    expected = images.abs().amax(1)
    assert torch.allclose(result["maps"][0], configured_maps(cfg, "random", model, images, targets, 7))
    saliency = randomisation_test(model, images, targets, lambda m, x, t: configured_maps(cfg, "saliency", m, x, t, 0),
                                  fresh)["maps"]
    assert torch.allclose(saliency[1], expected / expected.flatten(1).amax(1)[:, None, None], atol=1e-6)


def test_verdict_threshold_and_rounds():
    assert verdict(0.49, 0.5) == CHANGES and verdict(0.5, 0.5) == NO_CHANGE
    cfg = load_config(None, ["prune_iterations=4"])
    assert sanity_rounds(cfg) == [0, 4]
    with pytest.raises(UserError, match="sanity.rounds"):
        sanity_rounds(load_config(None, ["prune_iterations=2", "sanity.rounds=[0,5]"]))
    # the same rule serves roar.rounds (main_roar.py without --rounds): -2 is the round before the sparsest
    assert configured_rounds(load_config(None, ["prune_iterations=4", "roar.rounds=[-1,0,-2]"]), "roar.rounds") == [0, 3, 4]
    with pytest.raises(UserError, match="'roar.rounds' names rounds \\[-3\\]"):
        configured_rounds(load_config(None, ["prune_iterations=1", "roar.rounds=[-5]"]), "roar.rounds")
    assert image_subset(8, 0).tolist() == list(range(8)) and image_subset(8, 3).tolist() == [0, 4, 7]


def test_gradcam_of_a_small_resnet_changes_and_the_step_resumes(sanity_run):
    cfg = load_config(None, sanity_run + ["sanity.methods=[gradcam,random]", "sanity.measures=[spearman,ssim,top_iou]"])
    run = rd.RunDir(cfg)
    table = sanity_step(run, CPU, log=quiet)
    assert list(table["round"]) == [0, 0, 2, 2] and list(table["method"]) == ["gradcam", "random"] * 2
    verdicts = dict(zip(zip(table["round"], table["method"]), table["verdict"]))
    assert verdicts[(0, "gradcam")] == verdicts[(2, "gradcam")] == CHANGES
    assert verdicts[(0, "random")] == verdicts[(2, "random")] == NO_CHANGE
    assert (table.loc[table["method"] == "random", "similarity"] > 0.999).all()
    assert (table.loc[table["method"] == "gradcam", "similarity"] < 0.5).all()
    # the original model's maps are step 6's maps of the same images and targets
    stored = rd.load_npz(run.sanity_maps(2, "gradcam"))
    step6 = rd.load_npz(run.heatmap_file(2, "gradcam"))
    assert stored["maps"].shape == (8, 8, 32, 32)  # the original + 7 stages, 8 images
    assert list(stored["blocks"]) == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    assert np.array_equal(stored["ids"], step6["ids"]) and np.array_equal(stored["targets"], step6["targets"])
    assert np.allclose(stored["maps"][0].astype(np.float32), step6["maps"].astype(np.float32), atol=2e-3)
    per_image = pd.read_csv(run.sanity_per_image())
    assert len(per_image) == 2 * 2 * 7 * 3 * 8 and per_image["value"].between(-1, 1 + 1e-9).all()
    summary = pd.read_csv(run.sanity_summary())
    means = per_image.groupby(["round", "method", "stage", "measure"])["value"].mean()
    assert np.allclose(summary.set_index(["round", "method", "stage", "measure"])["mean"], means.loc[
        summary.set_index(["round", "method", "stage", "measure"]).index])
    # a rerun skips every (round, method); --force redoes them
    stamp = run.sanity_maps(0, "gradcam").stat().st_mtime_ns
    sanity_step(run, CPU, log=quiet)
    assert run.sanity_maps(0, "gradcam").stat().st_mtime_ns == stamp
    sanity_step(run, CPU, rounds=[0], force=True, log=quiet)
    assert run.sanity_maps(0, "gradcam").stat().st_mtime_ns != stamp
    assert len(pd.read_csv(run.sanity_per_image())) == len(per_image)  # replaced, not appended


def test_the_step_needs_step_6_and_known_methods(sanity_run, tmp_path):
    import shutil

    cfg = load_config(None, sanity_run)
    bare = load_config(None, sanity_run + [f"logs={tmp_path}"])
    shutil.copytree(rd.RunDir(cfg).pruning_dir, rd.RunDir(bare).pruning_dir)  # step 1 only
    with pytest.raises(UserError, match=r"run step 6 \(main_heatmap_save.py\) first"):
        sanity_step(bare, CPU, log=quiet)
    with pytest.raises(UserError, match="sanity.methods.*gradcamm"):
        sanity_step(load_config(None, sanity_run + ["sanity.methods=[gradcamm]"]), CPU, log=quiet)


def test_other_settings_recompute_the_units(sanity_run):
    base = sanity_run + ["sanity.methods=[random]", "sanity.rounds=[0]"]
    cfg = load_config(None, base)
    run = rd.RunDir(cfg)
    sanity_step(cfg, CPU, log=quiet)
    stamp = run.sanity_maps(0, "random").stat().st_mtime_ns
    sanity_step(load_config(None, base + ["heatmaps.grid_images=2"]), CPU, log=quiet)  # a figure setting: skipped
    assert run.sanity_maps(0, "random").stat().st_mtime_ns == stamp
    lines = []
    sanity_step(load_config(None, base + ["sanity.n_images=3"]), CPU, log=lines.append)
    assert run.sanity_maps(0, "random").stat().st_mtime_ns != stamp and "recomputing 1 randomisation" in lines[0]
    assert len(rd.load_npz(run.sanity_maps(0, "random"))["ids"]) == 3
    per_image = pd.read_csv(run.sanity_per_image())
    assert per_image[(per_image["method"] == "random") & (per_image["round"] == 0)]["image_id"].nunique() == 3
    sanity_step(cfg, CPU, log=quiet)  # back to the settings of the other tests


@pytest.mark.parametrize("override, key", [("sanity.measures=[spearman,foo]", "sanity.measures"),
                                           ("sanity.verdict_measure=ssim", None), ("sanity.rounds=[]", "sanity.rounds"),
                                           ("sanity.threshold=2", "sanity.threshold")])
def test_bad_sanity_settings_are_one_line_errors(override, key):
    extra = ["sanity.measures=[spearman]"] if key is None else []
    with pytest.raises(UserError, match=key or "sanity.verdict_measure"):
        load_config(None, [override, *extra])
