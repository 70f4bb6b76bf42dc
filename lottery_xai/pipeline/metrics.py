"""Step 7: faithfulness, localisation and consistency of the stored maps at every round.

Reads the maps of step 6 (the same test images at every round) and, for each round and method,
writes the mean of each metric over the images into ``metrics/explanations.csv``
(``round, weights_remaining, method, metric, value, n_images, ci_low, ci_high``: the value is the mean
over the images with a value -- NaN where a metric is undefined: the content heatmap skips maps without
positive energy, as CGC's reference does, and ``content_heatmap_zero_maps`` is 1 for each of them, so
its value is their share and value x n_images their count; energy in parts is NaN without visible
parts -- and ``n_images`` the number of images with a value, the n of the mean; the interval is the
percentile bootstrap of the mean over the images, ``stats.n_bootstrap`` resamples at
``stats.confidence``, seeded per round), every image's value into ``metrics/per_image.csv``
(``round, method, metric, image_id, value``; NaN where a metric is undefined for an image), and the
paired tests into ``metrics/tests.csv``: a Wilcoxon signed-rank test of each pruned round against the
dense round (per method and metric) and of each method against the random baseline (per round and
metric), on the per-image values of the same images, all p-values corrected together with
``stats.correction`` (Holm) at ``stats.alpha`` (see `lottery_xai.stats.inference`). The TCAV agreement
rows are per (class, concept) pair, not per image: they get a bootstrap interval over the pairs but no
per-image rows and no test; nor are the diagnostic rows tested (``content_heatmap_zero_maps``). The metrics are those of the
registry (`lottery_xai.metrics.METRICS`) that ``metrics.names`` selects (by default the faithfulness,
localisation and consistency metrics; ROAD, infidelity, robustness, complexity and the randomisation
family are opt-in) and whose needs the data and the run provide: the part metric
only with parts, the consistency with the dense maps only with round 0's maps, TCAV agreement only
with both TCAV tables, the randomisation score only with the sanity step's table (NaN for the images and
rounds it did not test); ROAR's metric is main_roar.py's. Consistency compares each
round's map of an image with the dense model's map of the same image; consistency under
transformation recomputes the map on flipped / resized-cropped copies (``metrics.transform_methods``)
and compares it with the same transformation of the map; TCAV agreement compares each round's
TCAV table with the dense one (method ``tcav``).

The faithfulness metrics' fills that say ``train_mean`` use the training split's per-channel mean
(`train_channel_mean`, computed once per run and stored in ``metrics/train_mean.npz``), and Samek's
noise spans the valid pixel values [0, 1] through the dataset's normalisation. Their rankings break
ties with ``SeedPurpose.METRICS`` seeds: per (round, method) for the tie permutations, one for the
whole run for the region noise (every round and method perturbs an image with the same noise, so
their differences are not draws of the noise).
"""
from __future__ import annotations

import dataclasses
import hashlib
import zlib

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data import get_dataset
from ..errors import UserError
from ..metrics import METRICS, MetricInputs, compute_metrics, select_metrics
from ..rundir import RunDir, round_name
from ..safe_io import load_npz, read_csv, save_csv, save_npz, unreadable, upsert_table
from ..seeds import SeedPurpose, derived_seed
from ..stats.inference import TEST_COLUMNS, bootstrap_ci, paired_tests
from ..steps import label, step
from .heatmaps import heatmap_images
from .loading import finished_rounds, load_data, load_round_model
from .maps import check_methods, configured_maps, explained_targets, map_seed
from .tcav import TCAV_COLUMNS, TCAV_TYPES

COLUMNS = ["round", "weights_remaining", "method", "metric", "value", "n_images", "ci_low", "ci_high"]
# the type of each column, as readers take them back (safe_io.read_csv: a value of another type is one error line)
COLUMN_TYPES = {"round": "int", "weights_remaining": "float", "method": "str", "metric": "str", "value": "float",
                "n_images": "int", "ci_low": "float", "ci_high": "float"}
