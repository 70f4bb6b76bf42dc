"""The TCAV protocols (issue 19 item 2): the reference of Kim et al. 2018 and tensorflow/tcav, and the strict one.

Every expectation here is computed independently of the code under test: the set rules of tensorflow/tcav written
out in the test, scipy.stats.ttest_ind, thresholds by hand, a 2-D case whose separating normal is known by symmetry,
and a hand-built linear head whose logit and loss gradients are written out.
"""
import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lottery_xai.concepts import fit_all_cavs, fit_cav, layer_gradients, run_tcav, tcav_scores, tcav_significance
from lottery_xai.concepts.cav import training_sets
from lottery_xai.config import Config, cav_protocol, load_config


# ---------------------------------------------------------------- the protocols and their keys

def test_reference_is_the_default_and_strict_is_todays_choices():
    ref = cav_protocol(Config())
    assert (ref.name, ref.negatives, ref.features, ref.classifier, ref.test, ref.correction, ref.gradient) == \
        ("reference", "random", "raw", "linear", "student", "paper", "logit")
    assert ref.label == "reference" and not ref.standardize
    strict = cav_protocol(load_config(None, ["tcav.protocol=strict"]))
    assert (strict.negatives, strict.features, strict.classifier, strict.test, strict.correction) == \
        ("rest", "standardized", "logistic", "welch", "concepts")
    assert strict.standardize and strict.label == "strict"
    # an explicit key overrides the protocol and shows in the label
    mixed = cav_protocol(load_config(None, ["tcav.test=welch", "tcav.gradient=loss"]))
    assert mixed.test == "welch" and mixed.gradient == "loss" and mixed.correction == "paper"
    assert mixed.label == "reference (tcav.test=welch, tcav.gradient=loss)"
    # a key set to what the protocol gives anyway is no departure
    assert cav_protocol(load_config(None, ["cav.negatives=random"])).label == "reference"


# ---------------------------------------------------------------- the reference's sets

def test_reference_sets_share_random_sets_and_the_null_is_random_vs_random():
    """tensorflow/tcav: concept c run i is [c, random500_i] for every concept; the null is every ordered pair
    [random500_p, random500_q], p != q; each pair is cut to the smaller set's first examples."""
    rng = np.random.default_rng(0)
    concepts = (rng.random((80, 3)) < np.array([0.5, 0.3, 0.9])).astype(np.uint8)
    n_random = 4
    sets = training_sets(concepts, n_random=n_random, negatives="random", seed=3)
    shared = sets["random_sets"]
    size = int(np.median(concepts.sum(axis=0)))  # default random set size: the median concept set size
    assert len(shared) == n_random and all(len(s) == len(set(s)) == size for s in shared)
    for c in range(3):
        members = set(np.flatnonzero(concepts[:, c]))
        orders = []
        for i, (pos, neg, _) in enumerate(sets["concept"][c]):
            outside = [x for x in members if x not in set(shared[i])]  # an image is never on both sides
            k = min(len(outside), size)
            assert len(pos) == len(neg) == k
            np.testing.assert_array_equal(neg, shared[i][:k])  # the SAME random set i for every concept
            assert set(pos) <= members and not set(pos) & set(shared[i])
            orders.append([x for x in pos])
        # the concept's examples keep one order across runs (the reference's fixed concept folder)
        first = orders[0]
        for other in orders[1:]:
            common = [x for x in first if x in set(other)]
            assert common == [x for x in other if x in set(first)]
    pairs = [tuple(p) for p in sets["random_pairs"]]
    assert sorted(pairs) == sorted(itertools.permutations(range(n_random), 2))  # n (n - 1) ordered pairs
    for (p, q), (pos, neg, _) in zip(pairs, sets["random"]):
        positives = [x for x in shared[p] if x not in set(shared[q])]
        k = min(len(positives), len(shared[q]))
        np.testing.assert_array_equal(pos, positives[:k])
        np.testing.assert_array_equal(neg, shared[q][:k])


