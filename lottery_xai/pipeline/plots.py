"""Step 8: every figure of the run from the files on disk. The one step that draws: it hands the run
to :mod:`lottery_xai.report` (allowed by the import contract for this module alone)."""
from __future__ import annotations

from pathlib import Path

from .. import rundir as rd
from ..config import Config
from .rounds import as_run


def plots_step(run: rd.RunDir | Config, log=print) -> list[Path]:
    from ..report import make_all_plots

    run = as_run(run)
    figures = make_all_plots(run.cfg, log=log)
    log(f"step 8 done: {len(figures)} figures in {run.root / 'plots'}")
    return figures


# -- replicates and null bands (main_aggregate.py; step 8 draws a run's null bands through plot_metrics)
def aggregate_plots(cfg: Config, seeds: list[int], log=print) -> list[Path]:
    """The figures of the replicates: accuracy and every explanation metric as mean and interval over
    seeds, the consistency metrics with the null bands, in the replicates folder's ``plots/``."""
    from .. import report  # the report layer (the one import this step may make): its figures and tables
    from ..metrics import METRICS

    figures, aggregate_table = report.figures, report.tables.aggregate_table
    run = rd.RunDir(cfg)
    drawn = [run.aggregate_plot(seeds, "accuracy_vs_weights")]
    figures.accuracy_with_bands(aggregate_table(cfg, seeds, "accuracy"), drawn[0])
    metrics, bands = aggregate_table(cfg, seeds, "metrics"), aggregate_table(cfg, seeds, "null_bands")
    for metric in metrics["metric"].unique():
        spec = METRICS.get(metric)
        drawn.append(run.aggregate_plot(seeds, f"metric_{metric}"))
        figures.metric_vs_weights(metrics, metric, None if spec is None else spec.higher_is_better, path=drawn[-1],
                                  null_bands=bands, value="mean")
    log(f"{len(drawn)} figures of the replicates in {run.aggregate_dir(seeds) / 'plots'}")
    return drawn
# -- end replicates and null bands
