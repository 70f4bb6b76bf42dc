"""Explanation metrics: faithfulness, localisation, consistency, robustness, complexity, randomisation, and
the registry that describes them.

Every metric is declared once below with its family, direction, needs and the arguments its
function takes from the data and ``cfg.metrics``; reports and plots read `METRICS` /
`get_metric(name)` instead of hard-coding which way is better, and step 7 computes every
declared metric that ``metrics.names`` selects (`select_metrics`; by default the ones declared with
``default=True``: faithfulness, localisation and consistency) and whose needs it can provide
(`compute_metrics`).
"""
import torch

from lottery_xai.errors import UserError
from lottery_xai.metrics.base import (DEFAULT_SELECTION, FAMILIES, METRICS, NEEDS, WITHOUT_MAPS, MetricInputs,
                                      MetricSpec, compute_metrics, get_metric, register, select_metrics, unregister)
from lottery_xai.metrics.complexity import complexity, sparseness
from lottery_xai.metrics.consistency import (
    average_rank,
    map_agreement,
    resized_crop,
    sample_crop_boxes,
    spearman,
    ssim,
    tcav_agreement,
    tcav_agreement_summary,
    top_iou,
    transform_consistency,
)
from lottery_xai.metrics.faithfulness import (deletion_insertion, perturbation_aopc, pixel_perturbation, pixel_rank,
                                              region_perturbation, rise_blur, rise_kernel, scaled_blur, scaled_region,
                                              tie_seeds, trapezoid_auc)
from lottery_xai.metrics.infidelity import infidelity
from lottery_xai.metrics.localisation import (box_mask, content_heatmap, energy_in_box, energy_in_parts, no_energy,
                                              pointing_game, zero_map_indicator)
from lottery_xai.metrics.randomisation import parameter_randomisation_score, random_logit, randomisation_scores
from lottery_xai.metrics.road import road
from lottery_xai.metrics.robustness import local_lipschitz_estimate, max_sensitivity
from lottery_xai.seeds import derived_seed

__all__ = [
    "DEFAULT_SELECTION", "FAMILIES", "METRICS", "NEEDS", "WITHOUT_MAPS", "MetricInputs", "MetricSpec",
    "compute_metrics", "get_metric", "register", "select_metrics", "unregister",
    "road", "max_sensitivity", "local_lipschitz_estimate", "sparseness", "complexity", "random_logit",
    "parameter_randomisation_score", "randomisation_scores", "infidelity",
    "deletion_insertion", "pixel_perturbation", "region_perturbation", "perturbation_aopc", "pixel_rank",
    "tie_seeds", "trapezoid_auc", "rise_blur", "rise_kernel", "scaled_blur", "scaled_region",
    "energy_in_box", "content_heatmap", "zero_map_indicator", "no_energy", "pointing_game", "energy_in_parts",
    "box_mask",
    "map_agreement", "spearman", "top_iou", "ssim", "average_rank",
    "tcav_agreement", "tcav_agreement_summary",
    "transform_consistency", "resized_crop", "sample_crop_boxes",
]


# The keyword arguments of each function, from the inputs of one round and method (pixel settings are
# given at 224 px and scaled with the images). The faithfulness metrics score the predicted class.
def _fill(x: MetricInputs, choice: str, key: str):
    """A configured fill: 'train_mean' -> the training set's per-channel mean (normalised); else the name."""
    if choice != "train_mean":
        return choice
    if x.train_mean is None:
        raise UserError(f"metrics.{key}: train_mean needs the training set's per-channel mean (step 7 computes "
                        "it); pass train_mean to the metric inputs or choose zeros")
    return x.train_mean


def _ranking(x: MetricInputs) -> dict:
    return {"ties": x.settings.ties, "seed": 0 if x.tie_seed is None else x.tie_seed}


def _deletion_insertion_args(x: MetricInputs) -> dict:
    s = x.settings
    kernel, sigma = scaled_blur(x.scale, s.blur_kernel, s.blur_sigma)
    return {"model": x.model, "images": x.images, "maps": x.maps, "n_steps": s.n_steps, "batch_size": s.batch_size,
            "substrate": _fill(x, s.deletion_substrate, "deletion_substrate"), "blur_kernel": kernel,
            "blur_sigma": sigma, **_ranking(x)}


