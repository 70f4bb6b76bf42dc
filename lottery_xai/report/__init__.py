"""Reading a run and drawing it: pure figures (:mod:`.figures`), the figures of a run (:mod:`.run`)
and analysis tables (:mod:`.tables`). Notebooks use the names below. The compute steps never import
this package; the scripts draw after their step, and step 8 draws everything."""
from .. import rundir as rd
from ..errors import UserError
from ..pipeline.metrics import summary_table
from ..pipeline.roar import roar_summary
from . import figures
from .ace import (ace_rounds, ace_table, occlusion_table, plot_ace, plot_ace_histograms, plot_ace_montages, plot_ace_pca,
                  plot_ace_similarity, plot_occlusion)
from .html import build_report, plot_sanity, render_report  # the run report and the sanity figures
from .run import (compare_losses, make_all_plots, plot_accuracy, plot_cav_accuracy, plot_heatmaps, plot_metrics, plot_roar,
                  plot_tcav)
from .tables import (MissingInput, accuracy_runs, heatmap_methods, loss_comparison, method_vs_baseline, open_run,
                     tcav_ground_truth, tcav_table)

__all__ = ["rd", "UserError", "figures", "summary_table", "roar_summary", "make_all_plots", "plot_accuracy",
           "plot_cav_accuracy", "plot_heatmaps", "plot_metrics", "plot_roar", "plot_tcav", "MissingInput",
           "accuracy_runs", "heatmap_methods", "loss_comparison", "compare_losses", "method_vs_baseline", "open_run", "tcav_ground_truth", "tcav_table",
           "ace_rounds", "ace_table", "occlusion_table", "plot_ace", "plot_ace_histograms", "plot_ace_montages",
           "plot_ace_pca", "plot_ace_similarity", "plot_occlusion",
           "build_report", "plot_sanity", "render_report"]
