"""Attribution maps: known answers on hand-built networks, invariants, and the calling convention."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from lottery_xai.attribution import (
    METHODS,
    attribute,
    get_method,
    grad_x_activation,
    grad_x_activation_map,
    gradcam,
    gradcam_pp,
    integrated_gradients,
    normalize_maps,
    occlusion,
    random_map,
    saliency,
    score_cam,
    transformer_methods,
)
from lottery_xai.errors import UserError

# The methods for any network (attention rollout explains transformers only: tests/attribution/test_rollout.py).
CNN_METHODS = sorted(set(METHODS) - transformer_methods())
# Small options so every method runs in milliseconds on the tiny models below.
FAST_OPTIONS = {
    "integrated_gradients": {"steps": 4, "batch_size": 8},
    "occlusion": {"patch": 4, "stride": 4, "batch_size": 16},
    "scorecam": {"batch_size": 16},
    "smoothgrad": {"samples": 3, "batch_size": 8},
    "smoothgrad_sq": {"samples": 3, "batch_size": 8},
    "vargrad": {"samples": 3, "batch_size": 8},
}


class GapLinearNet(nn.Module):
    """x -> 1x1 conv (the explained layer, A = W_conv x) [-> 2x2 avg pool] -> global average -> linear W."""

    def __init__(self, conv_weight: torch.Tensor, fc_weight: torch.Tensor, fc_bias: torch.Tensor, pool: bool):
        super().__init__()
        channels, in_channels = conv_weight.shape
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.conv.weight.data.copy_(conv_weight[:, :, None, None])
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()
        self.fc = nn.Linear(channels, fc_weight.shape[0])
        self.fc.weight.data.copy_(fc_weight)
        self.fc.bias.data.copy_(fc_bias)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).mean(dim=(2, 3)))


def small_cnn(num_classes: int = 3, seed: int = 0) -> nn.Module:
    """A tiny conv net with BatchNorm (non-trivial running statistics), in eval mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def smooth_net(seed: int = 0) -> nn.Module:
    """A small net of smooth functions (tanh, softplus), where integrated gradients must be complete."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Softplus(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


class RegionNet(nn.Module):
    """Class 0's logit is the mean of channel 0 inside one known box; class 1's logit is constant."""

    def __init__(self, height: int, width: int, box: tuple[int, int, int, int]):
        super().__init__()
        top, bottom, left, right = box
        mask = torch.zeros(height, width)
        mask[top:bottom, left:right] = 1
        self.register_buffer("mask", mask / mask.sum())

    def forward(self, x):
        evidence = 10 * (x[:, 0] * self.mask).sum(dim=(1, 2)) - 5
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def region_images(n: int = 2, size: int = 16, box=(3, 7, 9, 13), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.rand(n, 3, size, size, generator=generator)
    top, bottom, left, right = box
    images[:, :, top:bottom, left:right] = 1.0
    return images


def peaks_in_box(maps: torch.Tensor, box) -> torch.Tensor:
    """Whether each map reaches its maximum inside the box [top, bottom) x [left, right) (ties allowed)."""
    top, bottom, left, right = box
    return maps[:, top:bottom, left:right].amax(dim=(1, 2)) == maps.amax(dim=(1, 2))


@pytest.fixture
def known_net():
    generator = torch.Generator().manual_seed(1)
    conv_weight = torch.randn(4, 3, generator=generator)
    fc_weight = torch.randn(3, 4, generator=generator)
    fc_bias = torch.randn(3, generator=generator)
    images = torch.randn(2, 3, 8, 8, generator=generator)
    return conv_weight, fc_weight, fc_bias, images


def paper_gradcam(conv_weight, fc_weight, images, targets, pool: bool):
    """Grad-CAM of GapLinearNet by hand: alpha_k = W[c, k] / (h w), map = ReLU(sum_k alpha_k A_k)."""
    activation = torch.einsum("kc,nchw->nkhw", conv_weight, images)
    if pool:
        n, k, h, w = activation.shape
        activation = activation.reshape(n, k, h // 2, 2, w // 2, 2).mean(dim=(3, 5))
    h, w = activation.shape[-2:]
    alpha = fc_weight[targets] / (h * w)
    return torch.relu(torch.einsum("nk,nkhw->nhw", alpha, activation))


# ---------------------------------------------------------------- Grad-CAM family: known answers


def test_gradcam_equals_the_map_computed_on_paper_at_input_resolution(known_net):
    conv_weight, fc_weight, fc_bias, images = known_net
    model = GapLinearNet(conv_weight, fc_weight, fc_bias, pool=False).eval()
    targets = torch.tensor([2, 0])
    expected = paper_gradcam(conv_weight, fc_weight, images, targets, pool=False)
    maps = gradcam(model, images, targets, layer="conv")
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    # The ReLU is exercised: part of each map is clipped, part is positive.
    assert (maps == 0).any(dim=(1, 2)).all() and (maps > 0).any(dim=(1, 2)).all()


def test_gradcam_at_layer_resolution_and_upsampled(known_net):
    conv_weight, fc_weight, fc_bias, images = known_net
    model = GapLinearNet(conv_weight, fc_weight, fc_bias, pool=True).eval()
    targets = torch.tensor([1, 1])
    expected = paper_gradcam(conv_weight, fc_weight, images, targets, pool=True)
    coarse = gradcam(model, images, targets, layer="pool", upsample=False)
    assert coarse.shape == (2, 4, 4)
    torch.testing.assert_close(coarse, expected, rtol=1e-5, atol=1e-6)
    fine = gradcam(model, images, targets, layer="pool")
    expected_fine = F.interpolate(expected[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(fine, expected_fine, rtol=1e-5, atol=1e-6)


def test_gradcam_pp_equals_its_formula_on_the_known_network(known_net):
    conv_weight, fc_weight, fc_bias, images = known_net
    model = GapLinearNet(conv_weight, fc_weight, fc_bias, pool=False).eval()
    targets = torch.tensor([0, 2])
    activation = torch.einsum("kc,nchw->nkhw", conv_weight, images)
    h, w = activation.shape[-2:]
    g = fc_weight[targets] / (h * w)  # constant over space: dz_c/dA_k = W[c, k] / (h w)
    alpha = g**2 / (2 * g**2 + activation.sum(dim=(2, 3)) * g**3)
    weights = h * w * alpha * torch.relu(g)  # sum over the h w positions of a constant
    expected = torch.relu(torch.einsum("nk,nkhw->nhw", weights, activation))
    torch.testing.assert_close(gradcam_pp(model, images, targets, layer="conv"), expected, rtol=1e-4, atol=1e-6)


def test_grad_x_activation_equals_gradcam_when_the_gradient_is_constant(known_net):
    conv_weight, fc_weight, fc_bias, images = known_net
    model = GapLinearNet(conv_weight, fc_weight, fc_bias, pool=False).eval()
    targets = torch.tensor([1, 2])
    torch.testing.assert_close(
        grad_x_activation(model, images, targets, layer="conv"), gradcam(model, images, targets, layer="conv")
    )


def test_score_cam_equals_the_authors_per_channel_loop():
    model = small_cnn()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    targets = torch.tensor([1, 2])
    store = []
    handle = model[4].register_forward_hook(lambda module, inputs, output: store.append(output.detach().clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    activation = store[0]
    expected = torch.zeros(2, 4, 4)
    for i in range(2):  # the reference recipe, one image and one channel at a time
        for k in range(activation.shape[1]):
            mask = F.interpolate(activation[i, k][None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
            if mask.max() == mask.min():
                continue
            mask = (mask - mask.min()) / (mask.max() - mask.min())
            with torch.no_grad():
                prob = F.softmax(model(images[i : i + 1] * mask), dim=1)[0, targets[i]]
            expected[i] += prob * activation[i, k]
    expected = torch.relu(expected)
    torch.testing.assert_close(score_cam(model, images, targets, layer="4", upsample=False, batch_size=5), expected)


def resnet_reference_gradcam(model, images, targets):
    """Grad-CAM at layer4 of a torchvision ResNet by splitting the network by hand."""
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
        features = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    features.requires_grad_(True)
    logits = model.fc(torch.flatten(model.avgpool(features), 1))
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), features)
    cam = torch.relu((grad.mean(dim=(2, 3))[:, :, None, None] * features).sum(dim=1))
    return F.interpolate(cam[:, None].detach(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def test_gradcam_on_resnet_matches_a_hand_split_network_and_survives_inplace_ops():
    torch.manual_seed(0)
    model = resnet18(num_classes=5).eval()
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([3, 1])
    torch.testing.assert_close(
        gradcam(model, images, targets, layer="layer4"), resnet_reference_gradcam(model, images, targets)
    )
    # layer4.1.bn2 is followed by the in-place `out += identity` and ReLU(inplace=True).
    block = model.layer4[1]
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(images))))
        x = model.layer4[0](model.layer3(model.layer2(model.layer1(stem))))
        hidden = block.conv2(block.relu(block.bn1(block.conv1(x))))
    activation = block.bn2(hidden).requires_grad_(True)
    logits = model.fc(torch.flatten(model.avgpool(torch.relu(activation + x)), 1))
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), activation)
    expected = torch.relu((grad.mean(dim=(2, 3))[:, :, None, None] * activation).sum(dim=1)).detach()
    torch.testing.assert_close(gradcam(model, images, targets, layer="layer4.1.bn2", upsample=False), expected)


def test_default_layer_is_the_last_spatial_module():
    torch.manual_seed(0)
    model = resnet18(num_classes=4).eval()
    images = torch.randn(1, 3, 64, 64)  # layer4 is 2 x 2 here (at 32 px it would be 1 x 1 and skipped)
    torch.testing.assert_close(gradcam(model, images), gradcam(model, images, layer="layer4"))
    cnn = small_cnn()
    images = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(gradcam(cnn, images), gradcam(cnn, images, layer="5"))


# ---------------------------------------------------------------- batching and targets


@pytest.mark.parametrize("method", [gradcam, gradcam_pp, grad_x_activation, score_cam, saliency])
def test_a_batch_gives_the_same_maps_as_each_image_alone(method):
    model = small_cnn()
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 2, 1, 2])
    layer = {"layer": "4"} if method is not saliency else {}
    batched = method(model, images, targets, **layer)
    alone = torch.cat([method(model, images[i : i + 1], targets[i : i + 1], **layer) for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(name for name in CNN_METHODS if not METHODS[name].class_agnostic))
def test_default_target_is_the_predicted_class_and_the_target_matters(name):
    method = get_method(name)
    model = small_cnn()
    images = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    options = {**FAST_OPTIONS.get(name, {}), "layer": "4"}
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    torch.testing.assert_close(method(model, images, None, **options), method(model, images, predicted, **options))
    first = method(model, images, torch.zeros(3, dtype=torch.long), **options)
    second = method(model, images, torch.ones(3, dtype=torch.long), **options)
    assert not torch.allclose(first, second)


def test_an_integer_target_applies_to_every_image():
    model = small_cnn()
    images = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(gradcam(model, images, 1, layer="4"), gradcam(model, images, [1, 1], layer="4"))


# ---------------------------------------------------------------- gradients: known answers


def test_saliency_of_a_linear_model_is_the_max_absolute_weight_over_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4)).eval()
    images = torch.randn(2, 3, 5, 5)
    targets = torch.tensor([3, 0])
    expected = model[1].weight.detach()[targets].view(2, 3, 5, 5).abs().amax(dim=1)
    torch.testing.assert_close(saliency(model, images, targets), expected)


@pytest.mark.parametrize(("rule", "steps"), [("gauss_legendre", 32), ("trapezoid", 128)])
def test_integrated_gradients_is_complete(rule, steps):
    model = smooth_net()
    images = 2 * torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([0, 1, 2])
    attributions = integrated_gradients(model, images, targets, steps=steps, rule=rule, batch_size=40)
    with torch.no_grad():
        gap = (model(images) - model(torch.zeros_like(images))).gather(1, targets[:, None])[:, 0]
    assert (gap.abs() > 1e-3).all()  # a meaningful difference to recover
    assert torch.all((attributions.sum(dim=(1, 2)) - gap).abs() <= 0.01 * gap.abs())


def test_integrated_gradients_with_a_tensor_baseline_is_complete_and_independent_of_batch_size():
    model = smooth_net(seed=1)
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    baseline = torch.full((3, 1, 1), 0.5)
    targets = torch.tensor([2, 1])
    per_channel = integrated_gradients(model, images, targets, baseline=baseline, batch_size=7, reduce_channels=False)
    assert per_channel.shape == images.shape
    summed = integrated_gradients(model, images, targets, baseline=baseline, batch_size=64)
    torch.testing.assert_close(per_channel.sum(dim=1), summed, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        gap = (model(images) - model(baseline.expand_as(images))).gather(1, targets[:, None])[:, 0]
    assert torch.all((summed.sum(dim=(1, 2)) - gap).abs() <= 0.01 * gap.abs())
    blurred = integrated_gradients(model, images, targets, baseline="blur", steps=8)
    assert blurred.shape == (2, 8, 8) and torch.isfinite(blurred).all()


# ---------------------------------------------------------------- occlusion and random


def test_occlusion_peaks_in_the_region_that_holds_the_evidence():
    box = (3, 7, 9, 13)
    model = RegionNet(16, 16, box).eval()
    images = region_images(box=box)
    maps = occlusion(model, images, torch.tensor([0, 0]))  # default patch: max(2, round(16 * 16 / 224)) = 2
    assert peaks_in_box(maps, box).all()
    assert maps.shape == (2, 16, 16) and (maps > 0).any()
    # Windows that never touch the box change nothing: the pixels they alone cover get exactly 0.
    assert torch.all(maps[:, 10:, :6] == 0)


def test_occlusion_with_one_window_is_the_probability_drop_everywhere():
    box = (3, 7, 9, 13)
    model = RegionNet(16, 16, box).eval()
    images = region_images(box=box)
    maps = occlusion(model, images, torch.tensor([0, 1]), patch=16)
    filled = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    with torch.no_grad():
        drop = (F.softmax(model(images), 1) - F.softmax(model(filled), 1))[[0, 1], [0, 1]]
    torch.testing.assert_close(maps, drop[:, None, None].expand(2, 16, 16))


def test_occlusion_random_placement_is_seeded_filtered_and_peaks_in_the_region():
    box = (3, 7, 9, 13)
    model = RegionNet(16, 16, box).eval()
    images = region_images(box=box)
    options = {"placement": "random", "n_patches": 60, "patch": 3}
    first = occlusion(model, images, None, generator=torch.Generator().manual_seed(7), **options)
    again = occlusion(model, images, None, generator=torch.Generator().manual_seed(7), **options)
    other = occlusion(model, images, None, seed=8, **options)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert peaks_in_box(first, box).all()
    # Only high z-score windows are kept, and they all touch the box: far corners stay 0.
    assert torch.all(first[:, 12:, :5] == 0)
    unfiltered = occlusion(model, images, None, seed=8, z_threshold=-1e9, **options)
    assert (unfiltered != 0).sum() > (other != 0).sum()


def test_occlusion_batch_size_does_not_change_the_maps():
    model = small_cnn()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    small = occlusion(model, images, patch=3, stride=2, batch_size=5)
    torch.testing.assert_close(small, occlusion(model, images, patch=3, stride=2, batch_size=100))


def test_random_maps_are_deterministic_given_the_seed_and_differ_across_seeds():
    model = small_cnn()
    images = torch.randn(2, 3, 8, 8)
    first = random_map(model, images, seed=3)
    torch.testing.assert_close(first, random_map(model, images, seed=3))
    torch.testing.assert_close(first, random_map(model, images, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(first, random_map(model, images, seed=4))
    assert first.shape == (2, 8, 8) and first.min() >= 0 and first.max() < 1


# ---------------------------------------------------------------- the calling convention, for every method


@pytest.mark.parametrize("name", CNN_METHODS)
def test_every_method_returns_float_maps_on_the_input_device_and_leaves_the_model_untouched(name):
    model = small_cnn()
    model[0].weight.requires_grad_(False)  # mixed flags must be restored exactly as they were
    flags = [parameter.requires_grad for parameter in model.parameters()]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    images = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    maps = get_method(name)(model, images, None, layer="4", **FAST_OPTIONS.get(name, {}))
    assert maps.shape == (3, 8, 8)
    assert maps.dtype == torch.float32 and maps.device == images.device
    assert torch.isfinite(maps).all()
    assert all(not module._forward_hooks and not module._backward_hooks for module in model.modules())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert [parameter.requires_grad for parameter in model.parameters()] == flags
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert not model.training


def test_layer_methods_are_the_ones_whose_layer_matters():
    model = small_cnn()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for name in CNN_METHODS:
        options = FAST_OPTIONS.get(name, {})
        early = get_method(name)(model, images, layer="2", **options)
        late = get_method(name)(model, images, layer="5", **options)
        assert torch.allclose(early, late) == (not METHODS[name].takes_layer), name


def test_hooks_are_removed_even_when_the_forward_fails():
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            self.conv(x)
            raise RuntimeError("boom")

    model = Failing().eval()
    with pytest.raises(RuntimeError, match="boom"):
        gradcam(model, torch.randn(1, 3, 4, 4), layer="conv")
    assert not model.conv._forward_hooks
    assert torch.is_grad_enabled()


def test_layer_gradients_do_not_compute_parameter_gradients():
    model = small_cnn()
    assert all(parameter.requires_grad for parameter in model.parameters())
    images = torch.randn(2, 3, 8, 8)
    for method in (gradcam, gradcam_pp, grad_x_activation, saliency):
        method(model, images, layer="4")
    integrated_gradients(model, images, steps=3)
    assert all(parameter.grad is None for parameter in model.parameters())
    # Even next to a real training graph the explanation leaves .grad alone.
    loss = model(images).sum()
    gradcam(model, images, layer="4")
    assert all(parameter.grad is None for parameter in model.parameters())
    loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_the_graph_spans_only_the_layer_to_the_logits():
    class GradModeProbe(nn.Module):
        """Records whether autograd is recording when it runs."""

        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(torch.is_grad_enabled())
            return x

    below, above = GradModeProbe(), GradModeProbe()
    model = nn.Sequential(below, nn.Conv2d(3, 4, 3), above, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    gradcam(model, torch.randn(2, 3, 6, 6), layer="1")
    assert below.seen == [False] and above.seen == [True]
    assert torch.is_grad_enabled()


def test_grad_x_activation_map_is_differentiable_into_every_parameter():
    model = small_cnn().train()  # the CGC loss runs during training
    images = torch.randn(4, 3, 8, 8)
    maps, logits = grad_x_activation_map(model, "4", images, torch.tensor([0, 1, 2, 0]))
    assert maps.shape == (4, 4, 4) and logits.shape == (4, 3)
    assert all(parameter.grad is None for parameter in model.parameters())
    grads = torch.autograd.grad(maps.sum(), [model[0].weight, model[3].weight, model[8].weight], allow_unused=True)
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads)
    model.eval()
    expected = grad_x_activation(model, images, torch.tensor([0, 1, 2, 0]), layer="4", upsample=False)
    maps_eval, _ = grad_x_activation_map(model, "4", images, torch.tensor([0, 1, 2, 0]))
    torch.testing.assert_close(maps_eval.detach(), expected)


# ---------------------------------------------------------------- registry, options, normalisation, errors


def test_attribute_normalises_and_rejects_unknown_options():
    model = small_cnn()
    images = torch.randn(2, 3, 8, 8)
    raw = gradcam(model, images, layer="4")
    torch.testing.assert_close(attribute("gradcam", model, images, layer="4"), normalize_maps(raw, "max"))
    torch.testing.assert_close(attribute("gradcam", model, images, layer="4", normalize="none"), raw)
    with pytest.raises(UserError, match="'upsample'"):
        attribute("gradcam", model, images, layer="4", upsampel=False)
    with pytest.raises(UserError, match="no option"):
        attribute("saliency", model, images, steps=3)
    with pytest.raises(UserError, match="normalize"):
        attribute("saliency", model, images, normalize="l2")


def test_normalize_maps():
    maps = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[-3.0, -1.0], [-2.0, -1.0]]])
    by_max = normalize_maps(maps, "max")
    torch.testing.assert_close(by_max[0], maps[0] / 4)
    assert torch.equal(by_max[1], torch.zeros(2, 2))
    torch.testing.assert_close(by_max[2], maps[2] / 3)  # no positive value: scaled by max |m|, order kept
    by_minmax = normalize_maps(maps, "minmax")
    torch.testing.assert_close(by_minmax[2], torch.tensor([[0.0, 1.0], [0.5, 1.0]]))
    assert torch.equal(by_minmax[1], torch.zeros(2, 2))
    assert normalize_maps(maps, "none") is maps
    with pytest.raises(UserError):
        normalize_maps(maps, "sum")


def test_user_errors_are_clear():
    model = small_cnn()
    images = torch.randn(2, 3, 8, 8)
    with pytest.raises(UserError, match="gradcam"):
        get_method("gradcm")
    with pytest.raises(UserError, match="layer4"):
        gradcam(resnet18(num_classes=3).eval(), torch.randn(1, 3, 32, 32), layer="layer_4")
    with pytest.raises(UserError, match="targets"):
        gradcam(model, images, torch.tensor([0, 3]), layer="4")
    with pytest.raises(UserError, match="one class index per image"):
        saliency(model, images, torch.tensor([0]))
    with pytest.raises(UserError, match="more than once"):
        gradcam(resnet18(num_classes=3).eval(), torch.randn(1, 3, 32, 32), layer="layer4.1.relu")
    with pytest.raises(UserError, match="eval"):
        gradcam(small_cnn().train(), images, layer="4")
    with pytest.raises(UserError, match="patch"):
        occlusion(model, images, patch=9)
    with pytest.raises(UserError, match="images"):
        gradcam(model, images[0], layer="4")
    with pytest.raises(UserError, match="rule"):
        integrated_gradients(model, images, rule="simpson")
    with pytest.raises(UserError, match="baseline"):
        integrated_gradients(model, images, baseline="noise")
