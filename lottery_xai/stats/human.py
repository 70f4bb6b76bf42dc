"""Statistics of a human study of explanations: pure functions on counts and answers.

Experiment 1 (which of two explanations is more reasonable): the decisive votes (answers that are
not "equal") for the two sides are tested against 50/50 with Pearson's chi-square goodness-of-fit
test (1 degree of freedom, no continuity correction: the thesis's published statistics, e.g.
636 vs 521 -> chi-square 11.43, p = 7.2e-4).

Experiment 2 (recognise the class from the top of the map): each pruned round's correct / not
correct counts against the reference round's, as the 2x2 table of a chi-square test of independence
(``scipy.stats.chi2_contingency``). Both rates are estimates; treating the reference count as a
known expected count (the thesis's test, :func:`fixed_rate_test`) ignores the reference's own
sampling error and so overstates the evidence.

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

import numpy as np
from scipy import stats


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
    import krippendorff

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
