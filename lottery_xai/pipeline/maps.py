"""The configured maps of an attribution method: its layer and options from the config (``heatmaps.*``,
through its `MethodSpec`), computed in chunks with a seed per chunk; and the two choices every step that
makes maps shares: the seed of a round's maps (`map_seed`) and the class they explain (`explained_targets`).
Steps 6 and 7, the sanity check, ROAR and the human study all come here."""
from __future__ import annotations

import torch

from ..attribution import METHODS, MethodSettings, attribute, get_method, transformer_methods
from ..config import Config, check_method_names
from ..data import get_dataset
from ..errors import UserError
from ..models import architecture
from ..rundir import RunDir
from ..seeds import SeedPurpose, derived_seed
from ..timm_backbones import family_of, is_timm, timm_name


def check_methods(cfg: Config) -> None:
    """Every name in heatmaps.methods, metrics.transform_methods and roar.methods is a registered method, and
    a transformer-only one (attention rollout) is asked for a timm ViT / DeiT backbone only."""
    check_method_names(cfg, list(METHODS))
    asked = {*cfg.heatmaps.methods, *cfg.metrics.transform_methods, *cfg.roar.methods, *cfg.sanity.methods}
    for name in sorted(asked & transformer_methods()):
        if not (is_timm(cfg.model_arch) and family_of(timm_name(cfg.model_arch)) == "vit"):
            raise UserError(f"attribution method '{name}' explains vision transformers with a class token (timm ViT, "
                            f"DeiT); model_arch is '{cfg.model_arch}': remove it from the method lists")


def map_seed(run: RunDir | Config, r: int) -> int:
    """The seed of round ``r``'s maps: step 6 makes them with it, step 7 recomputes the maps of the true class
    with it, and the sanity check's stage 0 is step 6's maps again. Each method derives its own streams from it
    (the random baseline draws from it, integrated gradients and the noise tunnel from derived seeds)."""
    cfg = run.cfg if isinstance(run, RunDir) else run
    return derived_seed(cfg.seed, SeedPurpose.HEATMAPS, r)


def predicted_classes(cfg: Config, model, images: torch.Tensor) -> torch.Tensor:
    """The class ``model`` predicts for each image [N] (no gradients, in chunks of ``data.eval_batch_size``)."""
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(1) for chunk in images.split(cfg.data.eval_batch_size)])


def explained_targets(cfg: Config, model, images: torch.Tensor, labels: torch.Tensor,
                      predicted: torch.Tensor | None = None) -> torch.Tensor:
    """The class every map of ``images`` explains (``heatmaps.target``): the true class (``labels``) or the
    class ``model`` predicts (``predicted`` when the caller has it, else `predicted_classes`). Step 6, step 7,
    the sanity check and ROAR all explain this class."""
    if cfg.heatmaps.target == "true":
        return labels
    return predicted if predicted is not None else predicted_classes(cfg, model, images)


def method_settings(cfg: Config, seed: int, adaptive: bool = True) -> MethodSettings:
    """What the methods' configured options are made from: ``heatmaps.*``, ``seed`` and the dataset's
    normalisation (the black and uniform baselines of integrated gradients undo it; the noise tunnel's
    'valid' range goes through it)."""
    spec = get_dataset(cfg.dataset)
    return MethodSettings(cfg.heatmaps, seed, tuple(spec.mean), tuple(spec.std), adaptive)


def method_options(cfg: Config, method: str, seed: int, adaptive: bool = True) -> dict:
    """The keyword options of ``method`` that the config sets (``seed`` seeds the methods that draw).
    ``adaptive=False``: integrated gradients keeps ``heatmaps.ig_steps`` for every image (no doubling
    towards completeness: the sanity check compares maps, it does not read their completeness)."""
    return get_method(method).configured_options(method_settings(cfg, seed, adaptive))


def cam_layer(cfg: Config) -> str:
    return cfg.heatmaps.layer or architecture(cfg.model_arch).cam_layer


def layer_for(cfg: Config, method: str) -> str | None:
    """The layer argument of ``method``: the CAM layer for methods that take one, None for the others."""
    return cam_layer(cfg) if get_method(method).takes_layer else None


def configured_maps(cfg: Config, method: str, model, images: torch.Tensor, targets: torch.Tensor, seed: int,
                    normalize: str | None = None, details: dict | None = None, adaptive: bool = True) -> torch.Tensor:
    """Maps of ``method`` with the configured layer and options, in chunks of ``heatmaps.batch_size``;
    chunk i is seeded ``derived_seed(seed, i)``, so the random baseline does not repeat from chunk to chunk.
    With a dict ``details``, a method that reports on its maps (integrated gradients: completeness per
    image) puts its per-image values there as tensors [N] (see ``attribution.attribute``)."""
    get_method(method).check_model(model)
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
