"""Steps 3-6 over every pruning round: activations, CAVs, TCAV, attribution maps.

Each step reads what the earlier steps left in the run directory, skips rounds whose
outputs are complete and made from the current checkpoint (``force`` redoes them), and writes
atomically; it holds its step lock throughout and records each output's checkpoint fingerprint
(see :mod:`lottery_xai.rundir`). The methods live in :mod:`lottery_xai.activations`, :mod:`lottery_xai.concepts` and :mod:`lottery_xai.attribution`;
this module only walks the rounds and the files.
"""
from __future__ import annotations

import difflib
import re

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset
from tqdm.auto import tqdm

from . import rundir as rd
from .activations import save_activations
from .attribution import LAYER_METHODS, attribute
from .config import Config
from .data.transforms import denormalize
from .errors import UserError
from .loaders import derived_seed, make_loader
from .lottery import load_data, load_round_model
from .models import architecture

CAV_ACCURACY_COLUMNS = ["round", "layer", "concept", "run", "accuracy", "kind"]
TCAV_COLUMNS = ["round", "weights_remaining", "layer", "class", "concept", "tcav_mean", "tcav_std", "random_mean",
                "p_value", "significant", "n_images"]


def finished_rounds(cfg: Config, rounds: list[int], log=print) -> list[int]:
    """The requested rounds that step 1 has finished (a step before step 1 is a user error)."""
    run = rd.RunDir(cfg)
    run.require(run.pruning_summary(), "step 1 (main_lth_pruning.py)")
    done = set(run.finished_rounds())
    missing = [r for r in rounds if r not in done]
    if missing:
        log(f"rounds {missing} have no checkpoint yet (step 1 not finished); they are skipped")
    return [r for r in rounds if r in done]


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
            close = difflib.get_close_matches(bare.group(1) if bare else name, known, n=3, cutoff=0.4)
            hint = f"; close matches: {', '.join(close)}" if close else f"; {len(known)} {what}s exist"
            raise UserError(f"{what} '{name}' in {key} is not in the dataset{hint}")
        if found in resolved:
            raise UserError(f"{key} names {what} '{found}' twice ('{resolved[found]}' and '{name}'); keep one")
        resolved[found] = name
    return list(resolved)


# ---------------------------------------------------------------- step 3

def warn_linear_tail(cfg: Config, num_classes: int, log=print) -> list[str]:
    """Warn about every configured concept layer after which only pooling and linear layers run."""
    from .lottery import new_model
    from .models import linear_after

    model = new_model(cfg, num_classes, cfg.seed)
    tails = [layer for layer in cfg.bb_layers_for_concepts if linear_after(model, layer, cfg.img_size)]
    for layer in tails:
        log(f"warning: only pooling and linear layers follow '{layer}', so the class-logit gradient there is the "
            "same for every image and each CAV's TCAV score is 0 or 1; put an earlier layer in bb_layers_for_concepts")
    return tails


@rd.locked("activations")
def activations_step(cfg: Config, device: torch.device, rounds: list[int], force: bool = False, log=print) -> None:
    """Bottleneck activations of every split and round, streamed to .npy memory maps."""
    run = rd.RunDir(cfg)
    rounds = finished_rounds(cfg, rounds, log)
    run.save_config("activations")
    datasets, info = load_data(cfg, cfg.activations.splits, augment=False)
    warn_linear_tail(cfg, info.num_classes, log)
    layers = list(cfg.bb_layers_for_concepts)
    for r in tqdm(rounds, desc="activation rounds"):
        fp = run.round_fingerprint(r)
        for split, dataset in datasets.items():
            outs = {layer: run.activation_file(r, split, layer) for layer in layers}
            extra = {what: run.activation_meta(r, split, what) for what in ("labels", "concepts", "ids")}
            unit = f"{rd.round_name(r)}/{split}"
            if not force and all(p.is_file() for p in [*outs.values(), *extra.values()]) \
                    and run.up_to_date("activations", unit, fp, log):
                continue
            model, _ = load_round_model(cfg, run, r, info.num_classes, device)
            loader = make_loader(dataset, cfg, device, train=False)
            save_activations(model, layers, loader, outs, flattening=cfg.cav_flattening_type, n_images=len(dataset),
                             dtype=cfg.activations.dtype, device=device, extra_paths=extra)
            run.record_fingerprint("activations", unit, fp)
    log(f"step 3 done: activations of {len(rounds)} rounds in {run.root / 'activations'}")


# ---------------------------------------------------------------- step 4

STEP3 = "step 3 (main_lth_save_activations.py)"


