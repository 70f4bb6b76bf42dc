"""Statistics of a human study of explanations: pure functions on counts and answers.

Answers cluster: every item (a task) is answered by several workers, and every worker answers many
items. Answers that share an item or a worker are correlated (an easy image, a worker who always
prefers the sparser round), so n answers carry less than n independent answers' evidence and a test
that counts answers as independent (the thesis's chi-square) rejects a true null far too often (in
seeded simulations with 40 items x 5 workers and agreement 0.5, the chi-square rejected a true 50/50 in
25-30 % of studies, the test below in 4 %; tests/stats/test_human.py).

The tests here (Cameron, Gelbach & Miller 2011, "Robust inference with multiway clustering", J. Bus.
Econ. Stat. 29(2)): the share (or the difference of two shares) is the coefficient of a linear
probability model fitted by least squares, its variance the two-way cluster-robust (CR1) sandwich
``V_item + V_worker - V_item&worker`` (each one-way sandwich times ``G / (G - 1) * (n - 1) / (n - k)``,
as ``statsmodels`` OLS ``cov_type="cluster"`` with two group columns computes it), and the Wald
statistic is referred to Student's t with ``min(G_item, G_worker) - 1`` degrees of freedom (as
statsmodels does; the few-cluster correction CGM recommend). Why this and not the alternatives:

- a mixed-effects logistic model with crossed random effects for item and worker (the textbook
  model for such data) has no frequentist fit in statsmodels; its ``BinomialBayesMixedGLM`` is a
  variational-Bayes / Laplace approximation whose posterior standard deviations are too small here:
  in the simulation above it rejected a true null in 32 % (VB) and 22 % (Laplace, which also did not
  converge) of studies;
- a GEE with exchangeable correlation clustered by item holds its level with item effects alone but
  ignores workers: with worker effects (logit-normal, sd 1) it rejected a true null in 18-35 % of
  studies, where the two-way sandwich stayed at 5-6 %;
- a cluster bootstrap over items has the same blind spot for workers and costs thousands of refits.

The two-way sandwich needs no distributional model, no iterations, and agrees with statsmodels to
machine precision. It needs enough items *and* workers (tens of each); a dimension with a single
cluster is left out (one worker answering everything cannot be told apart from the mean). When the
two-way variance comes out non-positive (possible: it is a difference), the larger one-way variance
is used instead (conservative), as CGM suggest.

Experiment 1 (which of two explanations is more reasonable): the decisive votes (answers that are
not "equal"): their share for the sparser round against 1/2, clustered by item and worker
(:func:`clustered_share_test`). Secondary, the thesis's statistic (:func:`decisive_vote_test`):
Pearson's chi-square of the pooled decisive votes against 50/50 (1 d.f., no continuity correction:
the thesis's published numbers, e.g. 636 vs 521 -> chi-square 11.43, p = 7.2e-4), which treats the
votes as independent.

Experiment 2 (recognise the class from the top of the map): the same images are shown at every
round, so a pruned round is compared with the reference round *paired by image*
(:func:`paired_difference_test`): the difference of the two accuracies, clustered by image (which
holds both rounds' answers to it: the pairing) and by worker. With one answer per image and round
this is the paired t-test of the per-image differences. Secondary: the 2x2 chi-square of
:func:`recognition_test` (two independent samples of independent answers), and the thesis's
:func:`fixed_rate_test`, which even treats the reference rate as known.

Agreement: Krippendorff's alpha (nominal) from the ``krippendorff`` package, answers in long format
(one row per answer), so workers who answered only some items are handled (missing answers).

The simulator draws answers with a chosen answer distribution per item and a chosen agreement:
each item gets one "consensus" answer drawn from its distribution; each worker gives it with
probability ``sqrt(agreement)`` and otherwise an independent draw from the same distribution. The
marginal distribution is then exactly the chosen one, and the population value of Krippendorff's
alpha (the chance-corrected agreement of two workers on an item) is exactly ``agreement``.
Agreement also makes the votes on one item count less than independent votes; the power helpers
use the design effect ``1 + (m - 1) * agreement`` of ``m`` workers per item.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import krippendorff
import numpy as np
from scipy import stats


# ---------------------------------------------------------------- clustered answers: the primary tests

class ClusteredTest(NamedTuple):
    """A share (or a difference of shares) with its cluster-robust interval and Wald t-test."""
    estimate: float
    low: float
    high: float
    se: float
    statistic: float
    df: float
    p_value: float
    clusters: tuple  # the number of clusters of each dimension used (item/image, worker)


def _codes(labels) -> np.ndarray:
    return np.unique(np.asarray(labels).astype(str), return_inverse=True)[1].ravel()


def cluster_robust_ols(y, X, clusters: Sequence) -> tuple[np.ndarray, np.ndarray, int, tuple]:
    """Least squares of ``y`` on ``X`` [n, k] with the one- or two-way cluster-robust (CR1) covariance
    of Cameron, Gelbach & Miller (2011): ``(params, cov, df, sizes)``.

    ``clusters``: one or two label arrays of length n (e.g. item and worker). Each one-way sandwich is
    ``B (sum_g s_g s_g') B`` with ``B = (X'X)^-1`` and ``s_g`` the sum of ``x_i e_i`` over cluster g, times
    ``G / (G - 1) * (n - 1) / (n - k)``; two ways: ``V_1 + V_2 - V_12`` (V_12 clustered by the pairs of
    labels), the statsmodels ``OLS(...).fit(cov_type="cluster")`` covariance. A non-positive-definite
    two-way result falls back to the larger one-way covariance. ``df = min(G) - 1`` (statsmodels'
    inference degrees of freedom). Dimensions with fewer than two clusters are left out; none left:
    covariance and df NaN."""
    y = np.asarray(y, dtype=np.float64).ravel()
    X = np.asarray(X, dtype=np.float64).reshape(len(y), -1)
    n, k = X.shape
    params, *_ = np.linalg.lstsq(X, y, rcond=None)
    bread = np.linalg.pinv(X.T @ X)
    scores = X * (y - X @ params)[:, None]

    def one_way(codes: np.ndarray) -> np.ndarray:
        groups = int(codes.max()) + 1
        sums = np.zeros((groups, k))
        np.add.at(sums, codes, scores)
        return groups / (groups - 1) * (n - 1) / (n - k) * (bread @ (sums.T @ sums) @ bread)

    dims = [c for c in (_codes(c) for c in clusters) if len(c) == n and c.max() >= 1]
    sizes = tuple(int(c.max()) + 1 for c in dims)
    if not dims or n <= k:
        return params, np.full((k, k), np.nan), math.nan, sizes
    covs = [one_way(c) for c in dims]
    cov = covs[0]
    if len(dims) == 2:
        both = _codes([f"{a}/{b}" for a, b in zip(*dims)])
        cov = covs[0] + covs[1] - (one_way(both) if both.max() >= 1 else 0.0)
        if np.linalg.eigvalsh(cov).min() <= 0:  # the difference is not a covariance: the conservative one-way one
            cov = max(covs, key=lambda c: float(np.trace(c)))
    return params, cov, min(sizes) - 1, sizes


def _wald(estimate: float, variance: float, df: float, null: float, level: float, sizes: tuple) -> ClusteredTest:
    if not np.isfinite(variance) or variance <= 0 or not np.isfinite(df) or df < 1:
        # no spread (every answer the same) or no replication: no interval and no test
        return ClusteredTest(estimate, math.nan, math.nan, math.nan, math.nan, df, math.nan, sizes)
    se = math.sqrt(variance)
    t = (estimate - null) / se
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return ClusteredTest(estimate, estimate - half, estimate + half, se, t, float(df),
                         float(2 * stats.t.sf(abs(t), df)), sizes)


def clustered_share_test(successes, clusters: Sequence, null: float = 0.5, level: float = 0.95) -> ClusteredTest:
    """The share of ``successes`` (one 0/1 entry per answer) against ``null``, clustered two-way (e.g.
    ``[item, worker]``): the linear probability model ``y = b0`` of :func:`cluster_robust_ols`, a Wald
    t-test with ``min(G) - 1`` d.f. and the matching interval (not clipped to [0, 1]). With every cluster
    of one answer and one dimension it is the heteroskedasticity-robust test of a proportion; with
    equal-sized clusters of one dimension, the one-sample t-test of the cluster means against ``null``.
    No answer: all NaN; no spread (every answer the same): the share, NaN otherwise."""
    y = np.asarray(successes, dtype=np.float64).ravel()
    if len(y) == 0:
        return ClusteredTest(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, ())
    if np.all(y == y[0]):  # no spread: the sandwich is 0 (up to round-off), no interval and no test
        return ClusteredTest(float(y[0]), math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, ())
    params, cov, df, sizes = cluster_robust_ols(y, np.ones((len(y), 1)), clusters)
    return _wald(float(params[0]), float(cov[0, 0]), df, null, level, sizes)


def paired_difference_test(successes, second, clusters: Sequence, level: float = 0.95) -> ClusteredTest:
    """The difference of two shares, ``mean(y | second) - mean(y | not second)``, when the same units
    (images) were answered under both conditions (rounds): ``y = b0 + b1 * second`` by least squares,
    clustered by ``clusters`` (the unit first, so both conditions' answers to a unit are one cluster:
    the pairing; then the worker), Wald t-test of ``b1 = 0`` with ``min(G) - 1`` d.f. With one answer per
    unit and condition and one dimension this is the paired t-test of the per-unit differences (up to
    the factor ``(n - 1) / (n - 2)`` of CR1). Both shares 0 or both 1: no difference (0, p = 1)."""
    y = np.asarray(successes, dtype=np.float64).ravel()
    z = np.asarray(second, dtype=bool).ravel()
    if len(y) == 0 or z.all() or not z.any():
        return ClusteredTest(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, ())
    if np.all(y == y[0]):  # everybody right (or wrong) under both conditions: nothing differs
        return ClusteredTest(0.0, 0.0, 0.0, 0.0, 0.0, math.nan, 1.0, ())
    params, cov, df, sizes = cluster_robust_ols(y, np.column_stack([np.ones(len(y)), z]), clusters)
    return _wald(float(params[1]), float(cov[1, 1]), df, 0.0, level, sizes)


# ---------------------------------------------------------------- experiment 1: decisive votes

def decisive_vote_test(votes_a: int, votes_b: int) -> tuple[float, float]:
    """Chi-square of the decisive votes for two sides against 50/50: ``(chi2, p)`` (1 d.f.).
    No decisive vote at all: ``(nan, nan)``."""
    if votes_a + votes_b == 0:
        return math.nan, math.nan
    result = stats.chisquare([votes_a, votes_b])
    return float(result.statistic), float(result.pvalue)


# ---------------------------------------------------------------- experiment 2: recognition

def recognition_test(correct: int, total: int, correct_ref: int, total_ref: int,
                     correction: bool = True) -> tuple[float, float]:
    """Chi-square test of independence of the 2x2 table (correct, not correct) x (round, reference
    round): ``(chi2, p)``. ``correction``: Yates's continuity correction (scipy's default for 2x2).
    Two rates that are both 0 or both 1 are equal: ``(0, 1)``."""
    table = np.array([[correct, total - correct], [correct_ref, total_ref - correct_ref]], dtype=float)
    if total <= 0 or total_ref <= 0:
        return math.nan, math.nan
    if (table.sum(axis=0) == 0).any():  # nobody (or everybody) correct in both rounds: no difference
        return 0.0, 1.0
    chi2, p, _, _ = stats.chi2_contingency(table, correction=correction)
    return float(chi2), float(p)


def fixed_rate_test(correct: int, total: int, correct_ref: int, total_ref: int) -> tuple[float, float]:
    """The thesis's recognition test, kept for comparison only: the round's counts against the
    reference round's rate taken as a known expected rate (goodness of fit, 1 d.f.). It ignores that
    the reference rate is itself estimated from ``total_ref`` answers; use :func:`recognition_test`."""
    rate = correct_ref / total_ref
    expected = [rate * total, (1 - rate) * total]
    result = stats.chisquare([correct, total - correct], f_exp=expected)
    return float(result.statistic), float(result.pvalue)


def wilson_interval(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (nan, nan without trials)."""
    if total <= 0:
        return math.nan, math.nan
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