def test_fit_all_cavs_reference_fits_exactly_those_sets_on_raw_activations():
    rng = np.random.default_rng(1)
    concepts = (rng.random((90, 2)) < 0.4).astype(np.uint8)
    acts = rng.normal(size=(90, 5)) + 10.0 * concepts[:, [0]] * np.eye(5)[0]
    kwargs = dict(n_random=3, negatives="random", seed=7)
    res = fit_all_cavs(acts, concepts, ["a", "b"], classifier="linear", standardize=False, n_jobs=1, **kwargs)
    sets = training_sets(concepts, **kwargs)
    assert res["cavs"].shape == (2, 3, 5) and res["random_cavs"].shape == (6, 5)
    np.testing.assert_array_equal(res["random_pairs"], sets["random_pairs"])
    for c, r in [(0, 0), (1, 2)]:
        pos, neg, seed = sets["concept"][c][r]
        hand = fit_cav(acts[pos], acts[neg], classifier="linear", standardize=False, seed=seed)
        np.testing.assert_array_equal(res["cavs"][c, r], hand.vector)
    pos, neg, seed = sets["random"][4]
    np.testing.assert_array_equal(res["random_cavs"][4],
                                  fit_cav(acts[pos], acts[neg], classifier="linear", standardize=False, seed=seed).vector)
    assert np.all(res["cavs"][0] @ np.eye(5)[0] > 0.2)  # towards the planted unit (diluted: random sets hold the concept)


# ---------------------------------------------------------------- raw activations

def mirrored_2d(copies=20):
    """Points (u, v) in the frame of the unit normal n (20 degrees) and the boundary t: positives u t + v n,
    negatives their mirror images u t - v n. The problem is symmetric under the reflection across the line
    v = 0 with the labels swapped, and every classifier here minimises a strictly convex objective, so its
    unique solution is symmetric too: the raw normal is exactly n. Spread along n (v up to 10) and narrow
    along t, the data has different scales on the two axes (5.8 and 2.2): standardising breaks the symmetry."""
    theta = np.deg2rad(20)
    n = np.array([np.cos(theta), np.sin(theta)])
    t = np.array([-np.sin(theta), np.cos(theta)])
    u, v = np.meshgrid([-1.0, 0.0, 1.0], [0.5, 2.5, 5.0, 7.5, 10.0])
    u, v = u.ravel(), v.ravel()
    pos = np.repeat(u[:, None] * t + v[:, None] * n, copies, axis=0)
    neg = np.repeat(u[:, None] * t - v[:, None] * n, copies, axis=0)
    return pos, neg, n


@pytest.mark.parametrize("classifier", ["linear", "logistic"])
def test_raw_fit_recovers_the_known_normal_and_a_standardised_one_does_not(classifier):
    pos, neg, n = mirrored_2d()
    for seed in range(3):
        raw = fit_cav(pos, neg, classifier=classifier, standardize=False, seed=seed, test_fraction=0.05)
        assert raw.vector @ n > 0.999
        standardised = fit_cav(pos, neg, classifier=classifier, standardize=True, seed=seed, test_fraction=0.05)
        assert standardised.vector @ n < 0.97  # standardising turned the direction


def test_linear_classifier_is_tensorflow_tcavs_sgd():
    """model_type 'linear': SGDClassifier(alpha, max_iter=1000, tol=1e-3), hinge loss, no class weights."""
    from lottery_xai.concepts.cav import _classifier

    model = _classifier("linear", C=1.0, n_train=50, seed=0, linear_alpha=0.1)
    params = model.get_params()
    assert type(model).__name__ == "SGDClassifier"
    assert (params["alpha"], params["max_iter"], params["tol"], params["loss"], params["class_weight"]) == \
        (0.1, 1000, 1e-3, "hinge", None)
    assert params["penalty"] == "l2" and not params["average"]


