"""Sanity checks: the model-parameter randomisation test (Adebayo et al. 2018), cascading and independent.

A map that is an explanation of the model must depend on the model's weights. The test re-initialises
blocks of the network and compares the maps of the step-6 images under the randomised weights with the
original model's maps of the same images and classes (per image; `lottery_xai.metrics.consistency`).

Reference: Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks for Saliency Maps", NeurIPS
2018, and their code (github.com/adebayoj/sanity_checks_saliency, notebooks ``*_cascading_randomization``
and ``*_independent_randomization``): re-initialise the trainable variables of a block with the
architecture's initialisers (``tf.initialize_variables``); compare each randomised model's mask with the
trained model's by the Spearman rank correlation of the *absolute-value* masks (``abs_grayscale_norm``:
the saliency package's ``VisualizeImageGrayscale``, the sum over channels of |attribution|, clipped at its
99th percentile) and of the *signed* masks (``diverging_norm`` / ``VisualizeImageDiverging``: the signed
sum over channels), plus SSIM and the rank correlation of HOG features.

- **Randomisation** (``sanity.randomization``): ``cascading`` (the paper's main experiment, its Fig. 2 and
  the quantitative figure; the default here, as in Quantus' MPRT ``layer_order="top_down"``): stage k has
  the top k blocks re-initialised, from the logits down, so the last stage is a fully random network.
  ``independent`` (the paper's second form, its notebooks ``*_independent_randomization``: the wrapper
  reloads the trained checkpoint, then re-initialises one block): stage k has *only* block k
  re-initialised, every other block keeps its trained weights. ``both`` runs both.
- **Blocks** (`cascade_blocks`): the model's top-level parameterised modules in reverse order (for the
  small ResNet: fc, layer4, layer3, layer2, layer1, bn1, conv1); a top-level ``nn.Sequential`` with
  several parameterised children (a torchvision ResNet's ``layerN``, a VGG's ``features``) is split
  into them, so a stage is one block (the reference's Inception v3 blocks: Logits, Mixed_7c, ...).
- **Re-initialisation**: the block's parameters and buffers are copied from a fresh model of the same
  architecture, built with the architecture's own initialisation and the seed
  ``derived_seed(seed, SeedPurpose.SANITY, round)`` (never the run's own init, which a ticket rewinds
  to, and never pretrained weights); BatchNorm running statistics come with it. A pruned round keeps its
  mask (pruned weights stay 0), so the randomised network is the round's architecture.
- **Measures** (``sanity.measures``): ``spearman`` (the signed maps; the reference's "no abs"),
  ``spearman_abs`` (the Spearman correlation of the absolute values of the maps; the reference's "abs"),
  ``ssim`` and ``top_iou``; and ``emprt``, a measure of change rather than of similarity: Efficient MPRT
  (Hedström, Weber, Lapuschkin & Höhne 2023/2024, Quantus ``EfficientMPRT`` with its defaults), the
  relative rise of the map's discrete entropy (100-bin histogram) from the original model's map to the
  stage's, NaN for an image whose original map is constant (left out of the mean; ``n_images`` counts the
  images with a value). eMPRT proper is its value at the cascade's last stage (every block random).
  Maps that are non-negative by construction (Grad-CAM and the other CAMs after their ReLU, saliency = max
  over channels of |gradient|, the random baseline) give the same number for both Spearman measures; they
  differ for signed maps (integrated gradients, occlusion, gradient x activation). Differences from the
  reference: our maps are already one value per pixel (each method's own channel reduction, e.g. integrated
  gradients' signed sum over channels), so "abs" is |sum over channels| where the reference takes the sum of
  |per-channel| values; no 99th-percentile clipping before ranking (the reference's visualisation clip ties
  the top 1 % of pixels); no HOG measure.
- **Targets**: the class the original model predicts (``heatmaps.target: true``: the true class), for
  every stage. A seeded method other than the control (e.g. integrated gradients' noise baselines) keeps
  the same seed at every stage, so that only the weights differ between stages.
- **The control** (the random baseline, ``random``): its maps do not depend on the model at all, so its
  similarity with its stage-0 map can only show what the measure gives for two maps that share nothing:
  the chance level, the floor towards which a method's similarity falls as its maps lose the trained
  model's information. Until this change the control reused stage 0's seed at every stage, so its "maps
  under the randomised model" were stage 0's maps again and its similarity was exactly 1 at every stage:
  identical by construction, a number that tested nothing but the seed. Now each stage redraws it
  (``derived_seed(step-6 seed, SeedPurpose.SANITY, randomisation, stage)``), so each stage's control is an
  independent draw computed for that stage: the similarity of two independent random maps, whose mean
  over images estimates that stage's chance level (about 0 for Spearman, the SSIM of two noise maps for
  SSIM) and whose spread shows the noise of the mean at this number of images. It has no trend over the
  stages (the model does not enter it): the flat line every method's curve is read against. Its verdict
  is ``control`` (it is not judged: random maps change under any redraw, which says nothing about
  weights; Binder et al. 2022 make the point that such uninformative maps pass this test).
- **Verdict** (`verdict`, `verdict_stage`; our rule, the paper gives none): a method **changes** when the mean
  ``sanity.verdict_measure`` of a randomised model's maps with the original's is below ``sanity.threshold``
  (0.5) at the stage ``sanity.verdict_stage`` names; otherwise it **does not change** and its maps cannot tell
  anything about pruning. The default reads the SSIM (Adebayo et al.'s third measure) once the upper half of
  the blocks is random (``upper_half``: the cascade's stage at which the top ``floor(K/2)`` of the K blocks are
  re-initialised, from the logits down): the "higher layers" under which Adebayo et al. found guided
  backprop's and guided Grad-CAM's maps unchanged, their finding read where they made it. Measured in
  doc/results.md: on the embedded default it flags both positive controls and passes SmoothGrad at rounds 0
  and 4; its pre-registered validation held 9 of 10 predictions on two other settings (guided Grad-CAM on
  MNIST changes with its Grad-CAM factor). ``sanity.verdict_stage: all`` reads the last stage (every block
  random); with ``sanity.verdict_measure: spearman`` that is this tool's earlier rule, which flagged neither
  positive control on the embedded default. With ``sanity.verdict_measure: emprt`` a method changes when its
  mean eMPRT at the last stage is above ``sanity.emprt_threshold`` (0: its maps' entropy rises under
  randomisation, the authors' reading): an option, because its pre-registered validation held for 7 of 15
  predictions (it rated guided backprop's maps as changing most and Grad-CAM's as unchanged). Independent
  randomisation reads the stage whose single block changes the maps most (the lowest mean similarity, the
  highest mean eMPRT), under either stage setting. ``verdicts.csv`` names the randomisation, the measure
  (``spearman`` = signed, ``spearman_abs`` = absolute values) and the stage and block it read.
- **Controls** (``sanity.controls``): guided backprop and guided Grad-CAM (``MethodSpec.sanity = "fails"``)
  and SmoothGrad (``"passes"``) are tested besides ``sanity.methods`` by default, so that every run's report
  says whether the verdict agrees with the paper on them; a control that does not apply to the model (no
  ``nn.ReLU`` module to guide, no layer with a spatial output) is left out with a log line.

Outputs: ``sanity/per_image.csv`` (every image, randomisation, stage and measure), ``sanity/summary.csv``
(means), ``sanity/verdicts.csv`` and ``sanity/round_XX/{method}.npz`` (the maps of every stage, float32,
``maps_cascading`` / ``maps_independent``, for the figure). A rerun skips the (round, method) pairs whose
``sanity/fingerprints.json`` entry is the current checkpoint's fingerprint plus `settings_key` (the
sanity, heatmap and consistency settings); others are recomputed. Tables written before the
randomisation column existed are replaced. A compute step: it draws nothing (``main_sanity_checks.py``
then draws ``sanity/sanity_checks.png`` (cascading), ``sanity/sanity_checks_independent.png`` and
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

from ..attribution import METHODS
from ..config import VERDICT_STAGES, Config, configured_rounds, replace, to_dict
from ..errors import UserError
from ..metrics.consistency import map_agreement, spearman
from ..metrics.randomisation import efficient_mprt
from ..names import unknown_name
from ..rundir import RunDir, round_name
from ..safe_io import read_csv, save_npz, upsert_table
from ..seeds import SeedPurpose, derived_seed
from ..steps import label, step
from .heatmaps import heatmap_images
from .loading import load_round_model, new_model, restructured, start_step
from .maps import configured_maps, explained_targets, map_seed
CHANGES, NO_CHANGE, CONTROL = "changes", "does not change", "control"
CONTROL_METHOD = "random"  # the random baseline: the control, redrawn at every stage
RISE_MEASURES = ("emprt",)  # measures of change (higher = the maps changed more), not of similarity
RANDOMIZATIONS = ("cascading", "independent")
PER_IMAGE_COLUMNS = ["round", "weights_remaining", "method", "randomization", "stage", "block", "measure", "image_id",
                     "value"]
SUMMARY_COLUMNS = ["round", "weights_remaining", "method", "randomization", "stage", "block", "measure", "mean", "std",
                   "n_images"]
VERDICT_COLUMNS = ["round", "weights_remaining", "method", "randomization", "measure", "stage", "block", "similarity",
                   "threshold", "verdict"]

# map_fn(model, images, targets, stage) -> maps [N, H, W]; stage 0 is the original model
MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


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


def _block_keys(state: dict, block: str) -> list[str]:
    keys = [k for k in state if _in_block(k, block)]
    if not keys:
        raise UserError(f"block '{block}' is not a module of the model")
    return keys


def _copy_into(state: dict, source: dict, keys: list[str], masks: dict) -> None:
    """``state[k] = source[k]`` (times the mask of k, when there is one) for every k in ``keys``, in place."""
    with torch.no_grad():
        for k in keys:
            value = source[k].to(state[k].device, state[k].dtype)
            if k in masks:
                value = value * masks[k].to(value.device, value.dtype)
            state[k].copy_(value)


def cascade(model: nn.Module, fresh: nn.Module, blocks: list[str], masks: dict | None = None) -> Iterator[nn.Module]:
    """Yield a copy of ``model`` with ``blocks[:1]``, ``blocks[:2]``, ... re-initialised from ``fresh``
    (parameters and buffers; ``masks``, by parameter name, keep pruned weights at 0). ``model`` is untouched."""
    randomised = copy.deepcopy(model).eval()
    fresh_state = fresh.state_dict()
    for block in blocks:
        state = randomised.state_dict()
        _copy_into(state, fresh_state, _block_keys(state, block), masks or {})
        yield randomised


def independent(model: nn.Module, fresh: nn.Module, blocks: list[str], masks: dict | None = None) -> Iterator[nn.Module]:
    """Yield a copy of ``model`` with only ``blocks[0]``, then only ``blocks[1]``, ... re-initialised from
    ``fresh`` (masks kept as in `cascade`); every other block holds the trained weights (the reference
    reloads the trained model before each block). One copy is reused: each block is restored before
    the next one is replaced. ``model`` is untouched."""
    randomised = copy.deepcopy(model).eval()
    trained_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fresh_state = fresh.state_dict()
    previous: list[str] = []
    for block in blocks:
        state = randomised.state_dict()
        _copy_into(state, trained_state, previous, {})
        previous = _block_keys(state, block)
        _copy_into(state, fresh_state, previous, masks or {})
        yield randomised


RANDOMISERS = {"cascading": cascade, "independent": independent}


def similarities(maps: torch.Tensor, original: torch.Tensor, top_fraction: float) -> dict[str, torch.Tensor]:
    """Every measure of ``maps`` [N,H,W] against ``original``: `map_agreement` (spearman of the signed maps,
    top_iou, ssim), ``spearman_abs``, the Spearman correlation of the maps' absolute values, and ``emprt``,
    the relative rise of the maps' discrete entropy (`efficient_mprt`; a measure of change, not of
    similarity: NaN for an image whose original map is constant)."""
    out = map_agreement(maps, original, top_fraction)
    out["spearman_abs"] = spearman(maps.abs(), original.abs())
    out["emprt"] = efficient_mprt(maps, original)
    return out


def randomisation_test(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, map_fn: MapFn,
                       fresh: nn.Module, blocks: list[str] | None = None, masks: dict | None = None,
                       top_fraction: float = 0.15, randomization: str = "cascading") -> dict:
    """The randomisation test (``randomization``: cascading or independent) of one method on one model.

    ``map_fn(model, images, targets, stage) -> maps [N,H,W]`` (``stage`` 0 = the original model, so the
    control can be redrawn per stage); ``fresh`` holds the random weights (same architecture). Returns
    ``blocks`` (top down), ``maps`` [K+1, N, H, W] (stage 0 = the original model; cascading: stage k =
    blocks[:k] randomised; independent: only blocks[k-1]) and ``similarity``: measure -> [K, N] float64
    (stage k's maps against the original's; see `similarities`)."""
    if randomization not in RANDOMISERS:
        raise UserError(f"randomization must be one of {', '.join(RANDOMISERS)}, got {randomization!r}")
    model.eval()
    blocks = blocks or cascade_blocks(model)
    original = map_fn(model, images, targets, 0).detach().float()
    maps, similarity = [original], {}
    for stage, randomised in enumerate(RANDOMISERS[randomization](model, fresh, blocks, masks), start=1):
        stage_maps = map_fn(randomised, images, targets, stage).detach().float()
        maps.append(stage_maps)
        for measure, values in similarities(stage_maps, original, top_fraction).items():
            similarity.setdefault(measure, []).append(values.cpu())
    return {"blocks": blocks, "maps": torch.stack(maps), "randomization": randomization,
            "similarity": {m: torch.stack(v) for m, v in similarity.items()}}


def verdict(value: float, threshold: float, measure: str = "spearman") -> str:
    """'changes' when a randomised model's maps are less similar to the original's than ``threshold``
    (the mean of the verdict measure over the images), else 'does not change'. For a measure of change
    (``emprt``, `RISE_MEASURES`): 'changes' when the mean is above ``threshold``."""
    changed = value > threshold if measure in RISE_MEASURES else value < threshold
    return CHANGES if changed else NO_CHANGE


def verdict_stage(result: dict, measure: str, stage: str = "all") -> tuple[int, float]:
    """The stage the verdict reads, and its mean ``measure`` (over the images that have a value). Cascading:
    ``stage`` ``all``, the last stage (every block random); ``upper_half``, stage ``max(1, K // 2)`` of the K
    blocks (the top half random, the "higher layers" under which Adebayo et al. found guided backprop's maps
    unchanged). Independent: the stage (block) that changes the maps most (the lowest mean similarity, the
    highest mean of a measure of change), whatever ``stage``."""
    if stage not in VERDICT_STAGES:
        raise UserError(f"sanity.verdict_stage must be one of {', '.join(VERDICT_STAGES)}, got {stage!r}")
    means = result["similarity"][measure].nanmean(dim=1)
    if result["randomization"] != "cascading":
        index = int(torch.argmax(means) if measure in RISE_MEASURES else torch.argmin(means))
    else:
        index = cascade_stage(stage, len(means)) - 1
    return index + 1, float(means[index])


def cascade_stage(stage: str, blocks: int) -> int:
    """The cascade's stage (1..``blocks``) that ``sanity.verdict_stage`` ``stage`` names: ``all``, the last;
    ``upper_half``, ``max(1, blocks // 2)``."""
    return blocks if stage == "all" else max(1, blocks // 2)


# ---------------------------------------------------------------- the step

def sanity_methods(cfg: Config) -> list[str]:
    """The methods the step tests: ``sanity.methods`` (``[]``: ``heatmaps.methods``), then the
    ``sanity.controls`` not among them."""
    asked = list(cfg.sanity.methods or cfg.heatmaps.methods)
    methods = list(dict.fromkeys([*asked, *cfg.sanity.controls]))
    for m in methods:
        if m not in METHODS:
            key = "sanity.methods" if m in asked else "sanity.controls"
            raise unknown_name(f"config key '{key}' names {m!r}, which is not an attribution method", m,
                               list(METHODS), n=1, otherwise=f"choose from {', '.join(METHODS)}")
    return methods


def sanity_randomizations(cfg: Config) -> list[str]:
    """``sanity.randomization`` as the list of randomisations to run."""
    kind = cfg.sanity.randomization
    return list(RANDOMIZATIONS) if kind == "both" else [kind]


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
              "top_fraction": cfg.metrics.top_fraction, "seed": cfg.seed, "control": "redrawn per stage"}
    for group, key in (("sanity", "methods"), ("sanity", "controls"), ("sanity", "rounds"), ("heatmaps", "methods"),
                       ("heatmaps", "grid_images")):
        values[group].pop(key)  # which units are made, or a figure: not how each unit is made
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage_seed(seed: int, method: str, randomization: str, stage: int) -> int:
    """The seed of ``method``'s maps at ``stage``: ``seed`` (step 6's) for every method at every stage, but
    the control's maps are redrawn at each stage k >= 1 (``derived_seed(seed, SANITY, randomisation, k)``)."""
    if method != CONTROL_METHOD or stage == 0:
        return seed
    return derived_seed(seed, SeedPurpose.SANITY, RANDOMIZATIONS.index(randomization) + 1, stage)


def _rows(r: int, weights: float, method: str, result: dict, ids: np.ndarray, measures: list[str]):
    per_image, summary = [], []
    kind = result["randomization"]
    for k, block in enumerate(result["blocks"], start=1):
        for measure in measures:
            values = result["similarity"][measure][k - 1].numpy()
            key = {"round": r, "weights_remaining": weights, "method": method, "randomization": kind, "stage": k,
                   "block": block, "measure": measure}
            per_image += [{**key, "image_id": int(i), "value": float(v)} for i, v in zip(ids, values)]
            valid = values[np.isfinite(values)]  # emprt has no value for an image whose original map is constant
            summary.append({**key, "mean": float(valid.mean()) if len(valid) else float("nan"),
                            "std": float(valid.std(ddof=1)) if len(valid) > 1 else 0.0, "n_images": len(valid)})
    return per_image, summary


def _stage_maps(cfg: Config, method: str, kind: str, seed: int) -> MapFn:
    """The `MapFn` of ``method`` in the ``kind`` randomisation: its configured maps with `stage_seed`."""
    def map_fn(net, x, t, stage):
        return configured_maps(cfg, method, net, x, t, stage_seed(seed, method, kind, stage), adaptive=False)
    return map_fn


def read_stage(s) -> str:
    """The cascade's stage the verdict reads (`sanity` config): ``sanity.verdict_stage``, but ``all`` for eMPRT,
    which is defined on the fully randomised model (Hedström et al.)."""
    return "all" if s.verdict_measure == "emprt" else s.verdict_stage


def _verdict_row(r: int, weights: float, method: str, result: dict, s) -> dict:
    stage, similarity = verdict_stage(result, s.verdict_measure, read_stage(s))
    threshold = verdict_threshold(s)
    return {"round": r, "weights_remaining": weights, "method": method, "randomization": result["randomization"],
            "measure": s.verdict_measure, "stage": stage, "block": result["blocks"][stage - 1],
            "similarity": similarity, "threshold": threshold,
            "verdict": CONTROL if method == CONTROL_METHOD else verdict(similarity, threshold, s.verdict_measure)}


def verdict_threshold(s) -> float:
    """The verdict's threshold for ``sanity.verdict_measure``: ``sanity.emprt_threshold`` for eMPRT (a
    measure of change), ``sanity.threshold`` for the similarities."""
    return s.emprt_threshold if s.verdict_measure == "emprt" else s.threshold


def _drop_outdated_tables(run: RunDir, log) -> bool:
    """Remove the sanity tables written without today's columns (before the randomisation column);
    True when any was removed (then every unit is recomputed)."""
    dropped = False
    for path, columns in ((run.sanity_per_image(), PER_IMAGE_COLUMNS), (run.sanity_summary(), SUMMARY_COLUMNS),
                          (run.sanity_verdicts(), VERDICT_COLUMNS)):
        if path.is_file():
            header = pd.read_csv(path, nrows=0).columns
            if any(c not in header for c in columns):
                path.unlink()
                dropped = True
    if dropped:
        log("sanity: tables of an older format replaced; every randomisation test is recomputed")
    return dropped


@step("sanity", script="main_sanity_checks.py", title="sanity checks: the model-parameter randomisation test "
      "(Adebayo et al. 2018) of every attribution method at the dense and the sparsest round", folder="sanity",
      needs=("pruning", "heatmaps"), rounds="config:sanity.rounds", per_round=True,
      writes=("sanity/round_XX/{method}.npz", "sanity/per_image.csv", "sanity/summary.csv", "sanity/verdicts.csv",
              "sanity/fingerprints.json", "config.sanity.yaml"),
      figures=("sanity/sanity_checks.png", "sanity/sanity_checks_independent.png", "sanity/sanity_maps_round_XX.png"))
def sanity_step(run: RunDir, device: torch.device, rounds: list[int] | None = None, force: bool = False,
                log=print) -> pd.DataFrame:
    """The randomisation tests (``sanity.randomization``) of every method in ``sanity.methods`` at every
    round in ``rounds`` (None: ``sanity.rounds``) on the images of step 6; a rerun skips the (round,
    method) pairs already done from the current checkpoint with the same settings (`settings_key`).
    Returns the verdict table."""
    cfg = run.cfg
    rounds = sanity_rounds(cfg) if rounds is None else rounds
    methods = sanity_methods(cfg)
    added_controls = set(methods) - set(cfg.sanity.methods or cfg.heatmaps.methods)  # left out where they do not apply
    kinds = sanity_randomizations(cfg)
    rounds = start_step(run, "sanity", rounds, log)
    run.require(run.heatmap_images(), label("heatmaps"))
    batch, info = heatmap_images(run, device)
    pick = image_subset(len(batch["id"]), cfg.sanity.n_images)
    images, labels, ids = batch["image"][pick].to(device), batch["label"][pick].to(device), batch["id"][pick].numpy()
    s = cfg.sanity
    force = _drop_outdated_tables(run, log) or force
    stamp = {r: f"{run.round_fingerprint(r)}+{settings_key(cfg)}" for r in rounds}
    recorded = run.fingerprints("sanity")
    todo = [(r, m) for r in rounds for m in methods
            if force or not run.sanity_maps(r, m).is_file() or recorded.get(f"{round_name(r)}/{m}") != stamp[r]]
    redone = [(r, m) for r, m in todo if not force and f"{round_name(r)}/{m}" in recorded]
    if redone:
        log(f"recomputing {len(redone)} randomisation tests made from another checkpoint or other settings")
    models = {}
    for r, method in tqdm(todo, desc="randomisation tests"):
        if r not in models:
            model, ckpt = load_round_model(run, r, info.num_classes, device)
            model.requires_grad_(False)
            fresh = new_model(replace(cfg, pretrained=False), info.num_classes,  # random weights, never pretrained ones
                              derived_seed(cfg.seed, SeedPurpose.SANITY, r))
            fresh = restructured(fresh, ckpt.get("structure")).to(device)  # a channel-pruned round: its smaller network
            masks = {n: m.bool() for n, m in ckpt.get("masks", {}).items()}
            targets = explained_targets(cfg, model, images, labels)
            models = {r: (model, ckpt, fresh.requires_grad_(False), masks, targets)}  # one round's models at a time
        model, ckpt, fresh, masks, targets = models[r]
        seed = map_seed(run, r)  # step 6's seed: stage 0 is step 6's maps
        weights = float(ckpt["weights_remaining"])
        per_image, summary, verdicts, arrays = [], [], [], {}
        try:
            results = [randomisation_test(model, images, targets, _stage_maps(cfg, method, kind, seed), fresh,
                                          masks=masks, top_fraction=cfg.metrics.top_fraction, randomization=kind)
                       for kind in kinds]
        except UserError as error:
            if method not in added_controls:
                raise
            log(f"sanity: the control {method} is left out: it does not apply to this model ({error})")
            continue
        for result in results:
            rows = _rows(r, weights, method, result, ids, list(s.measures))
            per_image += rows[0]
            summary += rows[1]
            verdicts.append(_verdict_row(r, weights, method, result, s))
            arrays[f"maps_{result['randomization']}"] = result["maps"].cpu().numpy().astype(np.float32)
            blocks = result["blocks"]
        save_npz(run.sanity_maps(r, method), **arrays, ids=ids, targets=targets.cpu().numpy(),
                 blocks=np.asarray(blocks, dtype=str), weights_remaining=weights)
        key = {"round": r, "method": method}
        upsert_table(run.sanity_per_image(), per_image,
                     keys=["round", "method", "randomization", "stage", "measure", "image_id"],
                     sort=["round", "method", "randomization", "stage", "measure", "image_id"],
                     columns=PER_IMAGE_COLUMNS, replace=key)
        upsert_table(run.sanity_summary(), summary, keys=["round", "method", "randomization", "stage", "measure"],
                     sort=["round", "method", "randomization", "stage", "measure"], columns=SUMMARY_COLUMNS,
                     replace=key)
        upsert_table(run.sanity_verdicts(), verdicts, keys=["round", "method", "randomization"],
                     sort=["round", "method", "randomization"], columns=VERDICT_COLUMNS, replace=key)
        run.record_fingerprint("sanity", f"{round_name(r)}/{method}", stamp[r])
    table = read_csv(run.sanity_verdicts(), VERDICT_COLUMNS, missing_ok=True)
    if len(table):
        log(table.to_string(index=False))
    log(f"sanity checks done: {run.sanity_verdicts()}")
    return table
