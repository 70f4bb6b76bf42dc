"""CAVs and TCAV: known answers on hand-built activations and tiny models."""
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lottery_xai.concepts import (
    class_gradients, concept_sets, fit_all_cavs, fit_cav, gradients_by_class, layer_gradients, load_cavs,
    random_sets, run_tcav, save_cavs, tcav_scores, tcav_significance,
)
from lottery_xai.errors import UserError


def unit(v):
    return v / np.linalg.norm(v)


def separable(rng, d, n=600, scale=None, margin=0.3):
    """Points split by the hyperplane normal to `normal` (in raw space) with a margin; features multiplied by `scale`."""
    normal = unit(rng.normal(size=d))
    x = rng.normal(size=(n, d))
    side = x @ normal
    x, side = x[np.abs(side) > margin], side[np.abs(side) > margin]
    scale = np.ones(d) if scale is None else scale
    raw_normal = unit(normal / scale)  # x_raw = x * scale, so x . n = x_raw . (n / scale)
    return x * scale, side > 0, raw_normal


# ---------------------------------------------------------------- CAV fitting

@pytest.mark.parametrize("classifier", ["logistic", "svm", "sgd"])
def test_cav_recovers_separating_direction_towards_positives(classifier):
    rng = np.random.default_rng(0)
    x, is_pos, normal = separable(rng, d=12)
    cav = fit_cav(x[is_pos], x[~is_pos], classifier=classifier, seed=3)
    assert cav.vector.shape == (12,)
    assert np.linalg.norm(cav.vector) == pytest.approx(1.0)
    assert cav.vector @ normal > 0.95
    assert cav.accuracy >= 0.97
    assert (cav.n_pos, cav.n_neg) == (is_pos.sum(), (~is_pos).sum())
    flipped = fit_cav(x[~is_pos], x[is_pos], classifier=classifier, seed=3)
    assert flipped.vector @ normal < -0.95  # the CAV points towards whatever is passed as positives


def test_cav_is_mapped_back_from_standardised_space():
    """Features spanning 4 orders of magnitude: the CAV must be the normal in RAW space (w / scale)."""
    rng = np.random.default_rng(1)
    scale = np.logspace(-2, 2, 10)
    x, is_pos, raw_normal = separable(rng, d=10, scale=scale)
    cav = fit_cav(x[is_pos], x[~is_pos], seed=0)
    assert cav.vector @ raw_normal > 0.95
    standardised_normal = unit(raw_normal * scale)  # what an un-mapped normal would look like
    assert abs(cav.vector @ standardised_normal) < 0.9
    # directional derivatives in raw space separate the two sides
    centre = x.mean(axis=0)
    assert np.mean(((x - centre) @ cav.vector > 0) == is_pos) > 0.9


def test_cav_is_deterministic_and_rejects_tiny_sets():
    rng = np.random.default_rng(2)
    x, is_pos, _ = separable(rng, d=5, n=100)
    a = fit_cav(x[is_pos], x[~is_pos], seed=7)
    b = fit_cav(x[is_pos], x[~is_pos], seed=7)
    np.testing.assert_array_equal(a.vector, b.vector)
    with pytest.raises(UserError):
        fit_cav(x[is_pos][:3], x[~is_pos])
    with pytest.raises(UserError, match="classifier"):
        fit_cav(x[is_pos], x[~is_pos], classifier="forest")


# ---------------------------------------------------------------- concept and random sets