def _stacked(cfg: Config, run: rd.RunDir, r: int, layer: str, info=None) -> tuple[np.ndarray, np.ndarray]:
    """The activations and concept labels of the CAV splits, checked against each other (and, given the
    dataset's ``info``, against its splits and concepts)."""
    acts, concepts = [], []
    for split in cfg.cav.splits:
        path = run.require(run.activation_file(r, split, layer), STEP3)
        run.require_up_to_date("activations", f"{rd.round_name(r)}/{split}", run.round_fingerprint(r), STEP3)
        expected = len(info.split_ids[split]) if info is not None else None
        ids = rd.load_npy(run.activation_meta(r, split, "ids"), STEP3, ndim=1, rows=expected)
        act = rd.load_npy(path, STEP3, mmap=True, ndim=2, rows=len(ids))
        concepts_path = run.activation_meta(r, split, "concepts")
        labels = rd.load_npy(concepts_path, STEP3, ndim=2, rows=len(ids))
        if info is not None and labels.shape[1] != info.n_concepts:
            raise rd.unreadable(concepts_path, f"{labels.shape[1]} concepts, the dataset has {info.n_concepts}", STEP3)
        if acts and act.shape[1] != acts[0].shape[1]:
            raise rd.unreadable(path, f"{act.shape[1]} values per image, {acts[0].shape[1]} in the "
                                      f"{cfg.cav.splits[0]} split", STEP3)
        acts.append(act)
        concepts.append(labels)
    return np.concatenate(acts).astype(np.float32), np.concatenate(concepts)


def _activation_width(cfg: Config, run: rd.RunDir, r: int, layer: str) -> int | None:
    """Values per image of round ``r``'s stored activations of ``layer`` (None when step 3 left none)."""
    path = run.activation_file(r, cfg.cav.splits[0], layer)
    return rd.load_npy(path, STEP3, mmap=True, ndim=2).shape[1] if path.is_file() else None


@rd.locked("cavs")
def cavs_step(cfg: Config, rounds: list[int], force: bool = False, log=print) -> pd.DataFrame:
    """Concept and random CAVs for every round and layer, and the held-out accuracy of each."""
    from .concepts.cav import fit_all_cavs, load_cavs, save_cavs  # scikit-learn: imported by the steps that fit

    run = rd.RunDir(cfg)
    rounds = finished_rounds(cfg, rounds, log)
    run.save_config("cavs")
    _, info = load_data(cfg, ())
    concepts = resolve_names(cfg.concepts_for_tcav, info.concept_names, "concept", "concepts_for_tcav")
    columns = [info.concept_names.index(c) for c in concepts]
    table = rd.read_csv(run.cav_accuracy(), CAV_ACCURACY_COLUMNS, missing_ok=True)
    for r in tqdm(rounds, desc="CAV rounds"):
        fp, rows = run.round_fingerprint(r), []
        for layer in cfg.bb_layers_for_concepts:
            path = run.cav_file(r, layer)
            unit = f"{rd.round_name(r)}/{layer}"
            if force or not path.is_file() or not run.up_to_date("cavs", unit, fp, log):
                acts, labels = _stacked(cfg, run, r, layer, info)
                result = fit_all_cavs(acts, labels[:, columns], concepts, n_random=cfg.cav.n_random,
                                      negatives=cfg.cav.negatives, classifier=cfg.cav.classifier,
                                      seed=derived_seed(cfg.seed, 6, r), n_jobs=cfg.cav.n_jobs,
                                      test_fraction=cfg.cav.test_fraction, C=cfg.cav.C,
                                      max_per_set=cfg.cav.max_per_set or None)
                save_cavs(path, result)
                run.record_fingerprint("cavs", unit, fp)
            result = load_cavs(path)
            width = _activation_width(cfg, run, r, layer)
            if width is not None and result["cavs"].shape[-1] != width:
                raise rd.unreadable(path, f"CAVs of {result['cavs'].shape[-1]} values, the activations of {layer} "
                                          f"have {width}", "step 4 (main_lth_generate_cavs.py)")
            for c, name in enumerate(result["concepts"]):
                rows += [{"round": r, "layer": layer, "concept": name, "run": k, "accuracy": a, "kind": "concept"}
                         for k, a in enumerate(result["accuracy"][c])]
            rows += [{"round": r, "layer": layer, "concept": "random", "run": k, "accuracy": a, "kind": "random"}
                     for k, a in enumerate(result["random_accuracy"])]
        # read-modify-write after each round: rounds and layers not processed here are kept
        table = rd.upsert_table(run.cav_accuracy(), rows, keys=["round", "layer"],
                                sort=["round", "layer", "kind", "concept", "run"], columns=CAV_ACCURACY_COLUMNS)
    log(f"step 4 done: CAVs in {run.root / 'cavs'}, accuracies in {run.cav_accuracy()}")
    return table


