"""Attribution maps (local explanations) behind one calling convention.

Every method is called as `method(model, images[N,C,H,W], targets[N] or None, *, layer=None,
**options) -> maps [N,H,W]` (float32, on the images' device, raw values); `targets=None`
explains the predicted class. Each is declared once below as a `MethodSpec` (family, whether it
takes a layer, the options it fixes and those the config sets: `lottery_xai.attribution.base`);
`attribute(name, ...)` looks a method up by name, checks its options and normalises the maps. A
method with a report (integrated gradients: its completeness per image) fills
`attribute(..., details={})` as well.
"""
from __future__ import annotations

import torch
from torch import nn

from lottery_xai.attribution._hooks import TargetsLike
from lottery_xai.attribution.base import (FAMILIES, METHODS, MethodSettings, MethodSpec, get_method, layer_methods,
                                          register, transformer_methods, unregister)
from lottery_xai.attribution.baseline import random_map
from lottery_xai.attribution.cam import grad_x_activation, grad_x_activation_map, gradcam, gradcam_pp, score_cam
from lottery_xai.attribution.cam_variants import eigencam, hirescam, layercam, xgradcam
from lottery_xai.attribution.gradients import integrated_gradients, integrated_gradients_report, saliency
from lottery_xai.attribution.guided import guided_backprop, guided_gradcam
from lottery_xai.attribution.lrp import lrp
from lottery_xai.attribution.noise_tunnel import noise_tunnel, smoothgrad, smoothgrad_sq, vargrad
from lottery_xai.attribution.perturbation import occlusion
from lottery_xai.attribution.rollout import attention_rollout
from lottery_xai.errors import UserError
from lottery_xai.seeds import SeedPurpose, derived_seed

NORMALIZE_MODES = ("max", "minmax", "none")

__all__ = [
    "FAMILIES",
    "METHODS",
    "MethodSettings",
    "MethodSpec",
    "NORMALIZE_MODES",
    "attribute",
    "get_method",
    "layer_methods",
    "transformer_methods",
    "normalize_maps",
    "register",
    "unregister",
    "gradcam",
    "gradcam_pp",
    "grad_x_activation",
    "grad_x_activation_map",
    "score_cam",
    "hirescam",
    "layercam",
    "xgradcam",
    "eigencam",
    "saliency",
    "integrated_gradients",
    "integrated_gradients_report",
    "noise_tunnel",
    "smoothgrad",
    "smoothgrad_sq",
    "vargrad",
    "guided_backprop",
    "guided_gradcam",
    "lrp",
    "occlusion",
    "random_map",
    "attention_rollout",
]