def test_concept_sets_rest_and_random():
    rng = np.random.default_rng(0)
    concepts = np.zeros((60, 3), dtype=np.uint8)
    concepts[:10, 1] = 1
    concepts[5:40, 2] = 1
    runs = concept_sets(concepts, 1, negatives="rest", n_runs=5, rng=rng)
    assert len(runs) == 5
    for pos, neg in runs:
        np.testing.assert_array_equal(pos, np.arange(10))
        assert len(neg) == 10 and len(set(neg)) == 10
        assert concepts[neg, 1].max() == 0
    assert len({tuple(neg) for _, neg in runs}) == 5  # each run its own negative draw

    capped = concept_sets(concepts, 2, negatives="random", n_runs=4, rng=rng, max_per_set=8)
    for pos, neg in capped:
        assert len(pos) == 8 and concepts[pos, 2].min() == 1
        assert len(neg) == 8 and not set(pos) & set(neg)
    # random negatives come from the whole pool: with capped positives some carry the concept
    assert any(concepts[neg, 2].max() == 1 for _, neg in concept_sets(concepts, 2, negatives="random", n_runs=20,
                                                                      rng=rng, max_per_set=8))
    # without a cap, random negatives still differ from rest: half the positives stay in the random pool
    uncapped = concept_sets(concepts, 2, negatives="random", n_runs=20, rng=rng)
    assert all(len(pos) == 17 and not set(pos) & set(neg) for pos, neg in uncapped)
    assert any(concepts[neg, 2].max() == 1 for _, neg in uncapped)
    again = concept_sets(concepts, 1, negatives="rest", n_runs=5, rng=np.random.default_rng(0))
    for (p1, n1), (p2, n2) in zip(runs, again):
        np.testing.assert_array_equal(n1, n2)
    with pytest.raises(UserError):
        concept_sets(concepts, 1, negatives="others", n_runs=1, rng=rng)


def test_random_sets_are_disjoint_and_sized():
    sets = random_sets(50, 20, 6, np.random.default_rng(0))
    assert len(sets) == 6
    for a, b in sets:
        assert len(a) == len(b) == 20 and not set(a) & set(b)
        assert a.max() < 50 and b.max() < 50
    a, b = random_sets(11, 20, 1, np.random.default_rng(0))[0]
    assert len(a) == len(b) == 5  # capped at n // 2


# ---------------------------------------------------------------- fit_all_cavs

def planted_activations(rng, n=240, d=8):
    """Concept 0 shifts the activation along u0, concept 2 along u2, concept 1 has random labels, concept 3 is rare."""
    u0, u2 = np.eye(d)[0], np.eye(d)[3]
    concepts = (rng.random((n, 4)) < 0.4).astype(np.uint8)
    concepts[:, 3] = 0
    concepts[:3, 3] = 1
    acts = rng.normal(size=(n, d)) + 6.0 * concepts[:, [0]] * u0 + 6.0 * concepts[:, [2]] * u2
    return acts.astype(np.float32), concepts, u0, u2


def test_fit_all_cavs_indexes_concept_columns_and_marks_rare_concepts():
    rng = np.random.default_rng(0)
    acts, concepts, u0, u2 = planted_activations(rng)
    names = ["stripes", "noise", "dots", "rare"]
    with pytest.warns(UserWarning, match="rare"):
        res = fit_all_cavs(acts, concepts, names, n_random=4, seed=1, n_jobs=1)
    assert res["concepts"] == names
    assert res["cavs"].shape == (4, 4, 8) and res["accuracy"].shape == (4, 4)
    assert res["random_cavs"].shape == (4, 8) and res["random_accuracy"].shape == (4,)
    assert np.all(res["cavs"][0] @ u0 > 0.9) and np.all(res["cavs"][2] @ u2 > 0.9)
    assert np.all(np.abs(res["cavs"][2] @ u0) < 0.3)
    assert np.all(res["accuracy"][[0, 2]] > 0.95)
    assert np.all(res["accuracy"][1] < 0.75) and np.all(res["random_accuracy"] < 0.75)
    assert np.isnan(res["cavs"][3]).all() and np.isnan(res["accuracy"][3]).all()
    np.testing.assert_allclose(np.linalg.norm(res["random_cavs"], axis=1), 1.0)