PER_IMAGE_COLUMNS = ["round", "method", "metric", "image_id", "value"]


def _maps(run: RunDir, r: int, method: str, device, images: torch.Tensor | None = None,
          ids: torch.Tensor | None = None) -> torch.Tensor | None:
    """Round ``r``'s stored maps of ``method`` as float32 (None when absent), checked against the explained images."""
    found = _stored_maps(run, r, method, device, images, ids)
    return None if found is None else found[0]


def _stored_maps(run: RunDir, r: int, method: str, device, images: torch.Tensor | None = None,
                 ids: torch.Tensor | None = None) -> tuple[torch.Tensor, np.dtype] | None:
    """`_maps` and the numpy dtype step 6 stored them in."""
    path, step6 = run.heatmap_file(r, method), label("heatmaps")
    if not path.is_file():
        return None
    stored = load_npz(path, keys=("maps", "ids"), step=step6)
    maps = stored["maps"]
    if images is not None and maps.shape != (len(images), *images.shape[-2:]):
        raise unreadable(path, f"maps of shape {list(maps.shape)}, expected {[len(images), *images.shape[-2:]]} "
                               f"for the images of {run.heatmap_images().name}", step6)
    if ids is not None and not np.array_equal(stored["ids"], ids.cpu().numpy()):
        raise unreadable(path, f"its maps are of other images than {run.heatmap_images().name}", step6)
    return torch.from_numpy(maps.astype(np.float32)).to(device), maps.dtype


def _as_stored(maps: torch.Tensor, dtype) -> torch.Tensor:
    """Recomputed maps rounded as step 6 stores them (``dtype``), then as float32 as `_maps` reads them."""
    return torch.from_numpy(maps.detach().cpu().numpy().astype(dtype).astype(np.float32)).to(maps.device)


def _require_maps(run: RunDir, rounds: list[int]) -> None:
    """Step 7 measures step 6's maps: every requested round's (and the dense round's, the reference of
    the consistency metrics) for every method in heatmaps.methods must be on disk."""
    step6 = label("heatmaps")
    run.require(run.heatmap_images(), step6)
    needed = sorted(set(rounds) | ({0} if rounds else set()))
    for r in needed:
        for method in run.cfg.heatmaps.methods:
            path = run.heatmap_file(r, method)
            if not path.is_file():
                raise UserError(f"'{path}' is missing; run {step6} first (it computes heatmaps.methods for rounds "
                                f"{','.join(map(str, needed))})")


def _attribution_fn(cfg: Config, method: str, seed: int):
    """The configured `method` as the transformation check recomputes it on transformed images."""
    def attribution_fn(net, batch, targets):
        return configured_maps(cfg, method, net, batch, targets, seed)
    return attribution_fn


def method_code(method: str) -> int:
    """A stable number for a method name (part of its derived seeds; independent of heatmaps.methods' order)."""
    return zlib.crc32(method.encode())


def tie_seed(cfg: Config, r: int, method: str) -> int:
    """The seed of round ``r``'s tie-breaking permutations for ``method`` (``metrics.ties: random``)."""
    return derived_seed(cfg.seed, SeedPurpose.METRICS, r, method_code(method))


def noise_seed(cfg: Config) -> int:
    """The seed of the region-perturbation noise: one per run, shared by every round and method."""
    return derived_seed(cfg.seed, SeedPurpose.METRICS)