# ---------------------------------------------------------------- the test and the threshold

def test_student_t_test_is_scipys_equal_variance_test():
    rng = np.random.default_rng(0)
    random_scores = rng.uniform(0.2, 0.8, size=12)  # n (n - 1) with n = 4: more, and wider, than the concept's
    concept_scores = np.stack([rng.uniform(0.55, 0.75, 4), rng.uniform(0.9, 1.0, 4)])
    table = tcav_significance(concept_scores, random_scores, test="student", correction="none")
    for i in range(2):
        student = stats.ttest_ind(concept_scores[i], random_scores, equal_var=True).pvalue
        welch = stats.ttest_ind(concept_scores[i], random_scores, equal_var=False).pvalue
        assert table.p_value[i] == pytest.approx(student, rel=1e-12)
        assert abs(student - welch) > 1e-4  # the two tests differ on these samples
    welch_table = tcav_significance(concept_scores, random_scores, test="welch", correction="none")
    assert welch_table.p_value[0] == pytest.approx(stats.ttest_ind(concept_scores[0], random_scores,
                                                                   equal_var=False).pvalue, rel=1e-12)


def test_thresholds_paper_none_and_concepts():
    """paper: p < alpha / 2 (Kim et al. 3.5, m = 2); none: p < alpha; concepts: p < alpha / concepts tested."""
    rng = np.random.default_rng(1)
    random_scores = rng.uniform(0.3, 0.7, size=20)
    concept_scores = np.stack([random_scores[:10] + 0.08, rng.uniform(0.3, 0.7, 10), rng.uniform(0.3, 0.7, 10)])
    p = stats.ttest_ind(concept_scores[0], random_scores, equal_var=True).pvalue
    # alphas chosen from scipy's p, so that p falls between the thresholds
    between_paper_and_none = p / 0.75        # alpha/2 < p < alpha
    between_concepts_and_paper = p / 0.4     # alpha/3 < p < alpha/2
    cases = [(between_paper_and_none, "paper", False), (between_paper_and_none, "none", True),
             (between_concepts_and_paper, "paper", True), (between_concepts_and_paper, "concepts", False),
             (between_concepts_and_paper, "none", True)]
    for alpha, correction, expected in cases:
        table = tcav_significance(concept_scores, random_scores, alpha=alpha, test="student", correction=correction)
        assert table.significant[0] == expected, (alpha, correction)
    # the older switch maps onto the corrections: bonferroni=True is "concepts", False is "none"
    assert not tcav_significance(concept_scores, random_scores, alpha=between_concepts_and_paper, test="student").significant[0]
    assert tcav_significance(concept_scores, random_scores, alpha=between_concepts_and_paper, test="student",
                             bonferroni=False).significant[0]


def test_strict_protocol_on_a_tiny_case_by_hand():
    """The strict protocol's step 5 on hand-built gradients and CAVs: scores are sign counts, the p-value Welch's,
    significant when below alpha / (concepts tested)."""
    grads = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.2]])
    cavs = np.array([  # concept 0: towards +x in every run; concept 1: mixed directions
        [[1.0, 0.1], [1.0, -0.1], [0.9, 0.3], [1.0, 0.0]],
        [[-1.0, 0.0], [0.0, -1.0], [1.0, 0.0], [-0.5, 0.5]],
    ])
    random_cavs = np.array([[-1.0, 0.0], [-1.0, -0.5], [-0.5, -1.0], [-1.0, 0.5], [0.0, -1.0]])
    result = {"concepts": ["x", "mixed"], "cavs": cavs, "random_cavs": random_cavs}
    table = run_tcav({"bird": grads}, result, alpha=0.05, test="welch", correction="concepts").set_index("concept")
    hand = (np.einsum("nd,crd->crn", grads, cavs) > 0).mean(axis=-1)  # [concept, run]
    hand_random = (random_cavs @ grads.T > 0).mean(axis=-1)
    np.testing.assert_array_equal(hand[0], [0.75, 0.5, 0.75, 0.5])  # e.g. run 1: 1, -0.1, 0.9, -1.02
    np.testing.assert_array_equal(hand_random, [0.25, 0.25, 0.25, 0.5, 0.0])
    for c, name in enumerate(["x", "mixed"]):
        p = stats.ttest_ind(hand[c], hand_random, equal_var=False).pvalue
        assert table.loc[name, "p_value"] == pytest.approx(p, rel=1e-12)
        assert table.loc[name, "tcav_mean"] == pytest.approx(hand[c].mean())
        assert table.loc[name, "significant"] == (p < 0.05 / 2)
    assert table.loc["x", "significant"] and not table.loc["mixed", "significant"]
    np.testing.assert_array_equal(tcav_scores(grads, random_cavs), hand_random)


