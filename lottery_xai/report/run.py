"""Every figure of a run, drawn from the files on disk (step 8 and the notebooks call these same functions),
step 8 itself, the figures drawn after steps 6 and ROAR and after the replicates, and the comparison of runs
trained with different losses."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import steps
from ..config import roar_epochs
from ..errors import UserError
from ..metrics import METRICS
from ..rundir import RunDir
from ..safe_io import load_npz, read_csv, save_csv, unreadable
from ..steps import draws, step
from . import figures as plots
from .figures import safe_name
from .tables import (COMPARED, MissingInput, _need, accuracy_runs, aggregate_table, early_stopping_runs,
                     explanation_table, heatmap_methods, loss_comparison, null_bands_of, tcav_table)


def plot_accuracy(run: RunDir, save: bool = True):
    return plots.accuracy_vs_weights(accuracy_runs(run), run.plot("accuracy_vs_weights") if save else None)


def plot_early_stopping(run: RunDir, save: bool = True):
    """Step 1's early-stopping iteration and step 2's test accuracy per round, with the controls (Figure 3 of
    the Lottery Ticket paper); drawn once step 2 has run."""
    accuracy = accuracy_runs(run)
    return plots.early_stopping_vs_weights(early_stopping_runs(run), accuracy,
                                           run.plot("early_stopping_vs_weights") if save else None)


def plot_tcav(run: RunDir, save: bool = True) -> list:
    table = tcav_table(run)
    figures = []
    for layer in sorted(table["layer"].unique()):
        for cls in sorted(table["class"].unique()):
            name = f"tcav_{layer}_{safe_name(cls)}"
            figures.append(plots.tcav_vs_weights(table, cls, layer, run.plot(name) if save else None))
    return figures


def plot_cav_accuracy(run: RunDir, save: bool = True):
    step4 = steps.label("cavs")
    acc = read_csv(_need(run.cav_accuracy(), step4), ["round", "layer", "concept", "accuracy", "kind"], step=step4)
    return plots.cav_accuracy_vs_round(acc, run.plot("cav_accuracy") if save else None)


def plot_heatmaps(run: RunDir, method: str = "gradcam", n_images: int | None = None, save: bool = True):
    """Grid for one method: rows are images, columns are rounds labelled with the weights remaining."""
    step6 = steps.label("heatmaps")
    images = load_npz(_need(run.heatmap_images(), step6), keys=("ids", "labels", "images", "class_names"))
    count = len(images["ids"])
    if images["images"].ndim != 4 or len(images["images"]) != count or len(images["labels"]) != count:
        raise unreadable(run.heatmap_images(), f"{len(images['images'])} images for {count} ids")
    n = n_images or run.cfg.heatmaps.grid_images
    pick = _spread(count, n)
    maps, remaining = {}, {}
    for r in run.rounds():
        path = run.heatmap_file(r, method)
        if path.is_file():
            stored = load_npz(path, keys=("maps", "weights_remaining"), step=step6)
            if stored["maps"].ndim != 3 or len(stored["maps"]) != count:
                raise unreadable(path, f"maps of shape {list(stored['maps'].shape)} for the {count} images of "
                                       f"{run.heatmap_images().name}", step6)
            maps[r] = stored["maps"][pick].astype(np.float32)
            remaining[r] = float(stored["weights_remaining"])
    if not maps:
        raise MissingInput(f"no heatmaps for method '{method}' in {run.root / 'heatmaps'}; run {step6} first")
    titles = [str(images["class_names"][images["labels"][i]]) for i in pick]
    maps = {r: _unit(m) for r, m in maps.items()}
    return plots.heatmap_grid(images["images"][pick], maps, remaining, titles, method,
                              run.plot(f"heatmaps_{method}") if save else None)


@draws("heatmaps", plots=False)  # step 8 redraws a grid only when a map file is newer than it (make_all_plots)
def plot_heatmap_grids(run: RunDir, log=print) -> list:
    """The round-by-round grid of every method in heatmaps.methods (drawn after step 6)."""
    drawn = [plot_heatmaps(run, method) for method in run.cfg.heatmaps.methods]
    log(f"grids in {run.plot('heatmaps_' + run.cfg.heatmaps.methods[0]).parent}")
    return drawn


def plot_metrics(run: RunDir, save: bool = True) -> list:
    step7 = steps.label("metrics")
    frame = explanation_table(run)
    bands = null_bands_of(run)  # replicates that include this seed: the consistency figures get the null bands
    figures = []
    for metric in frame["metric"].unique():
        spec = METRICS.get(metric.split("@")[0])
        higher = None if spec is None else spec.higher_is_better
        figures.append(plots.metric_vs_weights(frame, metric, higher,
                                               path=run.plot(f"metric_{safe_name(metric)}") if save else None,
                                               null_bands=bands))
    return figures


@draws("roar")
def plot_roar(run: RunDir, save: bool = True):
    cfg, roar = run.cfg, steps.label("roar")
    frame = read_csv(_need(run.roar_results(), roar),
                     ["round", "weights_remaining", "retrain", "epochs", "method", "percent_removed", "test_acc"],
                     step=roar)
    frame = frame[(frame["retrain"] == cfg.roar.retrain) & (frame["epochs"] == roar_epochs(cfg))]
    if frame.empty:
        raise MissingInput(f"'{run.roar_results()}' has no rows for roar.retrain={cfg.roar.retrain}, "
                           f"{roar_epochs(cfg)} epochs; run {roar} with these settings first")
    return plots.roar_curves(frame, path=run.plot("roar") if save else None)


@step("plots", number=8, script="main_plots.py", title="every figure of the run from the files on disk",
      folder="plots", rounds="none", draws=True, pipeline=True,
      uses=("test", "cavs", "tcav", "heatmaps", "metrics", "roar", "ace", "occlusion_study", "sanity", "aggregate"),
      writes=("plots/*.png",))
def make_all_plots(run: RunDir, log=print) -> list[Path]:
    """Every figure whose inputs exist (the missing ones are named in the log; an unreadable input is an
    error): accuracy, CAV accuracy, TCAV and the metrics, then the drawing of every step that has one
    (:func:`lottery_xai.steps.draws`), and the grids of step 6 whose maps are newer; returns the figure files
    of the run. Nothing at all to draw is a UserError."""
    if not run.root.is_dir():
        raise UserError(f"run directory '{run.root}' not found; run {steps.label('pruning')} first "
                        "(or check logs and experiment_name)")
    run.check_settings()  # the figures of another run's folder are not drawn under this config's name
    before = set(run.root.joinpath("plots").glob("*.png"))
    jobs = [("accuracy", lambda: plot_accuracy(run)), ("early stopping", lambda: plot_early_stopping(run)),
            ("CAV accuracy", lambda: plot_cav_accuracy(run)),
            ("TCAV", lambda: plot_tcav(run)), ("explanation metrics", lambda: plot_metrics(run))]
    jobs += [(d.key, (lambda d=d: d.draw(run))) for d in steps.drawings() if d.plots]  # the studies' figures
    # step 6 draws the grids; redraw one only when a map file is newer than it
    jobs += [(f"heatmaps {m}", (lambda m=m: plot_heatmaps(run, m))) for m in heatmap_methods(run)
             if not _up_to_date(run.plot(f"heatmaps_{m}"), [run.heatmap_file(r, m) for r in run.rounds()])]
    missing = []
    for label, job in jobs:
        try:
            job()
        except MissingInput as exc:
            missing.append(exc)
            log(f"skipped {label} plot: {exc}")
    if len(missing) == len(jobs) and not heatmap_methods(run):
        raise UserError(f"nothing to draw for run {run.name}: {missing[0]}")
    written = sorted(set(run.root.joinpath("plots").glob("*.png")) | before)
    log(f"step 8 done: {len(written)} figures in {run.root / 'plots'}")
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


# -- replicates and null bands (main_aggregate.py; step 8 draws a run's null bands through plot_metrics)
@draws("aggregate", plots=False)
def aggregate_plots(run: RunDir, seeds: list[int], log=print) -> list[Path]:
    """The figures of the replicates: accuracy and every explanation metric as mean and interval over
    seeds, the consistency metrics with the null bands, in the replicates folder's ``plots/``."""
    drawn = [run.aggregate_plot(seeds, "accuracy_vs_weights")]
    plots.accuracy_with_bands(aggregate_table(run, seeds, "accuracy"), drawn[0])
    metrics, bands = aggregate_table(run, seeds, "metrics"), aggregate_table(run, seeds, "null_bands")
    for metric in metrics["metric"].unique():
        spec = METRICS.get(metric)
        drawn.append(run.aggregate_plot(seeds, f"metric_{metric}"))
        plots.metric_vs_weights(metrics, metric, None if spec is None else spec.higher_is_better, path=drawn[-1],
                                null_bands=bands, value="mean")
    log(f"{len(drawn)} figures of the replicates in {run.aggregate_dir(seeds) / 'plots'}")
    return drawn


