"""Integrated gradients against its references: Captum's IntegratedGradients (same baseline, points and
weights), the IG paper's black baseline through the normalisation, and the completeness gap of a model
whose integral is known in closed form."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from lottery_xai.attribution import attribute, integrated_gradients, integrated_gradients_report
from lottery_xai.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the CUB-style datasets use


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = resnet18(num_classes=5)
    for module in model.modules():  # running statistics away from (0, 1), so eval-mode BatchNorm matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    images = normalised(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return model.eval(), images


# Captum and we compute the same float32 sums in another order (Captum: one batch of every interpolant,
# then a sum over the steps; here: batches of `batch_size` interpolants, accumulated with index_add_).
# Through resnet18's 20 layers each gradient carries ~1e-6 relative rounding (float32 eps 1.2e-7 times the
# depth and the fan-in sums), so the maps agree to 1e-4 relative, with an absolute floor of 1e-5 of the
# largest attribution for the entries near 0 where relative error means nothing.
def assert_float32_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    scale = float(reference.abs().max())
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * scale)


def test_equals_captum_with_the_black_baseline_and_gauss_legendre(resnet):
    captum_attr = pytest.importorskip("captum.attr")
    model, images = resnet
    targets, steps = torch.tensor([3, 1]), 16
    black = normalised(torch.zeros(1, 3, 1, 1)).expand_as(images)  # pixel value 0 through the normalisation
    reference, delta = captum_attr.IntegratedGradients(model).attribute(
        images, baselines=black, target=targets, n_steps=steps, method="gausslegendre", return_convergence_delta=True)
    ours = integrated_gradients(model, images, targets, mean=MEAN, std=STD, steps=steps, batch_size=7,
                                reduce_channels=False)  # default baseline: black
    assert_float32_close(ours, reference)
    _, details = integrated_gradients_report(model, images, targets, mean=MEAN, std=STD, steps=steps)
    with torch.no_grad():
        difference = (model(images) - model(black)).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(details["delta"], delta.float(), rtol=1e-3, atol=1e-5 * float(difference.abs().max()))
    torch.testing.assert_close(details["output_difference"], difference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(details["completeness"], (delta.abs() / difference.abs()).float(), rtol=1e-3, atol=1e-6)


def test_equals_captum_with_the_mean_blur_and_uniform_baselines(resnet):
    captum_attr = pytest.importorskip("captum.attr")
    from torchvision.transforms.functional import gaussian_blur

    model, images = resnet
    targets = torch.tensor([0, 4])
    ig = captum_attr.IntegratedGradients(model)
    captum = lambda base: ig.attribute(images, baselines=base, target=targets, n_steps=8)  # noqa: E731
    mean = integrated_gradients(model, images, targets, baseline="mean", mean=MEAN, std=STD, steps=8,
                                reduce_channels=False)
    assert_float32_close(mean, captum(torch.zeros_like(images)))  # the mean colour is 0 after the normalisation
    blur = integrated_gradients(model, images, targets, baseline="blur", steps=8, reduce_channels=False)
    assert_float32_close(blur, captum(gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])))
    # uniform: `samples` noise images per image, uniform in [0, 1) in pixel space, drawn image-major from the
    # generator, normalised; the attributions are their average.
    samples = 3
    pixels = torch.rand((2 * samples, 3, 32, 32), generator=torch.Generator().manual_seed(5))
    noise = normalised(pixels).view(2, samples, 3, 32, 32)
    expected = torch.stack([captum(noise[:, s]) for s in range(samples)]).mean(dim=0)
    uniform = integrated_gradients(model, images, targets, baseline="uniform", mean=MEAN, std=STD, samples=samples,
                                   steps=8, reduce_channels=False, generator=torch.Generator().manual_seed(5))
    assert_float32_close(uniform, expected)
    again = integrated_gradients(model, images, targets, baseline="uniform", mean=MEAN, std=STD, samples=samples,
                                 steps=8, reduce_channels=False, seed=5)
    torch.testing.assert_close(again, uniform)


def test_probability_output_equals_captum_on_the_softmax(resnet):
    captum_attr = pytest.importorskip("captum.attr")
    model, images = resnet
    targets = torch.tensor([2, 2])
    black = normalised(torch.zeros(1, 3, 1, 1)).expand_as(images)
    softmax_model = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    reference = captum_attr.IntegratedGradients(softmax_model).attribute(images, baselines=black, target=targets,
                                                                          n_steps=8)
    ours = integrated_gradients(model, images, targets, mean=MEAN, std=STD, steps=8, output="probability",
                                reduce_channels=False)
    assert_float32_close(ours, reference)


def test_black_is_pixel_zero_through_the_normalisation_not_the_zero_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    images = normalised(torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    targets = torch.tensor([0, 1])
    weight = model[1].weight.detach()[targets].view(2, 3, 4, 4)
    # A linear model's IG is exactly (x - x') * w; black x' = (0 - mean) / std per channel.
    black = normalised(torch.zeros(1, 3, 1, 1))
    ours = integrated_gradients(model, images, targets, mean=MEAN, std=STD, steps=2, reduce_channels=False)
    torch.testing.assert_close(ours, (images - black) * weight)
    mean = integrated_gradients(model, images, targets, baseline="mean", mean=MEAN, std=STD, steps=2,
                                reduce_channels=False)
    torch.testing.assert_close(mean, images * weight)
    assert not torch.allclose(ours, mean)
    # Without a normalisation the images are pixel values: black is the zero image.
    torch.testing.assert_close(integrated_gradients(model, images, targets, steps=2, reduce_channels=False),
                               images * weight)


def test_attribute_passes_the_normalisation_and_reports_details():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    images = normalised(torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(2)))
    details = {}
    maps = attribute("integrated_gradients", model, images, 1, normalize="none", details=details, mean=MEAN, std=STD,
                     steps=2)
    black = normalised(torch.zeros(1, 3, 1, 1))
    expected = ((images - black) * model[1].weight.detach()[1].view(1, 3, 4, 4)).sum(dim=1)
    torch.testing.assert_close(maps, expected)
    assert set(details) == {"completeness", "delta", "output_difference", "steps"}
    assert details["completeness"].shape == (3,) and float(details["completeness"].max()) < 1e-5  # linear: exact
    assert details["steps"].tolist() == [2, 2, 2]
    gradcam_details = {}
    attribute("saliency", model, images, details=gradcam_details)
    assert gradcam_details == {}


# ---------------------------------------------------------------- completeness with a known integral


K, B = 40.0, 0.5  # F(x) = softplus(K (z - B)) with z = mean(x): a kink at z = B that few points miss


class SoftplusRamp(nn.Module):
    """Logits [softplus(K (mean(x) - B)), 0]: along the path from the zero image to an image of constant
    value c, dF/dalpha = c K sigmoid(K (alpha c - B)), whose integral is F(x) - F(0) in closed form."""

    def forward(self, x):
        z = x.mean(dim=(1, 2, 3))
        return torch.stack([F.softplus(K * (z - B)), torch.zeros_like(z)], dim=1)


def quadrature_gap(points: int, c: float) -> tuple[float, float]:
    """(relative gap, Q) of the points-point Gauss-Legendre rule for int_0^1 dF/dalpha, written out with numpy."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    alphas, weights = (nodes + 1) / 2, weights / 2
    q = c * np.sum(weights * K / (1 + np.exp(-K * (alphas * c - B))))
    exact = np.logaddexp(0, K * (c - B)) - np.logaddexp(0, -K * B)
    return abs(q - exact) / abs(exact), q


