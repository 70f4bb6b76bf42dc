"""Sanity checks: the model-parameter randomisation test (Adebayo et al. 2018), cascading from the top.

A map that is an explanation of the model must depend on the model's weights. The test re-initialises
the network's blocks from the top (the logits) down, one more block per stage, and compares each
stage's maps of the step-6 images with the original model's maps of the same images and classes
(Spearman rank correlation and SSIM, `lottery_xai.metrics.consistency`, per image, plus means).

- Blocks (`cascade_blocks`): the model's top-level parameterised modules in reverse order (for the
  small ResNet: fc, layer4, layer3, layer2, layer1, bn1, conv1); a top-level ``nn.Sequential`` with
  several parameterised children (a torchvision ResNet's ``layerN``, a VGG's ``features``) is split
  into them, so a stage is one block.
- Re-initialisation: the block's parameters and buffers are copied from a fresh model of the same
  architecture, built with the architecture's own initialisation and the seed
  ``derived_seed(seed, SeedPurpose.SANITY, round)`` (never the run's own init, which a ticket rewinds
  to, and never pretrained weights); BatchNorm running statistics come with it. A pruned round keeps its mask (pruned weights stay 0),
  so the randomised network is the round's architecture.
- Targets: the class the original model predicts (``heatmaps.target: true``: the true class), for
  every stage. Seeded methods (the random baseline) use the same seed at every stage.
- Verdict (`verdict`): a method **changes** when the mean ``sanity.verdict_measure`` (Spearman by
  default) of the fully randomised model's maps with the original's is below ``sanity.threshold``
  (0.5); otherwise it **does not change** and its maps cannot tell anything about pruning. The random
  baseline, whose noise does not depend on the model, is the negative control: it does not change.

Outputs: ``sanity/per_image.csv`` (every image, stage and measure), ``sanity/summary.csv`` (means),
``sanity/verdicts.csv`` and ``sanity/round_XX/{method}.npz`` (the maps of every stage, for the figure).
A rerun skips the (round, method) pairs whose ``sanity/fingerprints.json`` entry is the current checkpoint's
fingerprint plus `settings_key` (the sanity, heatmap and consistency settings); others are recomputed.
A compute step: it draws nothing (``main_sanity_checks.py`` then draws ``sanity/sanity_checks.png`` and
``sanity/sanity_maps_round_XX.png`` through ``lottery_xai.report.plot_sanity``; the run report shows them).
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import rundir as rd
from ..attribution import METHODS
from ..config import Config, configured_rounds, replace, to_dict
from ..errors import UserError
from ..loaders import SeedPurpose, derived_seed
from ..metrics.consistency import map_agreement
from ..names import unknown_name
from .heatmaps import heatmap_images
from .rounds import configured_maps, load_round_model, new_model, start_step

# The seed purpose of the fresh weights (a value no SeedPurpose member uses; never renumber it).
STEP6 = "step 6 (main_heatmap_save.py)"
CHANGES, NO_CHANGE = "changes", "does not change"
PER_IMAGE_COLUMNS = ["round", "weights_remaining", "method", "stage", "block", "measure", "image_id", "value"]
SUMMARY_COLUMNS = ["round", "weights_remaining", "method", "stage", "block", "measure", "mean", "std", "n_images"]
VERDICT_COLUMNS = ["round", "weights_remaining", "method", "measure", "similarity", "threshold", "verdict"]

MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def cascade_blocks(model: nn.Module) -> list[str]:
    """The model's blocks from the top (the logits) down: top-level parameterised modules in reverse
    order, a top-level Sequential with several parameterised children split into them."""
    blocks = []
    for name, child in model.named_children():
        parts = [(f"{name}.{n}", c) for n, c in child.named_children() if _has_parameters(c)] \
            if isinstance(child, nn.Sequential) else []
        if len(parts) > 1:
            blocks += [n for n, _ in parts]
        elif _has_parameters(child):
            blocks.append(name)
    if not blocks:
        raise UserError("the model has no parameterised module: there is nothing to randomise")
    return blocks[::-1]


def _in_block(key: str, block: str) -> bool:
    return key == block or key.startswith(block + ".")


def cascade(model: nn.Module, fresh: nn.Module, blocks: list[str], masks: dict | None = None) -> Iterator[nn.Module]:
    """Yield a copy of ``model`` with ``blocks[:1]``, ``blocks[:2]``, ... re-initialised from ``fresh``
    (parameters and buffers; ``masks``, by parameter name, keep pruned weights at 0). ``model`` is untouched."""
    randomised = copy.deepcopy(model).eval()
    fresh_state = fresh.state_dict()
    masks = masks or {}
    for block in blocks:
        state = randomised.state_dict()
        keys = [k for k in state if _in_block(k, block)]
        if not keys:
            raise UserError(f"block '{block}' is not a module of the model")
        with torch.no_grad():
            for k in keys:
                value = fresh_state[k].to(state[k].device, state[k].dtype)
                if k in masks:
                    value = value * masks[k].to(value.device, value.dtype)
                state[k].copy_(value)
        yield randomised


def randomisation_test(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, map_fn: MapFn,
                       fresh: nn.Module, blocks: list[str] | None = None, masks: dict | None = None,
                       top_fraction: float = 0.15) -> dict:
    """The cascading randomisation test of one method on one model.

    ``map_fn(model, images, targets) -> maps [N,H,W]``; ``fresh`` holds the random weights (same
    architecture). Returns ``blocks`` (top down), ``maps`` [K+1, N, H, W] (stage 0 = the original model;
    stage k = blocks[:k] randomised) and ``similarity``: measure -> [K, N] float64 (stage k's maps
    against the original's; `map_agreement`: spearman, top_iou, ssim)."""
    model.eval()
    blocks = blocks or cascade_blocks(model)
    original = map_fn(model, images, targets).detach().float()
    maps, similarity = [original], {}
    for randomised in cascade(model, fresh, blocks, masks):
        stage_maps = map_fn(randomised, images, targets).detach().float()
        maps.append(stage_maps)
        for measure, values in map_agreement(stage_maps, original, top_fraction).items():
            similarity.setdefault(measure, []).append(values.cpu())
    return {"blocks": blocks, "maps": torch.stack(maps),
            "similarity": {m: torch.stack(v) for m, v in similarity.items()}}


def verdict(similarity: float, threshold: float) -> str:
    """'changes' when the fully randomised model's maps are less similar to the original's than
    ``threshold`` (the mean of the verdict measure over the images), else 'does not change'."""
    return CHANGES if similarity < threshold else NO_CHANGE


# ---------------------------------------------------------------- the step

def sanity_methods(cfg: Config) -> list[str]:
    methods = list(cfg.sanity.methods) or list(cfg.heatmaps.methods)
    for m in methods:
        if m not in METHODS:
            raise unknown_name(f"config key 'sanity.methods' names {m!r}, which is not an attribution method", m,
                               list(METHODS), n=1, otherwise=f"choose from {', '.join(METHODS)}")
    return methods


def sanity_rounds(cfg: Config) -> list[int]:
    """``sanity.rounds`` with -1 (and other negatives) counted from the sparsest round."""
    return configured_rounds(cfg, "sanity.rounds")


def image_subset(count: int, n_images: int) -> np.ndarray:
    """``n_images`` indices spread evenly over ``count`` step-6 images (0 = all): every class is represented."""
    if n_images <= 0 or n_images >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, n_images).round().astype(int))