def _perturbation_args(x: MetricInputs) -> dict:
    s = x.settings
    common = {"model": x.model, "images": x.images, "maps": x.maps, "batch_size": s.batch_size, **_ranking(x)}
    if s.perturbation == "pixels":
        return {"protocol": "pixels", "fractions": s.fractions, "fill": _fill(x, s.pixel_fill, "pixel_fill"), **common}
    if x.normalisation is None:
        raise UserError("metrics.perturbation samek draws uniform noise over the valid pixel values: pass the "
                        "images' normalisation (mean, std) to the metric inputs")
    mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in x.normalisation)
    return {"protocol": "samek", "region": scaled_region(x.scale, s.samek_region), "n_steps": s.samek_steps,
            "noise_low": ((0 - mean) / std).tolist(), "noise_high": ((1 - mean) / std).tolist(),
            "noise_seed": 0 if x.noise_seed is None else x.noise_seed, **common}


def _energy_in_box_args(x: MetricInputs) -> dict:
    return {"maps": x.maps, "boxes": x.boxes}


def _content_heatmap_args(x: MetricInputs) -> dict:
    return {"maps": x.true_class_maps, "boxes": x.boxes, "zero_maps": x.settings.zero_maps}


def _zero_maps_args(x: MetricInputs) -> dict:
    return {"maps": x.true_class_maps}


def _pointing_game_args(x: MetricInputs) -> dict:
    return {"maps": x.maps, "boxes": x.boxes, "tolerance": x.settings.pointing_tolerance * x.scale,
            "ties": x.settings.pointing_ties}


def _energy_in_parts_args(x: MetricInputs) -> dict:
    return {"maps": x.maps, "parts": x.parts, "radius": max(x.settings.part_radius * x.scale, 0.5)}


def _map_agreement_args(x: MetricInputs) -> dict:
    return {"maps_a": x.maps, "maps_b": x.second_map, "top_fraction": x.settings.top_fraction}


def _tcav_agreement_args(x: MetricInputs) -> dict:
    return {"df_round": x.tcav_round, "df_dense": x.tcav_dense}


def _transform_consistency_args(x: MetricInputs) -> dict:
    s = x.settings
    return {"model": x.model, "images": x.images, "attribution_fn": x.attribution_fn, "transforms": s.transform,
            "n_transforms": s.n_transforms, "seed": x.seed, "targets": x.targets, "top_fraction": s.top_fraction}


# The opt-in metrics of issue 22. Their draws come from the run's metric noise seed, one derived stream per
# metric: every round and method sees the same perturbations, so their differences are paired.
ROAD_STREAM, SENSITIVITY_STREAM, LIPSCHITZ_STREAM, RANDOM_LOGIT_STREAM, INFIDELITY_STREAM = 1, 2, 3, 4, 5


def _stream(x: MetricInputs, stream: int) -> int:
    return derived_seed(0 if x.noise_seed is None else x.noise_seed, stream)


