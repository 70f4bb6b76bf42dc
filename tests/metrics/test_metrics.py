"""Explanation metrics on tiny hand-built models with known answers."""
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import torchvision.transforms.functional as TF
from skimage.metrics import structural_similarity

from lottery_xai.errors import UserError
from lottery_xai.metrics import (
    METRICS,
    average_rank,
    deletion_insertion,
    energy_in_box,
    energy_in_parts,
    get_metric,
    map_agreement,
    pixel_perturbation,
    pointing_game,
    region_perturbation,
    resized_crop,
    sample_crop_boxes,
    tcav_agreement,
    transform_consistency,
    trapezoid_auc,
)

SIZE = 16


class RegionModel(torch.nn.Module):
    """logit_0 = scale * sum of the pixels (all channels) inside a known region; logit_1 = 0."""

    def __init__(self, region: torch.Tensor, scale: float = 0.05):
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = scale

    def forward(self, x):
        evidence = self.scale * (x * self.region).sum(dim=(1, 2, 3))
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def region_setup(n_images=3, seed=0):
    """Images that are +1 (plus noise) in the region and -1 elsewhere, and the true-evidence maps."""
    gen = torch.Generator().manual_seed(seed)
    region = torch.zeros(SIZE, SIZE)
    region[9:15, 2:9] = 1
    images = torch.where(region.bool(), 1.0, -1.0).expand(n_images, 3, SIZE, SIZE).clone()
    images += 0.1 * torch.rand(n_images, 3, SIZE, SIZE, generator=gen)
    model = RegionModel(region).eval()
    true_maps = (images * region).sum(dim=1) * model.scale  # each pixel's exact contribution to the logit
    return model, images, true_maps, gen


def candidate_maps(true_maps, gen):
    return {
        "true": true_maps,
        "inverted": -true_maps,
        "random": torch.rand(true_maps.shape, generator=gen),
        "constant": torch.zeros_like(true_maps),
    }


