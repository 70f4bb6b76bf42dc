"""The human study's statistics: the thesis's published numbers, Krippendorff's alpha by hand, the
recognition test against its reference formula, the simulator's round trip and the power helpers; the
clustered tests against statsmodels and scipy, and their level on seeded simulations of clustered answers."""
import math

import numpy as np
import pytest
from scipy import stats

from lottery_xai.stats.human import (clustered_share_test, decisive_power, decisive_vote_test, design_effect,
                                     fixed_rate_test, items_needed, krippendorff_alpha, paired_difference_test,
                                     preference_probabilities, recognition_test, share_standard_error,
                                     simulate_answers, study_power, value_counts, wilson_interval, workers_needed)


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


# ---------------------------------------------------------------- clustered answers (issue 19, item 11)

def _answers_with_effects(rng, n_items, workers, pool, item_sd, worker_sd, share=0.5):
    """0/1 answers of ``workers`` distinct workers (of a pool) per item, logit = logit(share) + item effect
    + worker effect (normal, the given sd): answers cluster by item and by worker; the true share of the
    population of items and workers is ``share`` when both sds are 0, and 1/2 whenever share is 1/2."""
    item = np.repeat(np.arange(n_items), workers)
    worker = np.argsort(rng.random((n_items, pool)), axis=1)[:, :workers].ravel()
    logit = math.log(share / (1 - share)) + rng.normal(0, item_sd, n_items)[item] + rng.normal(0, worker_sd, pool)[worker]
    return (rng.random(len(item)) < 1 / (1 + np.exp(-logit))).astype(float), item, worker


def test_clustered_share_equals_statsmodels_two_way_cluster_robust_ols():
    sm = pytest.importorskip("statsmodels.api")
    y, item, worker = _answers_with_effects(np.random.default_rng(0), 30, 5, 12, 1.0, 0.7)
    got = clustered_share_test(y, [item, worker], null=0.5)
    fit = sm.OLS(y - 0.5, np.ones((len(y), 1))).fit(cov_type="cluster", use_t=True,
                                                    cov_kwds={"groups": np.column_stack([item, worker])})
    assert got.estimate == pytest.approx(y.mean())
    assert got.se == pytest.approx(fit.bse[0], rel=1e-10)
    assert got.statistic == pytest.approx(fit.tvalues[0], rel=1e-10)
    assert got.p_value == pytest.approx(fit.pvalues[0], rel=1e-8)
    assert got.df == 11 and got.clusters == (30, 12)  # statsmodels' min(G) - 1
    assert (got.low, got.high) == pytest.approx(tuple(fit.conf_int()[0] + 0.5), rel=1e-10)
    # the two-way variance written out (Cameron, Gelbach & Miller 2011): V_item + V_worker - V_cell, CR1
    e, n = y - y.mean(), len(y)

    def one_way(labels):
        codes = np.unique(labels, return_inverse=True)[1].ravel()
        groups = codes.max() + 1
        return groups / (groups - 1) * (np.bincount(codes, weights=e) ** 2).sum() / n**2

    by_hand = one_way(item) + one_way(worker) - one_way(item * 1000 + worker)
    assert got.se == pytest.approx(math.sqrt(by_hand), rel=1e-10)


def test_one_way_clusters_of_equal_size_give_the_one_sample_t_test_of_the_cluster_means():
    rng = np.random.default_rng(1)
    y = (rng.random((25, 6)) < rng.uniform(0.2, 0.9, (25, 1))).astype(float)  # 25 items, 6 answers each
    got = clustered_share_test(y.ravel(), [np.repeat(np.arange(25), 6)], null=0.5)
    expected = stats.ttest_1samp(y.mean(axis=1), 0.5)
    assert got.statistic == pytest.approx(expected.statistic, rel=1e-10)
    assert got.p_value == pytest.approx(expected.pvalue, rel=1e-8) and got.df == 24
    ci = expected.confidence_interval(0.95)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_paired_difference_with_one_answer_per_image_and_round_is_the_paired_t_test():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(2)
    easy = rng.normal(0, 1.5, 40)  # image difficulty, shared by both rounds: the reason to pair
    dense = (rng.random(40) < 1 / (1 + np.exp(-(1.0 + easy)))).astype(float)
    pruned = (rng.random(40) < 1 / (1 + np.exp(-(0.3 + easy)))).astype(float)
    y = np.concatenate([dense, pruned])
    second = np.repeat([False, True], 40)
    image = np.tile(np.arange(40), 2)
    got = paired_difference_test(y, second, [image])
    expected = stats.ttest_rel(pruned, dense)
    n = 80  # CR1's (n - 1) / (n - k) factor, k = 2 coefficients: the only difference from the paired t-test
    assert got.estimate == pytest.approx(pruned.mean() - dense.mean())
    assert got.statistic == pytest.approx(expected.statistic / math.sqrt((n - 1) / (n - 2)), rel=1e-10)
    assert got.df == 39
    # and with workers as a second clustering dimension: statsmodels' two-way cluster-robust OLS
    worker = rng.integers(0, 15, 80)
    got = paired_difference_test(y, second, [image, worker])
    fit = sm.OLS(y, sm.add_constant(second.astype(float))).fit(
        cov_type="cluster", use_t=True, cov_kwds={"groups": np.column_stack([image, worker])})
    assert (got.estimate, got.se, got.p_value) == pytest.approx((fit.params[1], fit.bse[1], fit.pvalues[1]), rel=1e-8)
    assert paired_difference_test(np.ones(6), [0, 0, 0, 1, 1, 1], [[0, 1, 2] * 2]).p_value == 1.0  # all right: no change
    assert math.isnan(clustered_share_test(np.ones(10), [np.arange(10)]).p_value)  # no spread: no test


