"""ROAD (noisy linear imputation) against pytorch-grad-cam's copy of the reference imputer, and by hand."""
import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from lottery_xai.errors import UserError
from lottery_xai.metrics.road import NEIGHBOUR_WEIGHTS, linear_imputation, road


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g), [0, 3, 1]


def test_equals_pytorch_grad_cam_road_without_noise(net, batch, monkeypatch):
    """pytorch-grad-cam removes the pixels at or above the q-th percentile (LeRF: of 1 - map) and imputes them with
    road_evaluation's NoisyLinearImputer: our 'threshold' selection with p = 1 - q / 100, noise 0 on both sides."""
    road_module = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    monkeypatch.setattr(road_module.NoisyLinearImputer.__init__, "__defaults__", (0.0, road_module.neighbors_weights))
    images, maps, targets = batch
    percentiles = [90, 70, 20]
    ours = road(net, images, maps, percentages=[1 - q / 100 for q in percentiles], noise=0.0, selection="threshold",
                targets=torch.tensor(targets))
    for k, q in enumerate(percentiles):
        for order, cls in (("morf", road_module.ROADMostRelevantFirst), ("lerf", road_module.ROADLeastRelevantFirst)):
            expected = cls(percentile=q)(images, maps.numpy(), [ClassifierOutputSoftmaxTarget(c) for c in targets], net,
                                         return_diff=False)
            np.testing.assert_allclose(ours[f"{order}_curve"][:, k].numpy(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["combined"], (ours["lerf"] - ours["morf"]) / 2)


def test_linear_imputation_equals_the_reference_system():
    """The imputed values solve road_evaluation's system: each removed pixel is the weighted mean of its neighbours
    inside the image (known or imputed), weights 1/6 direct and 1/12 diagonal."""
    road_module = pytest.importorskip("pytorch_grad_cam.metrics.road")
    g = torch.Generator().manual_seed(2)
    image = torch.rand(3, 9, 11, generator=g)
    removed = torch.rand(9, 11, generator=g) < 0.6
    imputer = road_module.NoisyLinearImputer(noise=0.0)
    expected = imputer(image, (~removed).float())  # their mask: 1 = kept
    ours = image.double().numpy().reshape(3, -1).copy()
    ours[:, np.flatnonzero(removed.numpy())] = linear_imputation(image.numpy(), removed.numpy())
    np.testing.assert_allclose(ours.reshape(3, 9, 11), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_linear_imputation_by_hand():
    """One removed pixel inside: the weighted mean of its 8 neighbours. A removed corner: of its 3 neighbours."""
    image = np.arange(2 * 5 * 5, dtype=np.float64).reshape(2, 5, 5) ** 1.5
    removed = np.zeros((5, 5), dtype=bool)
    removed[2, 3] = True
    removed[0, 0] = True
    values = linear_imputation(image, removed)
    for k, (r, c) in enumerate([(0, 0), (2, 3)]):  # row-major order of the removed pixels
        total, weights = np.zeros(2), 0.0
        for (dy, dx), w in NEIGHBOUR_WEIGHTS:
            if 0 <= r + dy < 5 and 0 <= c + dx < 5:
                total += w * image[:, r + dy, c + dx]
                weights += w
        np.testing.assert_allclose(values[:, k], total / weights)
    with pytest.raises(UserError, match="every pixel"):
        linear_imputation(image, np.ones((5, 5), dtype=bool))


def test_rank_selection_removes_road_evaluations_counts(net, batch):
    """'rank' (road_evaluation): MoRF removes the top floor(H*W*p) pixels, LeRF all but the top floor(H*W*(1-p));
    with noise 0 the copy equals a hand-built imputation of exactly those pixels."""
    images, maps, targets = batch
    p = 0.3
    order = torch.argsort(maps[0].flatten(), descending=True)
    n_pixels = 32 * 32
    morf = torch.zeros(n_pixels, dtype=torch.bool)
    morf[order[:int(np.floor(n_pixels * p))]] = True
    lerf = torch.zeros(n_pixels, dtype=torch.bool)
    lerf[order[int(np.floor(n_pixels * (1 - p))):]] = True
    expected = []
    for removed in (morf, lerf):
        imputed = images[0].double().numpy().reshape(3, -1).copy()
        imputed[:, np.flatnonzero(removed.numpy())] = linear_imputation(images[0].numpy(), removed.view(32, 32).numpy())
        copy = torch.from_numpy(imputed.reshape(1, 3, 32, 32)).float()
        expected.append(net(copy).softmax(1)[0, targets[0]].item())
    ours = road(net, images[:1], maps[:1], percentages=[p], noise=0.0, targets=torch.tensor(targets[:1]))
    np.testing.assert_allclose([ours["morf_curve"][0, 0].item(), ours["lerf_curve"][0, 0].item()], expected,
                               rtol=1e-5)


def test_noise_lands_on_the_removed_pixels_only(net, batch, monkeypatch):
    images, maps, targets = batch
    seen = []
    original = net.forward

    def keep(x):
        seen.append(x.detach().clone())
        return original(x)

    monkeypatch.setattr(net, "forward", keep)
    road(net, images[:1], maps[:1], percentages=[0.5], orders=["morf"], noise=0.0, targets=torch.tensor([0]))
    road(net, images[:1], maps[:1], percentages=[0.5], orders=["morf"], noise=0.5, targets=torch.tensor([0]),
         noise_seed=3)
    clean, noisy = seen[1], seen[3]  # each call: the clean forward, then the copies
    difference = (noisy - clean)[0]
    removed = difference.abs().sum(0) > 0
    assert int(removed.sum()) == 512  # half the pixels
    assert float(difference[:, ~removed].abs().max()) == 0.0
    assert 0.4 < float(difference[:, removed].std()) < 0.6


def test_accuracy_seeded_and_errors(net, batch):
    images, maps, targets = batch
    labels = net(images).argmax(1)
    a = road(net, images, maps, percentages=[0.2, 0.8], labels=labels, noise_seed=1, batch_size=4)
    b = road(net, images, maps, percentages=[0.2, 0.8], labels=labels, noise_seed=1, batch_size=64)
    torch.testing.assert_close(a["morf"], b["morf"])
    assert a["morf_accuracy"].shape == (3,) and bool(((a["morf_accuracy"] >= 0) & (a["morf_accuracy"] <= 1)).all())
    with pytest.raises(UserError, match="percentages"):
        road(net, images, maps, percentages=[0.0, 1.0])
    with pytest.raises(UserError, match="orders"):
        road(net, images, maps, orders=["random"])
    with pytest.raises(UserError, match="selection"):
        road(net, images, maps, selection="top")