def rise_reference_blur(images, kernel=11, sigma=5.0):
    """RISE's insertion substrate as eclique/RISE builds it: ``gkern`` (scipy's gaussian_filter of a centred
    impulse) on the channel diagonal, ``nn.functional.conv2d(x, kern, padding=klen // 2)``."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((kernel, kernel))
    impulse[kernel // 2, kernel // 2] = 1
    k = torch.from_numpy(gaussian_filter(impulse, sigma).astype("float32"))
    channels = images.shape[1]
    kern = torch.zeros(channels, channels, kernel, kernel)
    for c in range(channels):
        kern[c, c] = k
    return torch.nn.functional.conv2d(images, kern, padding=kernel // 2)


def reference_deletion_insertion(model, image, saliency, n_steps, blurred):
    """Direct per-step RISE loop for one image, the formula the batched version must match (ties in
    row-major order: the batched version with ties="raster")."""
    n_pixels = image.shape[-1] * image.shape[-2]
    step = math.ceil(n_pixels / n_steps)
    order = np.argsort(-saliency.flatten().numpy(), kind="stable")
    with torch.no_grad():
        target = model(image[None]).argmax(1).item()
        deletion, insertion = [], []
        for k in range(n_steps + 1):
            chosen = torch.zeros(n_pixels, dtype=torch.bool)
            chosen[torch.from_numpy(order[: min(k * step, n_pixels)].copy())] = True
            chosen = chosen.view(1, *image.shape[-2:])
            deletion.append(model(torch.where(chosen, 0.0, image)[None]).softmax(1)[0, target].item())
            insertion.append(model(torch.where(chosen, image, blurred)[None]).softmax(1)[0, target].item())
    x = np.linspace(0, 1, n_steps + 1)
    return np.array(deletion), np.array(insertion), np.trapezoid(deletion, x), np.trapezoid(insertion, x)


# ---------------------------------------------------------------- registry


def test_registry_declares_direction_family_and_needs():
    assert get_metric("deletion_auc").higher_is_better is False
    assert get_metric("insertion_auc").higher_is_better is True
    assert get_metric("lerf_aopc").higher_is_better is False
    assert get_metric("energy_in_box").needs == {"box"}
    assert get_metric("spearman").needs == {"second_map"}
    assert get_metric("roar_test_acc").needs == {"retraining"} and not get_metric("roar_test_acc").higher_is_better
    assert {spec.family for spec in METRICS.values()} == {"faithfulness", "localisation", "consistency", "robustness",
                                                          "complexity", "randomisation"}
    # the default selection keeps the three families step 7 computed before the opt-in ones (issue 22)
    assert {spec.family for spec in METRICS.values() if spec.default} == {"faithfulness", "localisation", "consistency"}
    with pytest.raises(UserError, match="insertion_auc"):
        get_metric("insertion_uac")


def test_spec_compute_applies_fixed_options():
    model, images, true_maps, _ = region_setup()
    morf = get_metric("morf_aopc").compute(model=model, images=images, maps=true_maps)
    direct = region_perturbation(model, images, true_maps, order="morf")["aopc"]  # the default protocol: Samek's
    assert torch.allclose(morf, direct)
    pixels = get_metric("morf_aopc").compute(protocol="pixels", model=model, images=images, maps=true_maps)
    assert torch.allclose(pixels, pixel_perturbation(model, images, true_maps, order="morf")["aopc"])
    with pytest.raises(UserError, match="order"):
        get_metric("morf_aopc").compute(model=model, images=images, maps=true_maps, order="lerf")


# ---------------------------------------------------------------- faithfulness


def test_true_evidence_map_has_best_deletion_and_insertion_auc():
    model, images, true_maps, gen = region_setup()
    results = {name: deletion_insertion(model, images, maps, n_steps=16)
               for name, maps in candidate_maps(true_maps, gen).items()}
    for name, result in results.items():
        if name == "true":
            continue
        assert bool((results["true"]["deletion_auc"] < result["deletion_auc"]).all()), name
        assert bool((results["true"]["insertion_auc"] > result["insertion_auc"]).all()), name
    assert bool((results["true"]["deletion_auc"] >= 0).all() and (results["true"]["insertion_auc"] <= 1).all())


def test_deletion_insertion_matches_direct_per_step_loop_and_trapezoid():
    model, images, _, gen = region_setup(n_images=2)
    maps = torch.rand(2, SIZE, SIZE, generator=gen)
    maps[0, :4] = 0.5  # ties, broken by pixel index in both implementations
    n_steps = 10  # 256 pixels / 10 -> step 26, last step clamped to all pixels
    result = deletion_insertion(model, images, maps, n_steps=n_steps, batch_size=7, ties="raster")
    blurred = rise_reference_blur(images)
    for n in range(2):
        deletion, insertion, deletion_auc, insertion_auc = reference_deletion_insertion(
            model, images[n], maps[n], n_steps, blurred[n])
        np.testing.assert_allclose(result["deletion_curve"][n].numpy(), deletion, atol=1e-6)
        np.testing.assert_allclose(result["insertion_curve"][n].numpy(), insertion, atol=1e-6)
        assert result["deletion_auc"][n].item() == pytest.approx(deletion_auc, abs=1e-6)
        assert result["insertion_auc"][n].item() == pytest.approx(insertion_auc, abs=1e-6)


def test_trapezoid_auc_matches_numpy_on_toy_curve():
    curve = np.array([1.0, 0.8, 0.3, 0.35, 0.1, 0.0])
    expected = np.trapezoid(curve, x=np.linspace(0, 1, curve.size))
    assert trapezoid_auc(torch.tensor(curve)).item() == pytest.approx(expected, abs=1e-12)
    assert trapezoid_auc(torch.ones(2, 29)).tolist() == pytest.approx([1.0, 1.0])


def test_deletion_insertion_is_invariant_to_positive_scaling_and_batch_size():
    model, images, true_maps, _ = region_setup()
    a = deletion_insertion(model, images, true_maps, n_steps=8, batch_size=64)
    b = deletion_insertion(model, images, 37.0 * true_maps, n_steps=8, batch_size=1, targets=a["targets"])
    assert torch.allclose(a["deletion_curve"], b["deletion_curve"], atol=1e-6)
    assert torch.allclose(a["insertion_curve"], b["insertion_curve"], atol=1e-6)
    other_class = deletion_insertion(model, images, true_maps, n_steps=8, targets=1 - a["targets"])
    assert torch.allclose(other_class["deletion_curve"], 1 - a["deletion_curve"], atol=1e-6)


def test_morf_drops_more_and_lerf_less_on_true_map_than_random():
    model, images, true_maps, gen = region_setup()
    random_maps = torch.rand(true_maps.shape, generator=gen)
    fractions = (0.02, 0.05, 0.10)
    morf_true = pixel_perturbation(model, images, true_maps, fractions=fractions, order="morf")
    morf_random = pixel_perturbation(model, images, random_maps, fractions=fractions, order="morf")
    lerf_true = pixel_perturbation(model, images, true_maps, fractions=fractions, order="lerf")
    lerf_random = pixel_perturbation(model, images, random_maps, fractions=fractions, order="lerf")
    assert bool((morf_true["aopc"] > morf_random["aopc"]).all())
    assert bool((lerf_true["aopc"] < lerf_random["aopc"]).all())
    assert bool((morf_true["D"] > morf_random["D"]).all())
    # LeRF on the true map only touches pixels outside the region: the model cannot notice.
    assert torch.allclose(lerf_true["drop"], torch.zeros(3, 3), atol=1e-6)


def test_pixel_perturbation_matches_formula():
    model, images, true_maps, _ = region_setup(n_images=2)
    fractions = (0.1, 0.2)
    result = pixel_perturbation(model, images, true_maps, fractions=fractions, order="morf", fill=(0.5, -0.5, 0.25))
    clean = model(images).softmax(1)[:, 0]
    fill = torch.tensor([0.5, -0.5, 0.25]).view(1, 3, 1, 1)
    perturbed = torch.empty(2, 2)
    for n in range(2):
        order = torch.argsort(true_maps[n].flatten(), descending=True, stable=True)
        for q, fraction in enumerate(fractions):
            mask = torch.zeros(SIZE * SIZE, dtype=torch.bool)
            mask[order[: round(fraction * SIZE * SIZE)]] = True
            copy = torch.where(mask.view(1, SIZE, SIZE), fill[0], images[n])
            perturbed[n, q] = model(copy[None]).softmax(1)[0, 0]
    relative = (clean[:, None] - perturbed).abs() / clean[:, None]
    assert torch.allclose(result["perturbed_probability"], perturbed, atol=1e-6)
    assert torch.allclose(result["D"], 100 * relative.mean(0), atol=1e-4)
    assert torch.allclose(result["aopc"], (clean[:, None] - perturbed).sum(1) / 3, atol=1e-6)


def test_faithfulness_refuses_training_mode_and_bad_shapes():
    model, images, true_maps, _ = region_setup()
    with pytest.raises(UserError, match="eval"):
        deletion_insertion(model.train(), images, true_maps)
    model.eval()
    with pytest.raises(UserError, match="maps"):
        deletion_insertion(model, images, true_maps[:, :8])
    with pytest.raises(UserError, match="order"):
        pixel_perturbation(model, images, true_maps, order="most")


# ---------------------------------------------------------------- localisation


def test_energy_in_box_known_answers():
    maps = torch.zeros(4, SIZE, SIZE)
    maps[0, 3:6, 4:8] = torch.rand(3, 4) + 0.1  # entirely inside the box
    maps[1] = 1.0  # uniform
    # maps[2] stays all zero
    maps[3, 3:6, 4:8] = 2.0
    maps[3, 10:, 10:] = -5.0  # negative evidence outside the box is not energy
    boxes = torch.tensor([[4.0, 3.0, 8.0, 6.0]]).repeat(4, 1)  # x0, y0, x1, y1: 4 x 3 pixels
    energy = energy_in_box(maps, boxes)
    assert energy.tolist() == pytest.approx([100.0, 100.0 * 12 / SIZE**2, 0.0, 100.0])
    assert torch.allclose(energy_in_box(9.0 * maps, boxes), energy)
    empty = torch.tensor([[5.0, 5.0, 5.0, 9.0]]).repeat(4, 1)
    assert energy_in_box(maps, empty).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_pointing_game_half_rule_ties_empty_maps_and_tolerance():
    """The stricter option (ties="half"): half of the tied maxima must be near the box; constant maps miss."""
    box = torch.tensor([4.0, 4.0, 8.0, 8.0])
    maps = torch.zeros(7, SIZE, SIZE)
    maps[0, 5, 5] = 1.0  # unique max inside
    maps[1, 0, 15] = 1.0  # far outside
    maps[2, 5, 10] = 1.0  # centre (10.5, 5.5): 2.5 px right of the box
    maps[3, 5, 5] = maps[3, 6, 6] = maps[3, 0, 15] = 1.0  # tie: 2 of 3 maxima inside -> hit
    maps[4, 5, 5] = maps[4, 0, 15] = maps[4, 15, 0] = 1.0  # tie: 1 of 3 inside -> miss
    maps[5] = 3.0  # constant (6 stays all zero): no information -> miss
    boxes = box.repeat(7, 1)
    assert pointing_game(maps, boxes, tolerance=0, ties="half").tolist() == [1, 0, 0, 1, 0, 0, 0]
    assert pointing_game(maps, boxes, tolerance=3, ties="half").tolist() == [1, 0, 1, 1, 0, 0, 0]
    assert pointing_game(maps, boxes, tolerance=2, ties="half").tolist() == [1, 0, 0, 1, 0, 0, 0]
    empty_box = torch.tensor([5.0, 5.0, 5.0, 5.0]).repeat(7, 1)
    assert pointing_game(maps, empty_box, tolerance=15, ties="half").sum().item() == 0


def test_energy_in_parts():
    maps = torch.zeros(3, SIZE, SIZE)
    maps[:, 2, 2] = 1.0
    maps[:, 12, 12] = 3.0
    parts = torch.tensor([
        [[2.5, 2.5, 1.0], [12.5, 12.5, 0.0]],  # only the first part visible: 1 of 4 energy units
        [[2.5, 2.5, 1.0], [12.5, 12.5, 1.0]],  # both visible: all energy
        [[2.5, 2.5, 0.0], [12.5, 12.5, 0.0]],  # no visible part: undefined
    ])
    energy = energy_in_parts(maps, parts, radius=1.5)
    assert energy[:2].tolist() == pytest.approx([25.0, 100.0])
    assert math.isnan(energy[2].item())
    assert energy_in_parts(torch.zeros(1, SIZE, SIZE), parts[:1], radius=2).item() == 0.0


# ---------------------------------------------------------------- consistency


def test_map_agreement_identical_and_negated():
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 20, 20, generator=gen)
    same = map_agreement(maps, maps.clone())
    for key in ("spearman", "top_iou", "ssim"):
        assert same[key].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-9), key
    assert map_agreement(maps, -maps)["spearman"].tolist() == pytest.approx([-1.0] * 3, abs=1e-12)
    assert torch.allclose(map_agreement(maps, 5.0 * maps)["ssim"], torch.ones(3, dtype=torch.float64))


def test_spearman_with_ties_matches_scipy_and_constant_map_is_zero():
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(0, 4, (3, 12, 12), generator=gen).float()  # many ties
    b = a + torch.randint(0, 3, (3, 12, 12), generator=gen).float()
    ranks = average_rank(a.flatten(1))
    for n in range(3):
        np.testing.assert_allclose(ranks[n].numpy(), scipy.stats.rankdata(a[n].flatten().numpy()))
    expected = [scipy.stats.spearmanr(a[n].flatten(), b[n].flatten()).statistic for n in range(3)]
    assert map_agreement(a, b)["spearman"].tolist() == pytest.approx(expected, abs=1e-12)
    assert map_agreement(torch.zeros(1, 12, 12), a[:1])["spearman"].item() == 0.0


def test_ssim_matches_skimage():
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(2, 24, 20, generator=gen, dtype=torch.float64)
    b = a + 0.3 * torch.rand(2, 24, 20, generator=gen, dtype=torch.float64)
    ours = map_agreement(a, b)["ssim"]
    for n in range(2):
        x = (a[n] / a[n].abs().max()).numpy()
        y = (b[n] / b[n].abs().max()).numpy()
        data_range = max(x.max(), y.max()) - min(x.min(), y.min())
        reference = structural_similarity(x, y, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False)
        assert ours[n].item() == pytest.approx(reference, abs=1e-10)


def test_top_iou_hand_computed_and_ties_deterministic():
    a = torch.zeros(1, 20, 20)
    b = torch.zeros(1, 20, 20)
    a.view(-1)[:60] = 1.0  # top 15 % of 400 = these 60 pixels
    b.view(-1)[30:90] = 1.0  # overlap of 30, union of 90
    assert map_agreement(a, b, top_fraction=0.15)["top_iou"].item() == pytest.approx(30 / 90)
    constant = torch.ones(1, 12, 12)
    assert map_agreement(constant, constant.clone())["top_iou"].item() == 1.0


def test_tcav_agreement_counts_flips():
    dense = pd.DataFrame({
        "class": ["a", "a", "b", "b"],
        "concept": ["red", "wing", "red", "wing"],
        "tcav_mean": [0.9, 0.5, 0.2, 0.7],
        "significant": [True, False, False, True],
    })
    pruned = pd.DataFrame({
        "class": ["b", "b", "a", "a"],  # row order differs on purpose
        "concept": ["wing", "red", "wing", "red"],
        "tcav_mean": [0.4, 0.2, 0.8, 0.85],
        "significant": ["False", "False", "True", "True"],  # as read back from a CSV as text
    })
    table = tcav_agreement(pruned, dense)
    assert table[["class", "concept"]].values.tolist() == [["a", "red"], ["a", "wing"], ["b", "red"], ["b", "wing"]]
    assert table["abs_diff"].tolist() == pytest.approx([0.05, 0.3, 0.0, 0.3])
    assert table["flipped"].tolist() == [False, True, False, True]
    summary = table.attrs["summary"]
    assert summary["flip_rate"] == 0.5 and summary["n_flipped"] == 2
    assert summary["lost"] == 1 and summary["gained"] == 1
    assert summary["mean_abs_diff"] == pytest.approx(0.1625)
    with pytest.raises(UserError, match="tcav_mean"):
        tcav_agreement(pruned.drop(columns="tcav_mean"), dense)


class SquareModel(torch.nn.Module):
    """logit_0 = 0.5 * sum_p w_p x_p^2; with w constant its gradient is w*x, which commutes with
    any linear spatial transform (flip, crop + bilinear resize)."""

    def __init__(self, weight):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x):
        evidence = 0.5 * (self.weight * x.square()).sum(dim=(1, 2, 3))
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def gradient_map(model, images, targets):
    images = images.detach().requires_grad_(True)
    selected = model(images).gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(selected, images)
    return grad.sum(dim=1)


def saliency_map(model, images, targets):
    images = images.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(images).gather(1, targets[:, None]).sum(), images)
    return grad.abs().amax(dim=1)


@pytest.mark.parametrize("transforms", ["flip", "crop", "both"])
def test_transform_consistency_is_exact_for_equivariant_model(transforms):
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(3, 3, 20, 20, generator=gen, dtype=torch.float64)
    model = SquareModel(torch.ones((), dtype=torch.float64)).eval()
    result = transform_consistency(model, images, gradient_map, transforms=transforms, n_transforms=3, seed=5)
    for key in ("spearman", "top_iou", "ssim"):
        assert result[key].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-9), key
    flipped = transform_consistency(model, images, saliency_map, transforms="flip")
    assert flipped["spearman"].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-9)


def test_transform_consistency_detects_non_equivariant_model_and_is_seeded():
    gen = torch.Generator().manual_seed(6)
    images = torch.randn(2, 3, 20, 20, generator=gen)
    weight = torch.linspace(0.1, 2.0, 20).view(1, 1, 20).expand(1, 20, 20)  # grows to the right
    model = SquareModel(weight).eval()
    flip = transform_consistency(model, images, gradient_map, transforms="flip")
    assert bool((flip["spearman"] < 0.95).all())
    a = transform_consistency(model, images, gradient_map, transforms="both", n_transforms=2, seed=7)
    b = transform_consistency(model, images, gradient_map, transforms="both", n_transforms=2,
                              generator=torch.Generator().manual_seed(7))
    assert torch.equal(a["spearman_all"], b["spearman_all"]) and a["ssim_all"].shape == (2, 2)


def test_resized_crop_matches_torchvision_and_boxes_fit():
    gen = torch.Generator().manual_seed(8)
    images = torch.rand(6, 3, 18, 22, generator=gen)
    top, left, h, w = sample_crop_boxes(6, 18, 22, gen, scale=(0.3, 1.0))
    assert bool(((top >= 0) & (top + h <= 18) & (left >= 0) & (left + w <= 22) & (h > 0) & (w > 0)).all())
    out = resized_crop(images, top, left, h, w)
    flip = torch.tensor([True, False] * 3)
    out_flipped = resized_crop(images, top, left, h, w, flip=flip)
    for n in range(6):
        reference = TF.resized_crop(images[n], int(top[n]), int(left[n]), int(h[n]), int(w[n]), [18, 22])
        assert torch.allclose(out[n], reference, atol=1e-5)
        expected = reference.flip(-1) if flip[n] else reference
        assert torch.allclose(out_flipped[n], expected, atol=1e-5)
    maps = images[:, 0]
    assert torch.allclose(resized_crop(maps, top, left, h, w), out[:, 0])


