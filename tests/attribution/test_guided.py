"""Guided backprop and guided Grad-CAM against Captum, and the hooks leave the model as it was."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from lottery_xai.attribution.cam import gradcam
from lottery_xai.attribution.guided import guided_backprop, guided_gradcam, guided_relus
from lottery_xai.errors import UserError
from lottery_xai.models import SmallResNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 3, 1])


def test_guided_backprop_equals_captum(net, batch):
    captum = pytest.importorskip("captum.attr")
    images, targets = batch
    expected = captum.GuidedBackprop(net).attribute(images, target=targets)
    ours = guided_backprop(net, images, targets, channels="none")
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(guided_backprop(net, images, targets), expected.abs().sum(1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_guided_gradcam_equals_captum(net, batch, layer, interpolation):
    captum = pytest.importorskip("captum.attr")
    images, targets = batch
    expected = captum.GuidedGradCam(net, net.get_submodule(layer)).attribute(
        images, target=targets, interpolate_mode=interpolation)
    ours = guided_gradcam(net, images, targets, layer=layer, channels="none", interpolation=interpolation)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7 * float(expected.detach().abs().max()) + 1e-12)


def test_guided_relu_by_hand():
    """y = w2 . relu(W1 x): the guided gradient keeps relu(w2) on the active units, then W1^T."""
    w1 = torch.tensor([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.5]])
    w2 = torch.tensor([[2.0, -3.0, 1.0]])
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)).eval()
    model[1].weight.data.copy_(w1)
    model[3].weight.data.copy_(w2)
    x = torch.tensor([[[[1.0, 0.2]]]])  # W1 x = [0.6, 0.7, -0.9]: units 0 and 1 active
    active = (w1 @ x.flatten()) > 0
    expected = (w1.T @ (w2.flatten().clamp(min=0) * active)).view(1, 1, 1, 2)
    torch.testing.assert_close(guided_backprop(model, x, 0, channels="none"), expected)
    plain = (w1.T @ (w2.flatten() * active)).view(1, 1, 1, 2)
    assert not torch.allclose(expected, plain)  # the plain gradient differs: the guide acted


def input_gradient_of(model, images):
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    return grad


def test_hooks_are_removed_and_weights_untouched(batch):
    images, targets = batch
    model = SmallResNet(5).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before, plain = model(images), input_gradient_of(model, images)
    guided_backprop(model, images, targets)
    guided_gradcam(model, images, targets, layer="layer4")
    with guided_relus(model) as count:
        assert count == 5  # the stem's and every block's ReLU module (shared within a block)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    torch.testing.assert_close(model(images), before)
    torch.testing.assert_close(input_gradient_of(model, images), plain)  # ordinary ReLUs again


def test_hooks_are_removed_on_error(batch):
    images, _ = batch
    model = SmallResNet(5).eval()
    with pytest.raises(UserError):
        guided_backprop(model, images, [0, 1, 9])  # class 9 does not exist
    assert all(not m._forward_hooks for m in model.modules())


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(batch):
    images, targets = batch
    model = SmallResNet(5).eval()
    cam = gradcam(model, images, targets, layer="layer3", upsample=False)
    up = F.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    expected = guided_backprop(model, images, targets, channels="none") * up
    torch.testing.assert_close(guided_gradcam(model, images, targets, layer="layer3", channels="sum"), expected.sum(1))


def test_a_model_without_relu_modules_is_refused(batch):
    images, _ = batch
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 30 * 30, 2)).eval()
    with pytest.raises(UserError, match="nn.ReLU"):
        guided_backprop(model, images)
    with pytest.raises(UserError, match="interpolation"):
        guided_gradcam(SmallResNet(5).eval(), images, interpolation="bicubic")


def test_a_layer_without_a_spatial_output_is_a_one_line_error(batch):
    """Grad-CAM (and guided Grad-CAM with it) of a fully connected layer: a UserError naming the layer and its
    [N, C] output, not an IndexError from the spatial mean (the sanity check leaves such a control out)."""
    images, _ = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    for method in (gradcam, guided_gradcam):
        with pytest.raises(UserError, match=r"layer '1' outputs \[\d+, 8\], not a spatial map"):
            method(model, images, layer="1")
