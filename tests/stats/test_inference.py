"""Known answers of the statistics of step 7 and of the replicates (lottery_xai.stats.inference)."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from lottery_xai.stats.inference import (adjust, bootstrap_ci, bootstrap_ci_rows, paired_tests, t_interval,
                                         wilcoxon_paired)


def test_bootstrap_interval_covers_the_true_mean_at_the_nominal_rate():
    # 400 seeded samples of 50 draws from a normal with mean 2: the 95 % percentile bootstrap interval
    # of each covers 2 in 95 % +- 3 % of them (a skewed sample of 40, exponential, covers 91.5 %: the
    # percentile interval is known to undercover skewed small samples)
    rng = np.random.default_rng(123)
    samples = rng.normal(2.0, 1.0, size=(400, 50))
    low, high = bootstrap_ci_rows(samples, n_bootstrap=2000, confidence=0.95, seed=7)
    coverage = float(np.mean((low <= 2.0) & (2.0 <= high)))
    assert abs(coverage - 0.95) <= 0.03, coverage
    # the row-wise version gives each row the interval of the 1-d function with the same seed
    assert bootstrap_ci(samples[5], 2000, 0.95, seed=7) == pytest.approx((low[5], high[5]))


def test_bootstrap_quantiles_of_a_tiny_sample_are_those_of_its_enumerated_resamples():
    # x = (0, 1, 5): the 27 equally likely resamples of size 3, enumerated; the percentile interval is
    # the q-quantile of their means. At 80 %: q = 0.1 falls inside the step of mean 1/3 (P(mean < 1/3) =
    # 1/27, P(mean <= 1/3) = 4/27), q = 0.9 inside the step of 11/3 (23/27 and 26/27), far from the
    # step edges compared with the Monte Carlo error of 20000 resamples
    import itertools

    x = [0.0, 1.0, 5.0]
    means = np.sort([sum(r) / 3 for r in itertools.product(x, repeat=3)])
    exact = []
    for q in (0.1, 0.9):
        value = means[int(np.ceil(q * 27)) - 1]  # the smallest mean whose CDF reaches q
        assert np.mean(means < value) < q - 0.02 and np.mean(means <= value) > q + 0.02
        exact.append(value)
    assert exact == pytest.approx([1 / 3, 11 / 3])
    for seed in (0, 1, 2):
        assert bootstrap_ci(x, 20_000, 0.8, seed=seed) == pytest.approx(tuple(exact))


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    # a skewed sample of 30: scipy.stats.bootstrap (method "percentile") with its own generator; the two
    # intervals differ only by Monte Carlo error (about 1 % of the width with 20000 resamples each)
    sample = np.random.default_rng(5).exponential(1.0, 30)
    for seed in range(3):
        low, high = bootstrap_ci(sample, 20_000, 0.95, seed=seed)
        reference = stats.bootstrap((sample,), np.mean, n_resamples=20_000, method="percentile", confidence_level=0.95,
                                    random_state=np.random.default_rng(100 + seed)).confidence_interval
        width = reference.high - reference.low
        assert abs(low - reference.low) < 0.03 * width and abs(high - reference.high) < 0.03 * width


def test_bootstrap_is_seeded_and_skips_nans():
    x = np.array([1.0, 2.0, np.nan, 4.0, 8.0, 0.5, 3.3, 2.9, 7.1])
    assert bootstrap_ci(x, 500, 0.9, seed=3) == bootstrap_ci(x[np.isfinite(x)], 500, 0.9, seed=3)
    assert bootstrap_ci(x, 500, 0.9, seed=3) != bootstrap_ci(x, 500, 0.9, seed=4)
    low, high = bootstrap_ci(x, 500, 0.9, seed=3)
    assert 1.0 <= low < np.nanmean(x) < high <= 8.0
    assert bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0, np.nan]))


def test_t_interval_by_hand():
    mean, low, high, n = t_interval([1.0, 2.0, 6.0], 0.95)
    half = 4.302652729911275 * math.sqrt(7.0) / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(3), sd^2 = 7
    assert (mean, n) == (3.0, 3)
    assert (low, high) == pytest.approx((3.0 - half, 3.0 + half))
    assert t_interval([4.0])[:2] == (4.0, t_interval([4.0])[1]) and math.isnan(t_interval([4.0])[1])


# a fixed table: 3 rounds x 2 methods x 2 metrics, 12 images
def _table():
    rng = np.random.default_rng(0)
    rows = []
    for r, shift in ((0, 0.0), (1, 0.05), (2, 0.6)):
        for method, base in (("gradcam", 0.8), ("random", 0.2)):
            for metric in ("energy_in_box", "deletion_auc"):
                values = base + shift + rng.normal(0, 0.2, 12)
                rows += [{"round": r, "method": method, "metric": metric, "image_id": 100 + i, "value": v}
                         for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_paired_tests_equal_scipy_and_statsmodels_holm():
    table = _table()
    got = paired_tests(table, correction="holm", alpha=0.05, weights={0: 1.0, 1: 0.65, 2: 0.42})
    # expected: every test by hand, then one Holm correction over all of them
    value = table.set_index(["round", "method", "metric", "image_id"])["value"].sort_index()
    expected = []
    for metric in ("deletion_auc", "energy_in_box"):
        for method in ("gradcam", "random"):
            for r in (1, 2):
                res = stats.wilcoxon(value[r, method, metric].to_numpy(), value[0, method, metric].to_numpy())
                expected.append(("dense", method, metric, r, res.statistic, res.pvalue))
        for r in (0, 1, 2):
            res = stats.wilcoxon(value[r, "gradcam", metric].to_numpy(), value[r, "random", metric].to_numpy())
            expected.append(("random", "gradcam", metric, r, res.statistic, res.pvalue))
    assert len(got) == len(expected) == 14
    reject, corrected, _, _ = multipletests([e[-1] for e in expected], alpha=0.05, method="holm")
    by_key = got.set_index(["comparison", "method", "metric", "round"])
    for (comparison, method, metric, r, statistic, p), adj, rej in zip(expected, corrected, reject):
        row = by_key.loc[(comparison, method, metric, r)]
        assert row["statistic"] == pytest.approx(statistic)
        assert row["p_value"] == pytest.approx(p)
        assert row["p_adjusted"] == pytest.approx(adj)
        assert bool(row["significant"]) == bool(rej)
        assert row["n"] == 12
    assert by_key.loc[("dense", "gradcam", "energy_in_box", 2), "weights_remaining"] == 0.42
    # gradcam beats random by 0.6 (3 sd) at every round: significant after Holm; round 1's shift of 0.05 is not
    assert by_key.loc[("random", "gradcam", "energy_in_box", 0), "significant"]
    assert not by_key.loc[("dense", "gradcam", "energy_in_box", 1), "significant"]


def test_paired_tests_nan_and_all_zero_differences():
    rows = []
    for r in (0, 1):
        for i in range(6):
            rows.append({"round": r, "method": "m", "metric": "same", "image_id": i, "value": float(i)})
            rows.append({"round": r, "method": "m", "metric": "parts", "image_id": i,
                         "value": np.nan if i < 2 else float(i) + r * (i - 1.5)})
            rows.append({"round": r, "method": "m", "metric": "undefined", "image_id": i, "value": np.nan})
    got = paired_tests(pd.DataFrame(rows)).set_index("metric")
    assert "undefined" not in got.index  # no pair at all: no test
    same = got.loc["same"]
    assert (same["n"], same["statistic"], same["p_value"], bool(same["significant"])) == (6, 0.0, 1.0, False)
    parts = got.loc["parts"]
    assert parts["n"] == 4  # the two images without a value are left out
    assert parts["p_value"] == pytest.approx(stats.wilcoxon([2 + .5, 3 + 1.5, 4 + 2.5, 5 + 3.5], [2, 3, 4, 5]).pvalue)
    assert wilcoxon_paired([np.nan], [1.0])[0] == 0


def test_adjust_leaves_nan_out():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    adjusted, significant = adjust(p, "holm", 0.05)
    _, expected, _, _ = multipletests([0.01, 0.04, 0.03], method="holm")
    assert np.isnan(adjusted[1]) and not significant[1]
    np.testing.assert_allclose(adjusted[[0, 2, 3]], expected)
    np.testing.assert_allclose(adjust(p, "fdr_bh")[0][[0, 2, 3]], multipletests([0.01, 0.04, 0.03], method="fdr_bh")[1])


def test_wilcoxon_power_is_the_rejection_rate_of_the_test():
    from lottery_xai.stats.inference import wilcoxon_power

    # no shift: the test rejects at its nominal rate (4000 seeded studies: 0.05 +- 3 binomial SE)
    assert abs(wilcoxon_power(24, 0.0, 0.05, n_sim=4000, seed=1) - 0.05) < 3 * math.sqrt(0.05 * 0.95 / 4000)
    # against an independent simulation: scipy's two-sided signed-rank test (zero_method "wilcox") on
    # 4000 studies drawn from another generator (not the function's own seeded stream); the two
    # rejection rates agree within 4 standard errors of their difference
    draws = np.random.Generator(np.random.PCG64(987_654)).normal(0.8, 1.0, size=(4000, 24))
    expected = float(np.mean(stats.wilcoxon(draws, zero_method="wilcox", alternative="two-sided", axis=1).pvalue < 0.01))
    got = wilcoxon_power(24, 0.8, 0.01, n_sim=4000, seed=3)
    assert abs(got - expected) < 4 * math.sqrt(expected * (1 - expected) * 2 / 4000), (got, expected)
    assert 0.7 < expected < 0.95  # a shift of 0.8 sd with 24 pairs at 1 %: a power in the middle, where errors show
    # more images, more power; a huge shift is always found; seeded
    strict = 0.05 / 758  # the harshest Holm threshold of the embedded default's 758 tests
    assert wilcoxon_power(24, 0.8, strict) < 0.5 < wilcoxon_power(48, 0.8, strict) < wilcoxon_power(72, 0.8, strict)
    assert wilcoxon_power(24, 3.0, strict) == 1.0
    assert wilcoxon_power(30, 0.5, seed=4) == wilcoxon_power(30, 0.5, seed=4)
    with pytest.raises(ValueError, match="n >= 1"):
        wilcoxon_power(0, 0.5)