# ---------------------------------------------------------------- step 5

@rd.locked("tcav")
def tcav_step(cfg: Config, device: torch.device, rounds: list[int], force: bool = False, log=print) -> pd.DataFrame:
    """TCAV with significance for the classes in labels_for_tcav and the concepts in concepts_for_tcav."""
    from .concepts.cav import load_cavs
    from .concepts.tcav import gradients_by_class, run_tcav

    if cfg.cav_flattening_type == "max_pool":
        raise UserError("TCAV needs cav_flattening_type flatten or avg_pool: the gradient of a max-pooled "
                        "activation is not a directional derivative")
    run = rd.RunDir(cfg)
    rounds = finished_rounds(cfg, rounds, log)
    run.save_config("tcav")
    datasets, info = load_data(cfg, cfg.tcav.splits, augment=False)
    warn_linear_tail(cfg, info.num_classes, log)
    classes = resolve_names(cfg.labels_for_tcav, info.class_names, "class", "labels_for_tcav")
    concepts = resolve_names(cfg.concepts_for_tcav, info.concept_names, "concept", "concepts_for_tcav")
    class_index = {name: info.class_names.index(name) for name in classes}
    loader = make_loader(ConcatDataset([datasets[s] for s in cfg.tcav.splits]), cfg, device, train=False)
    table = rd.read_csv(run.tcav_scores(), TCAV_COLUMNS) if run.tcav_scores().is_file() and not force else \
        pd.DataFrame(columns=TCAV_COLUMNS)
    for r in tqdm(rounds, desc="TCAV rounds"):
        fp = run.round_fingerprint(r)
        todo = [layer for layer in cfg.bb_layers_for_concepts
                if force or table[(table["round"] == r) & (table["layer"] == layer)].empty
                or not run.up_to_date("tcav", f"{rd.round_name(r)}/{layer}", fp, log)]
        if not todo:
            continue
        model, ckpt = load_round_model(cfg, run, r, info.num_classes, device)
        model.requires_grad_(False)  # gradients reach the layer only, never the parameters
        for layer in todo:
            cav_path = run.require(run.cav_file(r, layer), "step 4 (main_lth_generate_cavs.py)")
            run.require_up_to_date("cavs", f"{rd.round_name(r)}/{layer}", fp, "step 4 (main_lth_generate_cavs.py)")
            cav_result = load_cavs(cav_path)
            grads = gradients_by_class(model, layer, loader, list(class_index.values()),
                                       flattening=cfg.cav_flattening_type, device=device,
                                       max_images=cfg.tcav.max_images_per_class or None)
            widths = {int(np.shape(g)[-1]) for g in grads.values() if len(g)}
            if widths and widths != {int(np.shape(cav_result["cavs"])[-1])}:
                raise rd.unreadable(cav_path, f"CAVs of {np.shape(cav_result['cavs'])[-1]} values, the layer {layer} "
                                              f"of this model gives {widths.pop()}", "step 4 (main_lth_generate_cavs.py)")
            scores = run_tcav({name: grads[k] for name, k in class_index.items()}, cav_result, concepts,
                              alpha=cfg.tcav.alpha)
            scores.insert(0, "layer", layer)
            scores.insert(0, "weights_remaining", ckpt["weights_remaining"])
            scores.insert(0, "round", r)
            table = rd.upsert_table(run.tcav_scores(), scores, keys=["round", "layer"],
                                    sort=["round", "layer", "class", "concept"], columns=TCAV_COLUMNS)
            run.record_fingerprint("tcav", f"{rd.round_name(r)}/{layer}", fp)
    log(f"step 5 done: {run.tcav_scores()}")
    return table


# ---------------------------------------------------------------- step 6