def round_metrics(model, images, boxes, maps, dense_maps, cfg: Config, parts=None, *, method: str | None = None,
                  seed: int | None = None, targets=None, true_class_maps=None, train_mean=None, normalisation=None,
                  ties_seed: int | None = None, region_noise_seed: int | None = None, maps_seed: int | None = None,
                  r: int | None = None, image_ids=None, sanity_table=None) -> dict[str, torch.Tensor]:
    """Per-image values of every metric that ``metrics.names`` selects and that reads the stored maps, for one
    round and method.

    A metric is computed when its needs are provided: ``box`` by `boxes`, ``parts`` by `parts` with at
    least one part, ``second_map`` by `dense_maps`, ``transform`` by `method` (recomputed on transformed
    images with `seed` and `targets`, None: the predicted class) when it is in ``metrics.transform_methods``,
    ``recompute`` by `method` and `maps_seed` (the seed the stored maps were made with: the robustness
    metrics and the random-logit test explain other images or classes with the maps' own settings),
    ``sanity_scores`` by `sanity_table` (the sanity step's per-image table) with round `r` and `image_ids`.
    `train_mean` [C] and `normalisation` (mean, std) feed the faithfulness fills and noise; `ties_seed` and
    `region_noise_seed` seed their tie-breaking and noise (0 when None), the latter also the opt-in
    metrics' draws.
    """
    transform = method is not None and seed is not None and method in cfg.metrics.transform_methods
    recompute = method is not None and maps_seed is not None
    inputs = MetricInputs(settings=cfg.metrics, maps=maps, model=model, images=images, targets=targets, boxes=boxes,
                          parts=parts, second_map=dense_maps, seed=seed if transform else None,
                          true_class_maps=true_class_maps,
                          attribution_fn=_attribution_fn(cfg, method, seed) if transform else None,
                          train_mean=train_mean, normalisation=normalisation, tie_seed=ties_seed,
                          noise_seed=region_noise_seed,
                          recompute=_attribution_fn(cfg, method, maps_seed) if recompute else None,
                          sanity_table=sanity_table, method=method, round=r, image_ids=image_ids)
    chosen = select_metrics(cfg.metrics.names)
    return compute_metrics(inputs, select=lambda spec: spec.name in chosen)


def _sanity_table(run: RunDir, log) -> pd.DataFrame | None:
    """The sanity step's per-image table when ``metrics.names`` selects the randomisation score (None otherwise,
    or when the sanity step has not run: then the score is skipped, with one line saying so)."""
    if "randomisation_score" not in select_metrics(run.cfg.metrics.names):
        return None
    path = run.sanity_per_image()
    if not path.is_file():
        log(f"metrics.names selects randomisation_score, but '{path}' is missing: it is skipped; run "
            f"{label('sanity')} (its rounds, sanity.rounds, get the score)")
        return None
    return read_csv(path, ["round", "method", "randomization", "stage", "measure", "image_id", "value"],
                    step=label("sanity"))


def train_mean_file(run: RunDir):
    return run.explanation_metrics().parent / "train_mean.npz"


def train_channel_mean(run: RunDir, log=print) -> torch.Tensor:
    """The training split's per-channel mean in normalised units, [C] float32: every eval-transformed
    training image (no augmentation, as ROAR's images), averaged over images and pixels in float64. Computed
    once per run and stored in ``metrics/train_mean.npz`` with the dataset and image size it is of (made
    again when they differ)."""
    cfg = run.cfg
    path = train_mean_file(run)
    if path.is_file():
        stored = load_npz(path, keys=("mean", "dataset", "img_size"), step=f"{label('metrics')}, after deleting the file,")
        if str(stored["dataset"]) == cfg.dataset and int(stored["img_size"]) == cfg.img_size:
            return torch.from_numpy(stored["mean"].astype(np.float32))
    datasets, _ = load_data(cfg, ("train",), augment=False)
    loader = torch.utils.data.DataLoader(datasets["train"], batch_size=cfg.data.eval_batch_size,
                                         num_workers=cfg.data.num_workers)
    total, pixels, n_images = None, 0, 0
    for batch in tqdm(loader, desc="training mean", leave=False):
        images = batch["image"].to(torch.float64)
        total = images.sum(dim=(0, 2, 3)) if total is None else total + images.sum(dim=(0, 2, 3))
        pixels += images.shape[0] * images.shape[2] * images.shape[3]
        n_images += images.shape[0]
    if total is None:
        raise UserError(f"dataset '{cfg.dataset}' has no training images: the training mean (metrics.pixel_fill / "
                        "metrics.deletion_substrate train_mean) cannot be computed; choose zeros")
    mean = (total / pixels).numpy()
    save_npz(path, mean=mean, dataset=np.asarray(cfg.dataset), img_size=np.asarray(cfg.img_size),
             n_images=np.asarray(n_images))
    log(f"training set's per-channel mean over {n_images} images (normalised units): "
        f"{', '.join(f'{v:.4f}' for v in mean)}: {path}")
    return torch.from_numpy(mean.astype(np.float32))


