"""Step 8 and the notebooks: read a run's files and draw its figures through :mod:`lottery_xai.plots`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from . import rundir as rd
from .config import Config, load_config
from .errors import UserError


class MissingInput(UserError):
    """A figure's input is not on disk yet (its step has not run): step 8 skips that figure."""


def _need(path: Path, step: str) -> Path:
    if not path.is_file():
        raise MissingInput(f"'{path}' is missing; run {step} first")
    return path


STEP2, STEP4, STEP5, STEP6, STEP7 = ("step 2 (main_lth_test.py)", "step 4 (main_lth_generate_cavs.py)",
                                     "step 5 (main_lth_tcav.py)", "step 6 (main_heatmap_save.py)",
                                     "step 7 (main_explanation_metrics.py)")
METRIC_COLUMNS = ["round", "weights_remaining", "method", "metric", "value"]


def open_run(config: str | Path | None = None, overrides: list[str] | str | None = None) -> Config:
    """The config of a run, as a notebook opens it (``overrides`` as ``--set`` strings, or one space-separated string)."""
    if isinstance(overrides, str):
        overrides = overrides.split()
    return load_config(config, overrides or [])


def accuracy_runs(cfg: Config) -> dict[str, pd.DataFrame]:
    """Test metrics of this run and of its controls (reinit, random pruning) when they exist on disk."""
    run = rd.RunDir(cfg)
    candidates = {f"ticket (rewind {cfg.pruning.rewind})": run}
    if cfg.pruning.rewind != "reinit":
        candidates["reinit control"] = run.sibling(**{"pruning.rewind": "reinit"})
    if cfg.pruning.method != "random":
        candidates["random pruning"] = run.sibling(**{"pruning.method": "random"})
    frames = {label: rd.read_csv(r.test_metrics(), ["round", "weights_remaining", "test_acc"], step=STEP2)
              for label, r in candidates.items() if r.test_metrics().is_file()}
    if not frames:
        raise MissingInput(f"'{run.test_metrics()}' is missing; run {STEP2} first")
    return frames


def plot_accuracy(cfg: Config, save: bool = True):
    run = rd.RunDir(cfg)
    return plots.accuracy_vs_weights(accuracy_runs(cfg), run.plot("accuracy_vs_weights") if save else None)


def tcav_table(cfg: Config) -> pd.DataFrame:
    run = rd.RunDir(cfg)
    columns = ["round", "weights_remaining", "layer", "class", "concept", "tcav_mean", "tcav_std", "significant"]
    return rd.read_csv(_need(run.tcav_scores(), STEP5), columns, step=STEP5)


def plot_tcav(cfg: Config, save: bool = True) -> list:
    run, table = rd.RunDir(cfg), tcav_table(cfg)
    figures = []
    for layer in sorted(table["layer"].unique()):
        for cls in sorted(table["class"].unique()):
            name = f"tcav_{layer}_{_safe(cls)}"
            figures.append(plots.tcav_vs_weights(table, cls, layer, run.plot(name) if save else None))
    return figures


def plot_cav_accuracy(cfg: Config, save: bool = True):
    run = rd.RunDir(cfg)
    acc = rd.read_csv(_need(run.cav_accuracy(), STEP4), ["round", "layer", "concept", "accuracy", "kind"], step=STEP4)
    return plots.cav_accuracy_vs_round(acc, run.plot("cav_accuracy") if save else None)


def heatmap_methods(cfg: Config) -> list[str]:
    run = rd.RunDir(cfg)
    return [m for m in cfg.heatmaps.methods if any(run.heatmap_file(r, m).is_file() for r in run.rounds())]


def plot_heatmaps(cfg: Config, method: str = "gradcam", n_images: int | None = None, save: bool = True):
    """Grid for one method: rows are images, columns are rounds labelled with the weights remaining."""
    run = rd.RunDir(cfg)
    images = rd.load_npz(_need(run.heatmap_images(), STEP6), keys=("ids", "labels", "images", "class_names"))
    count = len(images["ids"])
    if images["images"].ndim != 4 or len(images["images"]) != count or len(images["labels"]) != count:
        raise rd.unreadable(run.heatmap_images(), f"{len(images['images'])} images for {count} ids")
    n = n_images or cfg.heatmaps.grid_images
    pick = _spread(count, n)
    maps, remaining = {}, {}
    for r in run.rounds():
        path = run.heatmap_file(r, method)
        if path.is_file():
            stored = rd.load_npz(path, keys=("maps", "weights_remaining"), step=STEP6)
            if stored["maps"].ndim != 3 or len(stored["maps"]) != count:
                raise rd.unreadable(path, f"maps of shape {list(stored['maps'].shape)} for the {count} images of "
                                          f"{run.heatmap_images().name}", STEP6)
            maps[r] = stored["maps"][pick].astype(np.float32)
            remaining[r] = float(stored["weights_remaining"])
    if not maps:
        raise MissingInput(f"no heatmaps for method '{method}' in {run.root / 'heatmaps'}; run {STEP6} first")
    titles = [str(images["class_names"][images["labels"][i]]) for i in pick]
    maps = {r: _unit(m) for r, m in maps.items()}
    return plots.heatmap_grid(images["images"][pick], maps, remaining, titles, method,
                              run.plot(f"heatmaps_{method}") if save else None)


def plot_metrics(cfg: Config, save: bool = True) -> list:
    from .metrics import METRICS

    run = rd.RunDir(cfg)
    frame = rd.read_csv(_need(run.explanation_metrics(), STEP7), METRIC_COLUMNS, step=STEP7)
    figures = []
    for metric in frame["metric"].unique():
        spec = METRICS.get(metric.split("@")[0])
        higher = None if spec is None else spec.higher_is_better
        figures.append(plots.metric_vs_weights(frame, metric, higher, path=run.plot(f"metric_{_safe(metric)}") if save else None))
    return figures


