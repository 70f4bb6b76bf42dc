"""The Lottery Ticket paper's networks (lottery_xai.lth_models) against the paper's Figure 2, by hand."""
import math

import pytest
import torch
from torch import nn

from lottery_xai.errors import UserError
from lottery_xai.lth_models import CONV_PLANS, LTH_ARCHITECTURES, ConvNet, LeNet, last_relu


def _weights(model, kind=(nn.Conv2d, nn.Linear)):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, kind))


def test_lenet_300_100_has_the_papers_266k_weights():
    model = LeNet(10, 28)
    assert _weights(model) == 784 * 300 + 300 * 100 + 100 * 10  # 266,200: the paper's "266K"
    assert [model.fc1.in_features, model.fc1.out_features, model.fc2.out_features, model.fc.out_features] == [784, 300, 100, 10]


@pytest.mark.parametrize("name,conv,total", [
    # conv weights 3*64*9 + 64*64*9 (+ 64*128*9 + 128*128*9 (+ 128*256*9 + 256*256*9)); fc 256,256,10 on the flattened map
    ("conv2", 1728 + 36864, 1728 + 36864 + 16 * 16 * 64 * 256 + 256 * 256 + 2560),            # paper: 4.3M, conv 38K
    ("conv4", 1728 + 36864 + 73728 + 147456, 1728 + 36864 + 73728 + 147456 + 8 * 8 * 128 * 256 + 256 * 256 + 2560),  # 2.4M, 260K
    ("conv6", 1728 + 36864 + 73728 + 147456 + 294912 + 589824,
     1728 + 36864 + 73728 + 147456 + 294912 + 589824 + 4 * 4 * 256 * 256 + 256 * 256 + 2560),  # Figure 2
    # prints 1.7M in all; the layers it lists give 2.26M at 32 px (the conv part, 1.1M, agrees)
])
def test_conv_networks_match_figure_2(name, conv, total):
    model = ConvNet(CONV_PLANS[name], 10, 32)
    assert _weights(model, nn.Conv2d) == conv
    assert _weights(model) == total
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == CONV_PLANS[name].count("M") and all(p.kernel_size == 2 for p in pools)
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in model.features if isinstance(m, nn.Conv2d))


def test_glorot_normal_initialisation():
    """Weights ~ N(0, 2 / (fan_in + fan_out)) (Glorot and Bengio 2010, the paper's "Gaussian Glorot")."""
    torch.manual_seed(0)
    lenet = LeNet(10, 28)
    std = math.sqrt(2.0 / (784 + 300))
    w = lenet.fc1.weight.detach()
    assert abs(float(w.std()) / std - 1) < 0.01 and abs(float(w.mean())) < 0.01 * std
    conv = ConvNet(CONV_PLANS["conv6"], 10, 32).features[10].weight.detach()  # 128 -> 256, 3x3
    std = math.sqrt(2.0 / (128 * 9 + 256 * 9))
    assert abs(float(conv.std()) / std - 1) < 0.01


def test_lenet_reads_the_grey_image():
    torch.manual_seed(0)
    model = LeNet(10, 4)
    grey = torch.rand(2, 4, 4)
    x = grey.unsqueeze(1).expand(2, 3, 4, 4)
    h = torch.relu(model.fc1(grey.flatten(1)))
    expected = model.fc(torch.relu(model.fc2(h)))
    assert torch.allclose(model(x), expected)


def test_cam_layer_is_the_last_conv_relu():
    for name, plan in CONV_PLANS.items():
        model = ConvNet(plan, 10, 32)
        layer = model.get_submodule(last_relu(plan))
        assert isinstance(layer, nn.ReLU)
        assert isinstance(model.features[int(last_relu(plan).split(".")[1]) + 1], nn.MaxPool2d)
    assert last_relu(CONV_PLANS["conv6"]) == "features.13"


def test_registry_entries_and_no_pretrained_weights():
    assert set(LTH_ARCHITECTURES) == {"lenet_300_100", "conv2", "conv4", "conv6"}
    build, cam, concept, classifier = LTH_ARCHITECTURES["conv6"]
    model = build(10, False, 32)
    assert classifier == "fc" and model.get_submodule(cam) is not None
    with pytest.raises(UserError, match="pretrained"):
        build(10, True, 32)