def _pixel_units(x: MetricInputs, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images' normalisation (mean, std) per channel, float64, for settings given in pixel units."""
    if x.normalisation is None:
        raise UserError(f"{what} is given in pixel units: pass the images' normalisation (mean, std) to the "
                        "metric inputs")
    return tuple(torch.as_tensor(v, dtype=torch.float64) for v in x.normalisation)


def _road_args(x: MetricInputs) -> dict:
    s = x.settings
    _, std = _pixel_units(x, "metrics.road_noise")
    return {"model": x.model, "images": x.images, "maps": x.maps, "percentages": s.road_percentages,
            "noise": (s.road_noise / std).tolist(), "selection": s.road_selection, "batch_size": s.batch_size,
            "noise_seed": _stream(x, ROAD_STREAM), **_ranking(x)}


def _max_sensitivity_args(x: MetricInputs) -> dict:
    s = x.settings
    return {"model": x.model, "images": x.images, "attribution_fn": x.recompute, "maps": x.maps, "targets": x.targets,
            "radius": s.sensitivity_radius, "samples": s.robustness_samples, "batch_size": s.batch_size,
            "seed": _stream(x, SENSITIVITY_STREAM)}


def _local_lipschitz_args(x: MetricInputs) -> dict:
    s = x.settings
    return {"model": x.model, "images": x.images, "attribution_fn": x.recompute, "maps": x.maps, "targets": x.targets,
            "noise_std": s.lipschitz_noise_std, "samples": s.robustness_samples, "batch_size": s.batch_size,
            "seed": _stream(x, LIPSCHITZ_STREAM)}


def _maps_args(x: MetricInputs) -> dict:
    return {"maps": x.maps}


def _random_logit_args(x: MetricInputs) -> dict:
    s = x.settings
    return {"model": x.model, "images": x.images, "attribution_fn": x.recompute, "maps": x.maps, "targets": x.targets,
            "similarity": s.random_logit_similarity, "batch_size": s.batch_size,
            "seed": _stream(x, RANDOM_LOGIT_STREAM)}


def _randomisation_score_args(x: MetricInputs) -> dict:
    s = x.settings
    return {"per_image": x.sanity_table, "method": x.method, "round": x.round, "image_ids": x.image_ids,
            "measure": s.randomisation_measure, "stage": s.randomisation_stage}


def _infidelity_args(x: MetricInputs) -> dict:
    s = x.settings
    mean, std = _pixel_units(x, "metrics.infidelity_noise")
    return {"model": x.model, "images": x.images, "maps": x.maps, "targets": x.targets,
            "noise_std": (s.infidelity_noise / std).tolist(), "valid_low": ((0 - mean) / std).tolist(),
            "valid_high": ((1 - mean) / std).tolist(), "samples": s.infidelity_samples, "batch_size": s.batch_size,
            "seed": _stream(x, INFIDELITY_STREAM)}


_DECLARATIONS = [
    # faithfulness
    MetricSpec("deletion_auc", "faithfulness", False, {"model"}, deletion_insertion,
               "area under the probability curve while the top pixels are deleted (RISE)", output="deletion_auc",
               arguments=_deletion_insertion_args),
    MetricSpec("insertion_auc", "faithfulness", True, {"model"}, deletion_insertion,
               "area under the probability curve while the top pixels are restored into a blurred image (RISE)",
               output="insertion_auc", arguments=_deletion_insertion_args),
    MetricSpec("morf_aopc", "faithfulness", True, {"model"}, perturbation_aopc,
               "average probability drop while the most relevant regions are perturbed first (Samek et al.: "
               "9x9-pixel regions at 224 px replaced by uniform noise over 100 steps; metrics.perturbation)",
               output="aopc", options={"order": "morf"}, arguments=_perturbation_args),
    MetricSpec("lerf_aopc", "faithfulness", False, {"model"}, perturbation_aopc,
               "average probability drop while the least relevant regions are perturbed first (Samek et al.; "
               "metrics.perturbation)", output="aopc", options={"order": "lerf"}, arguments=_perturbation_args),
    MetricSpec("roar_test_acc", "faithfulness", False, {"retraining"}, None,
               "test accuracy of the architecture retrained from scratch after the top-p % pixels of every image "
               "were replaced by the training mean (ROAR; main_roar.py); a lower curve than random is better",
               output="test_acc", step="main_roar.py"),
    # localisation
    MetricSpec("energy_in_box", "localisation", True, {"box"}, energy_in_box,
               "percentage of (positive) map energy inside the bounding box; its mean is the content heatmap",
               arguments=_energy_in_box_args),
    MetricSpec("content_heatmap", "localisation", True, {"box", "true_class_maps"}, content_heatmap,
               "percentage of map energy inside the box for the ground-truth class's map (CGC's content heatmap; "
               "maps without positive energy are skipped, metrics.zero_maps)", arguments=_content_heatmap_args),
    MetricSpec("content_heatmap_zero_maps", "localisation", False, {"box", "true_class_maps"}, zero_map_indicator,
               "1 when the ground-truth class's map has no positive energy (skipped by the content heatmap); "
               "the row's value is their share, value x n_images their count (not tested)", arguments=_zero_maps_args,
               tested=False),
    MetricSpec("pointing_game", "localisation", True, {"box"}, pointing_game,
               "1 when the map's maximum lies within the tolerance of the bounding box (TorchRay's rule; "
               "metrics.pointing_ties)", arguments=_pointing_game_args),
    MetricSpec("energy_in_parts", "localisation", True, {"parts"}, energy_in_parts,
               "percentage of (positive) map energy near the visible part locations (NaN without visible parts)",
               arguments=_energy_in_parts_args),
    # consistency across pruning rounds
    MetricSpec("spearman", "consistency", True, {"second_map"}, map_agreement,
               "Spearman rank correlation with the reference (dense) map", output="spearman",
               arguments=_map_agreement_args),
    MetricSpec("top_iou", "consistency", True, {"second_map"}, map_agreement,
               "IoU of the top-15 % pixels with the reference (dense) map", output="top_iou",
               arguments=_map_agreement_args),
    MetricSpec("ssim", "consistency", True, {"second_map"}, map_agreement,
               "structural similarity with the reference (dense) map", output="ssim", arguments=_map_agreement_args),
    MetricSpec("tcav_abs_diff", "consistency", False, {"tcav_scores"}, tcav_agreement,
               "absolute TCAV score difference from the dense model, per (class, concept)", output="abs_diff",
               arguments=_tcav_agreement_args),
    MetricSpec("tcav_flip", "consistency", False, {"tcav_scores"}, tcav_agreement,
               "whether a (class, concept) significance flag differs from the dense model's; its mean is the flip rate",
               output="flipped", arguments=_tcav_agreement_args),
    # consistency under transformation
    MetricSpec("transform_spearman", "consistency", True, {"model", "transform"}, transform_consistency,
               "Spearman correlation of map(T(x)) with T(map(x)) for flips and random resized crops",
               output="spearman", arguments=_transform_consistency_args),
    MetricSpec("transform_top_iou", "consistency", True, {"model", "transform"}, transform_consistency,
               "top-15 % IoU of map(T(x)) with T(map(x))", output="top_iou",
               arguments=_transform_consistency_args),
    MetricSpec("transform_ssim", "consistency", True, {"model", "transform"}, transform_consistency,
               "SSIM of map(T(x)) with T(map(x))", output="ssim", arguments=_transform_consistency_args),
    # opt-in (metrics.names): the families Quantus adds, and ROAD beside Samek's fill
    MetricSpec("road_morf", "faithfulness", False, {"model"}, road,
               "ROAD (Rong et al. 2022): mean softmax probability of the predicted class while the most relevant "
               "10-90 % of pixels are replaced by noisy linear imputation (metrics.road_*)", output="morf",
               arguments=_road_args, default=False),
    MetricSpec("road_lerf", "faithfulness", True, {"model"}, road,
               "ROAD: the same while the least relevant pixels are imputed first", output="lerf",
               arguments=_road_args, default=False),
    MetricSpec("max_sensitivity", "robustness", False, {"model", "recompute"}, max_sensitivity,
               "max over metrics.robustness_samples uniform perturbations of ||e(x') - e(x)|| / ||e(x)|| (Yeh et al. "
               "2019, Quantus MaxSensitivity; radius metrics.sensitivity_radius)", output="value",
               arguments=_max_sensitivity_args, default=False),
    MetricSpec("local_lipschitz", "robustness", False, {"model", "recompute"}, local_lipschitz_estimate,
               "max over Gaussian perturbations of ||e(x') - e(x)|| / ||x' - x|| (Alvarez-Melis & Jaakkola 2018, "
               "Quantus LocalLipschitzEstimate)", output="value", arguments=_local_lipschitz_args, default=False),
    MetricSpec("sparseness", "complexity", True, set(), sparseness,
               "Gini index of the map's absolute values (Chalasani et al. 2020, Quantus Sparseness)",
               arguments=_maps_args, default=False),
    MetricSpec("complexity", "complexity", False, set(), complexity,
               "entropy of the map's fractional absolute contributions (Bhatt et al. 2020, Quantus Complexity)",
               arguments=_maps_args, default=False),
    MetricSpec("random_logit", "randomisation", False, {"model", "recompute"}, random_logit,
               "similarity of the map with the map of a randomly drawn other class (Sixt et al. 2020, Quantus "
               "RandomLogit; metrics.random_logit_similarity); class-agnostic methods score 1",
               output="value", arguments=_random_logit_args, default=False),
    MetricSpec("randomisation_score", "randomisation", False, {"sanity_scores"}, randomisation_scores,
               "the sanity step's similarity of the fully randomised model's map with the original (Adebayo et al. "
               "2018, Quantus MPRT; metrics.randomisation_measure / _stage); NaN for images and rounds it did not test",
               arguments=_randomisation_score_args, default=False),
    MetricSpec("infidelity", "faithfulness", False, {"model"}, infidelity,
               "E[(I^T phi - (f(x) - f(x - I)))^2] with the paper's Gaussian I and optimal scaling (Yeh et al. "
               "2019, Captum infidelity; metrics.infidelity_*)", output="value", arguments=_infidelity_args,
               default=False),
]
for _spec in _DECLARATIONS:
    register(_spec)
del _spec
