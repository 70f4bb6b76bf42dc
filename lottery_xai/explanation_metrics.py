"""Step 7: faithfulness, localisation and consistency of the stored maps at every round.

Reads the maps of step 6 (the same test images at every round) and, for each round and method,
writes the mean of each metric over the images into ``metrics/explanations.csv``
(``round, weights_remaining, method, metric, value, n_images``). Consistency compares each
round's map of an image with the dense model's map of the same image; consistency under
transformation recomputes the map on flipped / resized-cropped copies (``metrics.transform_methods``)
and compares it with the same transformation of the map; TCAV agreement compares each round's
TCAV table with the dense one (method ``tcav``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import rundir as rd
from .config import Config
from .lottery import load_round_model
from .loaders import derived_seed
from .metrics import (METRICS, deletion_insertion, energy_in_box, energy_in_parts, map_agreement, pixel_perturbation,
                      pointing_game, tcav_agreement, tcav_agreement_summary, transform_consistency)
from .steps import configured_maps, finished_rounds, heatmap_images

COLUMNS = ["round", "weights_remaining", "method", "metric", "value", "n_images"]


def _maps(run: rd.RunDir, r: int, method: str, device) -> torch.Tensor | None:
    path = run.heatmap_file(r, method)
    if not path.is_file():
        return None
    return torch.from_numpy(np.load(path)["maps"].astype(np.float32)).to(device)


def round_metrics(model, images, boxes, maps, dense_maps, cfg: Config, parts=None) -> dict[str, torch.Tensor]:
    """Per-image values of every metric that reads the stored maps, for one round and method."""
    m = cfg.metrics
    scale = images.shape[-1] / 224
    curves = deletion_insertion(model, images, maps, n_steps=m.n_steps, batch_size=m.batch_size)
    out = {"deletion_auc": curves["deletion_auc"], "insertion_auc": curves["insertion_auc"]}
    for order in ("morf", "lerf"):
        res = pixel_perturbation(model, images, maps, fractions=m.fractions, order=order, batch_size=m.batch_size)
        out[f"{order}_aopc"] = torch.as_tensor(res["aopc"])
    out["energy_in_box"] = energy_in_box(maps, boxes)
    out["pointing_game"] = pointing_game(maps, boxes, tolerance=m.pointing_tolerance * scale)
    if parts is not None and parts.shape[1] > 0:
        out["energy_in_parts"] = energy_in_parts(maps, parts, radius=max(m.part_radius * scale, 0.5))
    if dense_maps is not None:
        out.update(map_agreement(maps, dense_maps, top_fraction=m.top_fraction))
    return out


def transform_metrics(model, images, method: str, cfg: Config, seed: int, targets=None) -> dict[str, torch.Tensor]:
    """Consistency under transformation: map(T(x)) against T(map(x)), recomputing the method on T(x)."""
    def attribution_fn(net, batch, targets):
        return configured_maps(cfg, method, net, batch, targets, seed)

    m = cfg.metrics
    res = transform_consistency(model, images, attribution_fn, transforms=m.transform, n_transforms=m.n_transforms,
                                seed=seed, targets=targets, top_fraction=m.top_fraction)
    return {f"transform_{k}": res[k] for k in ("spearman", "top_iou", "ssim")}


def metrics_step(cfg: Config, device: torch.device, rounds: list[int], force: bool = False, log=print) -> pd.DataFrame:
    run = rd.RunDir(cfg)
    rounds = finished_rounds(cfg, rounds, log)
    run.save_config("metrics")
    batch, info = heatmap_images(cfg, device)
    images, boxes, parts = batch["image"].to(device), batch["bbox"].to(device), batch["parts"].to(device)
    targets = batch["label"].to(device) if cfg.heatmaps.target == "true" else None  # None: the predicted class
    table = pd.read_csv(run.explanation_metrics()) if run.explanation_metrics().is_file() and not force \
        else pd.DataFrame(columns=COLUMNS)
    tcav = pd.read_csv(run.tcav_scores()) if run.tcav_scores().is_file() else None
    for r in tqdm(rounds, desc="metric rounds"):
        if not force and (table["round"] == r).any():
            continue
        model, ckpt = load_round_model(cfg, run, r, info.num_classes, device)
        model.requires_grad_(False)
        rows = []
        for method in cfg.heatmaps.methods:
            maps = _maps(run, r, method, device)
            if maps is None:
                continue
            dense = _maps(run, 0, method, device) if r > 0 else maps
            values = round_metrics(model, images, boxes, maps, dense, cfg, parts)
            if method in cfg.metrics.transform_methods:
                values.update(transform_metrics(model, images, method, cfg, derived_seed(cfg.seed, 37, r), targets))
            rows += [{"round": r, "weights_remaining": ckpt["weights_remaining"], "method": method, "metric": name,
                      "value": float(torch.as_tensor(v, dtype=torch.float64).nanmean()), "n_images": len(v)}
                     for name, v in values.items()]
        if tcav is not None and (tcav["round"] == r).any() and (tcav["round"] == 0).any():
            summary = tcav_agreement_summary(tcav_agreement(tcav[tcav["round"] == r], tcav[tcav["round"] == 0]))
            n_pairs = int(summary["n_pairs"])
            rows += [{"round": r, "weights_remaining": ckpt["weights_remaining"], "method": "tcav",
                      "metric": "tcav_abs_diff", "value": summary["mean_abs_diff"], "n_images": n_pairs},
                     {"round": r, "weights_remaining": ckpt["weights_remaining"], "method": "tcav",
                      "metric": "tcav_flip", "value": summary["flip_rate"], "n_images": n_pairs}]
        table = pd.concat([table[table["round"] != r], pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)
        table = table.sort_values(["round", "method", "metric"]).reset_index(drop=True)
        rd.save_csv(run.explanation_metrics(), table)
    log(summary_table(table).to_string())
    log(f"step 7 done: {run.explanation_metrics()}")
    return table


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Metric x method at the dense and the sparsest round, with each metric's direction."""
    if table.empty:
        return table
    first, last = table["round"].min(), table["round"].max()
    part = table[table["round"].isin([first, last])]
    wide = part.pivot_table(index=["metric", "round"], columns="method", values="value")
    arrows = {name: ("higher" if spec.higher_is_better else "lower") for name, spec in METRICS.items()}
    wide.insert(0, "better", [arrows.get(m, "") for m, _ in wide.index])
    return wide.round(3)