@pytest.mark.parametrize(("steps", "max_steps"), [(4, 16), (4, 4)])
def test_images_above_the_tolerance_get_doubled_steps_up_to_the_cap_then_a_warning(steps, max_steps):
    values = [2.8, 1.6, 1.2, 2.4]
    images = torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    tolerance = 0.01
    expected_steps, expected_gap, expected_q = [], [], []
    for c in values:  # the doubling, by hand
        k = steps
        while quadrature_gap(k, c)[0] > tolerance and k < max_steps:
            k = min(2 * k, max_steps)
        expected_steps.append(k)
        expected_gap.append(quadrature_gap(k, c)[0])
        expected_q.append(quadrature_gap(k, c)[1])
    if max_steps == 16:  # the cases the test is built to cover: none, one and two doublings, and the cap
        assert expected_steps == [4, 8, 16, 16] and expected_gap[3] > 1.1 * tolerance
    assert any(gap > tolerance for gap in expected_gap)
    model = SoftplusRamp().eval()
    maps, details = integrated_gradients_report(model, images, 0, steps=steps, tolerance=tolerance,
                                                max_steps=max_steps, batch_size=5)
    assert details["steps"].tolist() == expected_steps
    np.testing.assert_allclose(details["completeness"].numpy(), expected_gap, rtol=1e-3)
    # Each input element gets x_i w_i Q / c with w_i = 1/48: a map of Q / 16 per pixel (3 channels summed).
    np.testing.assert_allclose(maps.numpy(), np.broadcast_to(np.array(expected_q)[:, None, None] / 16, maps.shape),
                               rtol=1e-4)
    above = sum(gap > tolerance for gap in expected_gap)
    message = f"{above} of 4 images have a completeness gap above 0.01 with {max_steps} "
    with pytest.warns(RuntimeWarning, match=message):
        integrated_gradients(model, images, 0, steps=steps, tolerance=tolerance, max_steps=max_steps)


def test_without_a_tolerance_nothing_is_redone_or_warned():
    images = torch.full((1, 3, 4, 4), 2.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, details = integrated_gradients_report(SoftplusRamp().eval(), images, 0, steps=4, max_steps=64)
    assert details["steps"].tolist() == [4]
    np.testing.assert_allclose(details["completeness"].numpy(), [quadrature_gap(4, 2.4)[0]], rtol=1e-3)


def test_ig_user_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    images = torch.rand(2, 3, 4, 4)
    with pytest.raises(UserError, match="mean"):
        integrated_gradients(model, images, baseline="mean")
    with pytest.raises(UserError, match="both mean and std"):
        integrated_gradients(model, images, mean=MEAN)
    with pytest.raises(UserError, match="3"):
        integrated_gradients(model, images, mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(UserError, match="output"):
        integrated_gradients(model, images, output="loss")
    with pytest.raises(UserError, match="samples"):
        integrated_gradients(model, images, baseline="uniform", samples=0)
