"""The human study's statistics: the thesis's published numbers, Krippendorff's alpha by hand, the
recognition test against its reference formula, the simulator's round trip and the power helpers."""
import math

import numpy as np
import pytest
from scipy import stats

from lottery_xai.stats.human import (decisive_power, decisive_vote_test, design_effect, fixed_rate_test, items_needed,
                                     krippendorff_alpha, preference_probabilities, recognition_test,
                                     share_standard_error, simulate_answers, study_power, value_counts,
                                     wilson_interval, workers_needed)


@pytest.mark.parametrize("votes_a, votes_b, chi2, p", [
    (636, 521, 11.43, 7.2e-4),   # the thesis's published statistics, from its published counts
    (997, 843, 12.89, 3.3e-4),
    (1082, 876, 21.67, 3.2e-6),
])
def test_decisive_votes_reproduce_the_thesis(votes_a, votes_b, chi2, p):
    got_chi2, got_p = decisive_vote_test(votes_a, votes_b)
    assert round(got_chi2, 2) == chi2
    assert float(f"{got_p:.1e}") == p
    assert decisive_vote_test(votes_b, votes_a) == pytest.approx((got_chi2, got_p))  # symmetric
    # the goodness-of-fit statistic against 50/50 by hand: (a - b)^2 / (a + b)
    assert got_chi2 == pytest.approx((votes_a - votes_b) ** 2 / (votes_a + votes_b))
    assert decisive_vote_test(10, 10) == (0.0, 1.0)
    assert all(math.isnan(v) for v in decisive_vote_test(0, 0))


def test_recognition_uses_the_two_by_two_table():
    # the thesis's counts: 2160 and 2033 of 2500 correct at the pruned rounds, 2146 of 2500 dense
    for correct in (2160, 2033):
        chi2, p = recognition_test(correct, 2500, 2146, 2500, correction=False)
        # Pearson's statistic of the 2x2 table by hand: N (ad - bc)^2 / (row and column sums)
        a, b, c, d = correct, 2500 - correct, 2146, 354
        by_hand = 5000 * (a * d - b * c) ** 2 / ((a + b) * (c + d) * (a + c) * (b + d))
        assert chi2 == pytest.approx(by_hand)
        assert p == pytest.approx(stats.chi2.sf(by_hand, 1))
        # the test that takes the dense count as a known expected count claims about twice the evidence
        fixed_chi2, fixed_p = fixed_rate_test(correct, 2500, 2146, 2500)
        assert 1.8 * chi2 < fixed_chi2 < 2.5 * chi2 and fixed_p < p
    chi2, p = recognition_test(2033, 2500, 2146, 2500)  # Yates-corrected (scipy's default for 2x2)
    assert 15 < chi2 < 19 and p < 1e-4
    assert recognition_test(2160, 2500, 2146, 2500)[1] > 0.5  # 86.4 % vs 85.8 %: no difference
    assert recognition_test(10, 10, 7, 7) == (0.0, 1.0)  # everybody right at both rounds


