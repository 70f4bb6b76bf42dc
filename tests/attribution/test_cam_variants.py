"""HiResCAM, LayerCAM, XGrad-CAM and EigenCAM against pytorch-grad-cam on a ResNet-18."""
import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from lottery_xai.attribution.cam import grad_x_activation
from lottery_xai.attribution.cam_variants import eigen_projection, eigencam, hirescam, layercam, xgradcam
from lottery_xai.errors import UserError


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 64, 64, generator=g), [0, 3, 1]


def min_max(maps):
    """pytorch-grad-cam's scale_cam_image without resizing: (m - min) / (max + 1e-7) after subtracting the min."""
    low = maps.flatten(1).amin(1)[:, None, None]
    shifted = maps - low
    return shifted / (1e-7 + shifted.flatten(1).amax(1)[:, None, None])


def as_pytorch_grad_cam(fn, net, images, targets, layer, **options):
    """Our raw maps scaled as pytorch-grad-cam does: min-max at the layer's resolution, bilinear resize (cv2 and
    torch agree), then min-max again (aggregate_multi_layers)."""
    low = fn(net, images, torch.tensor(targets), layer=layer, upsample=False, **options)
    up = fn(net, images, torch.tensor(targets), layer=layer, **options)
    lo = low.flatten(1).amin(1)[:, None, None]
    hi = low.flatten(1).amax(1)[:, None, None]
    return min_max((up - lo) / ((hi - lo) + 1e-7))


@pytest.mark.parametrize("name", ["HiResCAM", "LayerCAM", "XGradCAM"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_gradient_cams_equal_pytorch_grad_cam(net, batch, name, layer):
    cams = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images, targets = batch
    expected = getattr(cams, name)(model=net, target_layers=[net.get_submodule(layer)])(
        input_tensor=images, targets=[ClassifierOutputTarget(c) for c in targets])
    fn = {"HiResCAM": hirescam, "LayerCAM": layercam, "XGradCAM": xgradcam}[name]
    ours = as_pytorch_grad_cam(fn, net, images, targets, layer).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=5e-6)


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_eigencam_equals_pytorch_grad_cam_up_to_the_documented_sign(net, batch, layer, monkeypatch):
    """pytorch-grad-cam's EigenCAM keeps numpy's arbitrary SVD sign; with the sign rule written out here (flip when
    |min| > |max|: its get_2d_projection_with_sign_correction) applied to its projection, the maps agree."""
    pytest.importorskip("pytorch_grad_cam")
    import pytorch_grad_cam.eigen_cam as eigen_module
    from pytorch_grad_cam import EigenCAM

    original = eigen_module.get_2d_projection

    def signed(activations):
        projection = original(activations)
        flat = projection.reshape(len(projection), -1)
        flip = np.abs(flat.min(axis=1)) > np.abs(flat.max(axis=1))
        return np.where(flip[:, None, None], -projection, projection)

    monkeypatch.setattr(eigen_module, "get_2d_projection", signed)
    images, targets = batch
    expected = EigenCAM(model=net, target_layers=[net.get_submodule(layer)])(input_tensor=images, targets=None)
    ours = as_pytorch_grad_cam(eigencam, net, images, targets, layer).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=5e-6)


def test_hirescam_is_gradient_times_activation(net, batch):
    images, targets = batch
    torch.testing.assert_close(hirescam(net, images, targets, layer="layer3"),
                               grad_x_activation(net, images, targets, layer="layer3"))


def test_eigen_projection_by_hand():
    """Rows = pixels, columns = channels: centre the columns, project on the first right singular vector."""
    g = torch.Generator().manual_seed(5)
    activation = torch.rand(2, 4, 3, 3, generator=g)
    ours = eigen_projection(activation)
    for n in range(2):
        rows = activation[n].reshape(4, 9).T.double().numpy()
        rows = rows - rows.mean(axis=0)
        _, _, vt = np.linalg.svd(rows)
        projection = rows @ vt[0]
        if abs(projection.min()) > abs(projection.max()):
            projection = -projection
        np.testing.assert_allclose(ours[n].reshape(-1).numpy(), projection, rtol=1e-4, atol=1e-5)
        assert abs(float(ours[n].max())) >= abs(float(ours[n].min()))
    # the sign rule makes the map independent of the SVD's sign: flipping the activations' centred data does
    # not change which side is positive
    torch.testing.assert_close(eigen_projection(activation, sign="max_abs").abs(),
                               eigen_projection(activation, sign="none").abs())
    with pytest.raises(UserError, match="sign"):
        eigen_projection(activation, sign="positive")


def test_eigencam_ignores_the_targets_and_stops_at_the_layer(net, batch):
    images, _ = batch
    torch.testing.assert_close(eigencam(net, images, [0, 0, 0], layer="layer3"),
                               eigencam(net, images, [4, 2, 1], layer="layer3"))
    calls = []
    handle = net.fc.register_forward_hook(lambda *args: calls.append(1))
    try:
        eigencam(net, images, layer="layer3")
    finally:
        handle.remove()
    assert not calls  # the forward stopped at layer3


def test_new_cams_are_non_negative_and_upsampled(net, batch):
    images, targets = batch
    for fn in (hirescam, layercam, xgradcam, eigencam):
        maps = fn(net, images, targets, layer="layer4")
        assert maps.shape == (3, 64, 64) and maps.dtype == torch.float32 and float(maps.min()) >= 0