# ---------------------------------------------------------------- agreement

def value_counts(units, answers, categories=None) -> tuple[np.ndarray, list]:
    """``counts[unit, category]``: how many answers each unit (item) got of each category, from long
    format (one entry per answer); returns the counts and the category order."""
    units, answers = np.asarray(units), np.asarray(answers)
    if len(units) != len(answers):
        raise ValueError(f"{len(units)} units for {len(answers)} answers")
    categories = list(categories) if categories is not None else sorted(set(answers.tolist()))
    code = {c: i for i, c in enumerate(categories)}
    unit_ids, unit_index = np.unique(units, return_inverse=True)
    answer_index = np.array([code[a] for a in answers.tolist()], dtype=np.int64)
    counts = np.zeros((len(unit_ids), len(categories)), dtype=np.int64)
    np.add.at(counts, (unit_index, answer_index), 1)
    return counts, categories


def krippendorff_alpha(units, answers, categories=None) -> float:
    """Krippendorff's alpha for nominal answers given in long format (``units[i]`` got ``answers[i]``).
    Units with a single answer do not count (nothing to agree with). Undefined (nan) when fewer than
    two answers are pairable or when every pairable answer is the same value (no expected disagreement)."""
    counts, categories = value_counts(units, answers, categories)
    pairable = counts[counts.sum(axis=1) >= 2]
    used = pairable.sum(axis=0) > 0
    if len(pairable) == 0 or used.sum() < 2:
        return math.nan
    return float(krippendorff.alpha(value_counts=pairable[:, used], level_of_measurement="nominal"))


