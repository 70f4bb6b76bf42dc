"""Every figure of a run, drawn from the files on disk (step 8 and the notebooks call these same functions)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import rundir as rd
from ..config import Config, roar_epochs
from ..errors import UserError
from ..safe_io import load_npz, read_csv, save_csv, unreadable
from . import figures as plots
from .tables import (STEP4, STEP6, STEP7, METRIC_COLUMNS, MissingInput, _need, accuracy_runs, heatmap_methods,
                     null_bands_of, tcav_table)


def plot_accuracy(cfg: Config, save: bool = True):
    run = rd.RunDir(cfg)
    return plots.accuracy_vs_weights(accuracy_runs(cfg), run.plot("accuracy_vs_weights") if save else None)


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
    acc = read_csv(_need(run.cav_accuracy(), STEP4), ["round", "layer", "concept", "accuracy", "kind"], step=STEP4)
    return plots.cav_accuracy_vs_round(acc, run.plot("cav_accuracy") if save else None)


def plot_heatmaps(cfg: Config, method: str = "gradcam", n_images: int | None = None, save: bool = True):
    """Grid for one method: rows are images, columns are rounds labelled with the weights remaining."""
    run = rd.RunDir(cfg)
    images = load_npz(_need(run.heatmap_images(), STEP6), keys=("ids", "labels", "images", "class_names"))
    count = len(images["ids"])
    if images["images"].ndim != 4 or len(images["images"]) != count or len(images["labels"]) != count:
        raise unreadable(run.heatmap_images(), f"{len(images['images'])} images for {count} ids")
    n = n_images or cfg.heatmaps.grid_images
    pick = _spread(count, n)
    maps, remaining = {}, {}
    for r in run.rounds():
        path = run.heatmap_file(r, method)
        if path.is_file():
            stored = load_npz(path, keys=("maps", "weights_remaining"), step=STEP6)
            if stored["maps"].ndim != 3 or len(stored["maps"]) != count:
                raise unreadable(path, f"maps of shape {list(stored['maps'].shape)} for the {count} images of "
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
    from ..metrics import METRICS

    run = rd.RunDir(cfg)
    frame = read_csv(_need(run.explanation_metrics(), STEP7), METRIC_COLUMNS, step=STEP7)
    bands = null_bands_of(cfg)  # replicates that include this seed: the consistency figures get the null bands
    figures = []
    for metric in frame["metric"].unique():
        spec = METRICS.get(metric.split("@")[0])
        higher = None if spec is None else spec.higher_is_better
        figures.append(plots.metric_vs_weights(frame, metric, higher, path=run.plot(f"metric_{_safe(metric)}") if save else None,
                                               null_bands=bands))
    return figures


def plot_roar(cfg: Config, save: bool = True):
    run = rd.RunDir(cfg)
    frame = read_csv(_need(run.roar_results(), "main_roar.py"),
                     ["round", "weights_remaining", "retrain", "epochs", "method", "percent_removed", "test_acc"],
                     step="main_roar.py")
    frame = frame[(frame["retrain"] == cfg.roar.retrain) & (frame["epochs"] == roar_epochs(cfg))]
    if frame.empty:
        raise MissingInput(f"'{run.roar_results()}' has no rows for roar.retrain={cfg.roar.retrain}, "
                        f"{roar_epochs(cfg)} epochs; run main_roar.py with these settings first")
    return plots.roar_curves(frame, path=run.plot("roar") if save else None)


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
    from .ace import plot_ace, plot_occlusion  # the optional studies' figures (their steps draw them too)
    from .html import plot_sanity
    def ace_job():
        if not run.ace_concepts().is_file():
            raise MissingInput(f"'{run.ace_concepts()}' is missing; run main_ace.py first")
        plot_ace(cfg, log=log)
    jobs += [("ACE", ace_job), ("occlusion study", lambda: plot_occlusion(cfg)),
             ("sanity checks", lambda: plot_sanity(cfg))]
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


def compare_losses(configs: dict, out_dir: Path, method: str = "gradcam", log=print):
    """The table (``loss_comparison.csv``) and figure (``loss_comparison.png``) of runs trained with
    different losses, in ``out_dir``; returns the table."""
    from .tables import COMPARED, loss_comparison

    table = loss_comparison(configs, method)
    out_dir = Path(out_dir)
    save_csv(out_dir / "loss_comparison.csv", table)
    plots.loss_comparison(table, COMPARED, out_dir / "loss_comparison.png")
    log(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    log(f"comparison in {out_dir / 'loss_comparison.csv'} and {out_dir / 'loss_comparison.png'}")
    return table