def heatmap_images(cfg: Config, device: torch.device):
    """The test images explained at every round (chosen once, stored with the maps), as tensors."""
    run = rd.RunDir(cfg)
    datasets, info = load_data(cfg, ("test",), augment=False)
    test = datasets["test"]
    if run.heatmap_images().is_file():
        # --force alone does not rewrite this file (every round's maps refer to it): it has to be deleted first
        path, fix = run.heatmap_images(), "step 6 (main_heatmap_save.py), after deleting the file,"
        stored = rd.load_npz(path, keys=("indices", "ids", "labels", "images", "class_names"), step=fix)
        indices = stored["indices"]
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or len(stored["ids"]) != len(indices):
            raise rd.unreadable(path, f"indices of shape {list(indices.shape)} for {len(stored['ids'])} ids", fix)
        ids = getattr(test, "ids", None)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(test)
                             or (ids is not None and not np.array_equal(np.asarray(ids)[indices], stored["ids"]))):
            raise rd.unreadable(path, "its images are not in this dataset's test split (written for another dataset)",
                                fix)
    else:
        classes = resolve_names(cfg.labels_for_tcav, info.class_names, "class", "labels_for_tcav")
        labels = np.asarray(test.labels) if hasattr(test, "labels") else np.array([int(test[i]["label"]) for i in range(len(test))])
        indices = np.concatenate([np.flatnonzero(labels == info.class_names.index(c))[:cfg.heatmaps.images_per_class]
                                  for c in classes])
    items = [test[int(i)] for i in indices]
    batch = {k: torch.stack([item[k] for item in items]) for k in ("image", "label", "bbox", "parts", "id")}
    if not run.heatmap_images().is_file():
        shown = (denormalize(batch["image"], info).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        rd.save_npz(run.heatmap_images(), indices=indices, ids=batch["id"].numpy(), labels=batch["label"].numpy(),
                    bbox=batch["bbox"].numpy(), images=shown, class_names=np.asarray(info.class_names, dtype=str))
    return batch, info


def method_options(cfg: Config, method: str, seed: int) -> dict:
    h = cfg.heatmaps
    options = {
        "integrated_gradients": {"steps": h.ig_steps, "batch_size": h.batch_size},
        "occlusion": {"patch": h.occlusion_patch or None, "batch_size": h.batch_size},
        "scorecam": {"batch_size": h.batch_size},
        "random": {"seed": seed},
    }
    return options.get(method, {})


def cam_layer(cfg: Config) -> str:
    return cfg.heatmaps.layer or architecture(cfg.model_arch).cam_layer


def layer_for(cfg: Config, method: str) -> str | None:
    """The layer argument of ``method``: the CAM layer for layer methods, None for the others."""
    return cam_layer(cfg) if method in LAYER_METHODS else None


def configured_maps(cfg: Config, method: str, model, images: torch.Tensor, targets: torch.Tensor, seed: int,
                    normalize: str | None = None) -> torch.Tensor:
    """Maps of ``method`` with the configured layer and options, in chunks of ``heatmaps.batch_size``;
    chunk i is seeded ``derived_seed(seed, i)``, so the random baseline does not repeat from chunk to chunk."""
    size = cfg.heatmaps.batch_size
    return torch.cat([
        attribute(method, model, chunk, t, layer=layer_for(cfg, method), normalize=normalize or cfg.heatmaps.normalize,
                  **method_options(cfg, method, derived_seed(seed, i)))
        for i, (chunk, t) in enumerate(zip(images.split(size), targets.split(size)))])


@rd.locked("heatmaps")
def heatmaps_step(cfg: Config, device: torch.device, rounds: list[int], force: bool = False, log=print) -> None:
    """Attribution maps of the same test images at every round, for every configured method."""
    run = rd.RunDir(cfg)
    rounds = finished_rounds(cfg, rounds, log)
    run.save_config("heatmaps")
    batch, info = heatmap_images(cfg, device)
    images = batch["image"].to(device)
    for r in tqdm(rounds, desc="heatmap rounds"):
        fp = run.round_fingerprint(r)
        todo = [m for m in cfg.heatmaps.methods if force or not run.heatmap_file(r, m).is_file()
                or not run.up_to_date("heatmaps", f"{rd.round_name(r)}/{m}", fp, log)]
        if not todo:
            continue
        model, ckpt = load_round_model(cfg, run, r, info.num_classes, device)
        model.requires_grad_(False)
        with torch.no_grad():
            predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(cfg.data.eval_batch_size)])
        targets = predicted if cfg.heatmaps.target == "predicted" else batch["label"].to(device)
        for method in todo:
            maps = configured_maps(cfg, method, model, images, targets, derived_seed(cfg.seed, 7, r))
            rd.save_npz(run.heatmap_file(r, method), ids=batch["id"].numpy(), targets=targets.cpu().numpy(),
                        labels=batch["label"].numpy(), predicted=predicted.cpu().numpy(),
                        maps=maps.cpu().numpy().astype(np.float16), weights_remaining=ckpt["weights_remaining"])
            run.record_fingerprint("heatmaps", f"{rd.round_name(r)}/{method}", fp)
    from .report import plot_heatmaps

    for method in cfg.heatmaps.methods:
        plot_heatmaps(cfg, method)
    log(f"step 6 done: maps in {run.root / 'heatmaps'}, grids in {run.root / 'plots'}")