def settings_key(cfg: Config) -> str:
    """A digest of the settings the outputs depend on besides the checkpoint (the maps' settings, the images,
    the measures and the verdict's rule): outputs recorded with another one are recomputed."""
    values = {"sanity": to_dict(cfg)["sanity"], "heatmaps": to_dict(cfg)["heatmaps"],
              "top_fraction": cfg.metrics.top_fraction, "seed": cfg.seed}
    for group, key in (("sanity", "methods"), ("sanity", "rounds"), ("heatmaps", "methods"), ("heatmaps", "grid_images")):
        values[group].pop(key)  # which units are made, or a figure: not how each unit is made
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _rows(r: int, weights: float, method: str, result: dict, ids: np.ndarray, measures: list[str]):
    per_image, summary = [], []
    for k, block in enumerate(result["blocks"], start=1):
        for measure in measures:
            values = result["similarity"][measure][k - 1].numpy()
            per_image += [{"round": r, "weights_remaining": weights, "method": method, "stage": k, "block": block,
                           "measure": measure, "image_id": int(i), "value": float(v)} for i, v in zip(ids, values)]
            summary.append({"round": r, "weights_remaining": weights, "method": method, "stage": k, "block": block,
                            "measure": measure, "mean": float(values.mean()), "std": float(values.std(ddof=1))
                            if len(values) > 1 else 0.0, "n_images": len(values)})
    return per_image, summary