def test_fit_all_cavs_same_result_for_any_n_jobs():
    rng = np.random.default_rng(4)
    acts, concepts, _, _ = planted_activations(rng, n=120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        one = fit_all_cavs(acts, concepts[:, :3], ["a", "b", "c"], n_random=3, seed=5, n_jobs=1, negatives="random")
        two = fit_all_cavs(acts, concepts[:, :3], ["a", "b", "c"], n_random=3, seed=5, n_jobs=2, negatives="random")
        other_seed = fit_all_cavs(acts, concepts[:, :3], ["a", "b", "c"], n_random=3, seed=6, n_jobs=1, negatives="random")
    for key in ("cavs", "accuracy", "random_cavs", "random_accuracy"):
        np.testing.assert_array_equal(one[key], two[key])
    assert not np.array_equal(one["random_cavs"], other_seed["random_cavs"])


def test_fit_all_cavs_rejects_mismatched_inputs():
    acts = np.zeros((10, 4))
    with pytest.raises(UserError):
        fit_all_cavs(acts, np.zeros((9, 2)), ["a", "b"])
    with pytest.raises(UserError):
        fit_all_cavs(acts, np.zeros((10, 2)), ["a"])


def test_save_and_load_cavs_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    res = dict(concepts=["red wing", "hooked bill"], cavs=rng.normal(size=(2, 3, 5)), accuracy=rng.random((2, 3)),
               random_cavs=rng.normal(size=(3, 5)), random_accuracy=rng.random(3))
    res["cavs"][1] = np.nan
    path = save_cavs(tmp_path / "round_00" / "layer3.npz", res)
    assert path.name == "layer3.npz" and sorted(p.name for p in path.parent.iterdir()) == ["layer3.npz"]
    back = load_cavs(path)
    assert back["concepts"] == res["concepts"]
    for key in ("cavs", "accuracy", "random_cavs", "random_accuracy"):
        np.testing.assert_array_equal(back[key], res[key])
    with pytest.raises(UserError, match="does not exist"):
        load_cavs(tmp_path / "missing.npz")


# ---------------------------------------------------------------- gradients

class Features(nn.Module):
    """A fixed conv 'feature extractor' so the layer activation is [N, C, H, W]."""

    def __init__(self, c_out=4):
        super().__init__()
        self.conv = nn.Conv2d(2, c_out, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def tiny_net(seed=0, c=4, hw=5, classes=3, inplace=False):
    torch.manual_seed(seed)
    return nn.Sequential(Features(c), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(c * hw * hw, 6), nn.Tanh(),
                         nn.Linear(6, classes))


def reference_gradients(model, x, targets):
    """Per-image gradient of the target logit w.r.t. the layer-0 output by plain full autograd, one image at a time."""
    out = []
    for i in range(len(x)):
        a = model[0](x[i:i + 1]).detach().requires_grad_(True)
        z = model[1:](a.clone())
        (g,) = torch.autograd.grad(z[0, targets[i]], a)
        out.append(g[0])
    return torch.stack(out)


@pytest.mark.parametrize("inplace", [False, True])
def test_layer_gradients_match_full_autograd(inplace):
    model = tiny_net(inplace=inplace).eval()
    x = torch.randn(7, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    ref = reference_gradients(tiny_net(inplace=False).eval(), x, targets)
    flat = layer_gradients(model, "0", x, targets, "flatten")
    torch.testing.assert_close(flat, ref.reshape(7, -1))
    pooled = layer_gradients(model, "0", x, targets, "avg_pool")
    torch.testing.assert_close(pooled, ref.mean(dim=(2, 3)))
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad
    single = layer_gradients(model, "0", x, 2, "flatten")  # one int target for every image
    torch.testing.assert_close(single, reference_gradients(model, x, [2] * 7).reshape(7, -1))


def test_layer_gradients_refuse_max_pool_and_unknown_layer():
    model = tiny_net()
    x = torch.randn(2, 2, 5, 5)
    with pytest.raises(UserError, match="max"):
        layer_gradients(model, "0", x, 0, "max_pool")
    with pytest.raises(UserError, match="0.conv"):
        layer_gradients(model, "0.cnv", x, 0, "flatten")


def test_avg_pool_gradient_is_directional_derivative_of_pooled_activation():
    """Adding eps*v at every position moves the pooled activation by eps*v; z changes by HW * mean_g . v."""
    model = tiny_net(seed=3).eval().double()
    x = torch.randn(5, 2, 5, 5, dtype=torch.float64)
    v = torch.randn(4, dtype=torch.float64)
    g = layer_gradients(model, "0", x, 1, "avg_pool")
    eps = 1e-6
    a = model[0](x)
    dz = (model[1:](a + eps * v[None, :, None, None])[:, 1] - model[1:](a)[:, 1]) / eps
    torch.testing.assert_close(dz, 25 * g @ v, rtol=1e-4, atol=1e-6)


def dict_loader(x, labels, batch_size):
    return [{"image": x[i:i + batch_size], "label": labels[i:i + batch_size]} for i in range(0, len(x), batch_size)]


def test_gradients_by_class_one_pass_with_cap():
    model = tiny_net(seed=2)
    model.train()
    x = torch.randn(20, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % 3
    out = gradients_by_class(model, "0", dict_loader(x, labels, 6), [0, 2], flattening="avg_pool", max_images=4)
    assert model.training  # mode restored
    assert set(out) == {0, 2}
    model.eval()
    for c in (0, 2):
        idx = torch.nonzero(labels == c).flatten()[:4]
        assert out[c].shape == (4, 4) and out[c].dtype == np.float32
        np.testing.assert_allclose(out[c], layer_gradients(model, "0", x[idx], c, "avg_pool").numpy(), rtol=1e-5, atol=1e-6)
    from_tensor = class_gradients(model, "0", x[labels == 2], 2, flattening="flatten", batch_size=3)
    np.testing.assert_allclose(from_tensor, layer_gradients(model, "0", x[labels == 2], 2, "flatten").numpy(),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- TCAV scores, known answers

def test_tcav_of_linear_logit_is_the_sign_of_w_dot_v():
    torch.manual_seed(0)
    model = nn.Sequential(Features(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    x = torch.randn(9, 2, 4, 4)
    k = 3
    grads = class_gradients(model, "0", x, k, flattening="flatten")
    w = model[2].weight[k].detach().numpy()
    np.testing.assert_allclose(grads, np.broadcast_to(w, grads.shape), rtol=1e-6)
    cavs = np.random.default_rng(0).normal(size=(6, 48))
    np.testing.assert_array_equal(tcav_scores(grads, cavs), (cavs @ w > 0).astype(float))


def test_tcav_of_relu_head_equals_hand_computed_count():
    torch.manual_seed(1)
    model = nn.Sequential(Features(2), nn.Flatten(), nn.ReLU(), nn.Linear(2 * 3 * 3, 4)).eval()
    x = torch.randn(30, 2, 3, 3)
    k = 1
    with torch.no_grad():
        a = model[1](model[0](x)).numpy()
    w = model[3].weight[k].detach().numpy()
    hand_grads = w[None, :] * (a > 0)  # d relu(a) . w / d a
    cavs = np.random.default_rng(1).normal(size=(2, 3, 18))
    expected = ((hand_grads @ cavs.reshape(-1, 18).T) > 0).mean(axis=0).reshape(2, 3)
    grads = class_gradients(model, "0", x, k, flattening="flatten", batch_size=8)
    scores = tcav_scores(grads, cavs)
    assert scores.shape == (2, 3)
    np.testing.assert_array_equal(scores, expected)
    assert ((expected > 0) & (expected < 1)).any()  # the per-image gradients really differ
    np.testing.assert_array_equal(tcav_scores(torch.from_numpy(grads), cavs), scores)


def test_tcav_scores_nan_cav_and_shape_errors():
    grads = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    cavs = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, -1.0]])
    np.testing.assert_array_equal(tcav_scores(grads, cavs), [1 / 3, np.nan, 0.0])
    with pytest.raises(UserError):
        tcav_scores(grads, np.ones((2, 3)))
    with pytest.raises(UserError):
        tcav_scores(np.zeros((0, 2)), cavs)


# ---------------------------------------------------------------- significance

def test_significance_matches_welch_t_test_with_bonferroni():
    """The strict rule (this function's defaults): two-sided Welch t-test, p < alpha / (concepts tested)."""
    rng = np.random.default_rng(0)
    random_scores = rng.uniform(0.3, 0.7, size=10)
    concept_scores = np.stack([rng.uniform(0.85, 1.0, 10), rng.uniform(0.3, 0.7, 10), random_scores + 0.12])
    table = tcav_significance(concept_scores, random_scores, alpha=0.05, concept_names=["a", "b", "c"])
    assert list(table.columns) == ["concept", "tcav_mean", "tcav_std", "random_mean", "p_value", "significant"]
    welch = [stats.ttest_ind(c, random_scores, equal_var=False).pvalue for c in concept_scores]
    for i, row in table.iterrows():
        assert row.p_value == pytest.approx(welch[i], rel=1e-12)
        assert row.tcav_mean == pytest.approx(concept_scores[i].mean())
        assert row.tcav_std == pytest.approx(concept_scores[i].std(ddof=1))
        assert row.significant == (welch[i] < 0.05 / 3)
    assert table.significant.tolist()[:2] == [True, False]
    # a p-value between alpha/3 and alpha is significant only without the correction: alpha chosen from
    # scipy's p-value (not from the function under test), so that alpha / 3 < p < alpha
    alpha = 3 * welch[2] * 0.9
    assert alpha / 3 < welch[2] < alpha
    assert not tcav_significance(concept_scores, random_scores, alpha=alpha).significant[2]
    assert tcav_significance(concept_scores, random_scores, alpha=alpha, bonferroni=False).significant[2]


def test_significance_degenerate_inputs_do_not_crash():
    random_scores = np.full(5, 0.5)
    concept_scores = np.array([[0.5] * 5, [np.nan] * 5, [1.0] * 5, [0.9, np.nan, np.nan, np.nan, np.nan]])
    table = tcav_significance(concept_scores, random_scores)
    assert table.p_value.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert table.significant.tolist() == [False, False, True, False]
    assert np.isnan(table.tcav_mean[1]) and table.tcav_mean[3] == 0.9


@pytest.mark.parametrize("protocol", ["reference", "strict"])
def test_planted_concept_is_significant_and_random_labels_are_not(protocol):
    """Concept 0 shifts activations along u; the head's logit grows along u for every image."""
    from lottery_xai.config import cav_protocol, load_config

    p = cav_protocol(load_config(None, [f"tcav.protocol={protocol}"]))
    rng = np.random.default_rng(0)
    d, n = 8, 300
    acts, concepts, u, _ = planted_activations(rng, n=n, d=d)
    concepts = concepts[:, :2]  # 0: planted, 1: random labels
    torch.manual_seed(0)
    w1 = torch.tensor(u, dtype=torch.float32)[None, :] + 0.3 * torch.randn(16, d)
    head = nn.Sequential(nn.Identity(), nn.Linear(d, 16), nn.Softplus(), nn.Linear(16, 2))
    with torch.no_grad():
        head[1].weight.copy_(w1)
        head[3].weight.copy_(torch.stack([torch.rand(16), -torch.rand(16)]))
    res = fit_all_cavs(acts, concepts, ["planted", "shuffled"], n_random=10, seed=0, n_jobs=1,
                       negatives=p.negatives, classifier=p.classifier, standardize=p.standardize)
    class_images = torch.from_numpy(acts[:60])
    grads = {"bird": class_gradients(head.eval(), "0", class_images, 0, flattening="flatten", gradient=p.gradient)}
    table = run_tcav(grads, res, alpha=0.05, test=p.test, correction=p.correction).set_index("concept")
    assert list(run_tcav(grads, res).columns) == ["class", "concept", "tcav_mean", "tcav_std", "random_mean",
                                                  "p_value", "significant", "n_images"]
    assert table.loc["planted", "tcav_mean"] > 0.95 and table.loc["planted", "significant"]
    assert not table.loc["shuffled", "significant"]
    assert (table.n_images == 60).all() and (table["class"] == "bird").all()
    only = run_tcav(grads, res, ["shuffled"])
    assert only.concept.tolist() == ["shuffled"]
    with pytest.raises(UserError, match="planted"):
        run_tcav(grads, res, ["plantd"])
