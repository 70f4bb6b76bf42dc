"""Backbone registry and layer lookup by dotted name.

``model_arch`` names a backbone of :data:`ARCHITECTURES` (ours and torchvision's) or any timm model as
``timm:<name>`` (:mod:`lottery_xai.timm_backbones`: its head made for the dataset's classes, its CAM and concept
layers by family, ``model_args`` passed to ``timm.create_model``). ``pretrained`` is false, true (torchvision's
ImageNet weights from the local torch cache) or the path of a local weights file for any backbone
(:mod:`lottery_xai.weights`: keys and shapes checked, the head kept fresh when it has another number of classes).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .lth_models import LTH_ARCHITECTURES
from .names import unknown_name
from .timm_backbones import build_timm, family_layers, is_timm, resolve_layer_name
from .weights import load_local_weights, weights_path


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """A ResNet for small images (28-96 px): the torchvision layer names, a tenth of the cost."""

    def __init__(self, num_classes: int, widths=(16, 32, 64, 128), stem_stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=False)
        strides = (1, 2, 2, 2)
        cin = widths[0]
        for i, (w, s) in enumerate(zip(widths, strides), start=1):
            setattr(self, f"layer{i}", BasicBlock(cin, w, s))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class Architecture:
    build: Callable[[int, bool, int], nn.Module]  # (num_classes, pretrained, img_size) -> model
    cam_layer: str        # last conv block: the default Grad-CAM layer
    concept_layer: str    # a sensible default bottleneck for CAVs
    classifier: str       # the final classifier layer (pruned at prune_fc_rate)


def _torchvision(name: str, weights_enum: str, head: str):
    def build(num_classes: int, pretrained: bool, img_size: int) -> nn.Module:
        import torchvision  # lazy: torchvision takes seconds to import, and only its architectures need it

        ctor = getattr(torchvision.models, name)
        model = ctor(weights=_local_weights(weights_enum) if pretrained else None)
        if head == "fc":
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        else:  # VGG: classifier.6 is the last Linear
            model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
        return model

    return build


def _local_weights(enum_name: str):
    """torchvision weights only if already in the local cache: nothing is downloaded at run time."""
    import torchvision  # lazy: as in _torchvision

    weights = getattr(torchvision.models, enum_name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise UserError(
            f"pretrained: true needs '{cached}' (torchvision {enum_name}.DEFAULT), which is not in the local "
            "torch cache; copy the file there or set pretrained: false"
        )
    return weights


ARCHITECTURES: dict[str, Architecture] = {
    "small_resnet": Architecture(
        lambda k, pretrained, size: _small_resnet(k, pretrained, size), "layer4", "layer3", "fc"),
    "resnet18": Architecture(_torchvision("resnet18", "ResNet18_Weights", "fc"), "layer4", "layer3", "fc"),
    "resnet34": Architecture(_torchvision("resnet34", "ResNet34_Weights", "fc"), "layer4", "layer3", "fc"),
    "resnet50": Architecture(_torchvision("resnet50", "ResNet50_Weights", "fc"), "layer4", "layer3", "fc"),
    "resnet101": Architecture(_torchvision("resnet101", "ResNet101_Weights", "fc"), "layer4", "layer3", "fc"),
    "vgg11_bn": Architecture(_torchvision("vgg11_bn", "VGG11_BN_Weights", "classifier"), "features.27", "features.27", "classifier.6"),
    "vgg16_bn": Architecture(_torchvision("vgg16_bn", "VGG16_BN_Weights", "classifier"), "features.42", "features.42", "classifier.6"),
}
# The Lottery Ticket paper's LeNet-300-100 and Conv-2/4/6 (lth_models.py), Glorot-initialised, no pretrained weights
ARCHITECTURES.update({name: Architecture(build, cam, concept, classifier)
                      for name, (build, cam, concept, classifier) in LTH_ARCHITECTURES.items()})


def _small_resnet(num_classes: int, pretrained: bool, img_size: int) -> nn.Module:
    if pretrained:
        raise UserError("model_arch 'small_resnet' has no pretrained weights; set pretrained: false")
    return SmallResNet(num_classes, stem_stride=2 if img_size >= 48 else 1)


def architecture(name: str) -> Architecture:
    """The registered architecture ``name``, or a ``timm:<name>`` backbone's (its layers by family)."""
    if is_timm(name):
        cam_layer, concept_layer, classifier = family_layers(name)
        return Architecture(lambda k, pretrained, size: build_timm(name, k, pretrained, size), cam_layer,
                            concept_layer, classifier)
    if name not in ARCHITECTURES:
        raise unknown_name(f"model_arch '{name}' is unknown (known: {', '.join(ARCHITECTURES)})", name, ARCHITECTURES,
                           n=1, cutoff=0.6)
    return ARCHITECTURES[name]


def build_model(name: str, num_classes: int, pretrained: bool | str = False, img_size: int = 224,
                model_args=()) -> nn.Module:
    """A fresh model; its initial weights come from the global torch RNG (seed it first). ``pretrained``: False,
    True (torchvision's cached ImageNet weights) or a local weights file (any backbone); ``model_args``:
    ``key=value`` strings for ``timm.create_model`` (timm backbones only)."""
    if is_timm(name):
        return build_timm(name, num_classes, weights_path(pretrained) or bool(pretrained), img_size, model_args)
    if model_args:
        raise UserError(f"config key 'model_args' applies to timm:<name> backbones only; model_arch is '{name}': "
                        "empty model_args")
    arch = architecture(name)
    path = weights_path(pretrained)
    if path is not None:
        return load_local_weights(arch.build(num_classes, False, img_size), path, arch.classifier, name)
    return arch.build(num_classes, bool(pretrained), img_size)


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted name (``layer3``, ``features.28``; negative indices count from the end of a
    container, ``blocks.-1.norm1``), with close matches on a typo."""
    try:
        return model.get_submodule(resolve_layer_name(model, name))
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise unknown_name(f"layer '{name}' does not exist in this model", name, names, cutoff=0.6,
                           otherwise=f"its modules include {', '.join(names[:12])}") from None


LINEAR_TAIL = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity, nn.Linear)


@torch.no_grad()
def linear_after(model: nn.Module, layer: str, img_size: int) -> bool:
    """Whether everything the forward pass runs after ``layer`` is average pooling, flattening and
    linear layers (as after a ResNet's last block). There the gradient of a logit with respect to the
    layer's pooled activation is the same for every image, so TCAV scores there are 0 or 1 per CAV.
    Seen from the modules that run (one forward of a blank image, in eval mode); operations written
    as functions in a ``forward`` (``torch.flatten``) are not modules and count as nothing."""
    target = get_layer(model, layer)
    inside = {id(m) for m in target.modules()}
    order: list[nn.Module] = []
    seen_target = []
    hooks = [target.register_forward_hook(lambda *_: seen_target.append(True))]
    for m in model.modules():
        if not list(m.children()) and id(m) not in inside:
            hooks.append(m.register_forward_hook(lambda mod, *_: order.append(mod) if seen_target else None))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return bool(order) and all(isinstance(m, LINEAR_TAIL) for m in order)


def require_eval(model: nn.Module, purpose: str) -> None:
    """UserError when any submodule is in training mode (BatchNorm and dropout would make ``purpose``
    depend on the batch)."""
    if any(module.training for module in model.modules()):
        raise UserError(f"the model is in training mode; call model.eval() before computing {purpose}")