@rd.locked("sanity")
def sanity_step(run: rd.RunDir | Config, device: torch.device, rounds: list[int] | None = None, force: bool = False,
                log=print) -> pd.DataFrame:
    """The randomisation test of every method in ``sanity.methods`` at every round in ``rounds``
    (None: ``sanity.rounds``); a rerun skips the (round, method) pairs already done from the current
    checkpoint with the same settings (`settings_key`). Returns the verdict table."""
    run = run if isinstance(run, rd.RunDir) else rd.RunDir(run)
    cfg = run.cfg
    rounds = sanity_rounds(cfg) if rounds is None else rounds
    methods = sanity_methods(cfg)
    run, cfg, rounds = start_step(run, "sanity", rounds, log)
    run.require(run.heatmap_images(), STEP6)
    batch, info = heatmap_images(run, device)
    pick = image_subset(len(batch["id"]), cfg.sanity.n_images)
    images, labels, ids = batch["image"][pick].to(device), batch["label"][pick].to(device), batch["id"][pick].numpy()
    s = cfg.sanity
    stamp = {r: f"{run.round_fingerprint(r)}+{settings_key(cfg)}" for r in rounds}
    recorded = run.fingerprints("sanity")
    todo = [(r, m) for r in rounds for m in methods
            if force or not run.sanity_maps(r, m).is_file() or recorded.get(f"{rd.round_name(r)}/{m}") != stamp[r]]
    redone = [(r, m) for r, m in todo if not force and f"{rd.round_name(r)}/{m}" in recorded]
    if redone:
        log(f"recomputing {len(redone)} randomisation tests made from another checkpoint or other settings")
    models = {}
    for r, method in tqdm(todo, desc="randomisation tests"):
        if r not in models:
            model, ckpt = load_round_model(cfg, run, r, info.num_classes, device)
            model.requires_grad_(False)
            fresh = new_model(replace(cfg, pretrained=False), info.num_classes,  # random weights, never pretrained ones
                              derived_seed(cfg.seed, SeedPurpose.SANITY, r)).to(device)
            masks = {n: m.bool() for n, m in ckpt.get("masks", {}).items()}
            with torch.no_grad():
                predicted = torch.cat([model(c).argmax(1) for c in images.split(cfg.data.eval_batch_size)])
            targets = labels if cfg.heatmaps.target == "true" else predicted
            models = {r: (model, ckpt, fresh.requires_grad_(False), masks, targets)}  # one round's models at a time
        model, ckpt, fresh, masks, targets = models[r]
        seed = derived_seed(cfg.seed, SeedPurpose.HEATMAPS, r)  # the same seed for every stage

        def map_fn(net, x, t, method=method, seed=seed):
            return configured_maps(cfg, method, net, x, t, seed)

        result = randomisation_test(model, images, targets, map_fn, fresh, masks=masks,
                                    top_fraction=cfg.metrics.top_fraction)
        weights = float(ckpt["weights_remaining"])
        per_image, summary = _rows(r, weights, method, result, ids, list(s.measures))
        final = result["similarity"][s.verdict_measure][-1].mean().item()
        verdicts = [{"round": r, "weights_remaining": weights, "method": method, "measure": s.verdict_measure,
                     "similarity": final, "threshold": s.threshold, "verdict": verdict(final, s.threshold)}]
        rd.save_npz(run.sanity_maps(r, method), maps=result["maps"].cpu().numpy().astype(np.float16), ids=ids,
                    targets=targets.cpu().numpy(), blocks=np.asarray(result["blocks"], dtype=str),
                    weights_remaining=weights)
        key = {"round": r, "method": method}
        rd.upsert_table(run.sanity_per_image(), per_image, keys=["round", "method", "stage", "measure", "image_id"],
                        sort=["round", "method", "stage", "measure", "image_id"], columns=PER_IMAGE_COLUMNS, replace=key)
        rd.upsert_table(run.sanity_summary(), summary, keys=["round", "method", "stage", "measure"],
                        sort=["round", "method", "stage", "measure"], columns=SUMMARY_COLUMNS, replace=key)
        rd.upsert_table(run.sanity_verdicts(), verdicts, keys=["round", "method"], sort=["round", "method"],
                        columns=VERDICT_COLUMNS)
        run.record_fingerprint("sanity", f"{rd.round_name(r)}/{method}", stamp[r])
    table = rd.read_csv(run.sanity_verdicts(), VERDICT_COLUMNS, missing_ok=True)
    if len(table):
        log(table.to_string(index=False))
    log(f"sanity checks done: {run.sanity_verdicts()}")
    return table
