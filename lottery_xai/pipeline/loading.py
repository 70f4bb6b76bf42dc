"""What a step loads: the rounds step 1 has finished, the dataset, a round's model from its checkpoint
(checked against the architecture), and the config's class and concept names resolved against the dataset."""
from __future__ import annotations

import re

import torch

from .. import structured
from ..config import SPLIT_NAMES, Config
from ..data import build_datasets
from ..errors import UserError
from ..models import architecture, build_model
from ..names import unknown_name
from ..pruning import prunable_names
from ..rundir import RunDir
from ..safe_io import load_torch, unreadable
from ..steps import label
from .maps import check_methods

SPLITS = SPLIT_NAMES


def start_step(run: RunDir, step: str, rounds: list[int], log=print) -> list[int]:
    """Every step's preamble: the config's method names checked against the attribution registry, the
    config the step runs with saved as ``config.<step>.yaml``; returns the requested rounds that step 1
    has finished."""
    check_methods(run.cfg)
    rounds = finished_rounds(run, rounds, log)
    run.save_config(step)
    return rounds


def finished_rounds(run: RunDir, rounds: list[int], log=print) -> list[int]:
    """The requested rounds that step 1 has finished (a step before step 1 is a user error)."""
    run.require(run.pruning_summary(), label("pruning"))
    done = set(run.finished_rounds())
    missing = [r for r in rounds if r not in done]
    if missing:
        log(f"rounds {missing} have no checkpoint yet (step 1 not finished); they are skipped")
    return [r for r in rounds if r in done]


def load_data(cfg: Config, splits=("train", "val", "test"), augment: bool | None = None):
    """Datasets of the configured dataset and its DatasetInfo."""
    return build_datasets(cfg.dataset, cfg.data_root, cfg.json_root, cfg.img_size, splits=tuple(splits),
                          augment_train=cfg.data.augment if augment is None else augment, seed=cfg.seed)


def new_model(cfg: Config, num_classes: int, seed: int, pretrained: bool = True) -> torch.nn.Module:
    """A freshly initialised model (``model_arch``, ``model_args``, and the ``pretrained`` weights unless
    ``pretrained=False``: for a model whose every weight a checkpoint replaces); the initial weights depend
    only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.model_arch, num_classes, cfg.pretrained if pretrained else False, cfg.img_size,
                           cfg.model_args)


def model_masks_template(cfg: Config, model: torch.nn.Module) -> list[str]:
    return prunable_names(model, cfg.pruning.prune_bn, conv_only=cfg.pruning.layers == "conv")


def input_shape(cfg: Config) -> tuple[int, int, int, int]:
    """The shape of one network input (what torch-pruning's dependency graph is traced with)."""
    return (1, 3, int(cfg.img_size), int(cfg.img_size))


def full_structure(cfg: Config, model: torch.nn.Module) -> structured.Structure:
    """``pruning.structure: channels``: the channel groups of the configured network ``model`` (a fresh full
    one), every channel kept (round 0). ``pruning.layers: conv`` keeps the groups written by conv layers."""
    return structured.full_structure(model, input_shape(cfg), classifier=architecture(cfg.model_arch).classifier,
                                     conv_only=cfg.pruning.layers == "conv")


def restructured(model: torch.nn.Module, structure, path=None) -> torch.nn.Module:
    """``model``, a fresh full network, rebuilt in place to ``structure`` (a channel-pruned round's record in its
    checkpoint; ``None``: an unstructured round, ``model`` unchanged). Its weights are those of the kept channels."""
    if structure is None:
        return model
    try:
        structured.check_structure(structure)
        return structured.restructure(model, structured.unpruned(structure), structure)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise foreign_checkpoint(path, f"its channel structure does not fit this model: {exc}") from None


def load_round_model(run: RunDir, r: int, num_classes: int | None, device, which: str | None = None):
    """The model of round ``r`` (best-val or last checkpoint, default ``test.checkpoint``), in eval mode on
    ``device``, with its checkpoint; for a channel-pruned run the smaller rebuilt network. ``num_classes=None``
    reads the class count from the checkpoint's classifier (no dataset needed)."""
    cfg = run.cfg
    path = run.loaded_checkpoint(r, which)
    ckpt = load_torch(path, step=label("pruning"), keys=("state_dict", "weights_remaining"))
    if num_classes is None:
        classifier = ckpt["state_dict"].get(architecture(cfg.model_arch).classifier + ".weight")
        if getattr(classifier, "ndim", 0) != 2:
            raise foreign_checkpoint(path, f"no {cfg.model_arch} classifier in it")
        num_classes = int(classifier.shape[0])
    # the checkpoint replaces every weight; a channel-pruned round (pruning.structure: channels) is the smaller
    # network its checkpoint's structure names
    model = restructured(new_model(cfg, num_classes, cfg.seed, pretrained=False), ckpt.get("structure"), path)
    model.load_state_dict(check_state(model, ckpt["state_dict"], path))
    return model.to(device).eval(), ckpt


def foreign_checkpoint(path, detail: str) -> UserError:
    return UserError(f"checkpoint '{path}' was written for another architecture or dataset ({detail}); "
                     f"use the config it was made with or rerun {label('pruning')} with --force")


def check_state(model: torch.nn.Module, state, path) -> dict:
    """``state`` if it fits ``model`` (same parameter and buffer names and shapes), else a UserError naming ``path``."""
    if not isinstance(state, dict):
        raise unreadable(path, f"its state_dict is a {type(state).__name__}", label("pruning"))
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