def _needs_train_mean(cfg: Config) -> bool:
    m = cfg.metrics
    return m.deletion_substrate == "train_mean" or (m.perturbation == "pixels" and m.pixel_fill == "train_mean")


def tcav_metrics(tcav_round: pd.DataFrame, tcav_dense: pd.DataFrame, cfg: Config) -> dict[str, pd.Series]:
    """Per-(class, concept) values of every TCAV agreement metric ``metrics.names`` selects (a round's table
    against the dense one)."""
    chosen = select_metrics(cfg.metrics.names)
    return compute_metrics(MetricInputs(settings=cfg.metrics, tcav_round=tcav_round, tcav_dense=tcav_dense),
                           select=lambda spec: spec.name in chosen)


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
        array = _as_array(v)
        low, high = np.nan, np.nan
        if cfg is not None:
            s = cfg.stats
            low, high = bootstrap_ci(array, s.n_bootstrap, s.confidence,
                                     seed=derived_seed(cfg.seed, SeedPurpose.STATS_BOOTSTRAP, r))
        # n_images: the images (or pairs) with a value, the n of the mean and of its interval (NaNs not counted)
        rows.append({"round": r, "weights_remaining": weights_remaining, "method": method, "metric": name,
                     "value": _mean(v), "n_images": int(np.isfinite(array).sum()), "ci_low": low, "ci_high": high})
    return rows


def _per_image_rows(r: int, method: str, values: dict, ids: np.ndarray) -> pd.DataFrame:
    """Every image's value of every metric of one round and method (the long table's rows)."""
    parts = [pd.DataFrame({"round": r, "method": method, "metric": name, "image_id": ids, "value": _as_array(v)})
             for name, v in values.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PER_IMAGE_COLUMNS)


def _start_tables(run: RunDir, force: bool, log) -> pd.DataFrame:
    """The metrics table on disk (empty with ``force``: the requested rounds are redone, the others kept).
    A table of an older version (no interval columns) is emptied: every round is measured again (a round
    without per-image rows is too, see `metrics_step`)."""
    path = run.explanation_metrics()
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    table = read_csv(path, COLUMNS[:6], step=label("metrics"), types=COLUMN_TYPES)
    if not set(COLUMNS) <= set(table.columns):
        log(f"'{path}' has no intervals (an older step 7): measuring every round again")
        save_csv(path, pd.DataFrame(columns=COLUMNS))
        return pd.DataFrame(columns=COLUMNS)
    return pd.DataFrame(columns=COLUMNS) if force else table


def write_tests(run: RunDir, table: pd.DataFrame) -> pd.DataFrame:
    """``metrics/tests.csv`` from the per-image values of every round on disk (one correction over all); the
    diagnostic rows (a spec's ``tested=False``: the count of skipped all-zero maps) are not tested."""
    per_image = read_csv(run.explanation_per_image(), PER_IMAGE_COLUMNS, missing_ok=True,
                         step=f"{label('metrics')} with --force")
    untested = [name for name, spec in METRICS.items() if not spec.tested]
    per_image = per_image[~per_image["metric"].isin(untested)]
    s = run.cfg.stats
    weights = dict(zip(table["round"].astype(int), table["weights_remaining"].astype(float)))
    tests = paired_tests(per_image, dense_round=0, baseline="random", correction=s.correction, alpha=s.alpha,
                         weights=weights) if len(per_image) else pd.DataFrame(columns=TEST_COLUMNS)
    save_csv(run.explanation_tests(), tests)
    return tests


