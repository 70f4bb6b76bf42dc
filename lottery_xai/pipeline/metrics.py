"""Step 7: faithfulness, localisation and consistency of the stored maps at every round.

Reads the maps of step 6 (the same test images at every round) and, for each round and method,
writes the mean of each metric over the images into ``metrics/explanations.csv``
(``round, weights_remaining, method, metric, value, n_images, ci_low, ci_high``: the interval is the
percentile bootstrap of the mean over the images, ``stats.n_bootstrap`` resamples at
``stats.confidence``, seeded per round), every image's value into ``metrics/per_image.csv``
(``round, method, metric, image_id, value``; NaN where a metric is undefined for an image), and the
paired tests into ``metrics/tests.csv``: a Wilcoxon signed-rank test of each pruned round against the
dense round (per method and metric) and of each method against the random baseline (per round and
metric), on the per-image values of the same images, all p-values corrected together with
``stats.correction`` (Holm) at ``stats.alpha`` (see `lottery_xai.stats.inference`). The TCAV agreement
rows are per (class, concept) pair, not per image: they get a bootstrap interval over the pairs but no
per-image rows and no test. The metrics are those of the
registry (`lottery_xai.metrics.METRICS`) whose needs the data and the run provide: the part metric
only with parts, the consistency with the dense maps only with round 0's maps, TCAV agreement only
with both TCAV tables; ROAR's metric is main_roar.py's. Consistency compares each
round's map of an image with the dense model's map of the same image; consistency under
transformation recomputes the map on flipped / resized-cropped copies (``metrics.transform_methods``)
and compares it with the same transformation of the map; TCAV agreement compares each round's
TCAV table with the dense one (method ``tcav``).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import rundir as rd
from ..config import Config
from ..data import get_dataset
from ..loaders import SeedPurpose, derived_seed
from ..metrics import METRICS, MetricInputs, compute_metrics
from ..errors import UserError
from ..stats.inference import TEST_COLUMNS, bootstrap_ci, paired_tests
from .heatmaps import heatmap_images
from .rounds import as_run, configured_maps, finished_rounds, load_round_model
from .tcav import TCAV_COLUMNS

COLUMNS = ["round", "weights_remaining", "method", "metric", "value", "n_images", "ci_low", "ci_high"]
PER_IMAGE_COLUMNS = ["round", "method", "metric", "image_id", "value"]


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


def _as_array(values) -> np.ndarray:
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=np.float64)
    return torch.as_tensor(values, dtype=torch.float64).cpu().numpy()


def _rows(r: int, weights_remaining, method: str, values: dict, cfg: Config | None = None) -> list[dict]:
    """The table rows of one round and method: each metric's mean, number of images (or pairs) and the
    bootstrap interval of the mean (seeded by the round; NaN without ``cfg``)."""
    rows = []
    for name, v in values.items():
        low, high = np.nan, np.nan
        if cfg is not None:
            s = cfg.stats
            low, high = bootstrap_ci(_as_array(v), s.n_bootstrap, s.confidence,
                                     seed=derived_seed(cfg.seed, SeedPurpose.STATS_BOOTSTRAP, r))
        rows.append({"round": r, "weights_remaining": weights_remaining, "method": method, "metric": name,
                     "value": _mean(v), "n_images": len(v), "ci_low": low, "ci_high": high})
    return rows


def _per_image_rows(r: int, method: str, values: dict, ids: np.ndarray) -> pd.DataFrame:
    """Every image's value of every metric of one round and method (the long table's rows)."""
    parts = [pd.DataFrame({"round": r, "method": method, "metric": name, "image_id": ids, "value": _as_array(v)})
             for name, v in values.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PER_IMAGE_COLUMNS)


def _start_tables(run: rd.RunDir, force: bool, log) -> pd.DataFrame:
    """The metrics table on disk (empty with ``force``: the requested rounds are redone, the others kept).
    A table of an older version (no interval columns) is emptied: every round is measured again (a round
    without per-image rows is too, see `metrics_step`)."""
    path = run.explanation_metrics()
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    table = rd.read_csv(path, COLUMNS[:6], step="step 7 (main_explanation_metrics.py) with --force")
    if not set(COLUMNS) <= set(table.columns):
        log(f"'{path}' has no intervals (an older step 7): measuring every round again")
        rd.save_csv(path, pd.DataFrame(columns=COLUMNS))
        return pd.DataFrame(columns=COLUMNS)
    return pd.DataFrame(columns=COLUMNS) if force else table


def write_tests(run: rd.RunDir, table: pd.DataFrame) -> pd.DataFrame:
    """``metrics/tests.csv`` from the per-image values of every round on disk (one correction over all)."""
    per_image = rd.read_csv(run.explanation_per_image(), PER_IMAGE_COLUMNS, missing_ok=True,
                            step="step 7 (main_explanation_metrics.py) with --force")
    s = run.cfg.stats
    weights = dict(zip(table["round"].astype(int), table["weights_remaining"].astype(float)))
    tests = paired_tests(per_image, dense_round=0, baseline="random", correction=s.correction, alpha=s.alpha,
                         weights=weights) if len(per_image) else pd.DataFrame(columns=TEST_COLUMNS)
    rd.save_csv(run.explanation_tests(), tests)
    return tests


def _fingerprints(run: rd.RunDir, r: int) -> str:
    """Round ``r``'s metrics come from its checkpoint and, for the consistency with the dense maps, round 0's."""
    fp = run.round_fingerprint(r)
    if r == 0:
        return fp
    return fp + "+" + (run.round_fingerprint(0) if run.checkpoint(0, run.cfg.test.checkpoint).is_file() else "none")


def _inputs_stamp(run: rd.RunDir, r: int, with_tcav: bool) -> str:
    """What round ``r``'s metrics are made from: the checkpoints (`_fingerprints`), the content of the stored
    maps they read (round r's and the dense round's: step 6 redone with other images or settings makes
    step 7 measure again) and whether the TCAV agreement rows are computed (step 5 run later adds them)."""
    digest = hashlib.sha1()
    for method in run.cfg.heatmaps.methods:
        for q in sorted({r, 0}):
            path = run.heatmap_file(q, method)
            if path.is_file():
                stored = rd.load_npz(path, keys=("maps", "ids"), step=STEP6)
                digest.update(f"{q}/{method}:".encode())
                digest.update(np.ascontiguousarray(stored["ids"]).tobytes())
                digest.update(np.ascontiguousarray(stored["maps"]).tobytes())
    return f"{_fingerprints(run, r)}+maps:{digest.hexdigest()[:16]}" + ("+tcav" if with_tcav else "")


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
    if not get_dataset(cfg.dataset).has_boxes:  # a folder dataset: bbox is the whole image, box metrics are skipped
        log(f"dataset '{cfg.dataset}' has no object boxes: the localisation metrics (energy in box, pointing game) are skipped")
        boxes = None
    labels = batch["label"].to(device)
    targets = labels if cfg.heatmaps.target == "true" else None  # None: the predicted class
    table = _start_tables(run, force, log)
    per_image = rd.read_csv(run.explanation_per_image(), PER_IMAGE_COLUMNS, missing_ok=True)
    ids = batch["id"].numpy()
    tcav = rd.read_csv(run.tcav_scores(), TCAV_COLUMNS, step="step 5 (main_lth_tcav.py)") \
        if run.tcav_scores().is_file() else None
    for r in tqdm(rounds, desc="metric rounds"):
        with_tcav = tcav is not None and (tcav["round"] == r).any() and (tcav["round"] == 0).any() \
            and _current_tcav(run, tcav, r, log) and _current_tcav(run, tcav, 0, log)
        stamp = _inputs_stamp(run, r, with_tcav)
        if not force and (table["round"] == r).any() and (per_image["round"] == r).any() \
                and run.up_to_date("metrics", rd.round_name(r), stamp, log):
            continue
        for method in cfg.heatmaps.methods:  # maps made before step 1 was redone are not measured
            for q in sorted({r, 0}):
                if run.heatmap_file(q, method).is_file():
                    run.require_up_to_date("heatmaps", f"{rd.round_name(q)}/{method}", run.round_fingerprint(q),
                                           "step 6 (main_heatmap_save.py)")
        model, ckpt = load_round_model(cfg, run, r, info.num_classes, device)
        model.requires_grad_(False)
        rows, image_rows = [], []
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
            rows += _rows(r, ckpt["weights_remaining"], method, values, cfg)
            image_rows.append(_per_image_rows(r, method, values, ids))
        if with_tcav:
            rows += _rows(r, ckpt["weights_remaining"], "tcav",
                          tcav_metrics(tcav[tcav["round"] == r], tcav[tcav["round"] == 0], cfg), cfg)
        image_rows = pd.concat(image_rows, ignore_index=True) if image_rows else \
            pd.DataFrame(columns=PER_IMAGE_COLUMNS)
        per_image = rd.upsert_table(run.explanation_per_image(), image_rows, keys=["round"],
                                    sort=["round", "method", "metric", "image_id"], columns=PER_IMAGE_COLUMNS,
                                    replace={"round": r})
        table = rd.upsert_table(run.explanation_metrics(), rows, keys=["round"], sort=["round", "method", "metric"],
                                columns=COLUMNS, replace={"round": r})
        run.record_fingerprint("metrics", rd.round_name(r), stamp)
    tests = write_tests(run, table)
    log(summary_table(table).to_string())
    if len(tests):
        log(f"{int(tests['significant'].sum())} of {len(tests)} paired tests significant after "
            f"{cfg.stats.correction} at {cfg.stats.alpha:g}: {run.explanation_tests()}")
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