def plot_roar(cfg: Config, save: bool = True):
    run = rd.RunDir(cfg)
    from .roar import roar_epochs

    frame = rd.read_csv(_need(run.roar_results(), "main_roar.py"),
                        ["round", "weights_remaining", "retrain", "epochs", "method", "percent_removed", "test_acc"],
                        step="main_roar.py")
    frame = frame[(frame["retrain"] == cfg.roar.retrain) & (frame["epochs"] == roar_epochs(cfg))]
    if frame.empty:
        raise MissingInput(f"'{run.roar_results()}' has no rows for roar.retrain={cfg.roar.retrain}, "
                        f"{roar_epochs(cfg)} epochs; run main_roar.py with these settings first")
    return plots.roar_curves(frame, path=run.plot("roar") if save else None)


def method_vs_baseline(cfg: Config, method: str = "gradcam", baseline: str = "random") -> pd.DataFrame:
    """Step 7 at the dense and the sparsest round: ``method`` against ``baseline`` on every map metric,
    with whether the method does better (in the metric's own direction)."""
    from .metrics import METRICS

    run = rd.RunDir(cfg)
    frame = rd.read_csv(_need(run.explanation_metrics(), STEP7), METRIC_COLUMNS, step=STEP7)
    frame = frame[frame["method"].isin([method, baseline])]
    rows = []
    for r in (frame["round"].min(), frame["round"].max()):
        part = frame[frame["round"] == r].pivot_table(index="metric", columns="method", values="value")
        if method not in part or baseline not in part:
            continue
        for metric, values in part.iterrows():
            spec = METRICS.get(metric)
            higher = True if spec is None else spec.higher_is_better
            a, b = values[method], values[baseline]
            rows.append({"round": int(r), "weights_remaining": float(frame.loc[frame["round"] == r, "weights_remaining"].iloc[0]),
                         "metric": metric, "better": "higher" if higher else "lower", method: a, baseline: b,
                         "beats_baseline": None if a == b else bool(a > b if higher else a < b)})
    return pd.DataFrame(rows)


@rd.locked("plots")
def make_all_plots(cfg: Config, log=print) -> list[Path]:
    """Every figure whose inputs exist (the missing ones are named in the log; an unreadable input is an
    error); returns the figure files of the run. Nothing at all to draw is a UserError."""
    run = rd.RunDir(cfg)
    if not run.root.is_dir():
        raise UserError(f"run directory '{run.root}' not found; run step 1 (main_lth_pruning.py) first "
                        "(or check logs and experiment_name)")
    before = set(run.root.joinpath("plots").glob("*.png"))
    jobs = [("accuracy", lambda: plot_accuracy(cfg)), ("CAV accuracy", lambda: plot_cav_accuracy(cfg)),
            ("TCAV", lambda: plot_tcav(cfg)), ("explanation metrics", lambda: plot_metrics(cfg)),
            ("ROAR", lambda: plot_roar(cfg))]
    # step 6 draws the grids; redraw one only when a map file is newer than it
    jobs += [(f"heatmaps {m}", (lambda m=m: plot_heatmaps(cfg, m))) for m in heatmap_methods(cfg)
             if not _up_to_date(run.plot(f"heatmaps_{m}"), [run.heatmap_file(r, m) for r in run.rounds()])]
    missing = []
    for label, job in jobs:
        try:
            job()
        except MissingInput as exc:
            missing.append(exc)
            log(f"skipped {label} plot: {exc}")
    if len(missing) == len(jobs) and not heatmap_methods(cfg):
        raise UserError(f"nothing to draw for run {run.name}: {missing[0]}")
    written = sorted(set(run.root.joinpath("plots").glob("*.png")) | before)
    return written


def _up_to_date(target: Path, sources: list[Path]) -> bool:
    if not target.is_file():
        return False
    stamp = target.stat().st_mtime_ns
    return all(p.stat().st_mtime_ns <= stamp for p in sources if p.is_file())


def _spread(total: int, n: int) -> np.ndarray:
    """``n`` indices spread over ``total`` (images of different classes in the grid)."""
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int))


def _unit(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def tcav_ground_truth(cfg: Config, round_index: int = 0, layer: str | None = None) -> pd.DataFrame:
    """On data whose class-defining attributes are known (the embedded synthetic set, MNIST even/odd):
    the share of (class, defining attribute) pairs whose TCAV is significant and above 0.5, against the
    share of (class, absent attribute) pairs that are. The first should be high, the second low."""
    from .lottery import load_data

    _, info = load_data(cfg, ())
    if info.defining_attributes is None:
        raise UserError(f"dataset '{cfg.dataset}' has no known class-defining attributes")
    table = tcav_table(cfg)
    table = table[table["round"] == round_index]
    rows = []
    for lay, g in table.groupby("layer"):
        if layer is not None and lay != layer:
            continue
        hit = g["significant"].astype(bool) & (g["tcav_mean"] > 0.5)
        defining = [c in info.defining_attributes.get(k, []) for k, c in zip(g["class"], g["concept"])]
        absent = [not d and info.class_concepts[info.class_names.index(k), info.concept_names.index(c)] == 0
                  for d, k, c in zip(defining, g["class"], g["concept"])]
        defining, absent = np.asarray(defining), np.asarray(absent)
        rows.append({"round": round_index, "layer": lay,
                     "defining_pairs": int(defining.sum()),
                     "defining_significant_above_half": float(hit[defining].mean()) if defining.any() else np.nan,
                     "absent_pairs": int(absent.sum()),
                     "absent_significant_above_half": float(hit[absent].mean()) if absent.any() else np.nan})
    return pd.DataFrame(rows)
