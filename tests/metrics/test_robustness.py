"""Max-sensitivity and the local Lipschitz estimate against Quantus 0.6 and Captum with the same perturbations."""
import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from lottery_xai.attribution import saliency
from lottery_xai.errors import UserError
from lottery_xai.metrics.robustness import local_lipschitz_estimate, max_sensitivity

SAMPLES = 5


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def batch(net):
    g = torch.Generator().manual_seed(1)
    images, targets = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 3, 1])
    return images, targets, saliency(net, images, targets)


def explain(model, images, targets):
    return saliency(model, images, targets)


def quantus_explain(model, inputs, targets, **kwargs):
    return saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()


def documented_rows(draw, seed, n, shape=(3, 32, 32)):
    """The perturbations the metrics document: one draw per (image, copy), image-major, from Generator(seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([draw(shape, g) for _ in range(n * SAMPLES)])


def uniform(radius):
    return lambda shape, g: (2 * torch.rand(shape, generator=g) - 1) * radius


def gaussian(std):
    return lambda shape, g: std * torch.randn(shape, generator=g)


class QuantusFeed:
    """A Quantus perturb_func adding our draws: at step s, image n gets row n * samples + s."""

    def __init__(self, rows, n):
        self.rows, self.step = rows.view(n, SAMPLES, -1).numpy(), 0

    def __call__(self, arr, indices, **kwargs):
        out = arr + self.rows[:, self.step]
        self.step += 1
        return out


def test_max_sensitivity_equals_quantus(net, batch):
    quantus = pytest.importorskip("quantus")
    images, targets, maps = batch
    rows = documented_rows(uniform(0.2), 7, 3)
    metric = quantus.MaxSensitivity(nr_samples=SAMPLES, perturb_func=QuantusFeed(rows, 3), disable_warnings=True)
    expected = metric(model=net, x_batch=images.numpy(), y_batch=targets.numpy(), a_batch=maps.numpy(),
                      explain_func=quantus_explain, device="cpu")
    ours = max_sensitivity(net, images, explain, maps, targets, samples=SAMPLES, seed=7)
    np.testing.assert_allclose(ours["value"].numpy(), expected, rtol=1e-5)
    assert ours["scores"].shape == (3, SAMPLES)


def test_max_sensitivity_equals_captum_sensitivity_max(net, batch):
    metrics = pytest.importorskip("captum.metrics")
    images, targets, _ = batch
    rows = documented_rows(uniform(0.02), 8, 3)

    def captum_explain(inputs, target):
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        with torch.enable_grad():  # Captum calls the explanation under torch.no_grad()
            return (saliency(net, inputs, target),)

    expected = metrics.sensitivity_max(captum_explain, images, perturb_func=lambda x: x + rows,
                                       n_perturb_samples=SAMPLES, target=targets)
    ours = max_sensitivity(net, images, explain, None, targets, radius=0.02, samples=SAMPLES, seed=8, batch_size=4)
    torch.testing.assert_close(ours["value"], expected.double(), rtol=1e-5, atol=1e-9)


def test_local_lipschitz_equals_quantus(net, batch):
    quantus = pytest.importorskip("quantus")
    images, targets, maps = batch
    rows = documented_rows(gaussian(0.1), 9, 3)
    # normalise_axes: per map, as here (Quantus 0.6 otherwise divides by the batch's max)
    metric = quantus.LocalLipschitzEstimate(nr_samples=SAMPLES, perturb_func=QuantusFeed(rows, 3),
                                            normalise_func_kwargs={"normalise_axes": [1, 2, 3]},
                                            disable_warnings=True)
    expected = metric(model=net, x_batch=images.numpy(), y_batch=targets.numpy(), a_batch=maps.numpy(),
                      explain_func=quantus_explain, device="cpu")
    ours = local_lipschitz_estimate(net, images, explain, maps, targets, samples=SAMPLES, seed=9)
    np.testing.assert_allclose(ours["value"].numpy(), expected, rtol=1e-5)


def test_prediction_change_modes_and_the_logits_of_the_attributions_forward(batch):
    images, _, _ = batch
    torch.manual_seed(3)  # a linear model: its predictions move with the noise (a fresh ResNet's barely do)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 5)).eval()
    targets = net(images).argmax(1)
    maps = saliency(net, images, targets)
    keep = max_sensitivity(net, images, explain, maps, targets, radius=3.0, samples=SAMPLES, seed=1)
    nan = max_sensitivity(net, images, explain, maps, targets, radius=3.0, samples=SAMPLES, seed=1,
                          prediction_change="nan")
    skip = max_sensitivity(net, images, explain, maps, targets, radius=3.0, samples=SAMPLES, seed=1,
                           prediction_change="skip")
    changed = nan["prediction_changed"]
    assert bool(changed.any()) and not bool(changed.all())  # radius 3 flips some predictions, not all
    # the flags are the predictions on the copies, computed independently here
    g = torch.Generator().manual_seed(1)
    rows = torch.stack([(2 * torch.rand((3, 32, 32), generator=g) - 1) * 3.0 for _ in range(3 * SAMPLES)])
    copies = images.repeat_interleave(SAMPLES, 0) + rows
    predicted = net(images).argmax(1).repeat_interleave(SAMPLES)
    assert torch.equal(changed.flatten(), net(copies).argmax(1) != predicted)
    for n in range(3):
        if changed[n].any():
            assert torch.isnan(nan["value"][n])
        else:
            assert nan["value"][n] == keep["value"][n]
        kept = keep["scores"][n][~changed[n]]
        assert (torch.isnan(skip["value"][n]) if len(kept) == 0 else skip["value"][n] == kept.max())


def test_seeded_batch_independent_and_errors(net, batch):
    images, targets, maps = batch
    a = local_lipschitz_estimate(net, images, explain, maps, targets, samples=4, seed=3, batch_size=5)
    b = local_lipschitz_estimate(net, images, explain, maps, targets, samples=4, seed=3, batch_size=12)
    torch.testing.assert_close(a["value"], b["value"])
    with pytest.raises(UserError, match="radius"):
        max_sensitivity(net, images, explain, maps, radius=0)
    with pytest.raises(UserError, match="prediction_change"):
        max_sensitivity(net, images, explain, maps, prediction_change="drop")
    with pytest.raises(UserError, match="normalise"):
        local_lipschitz_estimate(net, images, explain, maps, normalise="sum")