# ---------------------------------------------------------------- the response simulator

def simulate_answers(probabilities, workers: int, agreement: float, rng: np.random.Generator) -> np.ndarray:
    """Answers ``[n_items, workers]`` (category indices) of ``workers`` workers per item.

    ``probabilities[n_items, n_categories]``: each item's answer distribution (rows sum to 1).
    ``agreement`` in [0, 1]: the chance-corrected agreement (Krippendorff's alpha) the answers have in
    expectation when the items share one distribution; 0 = independent workers, 1 = every worker of
    an item gives its consensus answer."""
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or not np.allclose(probabilities.sum(axis=1), 1.0):
        raise ValueError("probabilities must be [n_items, n_categories] with rows summing to 1")
    if not 0.0 <= agreement <= 1.0:
        raise ValueError(f"agreement must be in [0, 1], got {agreement}")
    n_items, _ = probabilities.shape
    cumulative = np.cumsum(probabilities, axis=1)
    cumulative[:, -1] = 1.0

    def draw(shape) -> np.ndarray:  # one categorical draw per entry, by inverse CDF, all items at once
        u = rng.random(shape)
        return (u[..., None] > cumulative.reshape(n_items, *([1] * (len(shape) - 1)), -1)).sum(-1)

    consensus = draw((n_items,))
    fresh = draw((n_items, workers))
    copies = rng.random((n_items, workers)) < math.sqrt(agreement)
    return np.where(copies, consensus[:, None], fresh)


