"""Layer-wise relevance propagation (LRP) through zennit.

LRP (Bach et al. 2015, "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
Relevance Propagation"; Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview")
redistributes the target's output layer by layer onto the input, each layer by a rule:

- LRP-epsilon: R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j, z_j = sum_i x_i w_ij + b_j;
- LRP-alpha-beta: R_i = sum_j (alpha (x_i w_ij)^+ / z_j^+ - beta (x_i w_ij)^- / z_j^-) R_j, where z_j^+-
  sum the positive (negative) contributions and the positive (negative) part of the bias; alpha = 1,
  beta = 0 is the z+ rule;
- flat: R_i = sum_j R_j / (the number of inputs of j), for the input layer (Kohlbrenner et al. 2020).

zennit (Anders et al., chr5tphr/zennit 0.5) implements the rules as hooks; its composites assign them by
layer type: ``EpsilonPlus`` (z+ for convolutions, epsilon for dense layers), ``EpsilonAlpha2Beta1``
(alpha 2, beta 1 for convolutions), ``EpsilonPlusFlat`` / ``EpsilonAlpha2Beta1Flat`` (the same with the
flat rule for the first linear layer). All pass relevance unchanged through activations and BatchNorm
and normalise it over sums and average pooling. Here the same composites are built from zennit's rules
with the options below; `composite`:

- 'epsilon_plus_flat' (default): the composite Kohlbrenner et al. ("Towards Best Practice in Explaining
  Neural Network Decisions with LRP", IJCNN 2020) recommend for CNNs (LRP_CMP: epsilon for dense layers,
  alpha 1 beta 0 = z+ for convolutions, flat for the input layer), zennit's ``EpsilonPlusFlat``;
- 'epsilon_alpha_beta_flat': alpha-beta (`alpha`, `beta`; 2, 1 by default) for convolutions, flat input
  layer (zennit's ``EpsilonAlpha2Beta1Flat``);
- 'epsilon_plus', 'epsilon_alpha_beta': as above without the flat input layer (``EpsilonPlus``,
  ``EpsilonAlpha2Beta1``);
- 'epsilon': LRP-epsilon for every convolution and dense layer.

Canonizers (``canonize=True``): BatchNorm layers that directly follow a convolution are merged into it
(zennit's ``SequentialMergeBatchNorm``, which is its ``VGGCanonizer`` and part of its
``ResNetCanonizer``), and the residual sum of ResNet blocks becomes a zennit ``Sum`` module so that the
relevance is split between the two branches by their contributions (zennit's torchvision
``ResNetBasicBlockCanonizer`` and ``ResNetBottleneckCanonizer``, and the same for this package's
`lottery_xai.models.BasicBlock`). Canonizers and hooks are removed when the call returns, whatever
happens: the model's parameters are restored.

The relevance at the output is the target logit (R = f_c(x) e_c: the total relevance is conserved up to
the biases and stabilisers; ``start='one'`` starts from e_c, zennit's one-hot ``attr_output``; LRP is
linear in the start, so this only scales each map).
"""
from __future__ import annotations

import torch
from torch import nn

from lottery_xai.attribution._hooks import TargetsLike, check_eval, check_images, check_logits, resolve_targets
from lottery_xai.attribution.channels import check_channels, reduce_channels
from lottery_xai.errors import UserError
from lottery_xai.models import BasicBlock

LRP_COMPOSITES = ("epsilon_plus_flat", "epsilon_alpha_beta_flat", "epsilon_plus", "epsilon_alpha_beta", "epsilon")
LRP_STARTS = ("logit", "one")


def _basic_block_forward(self, x):
    """lottery_xai.models.BasicBlock.forward with the residual sum as a zennit Sum module."""
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    out = self.canonizer_sum(torch.stack([identity, out], dim=-1))
    return self.relu(out)


def _small_resnet_attributes(name: str, module: nn.Module):
    from zennit.layer import Sum

    if isinstance(module, BasicBlock):
        return {"forward": _basic_block_forward.__get__(module), "canonizer_sum": Sum()}
    return None


def canonizers() -> list:
    """zennit canonizers for every model of this package: BatchNorm merged into the preceding linear layer,
    residual sums of torchvision ResNets and of `lottery_xai.models.BasicBlock` as ``Sum`` modules."""
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    return [SequentialMergeBatchNorm(), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer(),
            AttributeCanonizer(_small_resnet_attributes)]


def build_composite(composite: str = "epsilon_plus_flat", epsilon: float = 1e-6, alpha: float = 2.0,
                    beta: float = 1.0, stabilizer: float = 1e-6, canonize: bool = True):
    """The zennit composite named `composite` (see the module), with this package's canonizers."""
    from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta, Epsilon, Flat, ZPlus
    from zennit.types import Convolution, Linear

    if composite not in LRP_COMPOSITES:
        raise UserError(f"composite must be one of {', '.join(LRP_COMPOSITES)}, got {composite!r}")
    for name, value in (("epsilon", epsilon), ("stabilizer", stabilizer), ("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"{name} must be a number >= 0, got {value!r}")
    if "alpha_beta" in composite and abs(alpha - beta - 1) > 1e-12:
        raise UserError(f"the alpha-beta rule needs alpha - beta = 1 (conservation), got alpha {alpha}, beta {beta}")
    if composite.startswith("epsilon_plus"):
        conv_rule = ZPlus(stabilizer=stabilizer)
    elif composite.startswith("epsilon_alpha_beta"):
        conv_rule = AlphaBeta(alpha=alpha, beta=beta, stabilizer=stabilizer)
    else:
        conv_rule = Epsilon(epsilon=epsilon)
    layer_map = layer_map_base(stabilizer) + [(Convolution, conv_rule), (torch.nn.Linear, Epsilon(epsilon=epsilon))]
    chosen = canonizers() if canonize else None
    if composite.endswith("_flat"):
        return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=[(Linear, Flat(stabilizer=stabilizer))],
                                             canonizers=chosen)
    return LayerMapComposite(layer_map=layer_map, canonizers=chosen)


def lrp(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    composite: str = "epsilon_plus_flat",
    epsilon: float = 1e-6,
    alpha: float = 2.0,
    beta: float = 1.0,
    canonize: bool = True,
    start: str = "logit",
    channels: str = "sum",
) -> torch.Tensor:
    """LRP relevance maps [N, H, W] (see the module for `composite`, `epsilon`, `alpha`, `beta`, `canonize`,
    `start`). One forward and one modified backward through zennit's hooks. `channels` reduces the
    per-channel relevance: 'sum' (default: relevance is additive, zennit's heatmaps sum it over
    channels), 'abs_sum', 'abs_max' or 'none' ([N, C, H, W]). `layer` is ignored."""
    check_images(images)
    check_eval(model)
    check_channels(channels)
    if start not in LRP_STARTS:
        raise UserError(f"start must be one of {', '.join(LRP_STARTS)}, got {start!r}")
    built = build_composite(composite, epsilon, alpha, beta, canonize=canonize)
    inputs = images.detach().requires_grad_(True)
    with built.context(model):  # registers canonizers and hooks; removes them on exit, whatever happens
        with torch.enable_grad():
            logits = model(inputs)
        check_logits(logits, images.shape[0])
        targets = resolve_targets(targets, logits)
        selected = torch.zeros_like(logits)
        selected.scatter_(1, targets[:, None], logits.detach().gather(1, targets[:, None]) if start == "logit" else 1.0)
        (relevance,) = torch.autograd.grad(logits, inputs, grad_outputs=selected)
    return reduce_channels(relevance.float(), channels)
