"""The reference protocols of the explanation metrics (issue 19): RISE's blur scaled with the image, Samek et
al.'s region perturbation, one tie policy for every ranking, TorchRay's pointing game and CGC's content
heatmap. Expected values are hand computations, the reference formula written out here, or scipy."""
import math

import numpy as np
import pytest
import torch

from lottery_xai.errors import UserError
from lottery_xai.metrics import (
    content_heatmap,
    deletion_insertion,
    energy_in_box,
    get_metric,
    pixel_perturbation,
    pixel_rank,
    pointing_game,
    region_perturbation,
    rise_blur,
    rise_kernel,
    scaled_blur,
    scaled_region,
    zero_map_indicator,
)
from lottery_xai.metrics.faithfulness import region_grid


class RegionMeanModel(torch.nn.Module):
    """logit_0 = scale * mean of channel 0 over a pixel region; logit_1 = 0, so p_0 = sigmoid(logit_0)."""

    def __init__(self, region: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = scale

    def forward(self, x):
        evidence = self.scale * (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ---------------------------------------------------------------- RISE's blur


@pytest.mark.parametrize("size, sigma", [(11, 5.0), (3, 64 * 5 / 224), (5, 0.6), (21, 10.0)])
def test_rise_kernel_is_scipy_gaussian_filter_of_an_impulse(size, sigma):
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    expected = gaussian_filter(impulse, sigma)  # RISE's gkern (before its float32 cast)
    np.testing.assert_allclose(rise_kernel(size, sigma, torch.float64).numpy(), expected, atol=1e-15)


def test_rise_blur_is_riseS_conv2d_with_zero_padding():
    from scipy.ndimage import gaussian_filter

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 20, 20, generator=gen, dtype=torch.float64)
    impulse = np.zeros((5, 5))
    impulse[2, 2] = 1.0
    k = torch.from_numpy(gaussian_filter(impulse, 1.5))
    kern = torch.zeros(3, 3, 5, 5, dtype=torch.float64)
    for c in range(3):
        kern[c, c] = k  # RISE's kern[c, c] = k: no mixing of channels
    expected = torch.nn.functional.conv2d(images, kern, padding=2)
    assert torch.allclose(rise_blur(images, 5, 1.5), expected, atol=1e-12)
    # the border fades to 0 (zero padding), unlike a reflect-padded blur: a constant image is not kept
    ones = torch.ones(1, 3, 20, 20, dtype=torch.float64)
    assert rise_blur(ones, 5, 1.5)[0, 0, 0, 0] < 1 - 1e-3 and rise_blur(ones, 5, 1.5)[0, 0, 10, 10] == pytest.approx(1)


def test_blur_scales_with_the_image_side():
    # kernel 11 and sigma 5 at 224 px; at side S both times S/224, the kernel the nearest odd size >= 3
    assert scaled_blur(1.0) == (11, 5.0)
    assert scaled_blur(448 / 224) == (21, 10.0)  # 22 -> the nearest odd sizes are 21 and 23: round(10.5) = 10 -> 21
    size, sigma = scaled_blur(64 / 224)  # 11 * 64/224 = 3.14 -> 3
    assert size == 3 and sigma == pytest.approx(5 * 64 / 224)
    assert scaled_blur(28 / 224)[0] == 3  # 1.4 -> at least 3
    assert scaled_blur(160 / 224)[0] == 7  # 7.86 -> 7 (the odd size nearest to (7.86 - 1) / 2 = 3.43 -> 3)


def test_registry_passes_the_scaled_blur_and_the_substrate():
    """Step 7's deletion/insertion at 32 px uses kernel 3 and sigma 5 * 32/224, and the substrate of the config."""
    from lottery_xai.config import load_config
    from lottery_xai.metrics import MetricInputs

    _deletion_insertion_args = get_metric("deletion_auc").arguments
    cfg = load_config(None, ["img_size=32"])
    images = torch.zeros(1, 3, 32, 32)
    inputs = MetricInputs(settings=cfg.metrics, maps=torch.zeros(1, 32, 32), model=torch.nn.Identity(), images=images,
                          train_mean=torch.tensor([0.1, 0.2, 0.3]), tie_seed=5)
    args = _deletion_insertion_args(inputs)
    assert (args["blur_kernel"], args["substrate"], args["ties"], args["seed"]) == (3, "zeros", "random", 5)
    assert args["blur_sigma"] == pytest.approx(5 * 32 / 224)
    cfg.metrics.deletion_substrate = "train_mean"
    assert args["substrate"] == "zeros" and _deletion_insertion_args(inputs)["substrate"].tolist() == \
        pytest.approx([0.1, 0.2, 0.3])
    cfg.metrics.pixel_scaling = "fixed"
    assert _deletion_insertion_args(inputs)["blur_kernel"] == 11
    with pytest.raises(UserError, match="train_mean"):
        _deletion_insertion_args(MetricInputs(settings=cfg.metrics, maps=inputs.maps, model=inputs.model, images=images))


# ---------------------------------------------------------------- fills


def test_fill_named_mean_is_refused_and_values_are_the_fill():
    region = torch.zeros(4, 4)
    region[:2, :2] = 1
    model = RegionMeanModel(region).eval()
    images = torch.full((1, 3, 4, 4), 2.0)
    maps = region[None].clone()
    with pytest.raises(UserError, match="zeros"):
        pixel_perturbation(model, images, maps, fractions=(0.25,), fill="mean")
    # the top 4 pixels (the region) replaced by the per-channel fill 0.5: logit = 0.5
    out = pixel_perturbation(model, images, maps, fractions=(0.25,), fill=(0.5, 9.0, 9.0))
    assert out["perturbed_probability"].item() == pytest.approx(sigmoid(0.5))
    zeros = pixel_perturbation(model, images, maps, fractions=(0.25,), fill="zeros")
    assert zeros["perturbed_probability"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------- Samek et al.'s region perturbation


def test_region_grid_is_centred_and_non_overlapping():
    index, rows, cols = region_grid(7, 6, 3)
    # 7 rows: pad 2 -> 1 above, 1 below: regions hold pixel rows {0,1}, {2,3,4}, {5,6}; 6 columns: no pad
    expected_rows = [0, 0, 1, 1, 1, 2, 2]
    expected_cols = [0, 0, 0, 1, 1, 1]
    expected = torch.tensor([[r * 2 + c for c in expected_cols] for r in expected_rows])
    assert (rows, cols) == (3, 2) and torch.equal(index.view(7, 6), expected)
    assert scaled_region(1.0) == 9 and scaled_region(64 / 224) == 3 and scaled_region(28 / 224) == 1


def test_region_perturbation_hand_computed_morf_and_lerf():
    """6x6 image, 3x3 regions (4 of them); the model reads the mean of channel 0 over the top-left region.
    With noise_low = noise_high = c the noise is the constant c, so every step is a hand computation."""
    region = torch.zeros(6, 6)
    region[:3, :3] = 1
    model = RegionMeanModel(region, scale=2.0).eval()
    images = torch.full((1, 3, 6, 6), 1.0)
    maps = torch.zeros(1, 6, 6)
    maps[0, :3, :3] = 1.0   # top-left region: sum 9
    maps[0, :3, 3:] = 0.5   # top-right: 4.5
    maps[0, 3:, 3:] = 0.25  # bottom-right: 2.25; bottom-left 0
    c = -0.5
    p0, p_gone = sigmoid(2.0), sigmoid(2.0 * c)
    morf = region_perturbation(model, images, maps, order="morf", region=3, n_steps=4, noise_low=c, noise_high=c)
    # morf perturbs the top-left region first: f(x_1..x_4) = sigmoid(2c)
    assert morf["curve"][0].tolist() == pytest.approx([p0] + [p_gone] * 4, abs=1e-6)
    assert morf["aopc"].item() == pytest.approx(4 * (p0 - p_gone) / 5, abs=1e-6)
    lerf = region_perturbation(model, images, maps, order="lerf", region=3, n_steps=4, noise_low=c, noise_high=c)
    # lerf perturbs it last
    assert lerf["curve"][0].tolist() == pytest.approx([p0] * 4 + [p_gone], abs=1e-6)
    assert lerf["aopc"].item() == pytest.approx((p0 - p_gone) / 5, abs=1e-6)
    assert morf["n_regions"] == 4
    # more steps than regions: the image stays fully perturbed
    long = region_perturbation(model, images, maps, order="lerf", region=3, n_steps=6, noise_low=c, noise_high=c)
    assert long["curve"][0].tolist() == pytest.approx([p0] * 4 + [p_gone] * 3, abs=1e-6)


def test_regions_are_ranked_by_summed_relevance_not_by_their_peak():
    region = torch.zeros(6, 6)
    region[3:, 3:] = 1  # the model reads the bottom-right region
    model = RegionMeanModel(region, scale=2.0).eval()
    images = torch.full((1, 3, 6, 6), 1.0)
    maps = torch.zeros(1, 6, 6)
    maps[0, 0, 0] = 5.0        # top-left: one high pixel, sum 5
    maps[0, 3:, 3:] = 1.0      # bottom-right: sum 9, peak 1
    out = region_perturbation(model, images, maps, order="morf", region=3, n_steps=1, noise_low=0.0, noise_high=0.0)
    assert out["curve"][0, 1].item() == pytest.approx(0.5)  # bottom-right went first: logit 0


def test_region_noise_is_uniform_in_range_seeded_and_kept_between_steps():
    region = torch.zeros(8, 8)
    region[:4, :4] = 1
    model = RegionMeanModel(region, scale=1.0).eval()
    images = torch.zeros(2, 3, 8, 8)
    maps = torch.zeros(2, 8, 8)
    maps[:, :4, :4] = 1.0
    kwargs = dict(order="morf", region=4, n_steps=4, noise_low=(-1.0, 0, 0), noise_high=(3.0, 0, 0))
    a = region_perturbation(model, images, maps, noise_seed=3, **kwargs)
    b = region_perturbation(model, images, maps, noise_seed=3, **kwargs)
    c = region_perturbation(model, images, maps, noise_seed=4, **kwargs)
    assert torch.equal(a["curve"], b["curve"]) and not torch.equal(a["curve"], c["curve"])
    # the region read by the model goes first and keeps its noise: the curve is flat after step 1
    logits = torch.logit(a["curve"][:, 1:].double(), eps=0)
    assert torch.allclose(logits, logits[:, :1].expand(-1, 4), atol=1e-5)
    # its mean over 16 uniform(-1, 3) values lies in (-1, 3) and differs between the two images
    assert bool(((logits > -1) & (logits < 3)).all()) and not torch.isclose(logits[0, 0], logits[1, 0])
    with pytest.raises(UserError, match="noise_high"):
        region_perturbation(model, images, maps, noise_low=1.0, noise_high=0.0)


def test_registry_default_is_samek_with_noise_over_the_pixel_range():
    from lottery_xai.config import load_config
    from lottery_xai.metrics import MetricInputs

    _perturbation_args = get_metric("morf_aopc").arguments
    cfg = load_config(None, ["img_size=64"])
    x = MetricInputs(settings=cfg.metrics, maps=torch.zeros(1, 64, 64), model=torch.nn.Identity(),
                     images=torch.zeros(1, 3, 64, 64), normalisation=((0.5, 0.25, 0.0), (0.5, 0.25, 2.0)),
                     tie_seed=7, noise_seed=9, train_mean=torch.tensor([1.0, 2.0, 3.0]))
    args = _perturbation_args(x)
    assert (args["protocol"], args["region"], args["n_steps"], args["seed"], args["noise_seed"]) == \
        ("samek", 3, 100, 7, 9)
    # pixel value 0 and 1 through the normalisation (v - mean) / std
    assert args["noise_low"] == pytest.approx([-1.0, -1.0, 0.0]) and args["noise_high"] == pytest.approx([1.0, 3.0, 0.5])
    cfg.metrics.perturbation = "pixels"
    pixels = _perturbation_args(x)
    assert pixels["protocol"] == "pixels" and pixels["fill"].tolist() == [1.0, 2.0, 3.0]


# ---------------------------------------------------------------- ties


def test_random_ties_respect_values_and_are_per_image_seeded():
    maps = torch.zeros(2, 6, 6)
    maps[:, 1, 1] = 2.0
    maps[:, 4, 4] = 1.0  # the other 34 pixels tie at 0
    ranks = pixel_rank(maps, seeds=[11, 12])
    assert torch.equal(ranks.sort(dim=1).values, torch.arange(36).expand(2, 36))
    assert (ranks[:, 7] == 0).all() and (ranks[:, 28] == 1).all()  # the order of distinct values is kept
    alone = pixel_rank(maps[1:], seeds=[12])
    assert torch.equal(alone[0], ranks[1])  # an image's order does not depend on the batch it is ranked with
    assert not torch.equal(ranks[0], ranks[1])  # other seed, other order of the plateau
    raster = pixel_rank(maps)  # row-major: pixel 0, 1, 2, ... after the two maxima
    plateau = [p for p in range(36) if p not in (7, 28)]
    assert raster[0, plateau].tolist() == list(range(2, 36))
    assert ranks[0, plateau].tolist() != list(range(2, 36))


def test_constant_map_deletes_at_random_not_top_rows_first():
    """A constant map says nothing; with raster ties it would delete the top rows first, which is exactly the
    region this model reads, and look perfectly faithful."""
    region = torch.zeros(16, 16)
    region[:4] = 1  # the top 4 rows
    model = RegionMeanModel(region, scale=4.0).eval()
    images = torch.full((3, 3, 16, 16), 1.0)
    constant = torch.zeros(3, 16, 16)
    raster = deletion_insertion(model, images, constant, n_steps=4, ties="raster", blur_kernel=3, blur_sigma=1.0)
    random = deletion_insertion(model, images, constant, n_steps=4, ties="random", seed=1, blur_kernel=3,
                                blur_sigma=1.0)
    # raster: step 1 deletes exactly the 64 pixels of the region (64 = 256 / 4): p = 0.5 from step 1 on
    assert raster["deletion_curve"][0].tolist() == pytest.approx([sigmoid(4.0)] + [0.5] * 4, abs=1e-6)
    # random: after step 1 about a quarter of the region is gone, not all of it
    assert bool((random["deletion_curve"][:, 1] > 0.6).all())
    assert bool((random["deletion_auc"] > raster["deletion_auc"] + 0.05).all())


def test_pixel_and_region_rankings_take_the_tie_seed():
    region = torch.zeros(8, 8)
    region[:2] = 1
    model = RegionMeanModel(region, scale=4.0).eval()
    images = torch.full((2, 3, 8, 8), 1.0)
    flat = torch.zeros(2, 8, 8)
    for fn, kwargs in ((pixel_perturbation, dict(fractions=(0.25,))),
                       (region_perturbation, dict(region=2, n_steps=4, noise_low=0.0, noise_high=0.0))):
        a = fn(model, images, flat, seed=1, **kwargs)["aopc"]
        assert torch.equal(a, fn(model, images, flat, seed=1, **kwargs)["aopc"])
        assert not torch.equal(a, fn(model, images, flat, seed=2, **kwargs)["aopc"])
        raster = fn(model, images, flat, ties="raster", **kwargs)["aopc"]
        assert raster[0] == raster[1]  # raster ties ignore the seed: the top rows first in both images
    with pytest.raises(UserError, match="ties"):
        pixel_perturbation(model, images, flat, ties="first")


# ---------------------------------------------------------------- TorchRay's pointing game


def torchray_pointing(saliency: torch.Tensor, mask: torch.Tensor, tolerance: float) -> bool:
    """facebookresearch/TorchRay written out: ``_saliency_to_point`` then ``PointingGame.evaluate``."""
    w = saliency.shape[-1]
    point = torch.argmax(saliency.reshape(-1))
    u, v = int(point % w), int(point // w)  # (x, y)
    vv, uu = torch.meshgrid((torch.arange(mask.shape[0], dtype=torch.float32) - v) ** 2,
                            (torch.arange(mask.shape[1], dtype=torch.float32) - u) ** 2, indexing="ij")
    accept = (vv + uu) < tolerance ** 2
    return bool((mask & accept).view(-1).any())


def test_pointing_game_is_torchray_by_default_hand_computed():
    box = torch.tensor([4.0, 4.0, 8.0, 8.0])  # pixels: columns 4..7, rows 4..7
    maps = torch.zeros(5, 16, 16)
    maps[0, 5, 5] = 1.0                       # inside
    maps[1, 5, 10] = 1.0                      # 3 columns right of the box's last column (7)
    maps[2, 0, 15] = maps[2, 5, 5] = 1.0      # tie: the first in row-major order is (0, 15), far away
    maps[3] = 2.0                             # constant: points at (0, 0), sqrt(32) = 5.66 from pixel (4, 4)
    # maps[4] all zero: also (0, 0)
    boxes = box.repeat(5, 1)
    assert pointing_game(maps, boxes, tolerance=3).tolist() == [1, 0, 0, 0, 0]    # 3 is not < 3
    assert pointing_game(maps, boxes, tolerance=3.5).tolist() == [1, 1, 0, 0, 0]
    assert pointing_game(maps, boxes, tolerance=6).tolist() == [1, 1, 0, 1, 1]    # 5.66 < 6
    assert pointing_game(maps, boxes, tolerance=0).tolist() == [0, 0, 0, 0, 0]    # strict: nothing is < 0
    assert pointing_game(maps, torch.tensor([5.0, 5.0, 5.0, 9.0]).repeat(5, 1), tolerance=15).sum() == 0  # empty box
    # the old rule scores these differently (maps 1 and 2 hit with tolerance 3, constant maps never)
    assert pointing_game(maps, boxes, tolerance=3, ties="half").tolist() == [1, 1, 1, 0, 0]


def test_pointing_game_matches_torchray_formula_on_random_maps():
    gen = torch.Generator().manual_seed(5)
    maps = torch.rand(40, 12, 14, generator=gen).round(decimals=1)  # rounded: many tied maxima
    x0 = torch.randint(0, 10, (40,), generator=gen).float()
    y0 = torch.randint(0, 9, (40,), generator=gen).float()
    boxes = torch.stack([x0, y0, x0 + torch.randint(1, 5, (40,), generator=gen),
                         y0 + torch.randint(1, 4, (40,), generator=gen)], dim=1)
    from lottery_xai.metrics import box_mask

    masks = box_mask(boxes, 12, 14)
    for tolerance in (0.5, 2.0, 3.7):
        ours = pointing_game(maps, boxes, tolerance=tolerance)
        expected = [torchray_pointing(maps[n], masks[n], tolerance) for n in range(40)]
        assert ours.bool().tolist() == expected


# ---------------------------------------------------------------- CGC's content heatmap


def test_content_heatmap_skips_all_zero_maps_as_cgc_and_counts_them():
    maps = torch.zeros(4, 8, 8)
    maps[0, 2:4, 2:4] = 1.0    # all inside the box
    maps[1, 6:, 6:] = 1.0      # all outside
    maps[3, 6:, 6:] = -1.0     # no positive energy either
    boxes = torch.tensor([[1.0, 1.0, 4.0, 4.0]] * 4)  # 3 x 3 = 9 of 64 pixels
    skipped = content_heatmap(maps, boxes)
    assert skipped[:2].tolist() == [100.0, 0.0] and bool(skipped[2:].isnan().all())
    # CGC: the mean over the maps that were not skipped; 2 of 4 skipped
    assert skipped.nanmean().item() == pytest.approx(50.0)
    assert zero_map_indicator(maps).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert content_heatmap(maps, boxes, zero_maps="zero").tolist() == [100.0, 0.0, 0.0, 0.0]
    assert content_heatmap(maps, boxes, zero_maps="uniform").tolist() == pytest.approx([100.0, 0.0, 900 / 64, 900 / 64])
    assert torch.equal(energy_in_box(maps, boxes), content_heatmap(maps, boxes, zero_maps="zero"))
    assert not get_metric("content_heatmap_zero_maps").higher_is_better
    with pytest.raises(UserError, match="zero_maps"):
        content_heatmap(maps, boxes, zero_maps="drop")
