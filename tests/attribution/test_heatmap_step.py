"""Step 6 on a tiny trained round: float32 maps, and integrated gradients' completeness stored per image,
checked against Captum's convergence delta with the same baseline and number of points."""
import numpy as np
import pytest
import torch

from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lottery_xai.pipeline.heatmaps import heatmaps_step
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.pipeline.loading import load_round_model

from conftest import tiny_overrides

CPU = torch.device("cpu")
TOLERANCE, STEPS, MAX_STEPS = 0.01, 2, 8


@pytest.fixture(scope="module")
def step6(tiny_data, tmp_path_factory):
    overrides = tiny_overrides(tiny_data, tmp_path_factory.mktemp("logs"), "prune_iterations=0", "train.epochs=1",
                               "heatmaps.methods=[integrated_gradients,gradcam]", "heatmaps.images_per_class=2",
                               f"heatmaps.ig_steps={STEPS}", f"heatmaps.ig_max_steps={MAX_STEPS}",
                               f"heatmaps.ig_tolerance={TOLERANCE}")
    cfg = load_config(None, overrides)
    LotteryRun(rd.RunDir(cfg), CPU, log=lambda *_: None).run_rounds([0])
    lines = []
    heatmaps_step(rd.RunDir(cfg), CPU, [0], log=lines.append)
    return cfg, lines


def test_maps_are_stored_as_float32_with_the_keys_later_steps_read(step6):
    cfg, _ = step6
    run = rd.RunDir(cfg)
    for method in ("integrated_gradients", "gradcam"):
        stored = np.load(run.heatmap_file(0, method))
        assert stored["maps"].dtype == np.float32
        assert {"ids", "targets", "labels", "predicted", "maps", "weights_remaining"} <= set(stored.files)
    assert "completeness" not in np.load(run.heatmap_file(0, "gradcam")).files


def test_completeness_is_captums_relative_convergence_delta_and_drives_the_doubling(step6):
    captum_attr = pytest.importorskip("captum.attr")
    cfg, lines = step6
    run = rd.RunDir(cfg)
    stored = np.load(run.heatmap_file(0, "integrated_gradients"))
    assert {"completeness", "completeness_delta", "output_difference", "ig_steps"} <= set(stored.files)
    images_file = np.load(run.heatmap_images())
    model, _ = load_round_model(run, 0, None, CPU)
    # The explained images as step 6 feeds them: the stored uint8 copies are for display only, so rebuild them.
    from lottery_xai.pipeline.heatmaps import heatmap_images

    batch, _ = heatmap_images(run, CPU)
    images, targets = batch["image"], torch.from_numpy(stored["targets"])
    assert np.array_equal(batch["id"].numpy(), images_file["ids"])
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    black = ((0 - mean) / std).expand_as(images)  # the IG paper's black image through the normalisation
    ig = captum_attr.IntegratedGradients(model)

    def captum_gap(steps: int) -> np.ndarray:
        _, delta = ig.attribute(images, baselines=black, target=targets, n_steps=steps, method="gausslegendre",
                                return_convergence_delta=True)
        with torch.no_grad():
            difference = (model(images) - model(black)).gather(1, targets[:, None])[:, 0]
        return (delta.abs() / difference.abs()).numpy()

    gaps = {k: captum_gap(k) for k in (2, 4, 8)}
    used = stored["ig_steps"]
    assert set(used) <= {2, 4, 8}
    for i, k in enumerate(used):
        assert stored["completeness"][i] == pytest.approx(gaps[k][i], rel=1e-3, abs=1e-6)
        if k > STEPS:  # doubled only while the previous number of points left a gap above the tolerance
            assert gaps[k // 2][i] > TOLERANCE
        if k < MAX_STEPS:
            assert gaps[k][i] <= TOLERANCE
    assert (used > STEPS).any()  # the tiny model does need more than 2 points for some image
    line = next(line for line in lines if "completeness gap" in line)
    assert f"{int((used > STEPS).sum())} of {len(used)} images integrated with more than {STEPS} steps" in line
    above = int((stored["completeness"] > TOLERANCE).sum())
    assert (f"warning: {above} images stay above" in line) == (above > 0)


def test_minmax_normalisation_is_a_config_choice():
    from torch import nn

    from lottery_xai.attribution import gradcam
    from lottery_xai.pipeline.maps import configured_maps

    cfg = load_config(None, ["heatmaps.normalize=minmax", "heatmaps.layer=1", "heatmaps.batch_size=2"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    model[4].weight.data.abs_()  # positive channel weights on positive activations: a map with a positive minimum
    images, targets = torch.randn(3, 3, 6, 6), torch.tensor([0, 1, 2])
    raw = gradcam(model, images, targets, layer="1")
    low, high = raw.amin(dim=(1, 2), keepdim=True), raw.amax(dim=(1, 2), keepdim=True)
    assert (low > 0.1 * high).all()  # so that minmax differs from dividing by the max
    expected = (raw - low) / (high - low)  # pytorch-grad-cam's scale_cam_image without its 1e-7
    torch.testing.assert_close(configured_maps(cfg, "gradcam", model, images, targets, 0), expected)
