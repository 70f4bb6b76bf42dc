"""The CAM family on vision transformers, through pytorch-grad-cam's reshape_transform: Grad-CAM of a tiny ViT and a
tiny Swin equal to pytorch-grad-cam's GradCAM with the same reshape, to float32."""
import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
pgc = pytest.importorskip("pytorch_grad_cam")
cv2 = pytest.importorskip("cv2")

from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from lottery_xai.attribution.cam import gradcam, gradcam_pp, grad_x_activation, score_cam  # noqa: E402


def vit_reshape(tensor, height=4, width=4):
    """pytorch-grad-cam, tutorials/vision_transformers.md."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swin_reshape(tensor, height=2, width=2):
    """pytorch-grad-cam, usage_examples/swinT_example.py (timm 1.x's Swin blocks already give [N, h, w, C])."""
    result = tensor.reshape(tensor.size(0), height, width, tensor.size(-1))
    return result.transpose(2, 3).transpose(1, 2)


def _vit():
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2,
                                                            num_heads=2, num_classes=3).eval()


def _swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=32, depths=(1, 1, 1), embed_dim=16,
                             num_heads=(1, 2, 2), window_size=4, num_classes=3).eval()


def _reference(cam_class, model, target_layer, reshape, images, targets):
    """pytorch-grad-cam's map before its min-max scaling and resize (get_cam_image, then its ReLU), and its output."""
    class Probe(cam_class):
        def get_cam_image(self, *args, **kwargs):
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    cam = Probe(model=model, target_layers=[target_layer], reshape_transform=reshape)
    out = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    raw = np.maximum(cam.raw, 0)
    cam.activations_and_grads.release()
    return raw, out


def _scale(m):
    """pytorch-grad-cam's scale_cam_image on one map (utils/image.py)."""
    m = m - m.min()
    return m / (1e-7 + m.max())


def _scaled_and_resized(maps, size):
    """pytorch-grad-cam's output from our layer-resolution maps: scale_cam_image with the resize
    (compute_cam_per_layer), then scale_cam_image again over the one layer (aggregate_multi_layers)."""
    out = []
    for m in maps.detach().numpy():
        out.append(_scale(np.maximum(cv2.resize(np.float32(_scale(m)), size), 0)))
    return np.float32(out)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_gradcam_equals_pytorch_grad_cam_with_its_reshape(family):
    if family == "vit":
        model, layer, reshape, side = _vit(), "blocks.1.norm1", vit_reshape, 4
        target_layer = model.blocks[-1].norm1
    else:
        model, layer, reshape, side = _swin(), "layers.2.blocks.0.norm1", swin_reshape, 2
        target_layer = model.layers[-1].blocks[-1].norm1
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2, 1])
    raw, out = _reference(pgc.GradCAM, model, target_layer, reshape, images, targets)
    ours = gradcam(model, images, targets, layer=layer, upsample=False)
    assert ours.shape == (3, side, side) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), raw, rtol=1e-5, atol=1e-7 * float(np.abs(raw).max()))
    np.testing.assert_allclose(_scaled_and_resized(ours, (32, 32)), out, rtol=1e-5, atol=1e-6)
    # the negative-index name of the registry gives the same maps
    named = "blocks.-1.norm1" if family == "vit" else "layers.-1.blocks.-1.norm1"
    assert torch.equal(gradcam(model, images, targets, layer=named, upsample=False), ours)


def test_gradcam_pp_equals_pytorch_grad_cam_on_a_vit():
    model = _vit()
    # pytorch-grad-cam adds eps = 1e-6 to alpha's denominator 2 g^2 + sum(A) g^3 (grad_cam_plusplus.py); ours sets
    # alpha to 0 where the denominator is 0. The tiny ViT's gradients at the layer are ~1e-3, where that eps would
    # be the size of 2 g^2 itself: the head is scaled up (the gradients with it, linearly) until eps is negligible
    with torch.no_grad():
        model.head.weight.mul_(1e5)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 0])
    raw, _ = _reference(pgc.GradCAMPlusPlus, model, model.blocks[-1].norm1, vit_reshape, images, targets)
    ours = gradcam_pp(model, images, targets, layer="blocks.1.norm1", upsample=False)
    np.testing.assert_allclose(ours.numpy(), raw, rtol=1e-4, atol=1e-6 * float(np.abs(raw).max()))


def test_other_cams_run_on_the_token_grid():
    model = _vit()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for method in (grad_x_activation, score_cam):
        maps = method(model, images, None, layer="blocks.1.norm1")
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
    low = grad_x_activation(model, images, torch.tensor([0, 1]), layer="blocks.1.norm1", upsample=False)
    from lottery_xai.activations import forward_with_capture

    a, logits = forward_with_capture(model, images, "blocks.1.norm1")  # the raw tokens [N, 17, 16]
    (g,) = torch.autograd.grad(logits[[0, 1], [0, 1]].sum(), a)
    torch.testing.assert_close(low, torch.relu((vit_reshape(g) * vit_reshape(a)).sum(dim=1)))
