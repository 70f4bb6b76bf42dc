"""The networks of the Lottery Ticket paper: LeNet-300-100 and Conv-2/4/6.

Frankle and Carbin 2019, "The lottery ticket hypothesis: finding sparse, trainable neural networks"
(ICLR), Figure 2 and appendices F-H:

=========  ==========================================  ===========  ==========  ============  ======================
network    convolutions (3x3, 'same', ReLU)            fc layers    weights     iter / batch  optimiser, pruning rate
=========  ==========================================  ===========  ==========  ============  ======================
LeNet      -                                           300,100,10   266K        50K / 60      Adam 1.2e-3; fc 20 %
Conv-2     64,64,pool                                  256,256,10   4.3M        20K / 60      Adam 2e-4; conv 10 %, fc 20 %
Conv-4     64,64,pool,128,128,pool                     256,256,10   2.4M        25K / 60      Adam 3e-4; conv 10 %, fc 20 %
Conv-6     64,64,pool,128,128,pool,256,256,pool        256,256,10   1.7M        30K / 60      Adam 3e-4; conv 15 %, fc 20 %
=========  ==========================================  ===========  ==========  ============  ======================

The output layer is pruned at half the fc rate (10 %). The weight counts are the layers' (tests/test_lth_models.py
counts them): 266,200, 4.30M, 2.43M and, for Conv-6, 2.26M where Figure 2 prints 1.7M (its conv part, 1.14M,
agrees with the table's 1.1M; 4x4x256 features into a 256-unit layer alone are 1.05M). Pools are 2x2 max-pools. Initialisation:
"Gaussian Glorot" (Glorot and Bengio 2010; :func:`torch.nn.init.xavier_normal_`) for every conv and
linear weight. The reference PyTorch code, facebookresearch/open_lth, has LeNet
(``models/mnist_lenet.py``: ``nn.Linear`` layers ``fc_layers`` then ``fc``, ReLU, no dropout) but no
Conv-2/4/6 and no Glorot initialiser (its initialisers are kaiming_normal, its LeNet default,
kaiming_uniform, orthogonal and binary, applied to conv and linear weights only, biases left at
PyTorch's default); here the weights are Glorot normal as the paper says and biases keep PyTorch's
default as open_lth does (the paper does not say).

Inputs are the pipeline's 3-channel images. LeNet averages the channels (MNIST's three channels are
identical copies, so that is the grey image exactly) and flattens: ``img_size**2`` inputs, 784 at 28 px
as the paper. The conv networks take the 3 colour channels of CIFAR-10 (32 px: 4x4x256 features
before Conv-6's first fc layer). The output layer is named ``fc`` (open_lth's name).
"""
from __future__ import annotations

from torch import nn

from .errors import UserError

CONV_PLANS = {  # the paper's conv plans: channels, 'M' = 2x2 max-pool
    "conv2": (64, 64, "M"),
    "conv4": (64, 64, "M", 128, 128, "M"),
    "conv6": (64, 64, "M", 128, 128, "M", 256, 256, "M"),
}
FC_PLAN = (256, 256)  # the hidden fc layers of Conv-2/4/6
LENET_PLAN = (300, 100)


def glorot_normal_(model: nn.Module) -> nn.Module:
    """Glorot (Xavier) normal weights for every conv and linear layer (the paper's "Gaussian Glorot");
    biases keep PyTorch's default (open_lth's initialisers touch weights only)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(module.weight)
    return model


class LeNet(nn.Module):
    """LeNet-300-100 (``plan`` = the hidden widths): fully connected, ReLU, on the grey image."""

    def __init__(self, num_classes: int = 10, img_size: int = 28, plan=LENET_PLAN):
        super().__init__()
        widths = [int(img_size) ** 2, *plan]
        for i, (cin, cout) in enumerate(zip(widths, widths[1:]), start=1):
            setattr(self, f"fc{i}", nn.Linear(cin, cout))
        self.hidden = len(plan)
        self.relu = nn.ReLU(inplace=False)
        self.fc = nn.Linear(widths[-1], num_classes)
        glorot_normal_(self)

    def forward(self, x):
        x = x.mean(1).flatten(1)  # 3 identical channels -> the grey image, flattened
        for i in range(1, self.hidden + 1):
            x = self.relu(getattr(self, f"fc{i}")(x))
        return self.fc(x)


class ConvNet(nn.Module):
    """Conv-2/4/6: 3x3 'same' convolutions with ReLU and 2x2 max-pools (``plan``), then fc 256, 256, classes."""

    def __init__(self, plan, num_classes: int = 10, img_size: int = 32, in_channels: int = 3, fc_plan=FC_PLAN):
        super().__init__()
        layers, channels, size = [], in_channels, int(img_size)
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
                channels = item
        if size < 1:
            raise UserError(f"img_size {img_size} is too small for {plan.count('M')} 2x2 max-pools")
        self.features = nn.Sequential(*layers)
        widths = [channels * size * size, *fc_plan]
        for i, (cin, cout) in enumerate(zip(widths, widths[1:]), start=1):
            setattr(self, f"fc{i}", nn.Linear(cin, cout))
        self.hidden = len(fc_plan)
        self.relu = nn.ReLU(inplace=False)
        self.fc = nn.Linear(widths[-1], num_classes)
        glorot_normal_(self)

    def forward(self, x):
        x = self.features(x).flatten(1)
        for i in range(1, self.hidden + 1):
            x = self.relu(getattr(self, f"fc{i}")(x))
        return self.fc(x)


def last_relu(plan) -> str:
    """The name of the last conv block's ReLU in ``ConvNet.features`` (the CAM and concept layer)."""
    index, last = 0, None
    for item in plan:
        if item == "M":
            index += 1
        else:
            last = index + 1
            index += 2
    return f"features.{last}"


def _no_pretrained(name: str, pretrained) -> None:
    if pretrained:
        raise UserError(f"model_arch '{name}' has no pretrained weights (the Lottery Ticket paper trains it from "
                        "its Glorot initialisation); set pretrained: false")


def build_lenet(num_classes: int, pretrained, img_size: int) -> nn.Module:
    _no_pretrained("lenet_300_100", pretrained)
    return LeNet(num_classes, img_size)


def conv_builder(name: str):
    def build(num_classes: int, pretrained, img_size: int) -> nn.Module:
        _no_pretrained(name, pretrained)
        return ConvNet(CONV_PLANS[name], num_classes, img_size)

    return build


# (builder, cam_layer, concept_layer, classifier) per model_arch name; models.ARCHITECTURES registers them.
LTH_ARCHITECTURES = {
    "lenet_300_100": (build_lenet, "fc2", "fc2", "fc"),
    **{name: (conv_builder(name), last_relu(plan), last_relu(plan), "fc") for name, plan in CONV_PLANS.items()},
}
