"""The pipeline: the steps that compute, one module per step, each with one entry function declared as a
step (:func:`lottery_xai.steps.step`); ``python -m lottery_xai.steps table`` lists them.

A step takes the run (``rundir.RunDir``), reads what earlier steps left in it, skips outputs that are
complete and made from the current checkpoint, and writes atomically under its step lock. Steps never
draw: the figures after a step come from the drawing registered for it in :mod:`lottery_xai.report`.
:mod:`.loading` holds what the steps load (rounds, data, round models, names from the config),
:mod:`.maps` the configured maps of an attribution method.
"""
