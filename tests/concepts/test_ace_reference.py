"""ACE's significance as amiratag/ACE does it, with expectations written out here, not taken from the code:
``do_statistical_testings`` is ``scipy.stats.ttest_rel(concept[:m], random[:m])`` (paired, two-sided) and
``test_and_remove_concepts`` removes a concept whose p > 0.01, with no correction for the number of concepts."""
import numpy as np
import pytest
from scipy import stats

from lottery_xai.concepts.ace import concept_significance
from lottery_xai.config import ace_protocol, load_config
from lottery_xai.errors import UserError

RANDOM = np.array([0.42, 0.55, 0.38, 0.61, 0.47, 0.52, 0.40, 0.58, 0.45, 0.50])


def paired_concept(t_over_3: float, spread: float = 0.02) -> np.ndarray:
    """Scores whose differences from RANDOM are m +- spread (alternating), so that the paired t statistic of
    10 runs is m / (spread * sqrt(10 / 9) / sqrt(10)) = 3 m / spread; m = t_over_3 * spread."""
    signs = np.where(np.arange(10) % 2 == 0, 1.0, -1.0)
    return RANDOM + t_over_3 * spread + spread * signs


# t = 3.6: p ~ 0.006 (in (0.01 / 3, 0.01]); t = 3.0: p ~ 0.015 (> 0.01); t = 6.0: p ~ 0.0002
CONCEPTS = np.stack([paired_concept(1.2), paired_concept(1.0), paired_concept(2.0)])


def test_the_constructed_p_values_fall_where_the_tests_need_them():
    p = [stats.ttest_rel(c, RANDOM).pvalue for c in CONCEPTS]
    assert 0.01 / 3 < p[0] <= 0.01 and p[1] > 0.01 and p[2] < 0.01 / 3
    assert stats.ttest_rel(CONCEPTS[0], RANDOM).statistic == pytest.approx(3.6)


def test_default_is_aces_paired_test_at_001_without_correction():
    table = concept_significance(CONCEPTS, RANDOM)
    expected = [stats.ttest_rel(c, RANDOM).pvalue for c in CONCEPTS]  # two-sided, as ACE calls it
    np.testing.assert_allclose(table["p_value"], expected, rtol=1e-12)
    # p <= 0.01 keeps a concept whatever the number of concepts: no Bonferroni
    assert table["significant"].tolist() == [True, False, True]
    assert table["tcav_mean"].tolist() == pytest.approx(CONCEPTS.mean(axis=1).tolist())
    assert table["random_mean"].tolist() == pytest.approx([RANDOM.mean()] * 3)


def test_a_p_value_of_exactly_alpha_is_kept():
    """ACE removes p > 0.01, so p == alpha passes; here alpha is set to the first concept's own p."""
    p0 = stats.ttest_rel(CONCEPTS[0], RANDOM).pvalue
    assert concept_significance(CONCEPTS[:1], RANDOM, alpha=p0)["significant"].tolist() == [True]
    assert concept_significance(CONCEPTS[:1], RANDOM, alpha=p0 * (1 - 1e-9))["significant"].tolist() == [False]


def test_bonferroni_is_the_named_option():
    table = concept_significance(CONCEPTS, RANDOM, correction="bonferroni", alpha=0.01)
    assert table["significant"].tolist() == [False, False, True]  # p < 0.01 / 3 only


def test_paired_runs_are_cut_to_the_shorter_and_nan_pairs_dropped():
    longer = np.r_[RANDOM, 0.9, 0.1]  # ACE: min_len = min(len(concept), len(random)), both cut to it
    table = concept_significance(CONCEPTS[:1], longer)
    assert table["p_value"][0] == pytest.approx(stats.ttest_rel(CONCEPTS[0], RANDOM).pvalue, rel=1e-12)
    with_nan = CONCEPTS[0].copy()
    with_nan[3] = np.nan  # a run whose CAV could not be fitted
    keep = np.arange(10) != 3
    p = concept_significance(with_nan[None], RANDOM)["p_value"][0]
    assert p == pytest.approx(stats.ttest_rel(CONCEPTS[0][keep], RANDOM[keep]).pvalue, rel=1e-12)


def test_one_sided_paired():
    below = 2 * RANDOM - CONCEPTS[2]  # as far below random as concept 2 is above
    table = concept_significance(np.stack([CONCEPTS[2], below]), RANDOM, sided="one")
    expected = [stats.ttest_rel(c, RANDOM, alternative="greater").pvalue for c in (CONCEPTS[2], below)]
    np.testing.assert_allclose(table["p_value"], expected, rtol=1e-12)
    assert table["significant"].tolist() == [True, False]


def test_unknown_correction_is_a_user_error():
    with pytest.raises(UserError, match="correction"):
        concept_significance(CONCEPTS, RANDOM, correction="holm")


def test_the_protocols_resolve_to_the_reference_and_to_ours():
    reference = ace_protocol(load_config(None, []))
    assert (reference.name, reference.test, reference.sided, reference.correction, reference.alpha) == \
        ("reference", "paired", "two", "none", 0.01)
    assert (reference.negatives, reference.random_cavs, reference.classifier, reference.features) == \
        ("images", "counterpart", "linear", "raw")  # random image sets; tensorflow/tcav's CAV defaults
    assert reference.label == "reference"
    strict = ace_protocol(load_config(None, ["ace.protocol=strict"]))
    assert (strict.test, strict.correction, strict.alpha, strict.negatives, strict.random_cavs) == \
        ("welch", "bonferroni", 0.05, "patches", "consecutive")
    assert (strict.classifier, strict.features) == ("logistic", "standardized")
    mixed = ace_protocol(load_config(None, ["ace.negatives=patches", "ace.alpha=0.05"]))
    assert mixed.label == "reference (ace.negatives=patches, ace.alpha=0.05)"
    assert ace_protocol(load_config(None, ["ace.negatives=images"])).label == "reference"  # as the protocol


@pytest.mark.parametrize("override", ["ace.protocol=ace", "ace.test=student", "ace.correction=holm"])
def test_bad_protocol_settings_are_user_errors(override):
    with pytest.raises(UserError, match=override.split("=")[0]):
        load_config(None, [override])
