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