# -- runs trained with different losses (main_compare_losses.py)
def _losses_option(parser) -> None:
    parser.add_argument("--losses", default="cross_entropy,cgc", help="comma-separated train.loss values to compare")


@step("compare_losses", script="main_compare_losses.py", title="compare runs trained with different losses "
      "(cross-entropy and CGC): accuracy, transformation consistency, content heatmap, insertion AUC and "
      "consistency with the dense map at every round", lock=False, rounds="none", across="losses", draws=True,
      arguments=_losses_option, needs=("test", "metrics"),
      writes=("{logs}/loss_comparison.csv", "{logs}/loss_comparison.png"))
def compare_losses_step(run: RunDir, losses: str = "cross_entropy,cgc", log=print):
    """The comparison of the runs of ``run``'s config trained with each of ``losses`` (comma-separated
    ``train.loss`` values), in the logs folder (:func:`compare_losses`)."""
    runs = {loss: run.sibling(**{"train.loss": loss}) for loss in losses.split(",") if loss}
    return compare_losses(runs, Path(run.cfg.logs), log=log)


def compare_losses(runs: dict[str, RunDir], out_dir: Path, method: str = "gradcam", log=print):
    """The table (``loss_comparison.csv``) and figure (``loss_comparison.png``) of runs trained with
    different losses (label -> run), in ``out_dir``; returns the table."""
    table = loss_comparison(runs, method)
    out_dir = Path(out_dir)
    save_csv(out_dir / "loss_comparison.csv", table)
    plots.loss_comparison(table, COMPARED, out_dir / "loss_comparison.png")
    log(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    log(f"comparison in {out_dir / 'loss_comparison.csv'} and {out_dir / 'loss_comparison.png'}")
    return table
