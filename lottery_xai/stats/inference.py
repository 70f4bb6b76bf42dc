"""Intervals and tests of the explanation metrics: bootstrap intervals over images, t intervals over
seeds, Wilcoxon signed-rank tests on paired per-image values, multiple-testing correction.

Pure functions on arrays and tables (numpy, scipy, statsmodels); no model, no run directory.

- `bootstrap_ci`: percentile bootstrap interval of the mean. All resamples are drawn at once as one
  ``[n_bootstrap, n]`` index array from a seeded ``numpy.random.Generator``, so an interval depends only
  on the values, ``n_bootstrap``, ``confidence`` and ``seed``. Values that are NaN (a metric undefined for
  an image, e.g. energy in parts of an image without visible parts) are left out before resampling.
- `t_interval`: Student-t interval of the mean (for a few seeds, where a bootstrap has no resolution).
- `wilcoxon_power`: the simulated power of that test for n pairs and a shift in SD units (how many
  images step 6 needs: ``heatmaps.images_per_class``).
- `wilcoxon_paired` / `paired_tests`: Wilcoxon signed-rank test of paired values (scipy), pairs with a
  NaN on either side left out; `paired_tests` builds the table of step 7 (each pruned round against the
  dense round, each method against the random baseline) and corrects all its p-values together (`adjust`:
  ``statsmodels.stats.multitest.multipletests``, Holm by default).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

TEST_COLUMNS = ["round", "weights_remaining", "method", "metric", "comparison", "n", "statistic", "p_value",
                "p_adjusted", "significant"]


def bootstrap_ci(values, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the mean of the finite entries of ``values``.

    Fewer than two finite values: ``(nan, nan)`` (no spread to resample); all values equal: that value
    twice. The resamples are one index array drawn from ``numpy.random.default_rng(seed)``."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), size=(int(n_bootstrap), len(x)))
    means = x[index].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_ci_rows(values, n_bootstrap: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`bootstrap_ci` of every row of a ``[k, n]`` array without NaNs at once (one shared index array):
    ``(low [k], high [k])``. Each row's interval is the one `bootstrap_ci` gives it with the same seed."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError("bootstrap_ci_rows needs a [k, n] array of finite values")
    if x.shape[1] < 2:
        return np.full(len(x), np.nan), np.full(len(x), np.nan)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, x.shape[1], size=(int(n_bootstrap), x.shape[1]))
    means = x[:, index].mean(axis=2)  # [k, n_bootstrap]
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail], axis=1)
    return low, high


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the finite entries: mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n)
    (sample sd). One value: its mean and a NaN interval; none: all NaN."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def wilcoxon_paired(a, b) -> tuple[int, float, float]:
    """Two-sided Wilcoxon signed-rank test of paired values ``a`` and ``b``: ``(n, statistic, p)``.

    Pairs with a NaN on either side are left out (``n`` counts the rest). scipy's default zero
    handling ("wilcox") drops zero differences; when every difference is zero scipy has nothing to
    rank and returns NaN, but no pair differs at all, so that case is reported as statistic 0, p = 1
    (no evidence of a change). No pair at all: ``(0, nan, nan)``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(len(a))
    if n == 0:
        return 0, math.nan, math.nan
    if np.all(a - b == 0):
        return n, 0.0, 1.0  # all differences zero: nothing changed (scipy would give NaN)
    result = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return n, float(result.statistic), float(result.pvalue)


def wilcoxon_power(n: int, shift_sd: float, alpha: float = 0.05, n_sim: int = 2000, seed: int = 0) -> float:
    """The share of ``n_sim`` seeded simulated studies in which the two-sided Wilcoxon signed-rank test of
    ``n`` paired differences drawn from N(shift_sd, 1) (a shift of ``shift_sd`` standard deviations of the
    differences) has p < ``alpha``: its power. Under Holm over m tests the smallest p-value is held to
    alpha / m, the harshest threshold. All studies are one ``[n_sim, n]`` draw and one vectorised test."""
    if n < 1 or n_sim < 1:
        raise ValueError(f"wilcoxon_power needs n >= 1 and n_sim >= 1, got n={n}, n_sim={n_sim}")
    differences = np.random.default_rng(seed).normal(shift_sd, 1.0, size=(n_sim, n))
    p = stats.wilcoxon(differences, zero_method="wilcox", alternative="two-sided", axis=1).pvalue
    return float(np.mean(np.asarray(p) < alpha))


def adjust(p_values, method: str = "holm", alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Multiple-testing correction of ``p_values`` (NaN ones are left out and stay NaN / not significant):
    ``(p_adjusted, significant)`` from ``statsmodels.stats.multitest.multipletests(p, alpha, method)``."""
    from statsmodels.stats.multitest import multipletests  # lazy: statsmodels takes 0.3 s, only the tests need it

    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    significant = np.zeros(p.shape, dtype=bool)
    ok = np.isfinite(p)
    if ok.any():
        reject, corrected, _, _ = multipletests(p[ok], alpha=alpha, method=method)
        adjusted[ok], significant[ok] = corrected, reject
    return adjusted, significant


def paired_tests(per_image: pd.DataFrame, dense_round: int = 0, baseline: str = "random",
                 correction: str = "holm", alpha: float = 0.05,
                 weights: dict | None = None) -> pd.DataFrame:
    """Wilcoxon signed-rank tests on the per-image values of step 7 (``round, method, metric, image_id,
    value``), all p-values corrected together (``correction`` at ``alpha``; see `adjust`).

    ``comparison = dense``: every round but ``dense_round`` against ``dense_round``, per method and metric,
    pairing the values of the same image. ``comparison = random``: every method but ``baseline`` against
    ``baseline``, per round and metric, pairing the same image. ``weights``: ``{round: weights_remaining}``
    for that column. Returns `TEST_COLUMNS`, one row per test."""
    frame = per_image[["round", "method", "metric", "image_id", "value"]]
    wide = frame.pivot_table(index=["metric", "image_id"], columns=["round", "method"], values="value",
                             aggfunc="first", dropna=False)
    rows = []
    pairs = set(wide.columns)
    for metric in sorted(frame["metric"].unique()):
        block = wide.xs(metric, level="metric")
        for r, method in sorted(pairs):
            tests = []
            if r != dense_round and (dense_round, method) in pairs:
                tests.append(("dense", (dense_round, method)))
            if method != baseline and (r, baseline) in pairs:
                tests.append(("random", (r, baseline)))
            for comparison, reference in tests:
                n, statistic, p = wilcoxon_paired(block[(r, method)].to_numpy(), block[reference].to_numpy())
                if n == 0:
                    continue  # the metric is not defined for this pair of columns
                rows.append({"round": int(r), "weights_remaining": (weights or {}).get(r, math.nan),
                             "method": method, "metric": metric, "comparison": comparison, "n": n,
                             "statistic": statistic, "p_value": p})
    table = pd.DataFrame(rows, columns=TEST_COLUMNS)
    if len(table):
        table["p_adjusted"], table["significant"] = adjust(table["p_value"].to_numpy(), correction, alpha)
    table["significant"] = table["significant"].astype(bool)
    return table.sort_values(["comparison", "method", "metric", "round"]).reset_index(drop=True)
