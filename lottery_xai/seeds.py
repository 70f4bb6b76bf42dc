"""Derived seeds: every random choice of a run draws from a seed made of the run's seed and its purpose.

``derived_seed(cfg.seed, SeedPurpose.PRUNE, r)`` is stable across runs and resumes; two purposes never
share a value, so two choices never draw the same numbers.
"""
from __future__ import annotations

from enum import IntEnum, unique


@unique  # two purposes sharing a value would draw the same random numbers
class SeedPurpose(IntEnum):
    """What a derived seed is for: ``derived_seed(cfg.seed, SeedPurpose.PRUNE, r)``. The values are
    part of every run's results: never renumber one, only add new ones."""
    AUGMENT = 1          # step 1: the global generator of round r (augmentation draws)
    PRUNE = 2            # step 1: random pruning / tie-breaking of round r's masks
    REINIT = 3           # step 1: the reinit control's fresh weights of round r
    DATA_ORDER = 4       # step 1: the data order of round r
    CAV = 6              # step 4: CAV runs and random sets of round r
    HEATMAPS = 7         # step 6: the random baseline (and other seeded maps) of round r
    ROAR_RANK_TIES = 17  # ROAR: tie-breaking permutation of the pixel ranks (round, split)
    ROAR_MAPS = 19       # ROAR: seeded maps of a batch (round, split, start)
    ROAR_INIT = 23       # ROAR: a dense retrain's fresh weights (seed index)
    ROAR_ORDER = 29      # ROAR: the retrain's batch order and flips (seed index)
    ROAR_TRAIN = 31      # ROAR: the retrain's global generator (seed index)
    TRANSFORMS = 37      # step 7: random transformations of the consistency check of round r
    UNLABELED = 41       # step 1: which training images are used without their labels (every round alike)
    ACE_DISCOVERY = 43   # ACE and the occlusion study: which train images of each class are used
    ACE_KMEANS = 47      # ACE: k-means of class c's patches
    ACE_RANDOM_SETS = 53  # ACE: the random patch sets of class c
    ACE_CAV_FITS = 59    # ACE: the CAV fits of round r
    OCCLUSION_SQUARES = 61  # the occlusion study: the squares (the same every round)
    REPORT_VERDICTS = 67  # the report: the verdicts' paired bootstrap (sparsest round)
    HUMAN_STUDY = 71     # the human study: its draws (image choice, side order, ties, task order, simulation)
    SANITY = 73          # sanity checks: the fresh weights of the randomised layers of round r
    STATS_BOOTSTRAP = 79  # step 7 and main_aggregate.py: the bootstrap over images of round r
    METRICS = 83         # step 7: tie-breaking permutations of the rankings (round, method) and the region noise
    IG_NOISE = 89        # integrated gradients' uniform-noise baselines (below a map seed)
    NOISE_TUNNEL = 97    # SmoothGrad, SmoothGrad-squared and VarGrad: the noisy copies (below a map seed)
    METRIC_NOISE = 101   # step 7's opt-in metrics: the draws of ROAD, robustness, random logit, infidelity (per run)


def derived_seed(seed: int, *parts: int) -> int:
    """A seed for one purpose (e.g. round r, epoch e), stable across runs and resumes."""
    value = seed
    for p in parts:
        value = (value * 1_000_003 + int(p) + 7919) % (2**63 - 1)
    return value
