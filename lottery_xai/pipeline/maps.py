"""The configured maps of an attribution method: its layer and options from the config (``heatmaps.*``),
computed in chunks with a seed per chunk."""
from __future__ import annotations

import torch

from ..attribution import LAYER_METHODS, METHODS, TRANSFORMER_METHODS, attribute
from ..config import Config, check_method_names
from ..data import get_dataset
from ..models import architecture
from ..errors import UserError
from ..seeds import SeedPurpose, derived_seed
from ..timm_backbones import family_of, is_timm, timm_name


def check_methods(cfg: Config) -> None:
    """Every name in heatmaps.methods, metrics.transform_methods and roar.methods is a registered method, and
    a transformer-only one (attention rollout) is asked for a timm ViT / DeiT backbone only."""
    check_method_names(cfg, list(METHODS))
    asked = {*cfg.heatmaps.methods, *cfg.metrics.transform_methods, *cfg.roar.methods, *cfg.sanity.methods}
    for name in sorted(asked & TRANSFORMER_METHODS):
        if not (is_timm(cfg.model_arch) and family_of(timm_name(cfg.model_arch)) == "vit"):
            raise UserError(f"attribution method '{name}' explains vision transformers with a class token (timm ViT, "
                            f"DeiT); model_arch is '{cfg.model_arch}': remove it from the method lists")


def method_options(cfg: Config, method: str, seed: int, adaptive: bool = True) -> dict:
    """The keyword options of ``method`` that the config sets (``seed`` seeds the methods that draw).
    ``adaptive=False``: integrated gradients keeps ``heatmaps.ig_steps`` for every image (no doubling
    towards completeness: the sanity check compares maps, it does not read their completeness)."""
    h = cfg.heatmaps
    options = {
        "occlusion": {"patch": h.occlusion_patch or None, "batch_size": h.batch_size},
        "scorecam": {"batch_size": h.batch_size},
        "random": {"seed": seed},
    }
    if method == "integrated_gradients":
        spec = get_dataset(cfg.dataset)  # the images' normalisation, which the black and uniform baselines undo
        return {"steps": h.ig_steps, "rule": h.ig_rule, "baseline": h.ig_baseline, "mean": spec.mean, "std": spec.std,
                "output": h.ig_output, "samples": h.ig_uniform_samples, "tolerance": h.ig_tolerance,
                "max_steps": h.ig_max_steps if adaptive else h.ig_steps, "batch_size": h.batch_size,
                "seed": derived_seed(seed, SeedPurpose.IG_NOISE)}  # apart from the random maps' stream
    return options.get(method, {})


def cam_layer(cfg: Config) -> str:
    return cfg.heatmaps.layer or architecture(cfg.model_arch).cam_layer


def layer_for(cfg: Config, method: str) -> str | None:
    """The layer argument of ``method``: the CAM layer for layer methods, None for the others."""
    return cam_layer(cfg) if method in LAYER_METHODS else None


def configured_maps(cfg: Config, method: str, model, images: torch.Tensor, targets: torch.Tensor, seed: int,
                    normalize: str | None = None, details: dict | None = None, adaptive: bool = True) -> torch.Tensor:
    """Maps of ``method`` with the configured layer and options, in chunks of ``heatmaps.batch_size``;
    chunk i is seeded ``derived_seed(seed, i)``, so the random baseline does not repeat from chunk to chunk.
    With a dict ``details``, a method that reports on its maps (integrated gradients: completeness per
    image) puts its per-image values there as tensors [N] (see ``attribution.attribute``)."""
    size = cfg.heatmaps.batch_size
    found: list[dict] = []
    maps = []
    for i, (chunk, t) in enumerate(zip(images.split(size), targets.split(size))):
        chunk_details = {} if details is not None else None
        maps.append(attribute(method, model, chunk, t, layer=layer_for(cfg, method),
                              normalize=normalize or cfg.heatmaps.normalize, details=chunk_details,
                              **method_options(cfg, method, derived_seed(seed, i), adaptive)))
        found.append(chunk_details)
    if details is not None and found and found[0]:
        details.update({key: torch.cat([part[key] for part in found]) for key in found[0]})
    return torch.cat(maps)