def _fingerprints(run: RunDir, r: int) -> str:
    """Round ``r``'s metrics come from its checkpoint and, for the consistency with the dense maps, round 0's."""
    fp = run.round_fingerprint(r)
    if r == 0:
        return fp
    return fp + "+" + (run.round_fingerprint(0) if run.checkpoint(0, run.cfg.test.checkpoint).is_file() else "none")


def _inputs_stamp(run: RunDir, r: int, with_tcav: bool, sanity_table: pd.DataFrame | None = None) -> str:
    """What round ``r``'s metrics are made from: the checkpoints (`_fingerprints`), the content of the stored
    maps they read (round r's and the dense round's: step 6 redone with other images or settings makes
    step 7 measure again), the ``metrics.*`` settings (changed settings measure again) and whether the TCAV
    agreement rows are computed (step 5 run later adds them)."""
    digest = hashlib.sha1()
    for method in run.cfg.heatmaps.methods:
        for q in sorted({r, 0}):
            path = run.heatmap_file(q, method)
            if path.is_file():
                stored = load_npz(path, keys=("maps", "ids"), step=label("heatmaps"))
                digest.update(f"{q}/{method}:".encode())
                digest.update(np.ascontiguousarray(stored["ids"]).tobytes())
                digest.update(np.ascontiguousarray(stored["maps"]).tobytes())
    settings = hashlib.sha1(repr(sorted(dataclasses.asdict(run.cfg.metrics).items())).encode()).hexdigest()[:12]
    sanity = "" if sanity_table is None else "+sanity:" + hashlib.sha1(
        sanity_table[sanity_table["round"] == r].to_csv(index=False).encode()).hexdigest()[:12]
    return (f"{_fingerprints(run, r)}+maps:{digest.hexdigest()[:16]}+settings:{settings}"
            + ("+tcav" if with_tcav else "") + sanity)


def _current_tcav(run: RunDir, tcav: pd.DataFrame, r: int, log) -> bool:
    """Whether round ``r``'s TCAV rows were made from its current checkpoint (every layer of them)."""
    fp = run.round_fingerprint(r)
    layers = sorted(set(tcav.loc[tcav["round"] == r, "layer"]))
    if all(run.up_to_date("tcav", f"{round_name(r)}/{layer}", fp) for layer in layers):
        return True
    log(f"round {r}: TCAV scores are stale (step 1 was redone); rerun {label('tcav')} for the TCAV agreement rows")
    return False


@step("metrics", number=7, script="main_explanation_metrics.py", title="faithfulness, localisation and consistency "
      "metrics of the stored maps, every round", folder="metrics", needs=("pruning", "heatmaps"), uses=("tcav",),
      per_round=True, needs_round_0=True, gather=True, pipeline=True,
      writes=("metrics/explanations.csv", "metrics/per_image.csv", "metrics/tests.csv", "metrics/train_mean.npz",
              "metrics/fingerprints.json", "config.metrics.yaml"))