def preference_probabilities(n_items: int, preference: float, equal_share: float) -> np.ndarray:
    """Experiment 1's answer distribution ``[n_items, 3]`` over (side A, side B, equal): ``equal_share``
    of the answers are "equal", and ``preference`` of the decisive ones go to side B."""
    decisive = 1.0 - equal_share
    row = [decisive * (1.0 - preference), decisive * preference, equal_share]
    return np.tile(row, (n_items, 1))


# ---------------------------------------------------------------- power: how many workers a study needs

def design_effect(workers_per_item: float, agreement: float) -> float:
    """Variance inflation of a vote share when ``workers_per_item`` workers answer each item with
    intra-item correlation ``agreement``: votes count as ``votes / design_effect`` independent ones."""
    return 1.0 + (workers_per_item - 1.0) * agreement


def share_standard_error(share: float, n_votes: int, workers_per_item: float = 1.0, agreement: float = 0.0) -> float:
    """Standard error of a vote share estimated from ``n_votes`` votes cast ``workers_per_item`` per item
    with intra-item correlation ``agreement``."""
    return math.sqrt(share * (1.0 - share) / n_votes * design_effect(workers_per_item, agreement))


def decisive_power(preference: float, n_decisive: float, alpha: float = 0.05) -> float:
    """Power of the chi-square test against 50/50 (level ``alpha``) to detect a true share
    ``preference`` of the decisive votes with ``n_decisive`` independent decisive votes
    (noncentral chi-square, noncentrality ``n * 4 (preference - 0.5)^2``)."""
    if n_decisive <= 0:
        return 0.0
    critical = stats.chi2.ppf(1.0 - alpha, df=1)
    noncentrality = n_decisive * 4.0 * (preference - 0.5) ** 2
    return float(stats.ncx2.sf(critical, df=1, nc=noncentrality)) if noncentrality > 0 else float(alpha)


def study_power(preference: float, n_items: int, workers_per_item: int, equal_share: float = 0.0,
                agreement: float = 0.0, alpha: float = 0.05) -> float:
    """Power of one comparison of experiment 1: ``n_items`` items, ``workers_per_item`` answers each,
    ``equal_share`` of them "equal", answers within an item correlated by ``agreement``."""
    decisive = n_items * workers_per_item * (1.0 - equal_share)
    return decisive_power(preference, decisive / design_effect(workers_per_item, agreement), alpha)


def workers_needed(preference: float, n_items: int, equal_share: float = 0.0, agreement: float = 0.0,
                   power: float = 0.8, alpha: float = 0.05, max_workers: int = 200) -> int | None:
    """The fewest workers per item that give ``power`` (see :func:`study_power`); None when even
    ``max_workers`` do not (with agreement, more workers on the same items saturate: more items help)."""
    for m in range(1, max_workers + 1):
        if study_power(preference, n_items, m, equal_share, agreement, alpha) >= power:
            return m
    return None


def items_needed(preference: float, workers_per_item: int, equal_share: float = 0.0, agreement: float = 0.0,
                 power: float = 0.8, alpha: float = 0.05) -> int:
    """The fewest items per comparison that give ``power`` with ``workers_per_item`` workers each."""
    if preference == 0.5:
        raise ValueError("a 50/50 preference cannot be detected; give the smallest preference worth finding")
    low, high = 1, 1
    while study_power(preference, high, workers_per_item, equal_share, agreement, alpha) < power:
        high *= 2
        if high > 10**9:
            raise ValueError("no feasible number of items")
    while low < high:  # power increases with the number of items
        mid = (low + high) // 2
        if study_power(preference, mid, workers_per_item, equal_share, agreement, alpha) >= power:
            high = mid
        else:
            low = mid + 1
    return low