def test_krippendorff_alpha_equals_a_hand_computed_example():
    # 3 raters, 5 items, nominal answers, missing answers (item 5 has one answer and does not count):
    #   item 1: A A A   item 2: A B -   item 3: B B B   item 4: C - B   item 5: A - -
    # coincidences (pairs within an item over m_u - 1): o_AA = 3, o_AB = o_BA = 1, o_BB = 3, o_BC = o_CB = 1
    # n_A = 4, n_B = 5, n_C = 1, n = 10; alpha = 1 - (n - 1) * sum_{c!=k} o_ck / sum_{c!=k} n_c n_k
    #   = 1 - 9 * 4 / (100 - 16 - 25 - 1) = 1 - 36 / 58 = 11 / 29
    units = [1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5]
    answers = ["A", "A", "A", "A", "B", "B", "B", "B", "C", "B", "A"]
    assert krippendorff_alpha(units, answers) == pytest.approx(11 / 29)
    counts, categories = value_counts(units, answers)
    assert categories == ["A", "B", "C"] and counts.tolist() == [[3, 0, 0], [1, 1, 0], [0, 3, 0], [0, 1, 1], [1, 0, 0]]
    # Krippendorff's own example (4 observers, 12 units, missing answers): 0.743
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
            [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    long = [(u, v) for row in data for u, v in enumerate(row) if v is not None]
    assert krippendorff_alpha(*zip(*long)) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha([1, 1, 2, 2], ["A", "A", "B", "B"]) == 1.0  # perfect agreement
    assert math.isnan(krippendorff_alpha([1, 1, 2, 2], ["A", "A", "A", "A"]))  # no variation: undefined
    assert math.isnan(krippendorff_alpha([1, 2, 3], ["A", "B", "A"]))  # nothing pairable


def test_simulated_60_40_preference_comes_back_within_its_sampling_error():
    n_items, workers, agreement = 400, 5, 0.3
    probabilities = preference_probabilities(n_items, 0.6, 0.2)  # (side A, side B, equal)
    estimates = []
    for seed in range(8):
        answers = simulate_answers(probabilities, workers, agreement, np.random.default_rng(seed))
        assert answers.shape == (n_items, workers)
        decisive = (answers < 2).sum()
        share = (answers == 1).sum() / decisive
        error = share_standard_error(0.6, decisive, workers, agreement)
        assert abs(share - 0.6) < 3.5 * error
        estimates.append(share)
    # the spread over repetitions is the sampling error with the design effect, not without it
    spread = np.std(estimates, ddof=1)
    assert share_standard_error(0.6, 1600, workers, 0.0) < spread < 2.0 * share_standard_error(0.6, 1600, workers, agreement)
    again = simulate_answers(probabilities, workers, agreement, np.random.default_rng(0))
    assert np.array_equal(again, simulate_answers(probabilities, workers, agreement, np.random.default_rng(0)))


@pytest.mark.parametrize("agreement", [0.0, 0.3, 0.7, 1.0])
def test_simulated_alpha_follows_the_agreement_set(agreement):
    n_items, workers = 1500, 5
    answers = simulate_answers(preference_probabilities(n_items, 0.6, 0.2), workers, agreement,
                               np.random.default_rng(1))
    alpha = krippendorff_alpha(np.repeat(np.arange(n_items), workers), answers.ravel())
    assert alpha == pytest.approx(agreement, abs=0.035)


def test_power_helpers():
    assert decisive_power(0.5, 1000) == pytest.approx(0.05)  # no effect: the test's level
    # normal approximation of a two-sided test of one proportion: 0.1 / sqrt(0.25 / n) standard errors
    n = 400
    z = 0.1 / math.sqrt(0.25 / n)
    approx = stats.norm.sf(1.959964 - z) + stats.norm.cdf(-1.959964 - z)
    assert decisive_power(0.6, n) == pytest.approx(approx, abs=0.01)
    assert study_power(0.6, 100, 5, 0.2, 0.0) == pytest.approx(decisive_power(0.6, 400))
    assert study_power(0.6, 100, 5, 0.2, 0.25) == pytest.approx(decisive_power(0.6, 400 / design_effect(5, 0.25)))
    m = workers_needed(0.6, 100, equal_share=0.2)
    assert study_power(0.6, 100, m, 0.2) >= 0.8 > study_power(0.6, 100, m - 1, 0.2)
    assert workers_needed(0.6, 20, equal_share=0.2, agreement=0.5) is None  # correlated answers saturate
    k = items_needed(0.6, 5, equal_share=0.2, agreement=0.3)
    assert study_power(0.6, k, 5, 0.2, 0.3) >= 0.8 > study_power(0.6, k - 1, 5, 0.2, 0.3)
    low, high = wilson_interval(60, 100)
    assert low < 0.6 < high and (low, high) == pytest.approx((0.502, 0.691), abs=1e-3)
