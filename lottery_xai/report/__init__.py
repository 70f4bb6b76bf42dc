"""Reading a run and drawing it: pure figures (:mod:`.figures`), the figures of a run and step 8 (:mod:`.run`),
analysis tables (:mod:`.tables`), the studies' figures (:mod:`.ace`, :mod:`.sanity`), the run report
(:mod:`.html` with :mod:`.page` and :mod:`.verdicts`) and the human study's pages (:mod:`.human_study`).
Notebooks use the names below, on the run that :func:`open_run` opens. The compute steps never import this
package; the figures a step draws are registered here for its key (:func:`lottery_xai.steps.draws`)."""
from ..errors import UserError
from ..pipeline.metrics import summary_table
from ..pipeline.roar import roar_summary
from ..rundir import open_run
from . import figures
from .ace import (ace_rounds, ace_table, occlusion_table, plot_ace, plot_ace_histograms, plot_ace_montages, plot_ace_pca,
                  plot_ace_similarity, plot_occlusion)
from .html import build_report, render_report  # the run report
from .run import (aggregate_plots, compare_losses, make_all_plots, plot_accuracy, plot_cav_accuracy, plot_heatmaps,
                  plot_metrics, plot_roar, plot_tcav)
from .sanity import plot_sanity
from .tables import (MissingInput, accuracy_runs, heatmap_methods, loss_comparison, method_vs_baseline, tcav_ground_truth,
                     tcav_table)
from .verdicts import method_verdicts

__all__ = ["UserError", "figures", "summary_table", "roar_summary", "make_all_plots", "plot_accuracy",
           "plot_cav_accuracy", "plot_heatmaps", "plot_metrics", "plot_roar", "plot_tcav", "MissingInput",
           "accuracy_runs", "heatmap_methods", "loss_comparison", "compare_losses", "aggregate_plots",
           "method_vs_baseline", "open_run", "tcav_ground_truth", "tcav_table",
           "ace_rounds", "ace_table", "occlusion_table", "plot_ace", "plot_ace_histograms", "plot_ace_montages",
           "plot_ace_pca", "plot_ace_similarity", "plot_occlusion",
           "build_report", "plot_sanity", "render_report", "method_verdicts"]
