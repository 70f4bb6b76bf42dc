"""What every step shares: the run object, finished rounds, data and round-model loading, checkpoint
checks, names from the config resolved against the dataset, and the configured maps of a method."""
from __future__ import annotations

import re

import torch

from .. import rundir as rd
from ..attribution import LAYER_METHODS, METHODS, attribute
from ..config import SPLIT_NAMES, Config, check_method_names
from ..errors import UserError
from ..loaders import SeedPurpose, derived_seed
from ..models import architecture, build_model
from ..names import unknown_name
from ..pruning import prunable_names
from ..safe_io import load_torch, unreadable

STEP1 = "step 1 (main_lth_pruning.py)"


SPLITS = SPLIT_NAMES


def as_run(run: rd.RunDir | Config) -> rd.RunDir:
    """The run directory a step works on; a Config is opened as its run (notebooks pass either).
    The config's method names are checked against the attribution registry here."""
    run = run if isinstance(run, rd.RunDir) else rd.RunDir(run)
    check_methods(run.cfg)
    return run


def check_methods(cfg: Config) -> None:
    """Every name in heatmaps.methods, metrics.transform_methods and roar.methods is a registered method."""
    check_method_names(cfg, list(METHODS))


def start_step(run: rd.RunDir | Config, step: str, rounds: list[int], log=print) -> tuple[rd.RunDir, Config, list[int]]:
    """Every step's preamble: the run, its config, the requested rounds that step 1 has finished,
    and the config the step runs with saved as ``config.<step>.yaml``."""
    run = as_run(run)
    rounds = finished_rounds(run, rounds, log)
    run.save_config(step)
    return run, run.cfg, rounds


def finished_rounds(run: rd.RunDir, rounds: list[int], log=print) -> list[int]:
    """The requested rounds that step 1 has finished (a step before step 1 is a user error)."""
    run.require(run.pruning_summary(), "step 1 (main_lth_pruning.py)")
    done = set(run.finished_rounds())
    missing = [r for r in rounds if r not in done]
    if missing:
        log(f"rounds {missing} have no checkpoint yet (step 1 not finished); they are skipped")
    return [r for r in rounds if r in done]


def load_data(cfg: Config, splits=("train", "val", "test"), augment: bool | None = None):
    """Datasets of the configured dataset and its DatasetInfo."""
    from ..data import build_datasets

    return build_datasets(cfg.dataset, cfg.data_root, cfg.json_root, cfg.img_size, splits=tuple(splits),
                          augment_train=cfg.data.augment if augment is None else augment, seed=cfg.seed)


def new_model(cfg: Config, num_classes: int, seed: int) -> torch.nn.Module:
    """A freshly initialised model; the initial weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.model_arch, num_classes, cfg.pretrained, cfg.img_size)


def model_masks_template(cfg: Config, model: torch.nn.Module) -> list[str]:
    return prunable_names(model, cfg.pruning.prune_bn, conv_only=cfg.pruning.layers == "conv")


def load_round_model(cfg: Config, run: rd.RunDir, r: int, num_classes: int | None, device, which: str | None = None):
    """The model of round ``r`` (best-val or last checkpoint), in eval mode on ``device``, with its checkpoint.
    ``num_classes=None`` reads the class count from the checkpoint's classifier (no dataset needed)."""
    which = which or cfg.test.checkpoint
    path = run.require(run.checkpoint(r, which), STEP1)
    ckpt = load_torch(path, step=STEP1, keys=("state_dict", "weights_remaining"))
    if num_classes is None:
        classifier = ckpt["state_dict"].get(architecture(cfg.model_arch).classifier + ".weight")
        if getattr(classifier, "ndim", 0) != 2:
            raise foreign_checkpoint(path, f"no {cfg.model_arch} classifier in it")
        num_classes = int(classifier.shape[0])
    model = new_model(cfg, num_classes, cfg.seed)
    model.load_state_dict(check_state(model, ckpt["state_dict"], path))
    return model.to(device).eval(), ckpt


def foreign_checkpoint(path, detail: str) -> UserError:
    return UserError(f"checkpoint '{path}' was written for another architecture or dataset ({detail}); "
                     f"use the config it was made with or rerun {STEP1} with --force")


def check_state(model: torch.nn.Module, state, path) -> dict:
    """``state`` if it fits ``model`` (same parameter and buffer names and shapes), else a UserError naming ``path``."""
    if not isinstance(state, dict):
        raise unreadable(path, f"its state_dict is a {type(state).__name__}", STEP1)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise foreign_checkpoint(path, f"{len(missing)} of this model's tensors missing, e.g. {missing[0]}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise foreign_checkpoint(path, f"{len(unexpected)} tensors this model does not have, e.g. {unexpected[0]}")
    for k, v in expected.items():
        shape = tuple(getattr(state[k], "shape", ()) or ())
        if shape != tuple(v.shape):
            raise foreign_checkpoint(path, f"{k} is {list(shape)} in the file, {list(v.shape)} in this model")
    return state


_NUMBER_PREFIX = re.compile(r"^\d+\.(.+)$")  # CUB's folder form, '036.Northern_Flicker'


def _known_name(name: str, known: list[str]) -> str | None:
    """``name`` itself when known, else the known name after a numeric ``NNN.`` prefix (CUB's folder form), else None."""
    if name in known:
        return name
    match = _NUMBER_PREFIX.match(name)
    if match and match.group(1) in known:
        return match.group(1)
    return None


def resolve_names(requested: list[str], known: list[str], what: str, key: str) -> list[str]:
    """``[all]`` -> every name; otherwise check each name, suggesting close matches for a typo.

    A name may carry CUB's numeric folder prefix (``036.Northern_Flicker``): the loader strips it
    from the dataset's names, so the prefixed form resolves to ``Northern_Flicker``.
    """
    if list(requested) == ["all"]:
        return list(known)
    resolved: dict[str, str] = {}
    for name in requested:
        found = _known_name(name, known)
        if found is None:
            bare = _NUMBER_PREFIX.match(name)
            raise unknown_name(f"{what} '{name}' in {key} is not in the dataset", bare.group(1) if bare else name,
                               known, cutoff=0.4, otherwise=f"{len(known)} {what}s exist")
        if found in resolved:
            raise UserError(f"{key} names {what} '{found}' twice ('{resolved[found]}' and '{name}'); keep one")
        resolved[found] = name
    return list(resolved)


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
        from ..data import get_dataset  # the images' normalisation, which the black and uniform baselines undo

        spec = get_dataset(cfg.dataset)
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