def test_clustered_tests_hold_their_level_where_the_chi_square_does_not():
    """A true 50/50 and equal accuracies, answers strongly clustered: the thesis's chi-square rejects
    far more often than 5 %, the clustered tests stay near 5 % (seeded; 400 studies each)."""
    rng = np.random.default_rng(2024)
    studies = 400
    naive = clustered = worker_naive = worker_clustered = 0
    for _ in range(studies):
        # experiment 1 as main_human_study.py simulates it: 40 items x 5 workers, agreement 0.5, 20 % "equal"
        answers = simulate_answers(preference_probabilities(40, 0.5, 0.2), 5, 0.5, rng)
        worker = np.argsort(rng.random((40, 20)), axis=1)[:, :5]
        decisive = answers < 2
        votes_b = int((answers == 1).sum())
        naive += decisive_vote_test(int(decisive.sum()) - votes_b, votes_b)[1] < 0.05
        item = np.repeat(np.arange(40), 5).reshape(40, 5)
        clustered += clustered_share_test((answers[decisive] == 1), [item[decisive], worker[decisive]]).p_value < 0.05
        # item and worker effects (sd 1 on the logit scale): workers who always prefer one side
        y, item_w, w = _answers_with_effects(rng, 40, 5, 20, 1.0, 1.0)
        worker_naive += decisive_vote_test(int(len(y) - y.sum()), int(y.sum()))[1] < 0.05
        worker_clustered += clustered_share_test(y, [item_w, w]).p_value < 0.05
    se = math.sqrt(0.05 * 0.95 / studies)
    assert naive / studies > 0.2 and worker_naive / studies > 0.2
    assert abs(clustered / studies - 0.05) < 3 * se, clustered / studies
    assert abs(worker_clustered / studies - 0.05) < 3 * se, worker_clustered / studies


def test_paired_recognition_test_holds_its_level_and_gains_power_from_the_pairing():
    """Experiment 2: 30 images shown at two rounds, 5 workers of 15 per task, image difficulty shared by
    both rounds. Equal accuracy: the paired clustered test rejects near 5 %; a 10-point drop: it finds it
    more often than the unpaired test clustered by task (which ignores that the images are the same)."""
    rng = np.random.default_rng(7)
    studies, images, workers, pool = 300, 30, 5, 15
    level = {0.0: 0, 0.1: 0}
    unpaired = 0
    for drop in (0.0, 0.1):
        for _ in range(studies):
            easy = rng.normal(0, 1.5, images)
            image = np.tile(np.repeat(np.arange(images), workers), 2)
            second = np.repeat([False, True], images * workers)
            worker = np.concatenate([np.argsort(rng.random((images, pool)), axis=1)[:, :workers].ravel()
                                     for _ in range(2)])
            base = 1 / (1 + np.exp(-(1.5 + easy[image])))
            y = (rng.random(len(image)) < np.clip(base - drop * second, 0, 1)).astype(float)
            level[drop] += paired_difference_test(y, second, [image, worker]).p_value < 0.05
            if drop:
                task = image + images * second  # each (image, round) its own cluster: no pairing
                unpaired += paired_difference_test(y, second, [task, worker]).p_value < 0.05
    se = math.sqrt(0.05 * 0.95 / studies)
    assert abs(level[0.0] / studies - 0.05) < 3 * se, level[0.0] / studies
    assert level[0.1] > unpaired + 0.1 * studies, (level[0.1], unpaired)
