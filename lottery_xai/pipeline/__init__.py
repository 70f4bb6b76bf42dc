"""The pipeline: one module per step, each with one entry function that the ``main_*.py`` script calls.

======  ======================  ====================================
step    module                  entry
======  ======================  ====================================
1       :mod:`.prune`           ``prune_step`` (``LotteryRun``)
2       :mod:`.test`            ``evaluate_rounds``
3       :mod:`.activations`     ``activations_step``
4       :mod:`.cavs`            ``cavs_step``
5       :mod:`.tcav`            ``tcav_step``
6       :mod:`.heatmaps`        ``heatmaps_step``
7       :mod:`.metrics`         ``metrics_step``
8       :mod:`.plots`           ``plots_step``
ROAR    :mod:`.roar`            ``roar_step``
======  ======================  ====================================

:mod:`.rounds` holds what every step shares. A step takes the run (``rundir.RunDir``; a Config is
opened as its run), reads what earlier steps left in it, skips outputs that are complete and made
from the current checkpoint, and writes atomically under its step lock. Steps never draw.
"""
