"""Replicates over seeds (main_aggregate.py): mean and interval over seed runs, and the null bands.

``bash_script/run_seeds.sh --seeds 0,1,2`` runs the pipeline once per seed into sibling run folders
(the run name holds ``seed<k>``) and, for the first seed, the random-pruning control
(``pruning.method: random``, steps 1, 2 and 6: same seed, so the same dense round 0, then the same
sparsity per round with random instead of magnitude pruning). `aggregate_step` reads them and writes,
into ``RunDir.aggregate_dir(seeds)`` (the run name with ``seed<k>`` replaced by ``seeds0-1-2``):

- ``accuracy.csv``: test accuracy per run (``ticket``, ``reinit``, ``random``) and round: mean,
  ``ci_low, ci_high`` (Student-t interval over seeds at ``stats.confidence``), ``n_seeds``;
- ``tcav.csv``: TCAV score per round, layer, class and concept, the same statistics, plus the share
  of seeds in which the concept is significant;
- ``metrics.csv``: every explanation metric of step 7 per round, method and metric, the same statistics;
- ``null_bands.csv``: per round, method and consistency metric (Spearman, top-k IoU, SSIM of the maps
  against the dense maps; TCAV absolute difference and flips against the dense TCAV table):
  the **seed band** (the same metric between the dense models of two seeds on the same images: the
  change that needs no pruning; mean over images per seed pair, then mean and t interval over the
  pairs), the **random band** (the same metric between the random-pruning control at the round's
  sparsity and the dense model of its seed: the change that pruning without a ticket causes; with one
  control seed the interval is the bootstrap over images, with several the t interval over seeds),
  the ticket's own drift (step 7's value, mean and interval over seeds) and ``within_seed_band``: the
  ticket's mean drift is no larger than the far end of the seed band (for agreement metrics: its mean
  is at least the band's ``ci_low``; for difference metrics: at most its ``ci_high``).

Nothing is recomputed when every input file is unchanged (``inputs.json`` holds their fingerprints).
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import steps
from ..errors import UserError
from ..metrics import METRICS, map_agreement, tcav_agreement
from ..rundir import RunDir
from ..safe_io import fingerprint, load_npz, read_csv, read_json, save_csv, write_text
from ..seeds import SeedPurpose, derived_seed
from ..stats.inference import bootstrap_ci, t_interval
from ..steps import step
from .metrics import COLUMN_TYPES as METRIC_TYPES
from .metrics import COLUMNS as METRIC_COLUMNS
from .tcav import TCAV_COLUMNS, TCAV_TYPES

MAP_BANDS = ("spearman", "top_iou", "ssim")
TCAV_BANDS = ("tcav_abs_diff", "tcav_flip")
STAT_COLUMNS = ["mean", "ci_low", "ci_high", "n_seeds"]
ACCURACY_COLUMNS = ["run", "round", "weights_remaining", *STAT_COLUMNS]
TCAV_AGG_COLUMNS = ["round", "weights_remaining", "layer", "class", "concept", *STAT_COLUMNS, "significant_share"]
METRICS_AGG_COLUMNS = ["round", "weights_remaining", "method", "metric", *STAT_COLUMNS]
BAND_COLUMNS = ["round", "weights_remaining", "method", "metric", "seed_mean", "seed_ci_low", "seed_ci_high",
                "seed_n_pairs", "random_mean", "random_ci_low", "random_ci_high", "random_n", "ticket_mean",
                "ticket_ci_low", "ticket_ci_high", "within_seed_band"]
CONTROLS = {"ticket": {}, "reinit": {"pruning.rewind": "reinit"}, "random": {"pruning.method": "random"}}


def merge_inputs(run: RunDir, seeds: list[int]) -> None:
    """Fold the shards that a cluster's tasks left beside the tables the replicates read (every seed run and
    control; see lottery_xai.launch): the launcher merges them after each step, this covers a launch cut short."""
    for changes in CONTROLS.values():
        for seed_run in seed_runs(run, seeds, **changes).values():
            if seed_run.root.is_dir():
                for key in ("test", "tcav", "heatmaps", "metrics"):
                    seed_run.merge_shards(key)


def parse_seeds(text: str | None) -> list[int]:
    """``--seeds 0,1,2`` as a sorted list of distinct seeds (at least two)."""
    try:
        seeds = sorted({int(t) for t in (text or "").split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, e.g. 0,1,2, got '{text}'") from None
    if len(seeds) < 2 or min(seeds) < 0:
        raise UserError(f"--seeds needs at least two seeds >= 0 (e.g. 0,1,2), got '{text}'")
    return seeds


def seed_runs(run: RunDir, seeds: list[int], **changes) -> dict[int, RunDir]:
    """The run of every seed (with the settings ``changes``, e.g. a control), beside each other."""
    if run.cfg.experiment_name:
        raise UserError(f"experiment_name is set ('{run.cfg.experiment_name}'): every seed would write the same run "
                        "folder; leave experiment_name empty for replicates")
    return {s: run.sibling(seed=s, **changes) for s in seeds}


def _stats(values, confidence: float) -> dict:
    mean, low, high, n = t_interval(values, confidence)
    return {"mean": mean, "ci_low": low, "ci_high": high, "n_seeds": n}


def _over_seeds(frame: pd.DataFrame, keys: list[str], value: str, confidence: float) -> pd.DataFrame:
    """Mean, t interval and count over the ``seed`` rows of each ``keys`` group of ``frame``."""
    rows = []
    for key, g in frame.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), "weights_remaining": float(g["weights_remaining"].mean()),
                     **_stats(g[value].to_numpy(dtype=float), confidence)})
    return pd.DataFrame(rows)


def _read_seeds(runs: dict[int, RunDir], path_of, columns, step: str, types: dict | None = None) -> pd.DataFrame:
    """The table of every seed run that has it, with a ``seed`` column (empty when none has it)."""
    frames = []
    for s, run in runs.items():
        path = path_of(run)
        if path.is_file():
            frames.append(read_csv(path, columns, step=step, types=types).assign(seed=s))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*columns, "seed"])


def accuracy_table(run: RunDir, seeds: list[int]) -> pd.DataFrame:
    cfg = run.cfg
    confidence = cfg.stats.confidence
    parts = []
    for label, changes in CONTROLS.items():
        frame = _read_seeds(seed_runs(run, seeds, **changes), lambda r: r.test_metrics(),
                            ["round", "weights_remaining", "test_acc"], steps.label("test"))
        if len(frame):
            parts.append(_over_seeds(frame, ["round"], "test_acc", confidence).assign(run=label))
    return pd.concat(parts, ignore_index=True)[ACCURACY_COLUMNS] if parts else pd.DataFrame(columns=ACCURACY_COLUMNS)


def tcav_table(run: RunDir, seeds: list[int]) -> pd.DataFrame:
    cfg = run.cfg
    frame = _read_seeds(seed_runs(run, seeds), lambda r: r.tcav_scores(), TCAV_COLUMNS, steps.label("tcav"), TCAV_TYPES)
    if frame.empty:
        return pd.DataFrame(columns=TCAV_AGG_COLUMNS)
    keys = ["round", "layer", "class", "concept"]
    table = _over_seeds(frame, keys, "tcav_mean", cfg.stats.confidence)
    share = frame.assign(sig=frame["significant"].astype(str).str.lower().isin(["true", "1"])) \
        .groupby(keys)["sig"].mean().rename("significant_share").reset_index()
    return table.merge(share, on=keys)[TCAV_AGG_COLUMNS]


def metrics_table(run: RunDir, seeds: list[int]) -> pd.DataFrame:
    cfg = run.cfg
    frame = _read_seeds(seed_runs(run, seeds), lambda r: r.explanation_metrics(), METRIC_COLUMNS[:6],
                        steps.label("metrics"), METRIC_TYPES)
    if frame.empty:
        return pd.DataFrame(columns=METRICS_AGG_COLUMNS)
    return _over_seeds(frame, ["round", "method", "metric"], "value", cfg.stats.confidence)[METRICS_AGG_COLUMNS]


# ---------------------------------------------------------------- null bands

def _load_maps(run: RunDir, r: int, method: str):
    path = run.heatmap_file(r, method)
    if not path.is_file():
        return None
    stored = load_npz(path, keys=("maps", "ids"), step=steps.label("heatmaps"))
    return stored["ids"], torch.from_numpy(stored["maps"].astype(np.float32))


def _agreement(a, b, top_fraction: float, what: str) -> dict[str, np.ndarray]:
    """Per-image Spearman, top-k IoU and SSIM of two stored map sets of the same images."""
    (ids_a, maps_a), (ids_b, maps_b) = a, b
    if not np.array_equal(ids_a, ids_b):
        raise UserError(f"{what}: the maps are of different images (heatmaps.images_per_class or labels_for_tcav "
                        f"differ between the runs); rerun {steps.label('heatmaps')} with the same settings")
    with torch.no_grad():
        values = map_agreement(maps_a, maps_b, top_fraction)
    return {k: values[k].numpy() for k in MAP_BANDS}


def _tcav_pair(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    table = tcav_agreement(a, b)
    return {"tcav_abs_diff": float(table["abs_diff"].mean()), "tcav_flip": float(table["flipped"].mean())}


def seed_band(run: RunDir, seeds: list[int], methods: list[str], log=print) -> pd.DataFrame:
    """The consistency metrics between the dense models of every pair of seeds: ``method, metric, seed_mean,
    seed_ci_low, seed_ci_high, seed_n_pairs`` (mean over images per pair, t interval over pairs)."""
    cfg = run.cfg
    runs = seed_runs(run, seeds)
    pair_values: dict[tuple[str, str], list[float]] = {}
    tcav = {s: read_csv(r.tcav_scores(), TCAV_COLUMNS, step=steps.label("tcav"), types=TCAV_TYPES) for s, r in runs.items()
            if r.tcav_scores().is_file()}
    for a, b in tqdm(list(itertools.combinations(seeds, 2)), desc="seed pairs"):
        for method in methods:
            maps_a, maps_b = _load_maps(runs[a], 0, method), _load_maps(runs[b], 0, method)
            if maps_a is None or maps_b is None:
                continue
            values = _agreement(maps_a, maps_b, cfg.metrics.top_fraction, f"seeds {a} and {b}, {method}")
            for metric, v in values.items():
                pair_values.setdefault((method, metric), []).append(float(np.nanmean(v)))
        if a in tcav and b in tcav:
            dense_a, dense_b = tcav[a][tcav[a]["round"] == 0], tcav[b][tcav[b]["round"] == 0]
            for metric, v in _tcav_pair(dense_a, dense_b).items():
                pair_values.setdefault(("tcav", metric), []).append(v)
    rows = []
    for (method, metric), values in pair_values.items():
        mean, low, high, n = t_interval(values, cfg.stats.confidence)
        rows.append({"method": method, "metric": metric, "seed_mean": mean, "seed_ci_low": low, "seed_ci_high": high,
                     "seed_n_pairs": n})
    if not rows:
        log("no seed band: the runs lack step 6's dense maps (and step 5's TCAV tables)")
    return pd.DataFrame(rows, columns=["method", "metric", "seed_mean", "seed_ci_low", "seed_ci_high", "seed_n_pairs"])


def random_band(run: RunDir, seeds: list[int], methods: list[str], log=print) -> pd.DataFrame:
    """The consistency metrics between the random-pruning control at each round and the dense model of
    its seed: ``round, method, metric, random_mean, random_ci_low, random_ci_high, random_n`` (``random_n``:
    control seeds; one seed: bootstrap over images, several: t interval over the seeds' means)."""
    cfg = run.cfg
    runs, controls = seed_runs(run, seeds), seed_runs(run, seeds, **{"pruning.method": "random"})
    if cfg.pruning.method == "random":
        return pd.DataFrame(columns=["round", "method", "metric", "random_mean", "random_ci_low", "random_ci_high",
                                     "random_n"])
    per_seed: dict[tuple[int, str, str], list[np.ndarray]] = {}
    for s in tqdm(seeds, desc="random-pruning control"):
        control = controls[s]
        if not control.root.is_dir():
            continue
        tcav_dense = read_csv(runs[s].tcav_scores(), TCAV_COLUMNS, step=steps.label("tcav"), types=TCAV_TYPES) \
            if runs[s].tcav_scores().is_file() else None
        tcav_control = read_csv(control.tcav_scores(), TCAV_COLUMNS, step=steps.label("tcav"), types=TCAV_TYPES) \
            if control.tcav_scores().is_file() else None
        for r in runs[s].rounds():
            for method in methods:
                dense, pruned = _load_maps(runs[s], 0, method), _load_maps(control, r, method)
                if dense is None or pruned is None:
                    continue
                values = _agreement(pruned, dense, cfg.metrics.top_fraction, f"seed {s}, random control, {method}")
                for metric, v in values.items():
                    per_seed.setdefault((r, method, metric), []).append(v)
            if tcav_dense is not None and tcav_control is not None and (tcav_control["round"] == r).any():
                pair = _tcav_pair(tcav_control[tcav_control["round"] == r], tcav_dense[tcav_dense["round"] == 0])
                for metric, v in pair.items():
                    per_seed.setdefault((r, "tcav", metric), []).append(np.array([v]))
    rows = []
    for (r, method, metric), arrays in sorted(per_seed.items()):
        if len(arrays) == 1:  # one control seed: the interval over its images (or TCAV pairs)
            mean = float(np.nanmean(arrays[0]))
            low, high = bootstrap_ci(arrays[0], cfg.stats.n_bootstrap, cfg.stats.confidence,
                                     seed=derived_seed(cfg.seed, SeedPurpose.STATS_BOOTSTRAP, r))
        else:
            mean, low, high, _ = t_interval([np.nanmean(a) for a in arrays], cfg.stats.confidence)
        rows.append({"round": r, "method": method, "metric": metric, "random_mean": mean, "random_ci_low": low,
                     "random_ci_high": high, "random_n": len(arrays)})
    if not rows:
        log("no random-pruning band: no control run (pruning.method=random) with step 6's maps; "
            "bash_script/run_seeds.sh makes it for the first seed")
    return pd.DataFrame(rows, columns=["round", "method", "metric", "random_mean", "random_ci_low", "random_ci_high",
                                       "random_n"])


def null_bands(run: RunDir, seeds: list[int], metrics: pd.DataFrame, log=print) -> pd.DataFrame:
    """Per round, method and consistency metric: seed band, random band, the ticket's drift and the verdict."""
    cfg = run.cfg
    methods = list(cfg.heatmaps.methods)
    ticket = metrics[metrics["metric"].isin(MAP_BANDS + TCAV_BANDS)].rename(
        columns={"mean": "ticket_mean", "ci_low": "ticket_ci_low", "ci_high": "ticket_ci_high"})
    ticket = ticket[["round", "weights_remaining", "method", "metric", "ticket_mean", "ticket_ci_low",
                     "ticket_ci_high"]]
    table = ticket.merge(seed_band(run, seeds, methods, log), on=["method", "metric"], how="left")
    table = table.merge(random_band(run, seeds, methods, log), on=["round", "method", "metric"], how="left")
    higher = table["metric"].map(lambda m: METRICS[m].higher_is_better)
    within = np.where(higher, table["ticket_mean"] >= table["seed_ci_low"], table["ticket_mean"] <= table["seed_ci_high"])
    known = table["ticket_mean"].notna() & table["seed_ci_low"].notna() & table["seed_ci_high"].notna()
    table["within_seed_band"] = pd.Series(within, index=table.index).where(known, other=None)
    return table.reindex(columns=BAND_COLUMNS).sort_values(["method", "metric", "round"]).reset_index(drop=True)


# ---------------------------------------------------------------- the step

def _inputs(run: RunDir, seeds: list[int]) -> dict[str, str]:
    """The fingerprint of every file the tables read (present ones), keyed by path."""
    cfg = run.cfg
    paths = []
    for changes in CONTROLS.values():
        for seed_run in seed_runs(run, seeds, **changes).values():
            paths += [seed_run.test_metrics(), seed_run.tcav_scores(), seed_run.explanation_metrics()]
            paths += [seed_run.heatmap_file(r, m) for r in seed_run.rounds() for m in cfg.heatmaps.methods]
    return {str(p): fingerprint(p) for p in paths if p.is_file()}


def _seeds_option(parser) -> None:
    parser.add_argument("--seeds", required=True, type=parse_seeds,
                        help="comma-separated seeds of the replicates, e.g. 0,1,2")


@step("aggregate", script="main_aggregate.py", title="replicates: mean and interval over the seed runs of one config, "
      "and the null bands of change", lock=False, rounds="none", across="seeds", arguments=_seeds_option,
      needs=("test",), uses=("tcav", "heatmaps", "metrics"),
      writes=("{replicates}/accuracy.csv", "{replicates}/tcav.csv", "{replicates}/metrics.csv",
              "{replicates}/null_bands.csv", "{replicates}/inputs.json"),
      figures=("{replicates}/plots/*.png",))
def aggregate_step(run: RunDir, seeds: list[int], force: bool = False, log=print) -> dict[str, pd.DataFrame]:
    """Write the replicates' tables of the seed runs of ``run``'s config (see the module docstring) into
    ``RunDir.aggregate_dir(seeds)`` (``{replicates}``), under the first seed run's lock; returns them by name."""
    cfg = run.cfg
    runs = seed_runs(run, seeds)
    missing = [str(r.root) for r in runs.values() if not r.root.is_dir()]
    if missing:
        raise UserError(f"run folder '{missing[0]}' not found; run the seeds first "
                        f"(bash bash_script/run_seeds.sh --seeds {','.join(map(str, seeds))})")
    first = runs[seeds[0]]
    names = ("accuracy", "tcav", "metrics", "null_bands")
    with first.lock("aggregate"):
        merge_inputs(run, seeds)
        stamp = {"seeds": seeds, "stats": vars(cfg.stats), "top_fraction": cfg.metrics.top_fraction,
                 "methods": list(cfg.heatmaps.methods), "inputs": _inputs(run, seeds)}
        record = first.aggregate_record(seeds)
        if not force and record.is_file() and all(first.aggregate_file(seeds, n).is_file() for n in names) \
                and read_json(record) == json.loads(json.dumps(stamp)):
            log(f"replicates up to date: {first.aggregate_dir(seeds)}")
            return {n: read_csv(first.aggregate_file(seeds, n)) for n in names}
        metrics = metrics_table(run, seeds)
        tables = {"accuracy": accuracy_table(run, seeds), "tcav": tcav_table(run, seeds), "metrics": metrics,
                  "null_bands": null_bands(run, seeds, metrics, log)}
        if tables["accuracy"].empty:
            raise UserError(f"no test accuracy in any seed run (e.g. '{first.test_metrics()}'); "
                            f"run {steps.label('test')} first")
        for name, table in tables.items():
            save_csv(first.aggregate_file(seeds, name), table)
        write_text(record, json.dumps(stamp, indent=1) + "\n")
    log(f"replicates of seeds {','.join(map(str, seeds))}: {first.aggregate_dir(seeds)}")
    return tables
