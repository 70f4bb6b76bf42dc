"""TCAV's set-up: CAV training and TCAV scoring never share a split; a warning where TCAV cannot
depend on the image (a layer followed only by pooling and a linear layer)."""
from pathlib import Path

import pytest
import torch

from lottery_xai.concepts.tcav import gradients_by_class
from lottery_xai.config import Config, load_config
from lottery_xai.errors import UserError
from lottery_xai.models import build_model, linear_after
from lottery_xai.pipeline.activations import warn_linear_tail


def test_default_splits_are_disjoint():
    cfg = Config()
    assert not set(cfg.cav.splits) & set(cfg.tcav.splits)
    assert set(cfg.cav.splits) | set(cfg.tcav.splits) == {"train", "val", "test"}
    for path in sorted(Path("config").glob("*.yaml")):
        cfg = load_config(path)
        assert not set(cfg.cav.splits) & set(cfg.tcav.splits), path


@pytest.mark.parametrize("cav, tcav, shared", [("[train,val]", "[val,test]", "val"), ("[test]", "[test]", "test")])
def test_overlapping_splits_are_refused(cav, tcav, shared):
    with pytest.raises(UserError, match=f"share {shared}"):
        load_config(None, [f"cav.splits={cav}", f"tcav.splits={tcav}", "activations.splits=[train,val,test]"])


@pytest.mark.parametrize("arch, layer, size, tail", [
    ("small_resnet", "layer4", 32, True),
    ("small_resnet", "layer3", 32, False),
    ("small_resnet", "layer4.conv1", 32, False),  # the rest of layer4's block still follows
    ("resnet18", "layer4", 64, True),
    ("resnet18", "layer3", 64, False),
    ("vgg11_bn", "features.27", 64, False),  # max pooling and ReLUs follow
])
def test_linear_tail_detection(arch, layer, size, tail):
    torch.manual_seed(0)
    model = build_model(arch, 5, False, size)
    assert linear_after(model, layer, size) is tail


@pytest.mark.parametrize("layer, image_independent", [("layer4", True), ("layer3", False)])
def test_the_warning_is_right_about_the_gradients(layer, image_independent):
    """What the warning claims, checked on the gradients TCAV uses: at layer4 every image of a class
    gets the same pooled gradient (the classifier row / spatial size); at layer3 they differ."""
    torch.manual_seed(0)
    model = build_model("small_resnet", 3, False, 32).eval()
    images = torch.randn(6, 3, 32, 32)
    loader = [{"image": images, "label": torch.zeros(6, dtype=torch.long)}]
    grads = gradients_by_class(model, layer, loader, [0], flattening="avg_pool", device=torch.device("cpu"))[0]
    same = torch.allclose(torch.as_tensor(grads), torch.as_tensor(grads[:1]).expand_as(torch.as_tensor(grads)), atol=1e-7)
    assert same is image_independent
    if image_independent:
        expected = model.fc.weight[0].detach() / 1.0  # avg_pool CAVs: the spatial mean of the gradient
        assert torch.allclose(torch.as_tensor(grads[0]) / torch.as_tensor(grads[0]).norm(),
                              expected / expected.norm(), atol=1e-5)
    cfg = load_config(None, ["img_size=32", f"bb_layers_for_concepts=[{layer}]"])
    lines = []
    assert warn_linear_tail(cfg, 3, lines.append) == ([layer] if image_independent else [])
    assert (len(lines) == 1 and "earlier layer" in lines[0]) is image_independent