# ---------------------------------------------------------------- the gradient: logit or loss

def test_loss_gradient_agrees_in_sign_with_the_logit_gradient_on_a_linear_head():
    """Two classes with opposite weight rows (z = [w.a, -w.a] + b): d z_0 / d a = w, and minus the gradient of
    the cross-entropy of class 0 is (1 - p_0) (w - (-w)) = 2 (1 - p_0) w, the same direction for every image."""
    torch.manual_seed(0)
    w = torch.tensor([0.5, -1.0, 2.0])
    head = nn.Sequential(nn.Identity(), nn.Linear(3, 2))
    with torch.no_grad():
        head[1].weight.copy_(torch.stack([w, -w]))
        head[1].bias.copy_(torch.tensor([0.3, -0.1]))
    acts = torch.randn(6, 3)
    logit = layer_gradients(head, "0", acts, 0, "flatten", gradient="logit")
    loss = layer_gradients(head, "0", acts, 0, "flatten", gradient="loss")
    p0 = torch.softmax(acts @ torch.stack([w, -w]).T + torch.tensor([0.3, -0.1]), dim=1)[:, 0]
    torch.testing.assert_close(logit, w.expand(6, 3))
    torch.testing.assert_close(loss, 2 * (1 - p0)[:, None] * w[None, :])
    cavs = np.random.default_rng(0).normal(size=(20, 3))
    np.testing.assert_array_equal(tcav_scores(loss, cavs), tcav_scores(logit, cavs))
    # tensorflow/tcav counts dot(grad of the loss, cav) < 0: the same count as ours > 0
    a = acts.clone().requires_grad_(True)
    ce = nn.functional.cross_entropy(head(a), torch.zeros(6, dtype=torch.long), reduction="sum")
    (g,) = torch.autograd.grad(ce, a)
    np.testing.assert_array_equal((g.numpy() @ cavs.T < 0).mean(axis=0), tcav_scores(loss, cavs))


def test_loss_gradient_sees_the_other_classes():
    """With three classes the loss gradient is (1 - p_k) w_k - sum_j p_j w_j over the others: not the logit's."""
    head = nn.Sequential(nn.Identity(), nn.Linear(2, 3, bias=False))
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    with torch.no_grad():
        head[1].weight.copy_(weights)
    acts = torch.tensor([[0.0, 2.0], [0.0, -2.0]])
    loss = layer_gradients(head, "0", acts, 0, "flatten", gradient="loss")
    p = torch.softmax(acts @ weights.T, dim=1)
    hand = (1 - p[:, [0]]) * weights[0] - p[:, [1]] * weights[1] - p[:, [2]] * weights[2]
    torch.testing.assert_close(loss, hand)
    assert not torch.allclose(loss / loss.norm(dim=1, keepdim=True), weights[0].expand(2, 2))
    with pytest.raises(Exception, match="gradient"):
        layer_gradients(head, "0", acts, 0, "flatten", gradient="softmax")
