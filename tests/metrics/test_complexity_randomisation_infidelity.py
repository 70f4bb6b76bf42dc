"""Sparseness and complexity (Quantus), the random-logit test (Quantus), the parameter-randomisation score read
from the sanity table, Efficient MPRT and its discrete entropy (Quantus), and infidelity (Captum)."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models import resnet18

from lottery_xai.attribution import saliency
from lottery_xai.errors import UserError
from lottery_xai.metrics.complexity import complexity, discrete_entropy, sparseness
from lottery_xai.metrics.infidelity import gaussian_perturbation, infidelity
from lottery_xai.metrics.randomisation import (efficient_mprt, flat_ssim, other_classes, parameter_randomisation_score,
                                               random_logit)

PER_MAP = {"normalise_axes": [1, 2, 3]}  # Quantus 0.6 divides by the batch's max otherwise


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def batch(net):
    g = torch.Generator().manual_seed(1)
    images, targets = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 3, 1])
    return images, targets, saliency(net, images, targets)


def quantus_explain(model, inputs, targets, **kwargs):
    return saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()


@pytest.mark.parametrize("name", ["Sparseness", "Complexity"])
def test_complexity_family_equals_quantus(net, batch, name):
    quantus = pytest.importorskip("quantus")
    images, targets, maps = batch
    maps = maps - 0.3 * maps.mean()  # signed maps: both take |.| first
    expected = getattr(quantus, name)(normalise_func_kwargs=PER_MAP, disable_warnings=True)(
        model=net, x_batch=images.numpy(), y_batch=targets.numpy(), a_batch=maps.numpy(), device="cpu")
    ours = {"Sparseness": sparseness, "Complexity": complexity}[name](maps)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=2e-5)


def test_sparseness_and_complexity_by_hand():
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 1, 2] = 5.0
    flat = torch.ones(1, 4, 4)
    n = 16
    # Gini of a one-hot (after +1e-7) is (n - 1) / n up to the epsilon; of a constant map 0
    assert sparseness(one_hot).item() == pytest.approx((n - 1) / n, abs=1e-5)
    assert sparseness(flat).item() == pytest.approx(0.0, abs=1e-12)
    assert complexity(one_hot).item() == pytest.approx(0.0, abs=1e-9)
    assert complexity(flat).item() == pytest.approx(np.log(n), abs=1e-9)
    # scale invariant, per map: another map in the batch does not matter
    both = torch.cat([one_hot, 1000 * flat])
    torch.testing.assert_close(sparseness(both)[:1], sparseness(one_hot))


def test_discrete_entropy_by_hand_and_equals_quantus():
    # half the pixels at 0 and half at 1: two bins of equal mass, log 2; a constant map: one bin, 0;
    # 100 distinct values spread evenly: one per bin, log 100
    halves = torch.cat([torch.zeros(1, 2, 4), torch.ones(1, 2, 4)], dim=1)
    ramp = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    assert discrete_entropy(halves).item() == pytest.approx(np.log(2), abs=1e-12)
    assert discrete_entropy(torch.full((1, 3, 3), 7.0)).item() == 0.0
    assert discrete_entropy(ramp).item() == pytest.approx(np.log(100), abs=1e-12)
    assert discrete_entropy(halves, n_bins=3).item() == pytest.approx(np.log(2), abs=1e-12)
    complexity_func = pytest.importorskip("quantus.functions.complexity_func")
    g = torch.Generator().manual_seed(4)
    signed = torch.randn(4, 17, 19, generator=g) ** 3  # heavy tails: many values near the bin edges of the middle
    cam = torch.relu(torch.randn(3, 16, 16, generator=g))  # about half the pixels exactly 0 (a CAM after its ReLU)
    on_edges = torch.linspace(-1, 1, 201).reshape(1, 201, 1).expand(2, 201, 3).contiguous()  # values on the edges
    for maps in (signed, cam, on_edges, ramp, halves):
        for bins in (100, 7):
            expected = [complexity_func.discrete_entropy(a=m.numpy(), x=None, n_bins=bins) for m in maps]
            np.testing.assert_allclose(discrete_entropy(maps, bins).numpy(), expected, rtol=1e-12, atol=1e-15)


def test_efficient_mprt_equals_quantus(net, batch):
    """Quantus's EfficientMPRT end to end: it randomises the ResNet-18 itself (every layer, bottom up) and
    calls the explanation function on the original model and on the fully randomised one; our score of
    those same maps equals its per-image scores."""
    quantus = pytest.importorskip("quantus")
    images, targets, _ = batch
    seen = []

    def explain(model, inputs, targets, **kwargs):
        maps = saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()
        seen.append(maps)
        return maps

    expected = quantus.EfficientMPRT(disable_warnings=True)(
        model=copy.deepcopy(net),
        x_batch=images.numpy(), y_batch=targets.numpy(), a_batch=None, explain_func=explain, device="cpu")
    original, randomised = torch.as_tensor(seen[1]), torch.as_tensor(seen[-1])
    assert not torch.allclose(original, randomised)
    np.testing.assert_allclose(efficient_mprt(randomised, original).numpy(), expected, rtol=1e-10)
    # by hand: a two-valued map (log 2) whose randomised map is a 100-value ramp (log 100)
    halves = torch.cat([torch.zeros(1, 5, 10), torch.ones(1, 5, 10)], dim=1)
    ramp = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    assert efficient_mprt(ramp, halves).item() == pytest.approx((np.log(100) - np.log(2)) / np.log(2))
    assert efficient_mprt(halves, halves).item() == 0.0  # unchanged maps: no rise
    assert np.isnan(efficient_mprt(ramp, torch.ones(1, 10, 10)).item())  # a constant original: no score


def test_random_logit_equals_quantus(net, batch):
    quantus = pytest.importorskip("quantus")
    images, targets, maps = batch
    np.random.seed(42)  # Quantus's draw: the j-th of the other classes, j = randint(0, K - 1)
    j = torch.as_tensor(np.random.randint(0, 4, 3))
    others = j + (j >= targets).long()
    expected = quantus.RandomLogit(num_classes=5, seed=42, normalise_func_kwargs=PER_MAP, disable_warnings=True)(
        model=net, x_batch=images.numpy(), y_batch=targets.numpy(), a_batch=maps.numpy(),
        explain_func=quantus_explain, device="cpu")
    ours = random_logit(net, images, lambda m, x, t: saliency(m, x, t), maps, targets, other_targets=others)
    np.testing.assert_allclose(ours["value"].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_flat_ssim_equals_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 6, 5, generator=g), torch.rand(2, 6, 5, generator=g)
    for i in range(2):
        x, y = a[i].flatten().double().numpy(), b[i].flatten().double().numpy()
        both = np.concatenate([x, y])
        expected = metrics.structural_similarity(x, y, data_range=both.max() - both.min())
        assert flat_ssim(a, b)[i].item() == pytest.approx(expected, rel=1e-10)
    assert flat_ssim(a, a).tolist() == pytest.approx([1.0, 1.0])


def test_other_classes_are_uniform_over_the_others():
    targets = torch.tensor([0, 2, 4] * 2000)
    drawn = other_classes(targets, 5, torch.Generator().manual_seed(0))
    assert not bool((drawn == targets).any())
    for t in (0, 2, 4):
        counts = torch.bincount(drawn[targets == t], minlength=5).double()
        assert counts[t] == 0 and float(counts.max() / counts[counts > 0].min()) < 1.25


def test_parameter_randomisation_score_reads_the_sanity_table():
    rows = []
    for r in (0, 3):
        for stage in (1, 2, 3):
            for image in (10, 11):
                for measure, base in (("spearman_abs", 0.9), ("spearman", 0.8)):
                    rows.append({"round": r, "weights_remaining": 1.0, "method": "gradcam",
                                 "randomization": "cascading", "stage": stage, "block": f"b{stage}",
                                 "measure": measure, "image_id": image,
                                 "value": base - 0.2 * stage - 0.01 * image - 0.1 * r})
    table = pd.DataFrame(rows)
    last = parameter_randomisation_score(table, "gradcam")
    assert last["value"].tolist() == pytest.approx([0.9 - 0.6 - 0.1, 0.9 - 0.6 - 0.11,
                                                     0.9 - 0.6 - 0.1 - 0.3, 0.9 - 0.6 - 0.11 - 0.3])
    average = parameter_randomisation_score(table, "gradcam", round=3, measure="spearman", stage="average")
    assert average["value"].tolist() == pytest.approx([0.8 - 0.4 - 0.1 - 0.3, 0.8 - 0.4 - 0.11 - 0.3])
    with pytest.raises(UserError, match="no cascading"):
        parameter_randomisation_score(table, "saliency")


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_equals_captum(net, batch, normalize):
    metrics = pytest.importorskip("captum.metrics")
    images, targets, maps = batch
    samples = 6
    g = torch.Generator().manual_seed(5)
    rows = torch.stack([torch.randn((3, 32, 32), generator=g) for _ in range(3 * samples)])

    def perturb(inputs):  # Captum's contract: (I, x - I), the inputs repeat-interleaved image by image
        perturbation = gaussian_perturbation(inputs, rows, 0.2, -2.0, 2.0)
        return perturbation, inputs - perturbation

    expected = metrics.infidelity(net, perturb, images, maps[:, None].expand_as(images), target=targets,
                                  n_perturb_samples=samples, normalize=normalize)
    ours = infidelity(net, images, maps, targets, noise_std=0.2, valid_low=-2.0, valid_high=2.0, samples=samples,
                      normalize=normalize, seed=5, batch_size=4)
    torch.testing.assert_close(ours["value"], expected.double(), rtol=1e-4, atol=1e-10)


def test_gaussian_perturbation_keeps_the_copy_valid():
    images = torch.tensor([[[[0.0, 0.5, 1.0]]]])
    noise = torch.tensor([[[[-10.0, 0.1, 10.0]]]])
    perturbation = gaussian_perturbation(images, noise, 1.0, 0.0, 1.0)
    copy = images - perturbation
    assert float(copy.min()) >= 0.0 and float(copy.max()) <= 1.0
    torch.testing.assert_close(perturbation, torch.tensor([[[[-1.0, 0.1, 1.0]]]]))
