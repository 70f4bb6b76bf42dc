"""The noise tunnel (SmoothGrad, SmoothGrad-squared, VarGrad) against Captum's NoiseTunnel with the same noise."""
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from lottery_xai.attribution.noise_tunnel import (
    gradient_x_input,
    input_gradient,
    noise_sigma,
    noise_tunnel,
    smoothgrad,
    smoothgrad_sq,
    standard_normal_rows,
    vargrad,
)
from lottery_xai.errors import UserError


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 3, 1])


def documented_noise(rows, shape, seed):
    """The draws `noise_tunnel` documents: one torch.randn(shape) per copy, image-major, from Generator(seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(shape, generator=g) for _ in range(rows)])


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_equals_captum_noise_tunnel_with_the_same_noise(net, batch, kind, monkeypatch):
    captum = pytest.importorskip("captum.attr")
    images, targets = batch
    samples, stdev, seed = 6, 0.3, 11
    noise = documented_noise(len(images) * samples, images.shape[1:], seed)

    def same_noise(input, stdev, k):  # Captum's _add_noise_to_input with our draws instead of torch.normal
        return input.repeat_interleave(k, dim=0) + stdev * noise

    monkeypatch.setattr(captum.NoiseTunnel, "_add_noise_to_input", staticmethod(same_noise))
    expected = captum.NoiseTunnel(captum.Saliency(net)).attribute(
        images, nt_type=kind, nt_samples=samples, stdevs=stdev, target=targets, abs=False)
    ours = noise_tunnel(net, images, targets, kind=kind, samples=samples, noise_level=stdev, noise_range="absolute",
                        channels="none", seed=seed, batch_size=4)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_the_image_range_noise_is_smoothgrads_per_image_sigma(net, batch, monkeypatch):
    """'image': sigma = level x (max - min) of each image (PAIR's GetSmoothedMask): Captum called once per image
    with that stdev and the same draws gives the same maps."""
    captum = pytest.importorskip("captum.attr")
    images, targets = batch
    images = images * torch.tensor([1.0, 2.0, 0.5])[:, None, None, None]  # three different ranges
    samples, level, seed = 4, 0.15, 3
    noise = documented_noise(len(images) * samples, images.shape[1:], seed)
    ours = noise_tunnel(net, images, targets, samples=samples, noise_level=level, channels="none", seed=seed)
    for i in range(len(images)):
        sigma = level * float(images[i].max() - images[i].min())
        rows = noise[i * samples:(i + 1) * samples]
        def same_noise(input, stdev, k, rows=rows):
            return input.repeat_interleave(k, 0) + stdev * rows

        monkeypatch.setattr(captum.NoiseTunnel, "_add_noise_to_input", staticmethod(same_noise))
        expected = captum.NoiseTunnel(captum.Saliency(net)).attribute(
            images[i:i + 1], nt_type="smoothgrad", nt_samples=samples, stdevs=sigma, target=int(targets[i]), abs=False)
        torch.testing.assert_close(ours[i:i + 1], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_sigma_of_each_noise_range():
    images = torch.zeros(2, 3, 4, 4)
    images[0, 1, 0, 0], images[0, 2, 1, 1] = 2.0, -1.0  # range 3
    images[1, 0, 0, 0] = 0.5  # range 0.5
    assert noise_sigma(images, 0.2, "image").flatten().tolist() == pytest.approx([0.6, 0.1])
    std = [0.229, 0.224, 0.225]
    assert noise_sigma(images, 0.2, "valid", std=std).flatten().tolist() == pytest.approx([0.2 / s for s in std])
    assert noise_sigma(images, 0.2, "valid").flatten().tolist() == pytest.approx([0.2])
    assert noise_sigma(images, 0.3, "absolute").flatten().tolist() == pytest.approx([0.3])
    with pytest.raises(UserError, match="noise_range"):
        noise_sigma(images, 0.2, "pixels")


def test_defaults_reduce_channels_as_documented(net, batch):
    images, targets = batch
    common = {"samples": 3, "seed": 2}
    per_channel = {kind: noise_tunnel(net, images, targets, kind=kind, channels="none", **common)
                   for kind in ("smoothgrad", "smoothgrad_sq", "vargrad")}
    torch.testing.assert_close(smoothgrad(net, images, targets, **common), per_channel["smoothgrad"].abs().sum(1))
    torch.testing.assert_close(smoothgrad_sq(net, images, targets, **common), per_channel["smoothgrad_sq"].sum(1))
    torch.testing.assert_close(vargrad(net, images, targets, **common), per_channel["vargrad"].sum(1))
    # VarGrad is the variance: E[a^2] - E[a]^2 >= 0 up to rounding; SG-SQ >= SG^2
    assert float(per_channel["vargrad"].min()) > -1e-9
    assert bool((per_channel["smoothgrad_sq"] + 1e-12 >= per_channel["smoothgrad"] ** 2).all())


def test_seeded_and_independent_of_the_batch_size(net, batch):
    images, targets = batch
    a = smoothgrad(net, images, targets, samples=5, seed=4, batch_size=2)
    b = smoothgrad(net, images, targets, samples=5, seed=4, batch_size=15)
    c = smoothgrad(net, images, targets, samples=5, seed=5, batch_size=15)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(a, c)
    g = torch.Generator().manual_seed(4)
    torch.testing.assert_close(smoothgrad(net, images, targets, samples=5, generator=g), b, rtol=1e-5, atol=1e-8)


def test_no_noise_gives_the_base_method(net, batch):
    images, targets = batch
    grad = input_gradient(net, images, targets)
    torch.testing.assert_close(noise_tunnel(net, images, targets, samples=3, noise_level=0.0, channels="none"), grad)
    torch.testing.assert_close(
        noise_tunnel(net, images, targets, samples=2, noise_level=0.0, channels="none", base="gradient_x_input"),
        gradient_x_input(net, images, targets))
    # a variance of identical copies is 0
    assert float(noise_tunnel(net, images, targets, kind="vargrad", samples=3, noise_level=0.0).abs().max()) < 1e-12


def test_targets_default_to_the_clean_prediction(net, batch):
    images, _ = batch
    predicted = net(images).argmax(1)
    torch.testing.assert_close(smoothgrad(net, images, None, samples=2), smoothgrad(net, images, predicted, samples=2))


def test_any_base_method_and_options(net, batch):
    images, targets = batch
    calls = []

    def base(model, x, t, *, layer=None, scale=1.0):
        calls.append((len(x), layer))
        return scale * torch.ones(len(x), 1, *x.shape[-2:])

    out = noise_tunnel(net, images, targets, base=base, base_options={"scale": 2.0}, samples=4, batch_size=5,
                       layer="layer3", channels="none")
    torch.testing.assert_close(out, torch.full((3, 1, 32, 32), 2.0))
    assert [n for n, _ in calls] == [5, 5, 2] and {layer for _, layer in calls} == {"layer3"}
    with pytest.raises(UserError, match="noise tunnel base"):
        noise_tunnel(net, images, targets, base="gradient_times_input")


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 28, 28), (3, 5, 5), (1, 1, 8)])
def test_noise_rows_are_one_randn_call_per_row(shape):
    """The documented draws, whether they come from one call (row sizes that are multiples of 16) or one per row."""
    torch.testing.assert_close(standard_normal_rows(7, shape, torch.Generator().manual_seed(3), "cpu"),
                               documented_noise(7, shape, 3), rtol=0, atol=0)


def test_user_errors(net, batch):
    images, targets = batch
    with pytest.raises(UserError, match="kind"):
        noise_tunnel(net, images, targets, kind="smoothgrad2")
    with pytest.raises(UserError, match="samples"):
        noise_tunnel(net, images, targets, samples=0)
    with pytest.raises(UserError, match="channels"):
        noise_tunnel(net, images, targets, channels="mean")
    for base in ("gradient", "gradient_x_input", "guided_backprop", "integrated_gradients"):
        with pytest.raises(UserError, match=r"targets must lie in \[0, 4\]"):  # given targets: no clean forward
            noise_tunnel(net, images, [0, 1, 5], base=base, samples=2)
    with pytest.raises(UserError, match="one class index per image"):
        noise_tunnel(net, images, [0, 1], samples=2)
    train_mode = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2)).train()
    with pytest.raises(UserError, match="training mode"):
        smoothgrad(train_mode, images, None)