def metrics_step(run: RunDir, device: torch.device, rounds: list[int], force: bool = False, log=print) -> pd.DataFrame:
    """Step 7 on the requested rounds (see the module docstring); returns ``metrics/explanations.csv``."""
    cfg = run.cfg
    check_methods(cfg)
    select_metrics(cfg.metrics.names)  # an unknown name stops here, before any work
    rounds = finished_rounds(run, rounds, log)
    _require_maps(run, rounds)
    run.save_config("metrics")
    batch, info = heatmap_images(run, device)
    images, boxes, parts = batch["image"].to(device), batch["bbox"].to(device), batch["parts"].to(device)
    if not get_dataset(cfg.dataset).has_boxes:  # a folder dataset: bbox is the whole image, box metrics are skipped
        log(f"dataset '{cfg.dataset}' has no object boxes: the localisation metrics (energy in box, pointing game) are skipped")
        boxes = None
    labels = batch["label"].to(device)
    normalisation = (tuple(info.mean), tuple(info.std))
    train_mean = train_channel_mean(run, log).to(device) if _needs_train_mean(cfg) else None
    table = _start_tables(run, force, log)
    per_image = read_csv(run.explanation_per_image(), PER_IMAGE_COLUMNS, missing_ok=True)
    ids = batch["id"].numpy()
    tcav = read_csv(run.tcav_scores(), TCAV_COLUMNS, step=label("tcav"), types=TCAV_TYPES) \
        if run.tcav_scores().is_file() else None
    sanity_table = _sanity_table(run, log)
    for r in tqdm(rounds, desc="metric rounds"):
        with_tcav = tcav is not None and (tcav["round"] == r).any() and (tcav["round"] == 0).any() \
            and _current_tcav(run, tcav, r, log) and _current_tcav(run, tcav, 0, log)
        stamp = _inputs_stamp(run, r, with_tcav, sanity_table)
        if not force and (table["round"] == r).any() and (per_image["round"] == r).any() \
                and run.up_to_date("metrics", round_name(r), stamp, log):
            continue
        for method in cfg.heatmaps.methods:  # maps made before step 1 was redone are not measured
            for q in sorted({r, 0}):
                if run.heatmap_file(q, method).is_file():
                    run.require_up_to_date("heatmaps", f"{round_name(q)}/{method}", run.round_fingerprint(q),
                                           label("heatmaps"))
        model, ckpt = load_round_model(run, r, info.num_classes, device)
        model.requires_grad_(False)
        targets = explained_targets(cfg, model, images, labels)  # the class step 6's maps explain
        rows, image_rows = [], []
        for method in cfg.heatmaps.methods:
            found = _stored_maps(run, r, method, device, images, batch["id"])
            if found is None:
                continue
            maps, stored_dtype = found
            dense = _maps(run, 0, method, device, images, batch["id"]) if r > 0 else maps
            # the content heatmap reads the maps of the ground-truth class (step 6 stores those of heatmaps.target)
            true_maps = maps if cfg.heatmaps.target == "true" else _as_stored(configured_maps(
                cfg, method, model, images, labels, map_seed(run, r)), stored_dtype)
            values = round_metrics(model, images, boxes, maps, dense, cfg, parts, method=method,
                                   seed=derived_seed(cfg.seed, SeedPurpose.TRANSFORMS, r), targets=targets,
                                   true_class_maps=true_maps, train_mean=train_mean, normalisation=normalisation,
                                   ties_seed=tie_seed(cfg, r, method), region_noise_seed=noise_seed(cfg),
                                   maps_seed=map_seed(run, r), r=r, image_ids=ids, sanity_table=sanity_table)
            rows += _rows(r, ckpt["weights_remaining"], method, values, cfg)
            image_rows.append(_per_image_rows(r, method, values, ids))
        if with_tcav:
            rows += _rows(r, ckpt["weights_remaining"], "tcav",
                          tcav_metrics(tcav[tcav["round"] == r], tcav[tcav["round"] == 0], cfg), cfg)
        image_rows = pd.concat(image_rows, ignore_index=True) if image_rows else \
            pd.DataFrame(columns=PER_IMAGE_COLUMNS)
        per_image = upsert_table(run.explanation_per_image(), image_rows, keys=["round"],
                                 sort=["round", "method", "metric", "image_id"], columns=PER_IMAGE_COLUMNS,
                                 replace={"round": r})
        table = upsert_table(run.explanation_metrics(), rows, keys=["round"], sort=["round", "method", "metric"],
                             columns=COLUMNS, replace={"round": r}, types=COLUMN_TYPES)
        run.record_fingerprint("metrics", round_name(r), stamp)
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
