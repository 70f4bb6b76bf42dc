"""Step 7: faithfulness, localisation and consistency of the stored maps at every round.

Reads the maps of step 6 (the same test images at every round) and, for each round and method,
writes the mean of each metric over the images into ``metrics/explanations.csv``
(``round, weights_remaining, method, metric, value, n_images``). The metrics are those of the
registry (`lottery_xai.metrics.METRICS`) whose needs the data and the run provide: the part metric
only with parts, the consistency with the dense maps only with round 0's maps, TCAV agreement only
with both TCAV tables; ROAR's metric is main_roar.py's. Consistency compares each
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

from .. import rundir as rd
from ..config import Config
from ..loaders import SeedPurpose, derived_seed
from ..metrics import METRICS, MetricInputs, compute_metrics
from ..errors import UserError
from .heatmaps import heatmap_images
from .rounds import as_run, configured_maps, finished_rounds, load_round_model
from .tcav import TCAV_COLUMNS

COLUMNS = ["round", "weights_remaining", "method", "metric", "value", "n_images"]


STEP6 = "step 6 (main_heatmap_save.py)"


def _maps(run: rd.RunDir, r: int, method: str, device, images: torch.Tensor | None = None,
          ids: torch.Tensor | None = None) -> torch.Tensor | None:
    """Round ``r``'s stored maps of ``method`` (None when absent), checked against the explained images."""
    path = run.heatmap_file(r, method)
    if not path.is_file():
        return None
    stored = rd.load_npz(path, keys=("maps", "ids"), step=STEP6)
    maps = stored["maps"]
    if images is not None and maps.shape != (len(images), *images.shape[-2:]):
        raise rd.unreadable(path, f"maps of shape {list(maps.shape)}, expected {[len(images), *images.shape[-2:]]} "
                                  f"for the images of {run.heatmap_images().name}", STEP6)
    if ids is not None and not np.array_equal(stored["ids"], ids.cpu().numpy()):
        raise rd.unreadable(path, f"its maps are of other images than {run.heatmap_images().name}", STEP6)
    return torch.from_numpy(maps.astype(np.float32)).to(device)


def _require_maps(cfg: Config, run: rd.RunDir, rounds: list[int]) -> None:
    """Step 7 measures step 6's maps: every requested round's (and the dense round's, the reference of
    the consistency metrics) for every method in heatmaps.methods must be on disk."""
    run.require(run.heatmap_images(), STEP6)
    needed = sorted(set(rounds) | ({0} if rounds else set()))
    for r in needed:
        for method in cfg.heatmaps.methods:
            path = run.heatmap_file(r, method)
            if not path.is_file():
                raise UserError(f"'{path}' is missing; run {STEP6} first (it computes heatmaps.methods for rounds "
                                f"{','.join(map(str, needed))})")


def _attribution_fn(cfg: Config, method: str, seed: int):
    """The configured `method` as the transformation check recomputes it on transformed images."""
    def attribution_fn(net, batch, targets):
        return configured_maps(cfg, method, net, batch, targets, seed)
    return attribution_fn


def round_metrics(model, images, boxes, maps, dense_maps, cfg: Config, parts=None, *, method: str | None = None,
                  seed: int | None = None, targets=None, true_class_maps=None) -> dict[str, torch.Tensor]:
    """Per-image values of every registered metric that reads the stored maps, for one round and method.

    A metric is computed when its needs are provided: ``box`` by `boxes`, ``parts`` by `parts` with at
    least one part, ``second_map`` by `dense_maps`, ``transform`` by `method` (recomputed on transformed
    images with `seed` and `targets`, None: the predicted class) when it is in ``metrics.transform_methods``.
    """
    transform = method is not None and seed is not None and method in cfg.metrics.transform_methods
    inputs = MetricInputs(settings=cfg.metrics, maps=maps, model=model, images=images, targets=targets, boxes=boxes,
                          parts=parts, second_map=dense_maps, seed=seed if transform else None,
                          true_class_maps=true_class_maps,
                          attribution_fn=_attribution_fn(cfg, method, seed) if transform else None)
    return compute_metrics(inputs)


def tcav_metrics(tcav_round: pd.DataFrame, tcav_dense: pd.DataFrame, cfg: Config) -> dict[str, pd.Series]:
    """Per-(class, concept) values of every registered TCAV agreement metric (a round's table against the dense one)."""
    return compute_metrics(MetricInputs(settings=cfg.metrics, tcav_round=tcav_round, tcav_dense=tcav_dense))


def _mean(values) -> float:
    """A metric's row value: the NaN-skipping mean of per-image values (in float64) or of a per-pair
    column (pandas' mean, as `tcav_agreement_summary`)."""
    if isinstance(values, pd.Series):
        return float(values.mean())
    return float(torch.as_tensor(values, dtype=torch.float64).nanmean())


