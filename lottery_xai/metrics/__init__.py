"""Explanation metrics: faithfulness, localisation, consistency, and the registry that describes them.

Every metric is declared once below with its family, direction, needs and the arguments its
function takes from the data and ``cfg.metrics``; reports and plots read `METRICS` /
`get_metric(name)` instead of hard-coding which way is better, and step 7 computes every
declared metric whose needs it can provide (`compute_metrics`).
"""
from lottery_xai.metrics.base import (FAMILIES, METRICS, NEEDS, WITHOUT_MAPS, MetricInputs, MetricSpec,
                                      compute_metrics, get_metric, register, unregister)
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
from lottery_xai.metrics.faithfulness import deletion_insertion, pixel_perturbation, pixel_rank, trapezoid_auc
from lottery_xai.metrics.localisation import box_mask, content_heatmap, energy_in_box, energy_in_parts, pointing_game

__all__ = [
    "FAMILIES", "METRICS", "NEEDS", "WITHOUT_MAPS", "MetricInputs", "MetricSpec", "compute_metrics", "get_metric",
    "register", "unregister",
    "deletion_insertion", "pixel_perturbation", "pixel_rank", "trapezoid_auc",
    "energy_in_box", "content_heatmap", "pointing_game", "energy_in_parts", "box_mask",
    "map_agreement", "spearman", "top_iou", "ssim", "average_rank",
    "tcav_agreement", "tcav_agreement_summary",
    "transform_consistency", "resized_crop", "sample_crop_boxes",
]


# The keyword arguments of each function, from the inputs of one round and method (pixel settings are
# given at 224 px and scaled with the images). The faithfulness metrics score the predicted class.
def _deletion_insertion_args(x: MetricInputs) -> dict:
    return {"model": x.model, "images": x.images, "maps": x.maps, "n_steps": x.settings.n_steps,
            "batch_size": x.settings.batch_size}


def _pixel_perturbation_args(x: MetricInputs) -> dict:
    return {"model": x.model, "images": x.images, "maps": x.maps, "fractions": x.settings.fractions,
            "batch_size": x.settings.batch_size}


def _energy_in_box_args(x: MetricInputs) -> dict:
    return {"maps": x.maps, "boxes": x.boxes}


def _content_heatmap_args(x: MetricInputs) -> dict:
    return {"maps": x.true_class_maps, "boxes": x.boxes}


def _pointing_game_args(x: MetricInputs) -> dict:
    return {"maps": x.maps, "boxes": x.boxes, "tolerance": x.settings.pointing_tolerance * x.scale}


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


_DECLARATIONS = [
    # faithfulness
    MetricSpec("deletion_auc", "faithfulness", False, {"model"}, deletion_insertion,
               "area under the probability curve while the top pixels are deleted (RISE)", output="deletion_auc",
               arguments=_deletion_insertion_args),
    MetricSpec("insertion_auc", "faithfulness", True, {"model"}, deletion_insertion,
               "area under the probability curve while the top pixels are restored into a blurred image (RISE)",
               output="insertion_auc", arguments=_deletion_insertion_args),
    MetricSpec("morf_aopc", "faithfulness", True, {"model"}, pixel_perturbation,
               "average probability drop when the most relevant 1-10 % of pixels are replaced by the mean",
               output="aopc", options={"order": "morf"}, arguments=_pixel_perturbation_args),
    MetricSpec("lerf_aopc", "faithfulness", False, {"model"}, pixel_perturbation,
               "average probability drop when the least relevant 1-10 % of pixels are replaced by the mean",
               output="aopc", options={"order": "lerf"}, arguments=_pixel_perturbation_args),
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
               "all-zero maps count as 0)", arguments=_content_heatmap_args),
    MetricSpec("pointing_game", "localisation", True, {"box"}, pointing_game,
               "1 when the map's maximum lies within the tolerance of the bounding box", arguments=_pointing_game_args),
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
]
for _spec in _DECLARATIONS:
    register(_spec)
del _spec