def normalize_maps(maps: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Per-image normalisation of maps [N, H, W].

    'max': divide each map by its own global max (by its max |value| when the max is <= 0, so the
    ranking never flips); all-zero maps stay 0. 'minmax': (m - min) / (max - min), constant maps
    become 0. 'none': the maps unchanged.
    """
    if mode == "none":
        return maps
    if mode not in NORMALIZE_MODES:
        raise UserError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {mode!r}")
    flat = maps.reshape(maps.shape[0], -1)
    if mode == "max":
        peak = flat.amax(dim=1)
        scale = torch.where(peak > 0, peak, flat.abs().amax(dim=1))
        offset = torch.zeros_like(scale)
    else:
        offset = flat.amin(dim=1)
        scale = flat.amax(dim=1) - offset
    scale = scale.view(-1, *([1] * (maps.dim() - 1)))
    offset = offset.view_as(scale)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, (maps - offset) / safe, torch.zeros_like(maps))


def attribute(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layer: str | None = None,
    normalize: str = "max",
    details: dict | None = None,
    **options,
) -> torch.Tensor:
    """Maps [N, H, W] of method `name`, normalised per image (`normalize`: max, minmax or none).

    `options` are the method's own keyword arguments; an unknown one raises UserError naming the
    closest valid option, so a typo in a config cannot pass silently. With a dict `details`, a method
    with a report (its spec's `report`) runs through its report function and puts its per-image details (tensors [N], computed
    on the raw maps) in it; other methods leave it empty.
    """
    spec = get_method(name)
    spec.check_options(options)
    if normalize not in NORMALIZE_MODES:
        raise UserError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
    if details is not None and spec.report is not None:
        maps, found = spec.with_report(model, images, targets, layer=layer, **options)
        details.update(found)
    else:
        maps = spec(model, images, targets, layer=layer, **options)
    return normalize_maps(maps, normalize)


# ---------------------------------------------------------------- the options each method takes from the config
# (heatmaps.*: `MethodSettings`); a method without a builder runs with its function's defaults.

def _batched(s: MethodSettings) -> dict:
    return {"batch_size": s.settings.batch_size}


def _occlusion_options(s: MethodSettings) -> dict:
    return {"patch": s.settings.occlusion_patch or None, "batch_size": s.settings.batch_size}


def _random_options(s: MethodSettings) -> dict:
    return {"seed": s.seed}


def _integrated_gradients_options(s: MethodSettings) -> dict:
    h = s.settings  # mean and std: the images' normalisation, which the black and uniform baselines undo
    return {"steps": h.ig_steps, "rule": h.ig_rule, "baseline": h.ig_baseline, "mean": s.mean, "std": s.std,
            "output": h.ig_output, "samples": h.ig_uniform_samples, "tolerance": h.ig_tolerance,
            "max_steps": h.ig_max_steps if s.adaptive else h.ig_steps, "batch_size": h.batch_size,
            "seed": derived_seed(s.seed, SeedPurpose.IG_NOISE)}  # apart from the random maps' stream


def _noise_tunnel_options(s: MethodSettings) -> dict:
    h = s.settings
    base_options = {}
    if h.noise_base == "integrated_gradients":  # every noisy copy integrated with ig_steps points, no doubling
        base_options = _integrated_gradients_options(MethodSettings(h, s.seed, s.mean, s.std, adaptive=False))
    return {"base": h.noise_base, "base_options": base_options, "samples": h.noise_samples,
            "noise_level": h.noise_level, "noise_range": h.noise_range, "mean": s.mean, "std": s.std,
            "seed": derived_seed(s.seed, SeedPurpose.NOISE_TUNNEL), "batch_size": h.batch_size}


def _lrp_rule_options(s: MethodSettings) -> dict:
    h = s.settings
    return {"epsilon": h.lrp_epsilon, "alpha": h.lrp_alpha, "beta": h.lrp_beta}


def _lrp_options(s: MethodSettings) -> dict:
    return {"composite": s.settings.lrp_composite, **_lrp_rule_options(s)}


_DECLARATIONS = [
    # CAMs: the layer's activations weighted by the gradient (or scores) of the target
    MethodSpec("gradcam", gradcam, "cam", "Grad-CAM: channel weights = spatial mean of the gradient at the layer, "
               "weighted sum, ReLU, bilinear upsampling", takes_layer=True, sanity="passes",
               reference="Selvaraju et al. 2017; ramprs/grad-cam"),
    MethodSpec("gradcampp", gradcam_pp, "cam", "Grad-CAM++: the weights of its eq. 19 (exp trick)", takes_layer=True,
               reference="Chattopadhay et al. 2018"),
    MethodSpec("grad_x_activation", grad_x_activation, "cam", "ReLU(sum_k dz/dA_k * A_k) at the layer, the form CGC "
               "trains", takes_layer=True, reference="Pillai et al. 2022 (CGC)"),
    MethodSpec("scorecam", score_cam, "cam", "Score-CAM: channel masks scored by the softmax probability (one "
               "forward per channel)", takes_layer=True, configured=_batched, reference="Wang et al. 2020"),
    MethodSpec("saliency", saliency, "gradient", "max over channels of |dz/dx|", sanity="passes",
               reference="Simonyan et al. 2014"),
    MethodSpec("integrated_gradients", integrated_gradients, "gradient", "integrated gradients from the black image "
               "(heatmaps.ig_*), completeness reported per image", configured=_integrated_gradients_options,
               report=integrated_gradients_report, reference="Sundararajan et al. 2017; Captum"),
    MethodSpec("occlusion", occlusion, "perturbation", "drop of the class probability under a sliding square of "
               "the image's mean colour", configured=_occlusion_options, reference="Zeiler & Fergus 2014"),
    MethodSpec("random", random_map, "baseline", "uniform noise from a seeded generator: the baseline every metric "
               "must beat", configured=_random_options, class_agnostic=True),
    # vision transformers with a class token only (timm ViT, DeiT): refused for any other backbone
    MethodSpec("attention_rollout", attention_rollout, "attention", "attention rollout: the class token's row of the "
               "heads' mean attention plus the identity, multiplied over the blocks, on the patch grid (the layer "
               "argument is ignored)", transformer_only=True, class_agnostic=True,
               reference="Abnar & Zuidema 2020; jacobgil/vit-explain"),
    # opt-in (issue 22): the methods the benchmark papers rank
    MethodSpec("smoothgrad", noise_tunnel, "gradient", "SmoothGrad: the mean of heatmaps.noise_base's attributions "
               "over heatmaps.noise_samples noisy copies (|.| summed over channels)", fixed={"kind": "smoothgrad"},
               configured=_noise_tunnel_options, sanity="passes",
               reference="Smilkov et al. 2017; PAIR-code/saliency; Captum NoiseTunnel"),
    MethodSpec("smoothgrad_sq", noise_tunnel, "gradient", "SmoothGrad-squared: the mean of the squared attributions "
               "over noisy copies (ROAR's winner with VarGrad)", fixed={"kind": "smoothgrad_sq"},
               configured=_noise_tunnel_options, reference="Hooker et al. 2019; Captum NoiseTunnel"),
    MethodSpec("vargrad", noise_tunnel, "gradient", "VarGrad: the variance of the attributions over noisy copies",
               fixed={"kind": "vargrad"}, configured=_noise_tunnel_options,
               reference="Adebayo et al. 2018 (Local explanation methods ...); Captum NoiseTunnel"),
    MethodSpec("guided_backprop", guided_backprop, "propagation", "guided backpropagation: only positive gradients "
               "through active ReLUs (|.| summed over channels)", sanity="fails",
               reference="Springenberg et al. 2015; Captum GuidedBackprop"),
    MethodSpec("guided_gradcam", guided_gradcam, "propagation", "guided Grad-CAM: guided backprop times the "
               "bilinearly upsampled Grad-CAM", takes_layer=True, sanity="fails",
               reference="Selvaraju et al. 2017; Captum GuidedGradCam"),
    MethodSpec("lrp", lrp, "propagation", "layer-wise relevance propagation through zennit, composite "
               "heatmaps.lrp_composite (epsilon_plus_flat: Kohlbrenner et al. 2020's recommendation)",
               configured=_lrp_options, reference="Bach et al. 2015; zennit"),
    MethodSpec("lrp_epsilon", lrp, "propagation", "LRP-epsilon at every convolution and dense layer "
               "(heatmaps.lrp_epsilon)", fixed={"composite": "epsilon"}, configured=_lrp_rule_options,
               reference="Bach et al. 2015; zennit"),
    MethodSpec("lrp_alpha_beta", lrp, "propagation", "LRP-alpha-beta at the convolutions (heatmaps.lrp_alpha, "
               "lrp_beta), epsilon at dense layers, flat input layer (zennit's EpsilonAlpha2Beta1Flat)",
               fixed={"composite": "epsilon_alpha_beta_flat"}, configured=_lrp_rule_options,
               reference="Bach et al. 2015; zennit"),
    MethodSpec("hirescam", hirescam, "cam", "HiResCAM: ReLU(sum_k G_k * A_k) element-wise", takes_layer=True,
               reference="Draelos & Carin 2020; pytorch-grad-cam"),
    MethodSpec("layercam", layercam, "cam", "LayerCAM: ReLU(sum_k relu(G_k) * A_k)", takes_layer=True,
               reference="Jiang et al. 2021; pytorch-grad-cam"),
    MethodSpec("xgradcam", xgradcam, "cam", "XGrad-CAM: activation-weighted gradient weights", takes_layer=True,
               reference="Fu et al. 2020; pytorch-grad-cam"),
    MethodSpec("eigencam", eigencam, "cam", "EigenCAM: the first principal component of the layer's activations "
               "(class-agnostic)", takes_layer=True, class_agnostic=True, reference="Muhammad & Yeasin 2020; pytorch-grad-cam"),
]
for _spec in _DECLARATIONS:
    register(_spec)
del _spec