def _rows(r: int, weights_remaining, method: str, values: dict) -> list[dict]:
    """The table rows of one round and method: each metric's mean and number of images (or pairs)."""
    return [{"round": r, "weights_remaining": weights_remaining, "method": method, "metric": name,
             "value": _mean(v), "n_images": len(v)} for name, v in values.items()]


def _fingerprints(run: rd.RunDir, r: int) -> str:
    """Round ``r``'s metrics come from its checkpoint and, for the consistency with the dense maps, round 0's."""
    fp = run.round_fingerprint(r)
    if r == 0:
        return fp
    return fp + "+" + (run.round_fingerprint(0) if run.checkpoint(0, run.cfg.test.checkpoint).is_file() else "none")


def _current_tcav(run: rd.RunDir, tcav: pd.DataFrame, r: int, log) -> bool:
    """Whether round ``r``'s TCAV rows were made from its current checkpoint (every layer of them)."""
    fp = run.round_fingerprint(r)
    layers = sorted(set(tcav.loc[tcav["round"] == r, "layer"]))
    if all(run.up_to_date("tcav", f"{rd.round_name(r)}/{layer}", fp) for layer in layers):
        return True
    log(f"round {r}: TCAV scores are stale (step 1 was redone); rerun step 5 for the TCAV agreement rows")
    return False


@rd.locked("metrics")
def metrics_step(run: rd.RunDir | Config, device: torch.device, rounds: list[int], force: bool = False, log=print) -> pd.DataFrame:
    run = as_run(run)
    cfg = run.cfg
    rounds = finished_rounds(run, rounds, log)
    _require_maps(cfg, run, rounds)
    run.save_config("metrics")
    batch, info = heatmap_images(run, device)
    images, boxes, parts = batch["image"].to(device), batch["bbox"].to(device), batch["parts"].to(device)
    labels = batch["label"].to(device)
    targets = labels if cfg.heatmaps.target == "true" else None  # None: the predicted class
    table = rd.read_csv(run.explanation_metrics(), COLUMNS) if run.explanation_metrics().is_file() and not force \
        else pd.DataFrame(columns=COLUMNS)
    tcav = rd.read_csv(run.tcav_scores(), TCAV_COLUMNS, step="step 5 (main_lth_tcav.py)") \
        if run.tcav_scores().is_file() else None
    for r in tqdm(rounds, desc="metric rounds"):
        stamp = _fingerprints(run, r)
        if not force and (table["round"] == r).any() and run.up_to_date("metrics", rd.round_name(r), stamp, log):
            continue
        for method in cfg.heatmaps.methods:  # maps made before step 1 was redone are not measured
            for q in sorted({r, 0}):
                if run.heatmap_file(q, method).is_file():
                    run.require_up_to_date("heatmaps", f"{rd.round_name(q)}/{method}", run.round_fingerprint(q),
                                           "step 6 (main_heatmap_save.py)")
        model, ckpt = load_round_model(cfg, run, r, info.num_classes, device)
        model.requires_grad_(False)
        rows = []
        for method in cfg.heatmaps.methods:
            maps = _maps(run, r, method, device, images, batch["id"])
            if maps is None:
                continue
            dense = _maps(run, 0, method, device, images, batch["id"]) if r > 0 else maps
            # the content heatmap reads the maps of the ground-truth class (step 6 stores those of heatmaps.target)
            true_maps = maps if cfg.heatmaps.target == "true" else configured_maps(
                cfg, method, model, images, labels, derived_seed(cfg.seed, SeedPurpose.HEATMAPS, r)).half()  # as stored
            values = round_metrics(model, images, boxes, maps, dense, cfg, parts, method=method,
                                   seed=derived_seed(cfg.seed, SeedPurpose.TRANSFORMS, r), targets=targets,
                                   true_class_maps=true_maps)
            rows += _rows(r, ckpt["weights_remaining"], method, values)
        if tcav is not None and (tcav["round"] == r).any() and (tcav["round"] == 0).any() \
                and _current_tcav(run, tcav, r, log) and _current_tcav(run, tcav, 0, log):
            rows += _rows(r, ckpt["weights_remaining"], "tcav",
                          tcav_metrics(tcav[tcav["round"] == r], tcav[tcav["round"] == 0], cfg))
        table = rd.upsert_table(run.explanation_metrics(), rows, keys=["round"], sort=["round", "method", "metric"],
                                columns=COLUMNS, replace={"round": r})
        run.record_fingerprint("metrics", rd.round_name(r), stamp)
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
