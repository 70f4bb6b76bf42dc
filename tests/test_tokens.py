"""Token layers as maps (pytorch-grad-cam's reshape_transform) and as vectors (token_features)."""
import pytest
import torch

from lottery_xai.errors import UserError
from lottery_xai.tokens import TokenLayout, to_grid, token_features, token_layout

VIT = TokenLayout(prefix=1, class_token=True)
DEIT_DISTILLED = TokenLayout(prefix=2, class_token=True)
SWIN = TokenLayout(prefix=0, channels_last=True)


def vit_reshape(tensor, height, width):
    """pytorch-grad-cam, tutorials/vision_transformers.md (usage_examples/vit_example.py)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swin_reshape(tensor, height, width):
    """pytorch-grad-cam, usage_examples/swinT_example.py (tokens [N, h*w, C] or timm 1.x's [N, h, w, C])."""
    result = tensor.reshape(tensor.size(0), height, width, tensor.size(-1))
    return result.transpose(2, 3).transpose(1, 2)


def test_to_grid_is_pytorch_grad_cams_reshape():
    tokens = torch.randn(2, 1 + 16, 5)
    assert torch.equal(to_grid(tokens, VIT), vit_reshape(tokens, 4, 4))
    nhwc = torch.randn(2, 3, 3, 6)
    assert torch.equal(to_grid(nhwc, SWIN), swin_reshape(nhwc, 3, 3))
    distilled = torch.randn(2, 2 + 9, 5)
    assert torch.equal(to_grid(distilled, DEIT_DISTILLED), vit_reshape(distilled[:, 1:], 3, 3))


def test_to_grid_leaves_maps_and_cnns_alone():
    nchw = torch.randn(2, 8, 4, 4)
    assert to_grid(nchw, None) is nchw and to_grid(torch.randn(2, 17, 5), None).dim() == 3
    assert to_grid(nchw, VIT) is nchw  # a convolution's map inside a ViT (the patch embedding)
    assert torch.equal(to_grid(nchw, SWIN), nchw)  # [N, C, h, h] with C != h: read as its shape says
    patches_only = torch.randn(2, 16, 5)  # the patch embedding's tokens: no class token to drop
    assert torch.equal(to_grid(patches_only, VIT), patches_only.reshape(2, 4, 4, 5).permute(0, 3, 1, 2))
    with pytest.raises(UserError, match="not a square grid"):
        to_grid(torch.randn(2, 1 + 14, 5), VIT)


def test_token_features_cls_mean_grid():
    tokens = torch.randn(3, 1 + 9, 4)
    assert torch.equal(token_features(tokens, VIT, "cls"), tokens[:, 0])
    assert torch.equal(token_features(tokens, VIT, "auto"), tokens[:, 0])
    torch.testing.assert_close(token_features(tokens, VIT, "mean"), tokens[:, 1:].mean(dim=1))
    assert torch.equal(token_features(tokens, VIT, "grid"), vit_reshape(tokens, 3, 3))
    nhwc = torch.randn(3, 2, 2, 4)
    torch.testing.assert_close(token_features(nhwc, SWIN, "auto"), nhwc.mean(dim=(1, 2)))
    with pytest.raises(UserError, match="use token_features: mean"):
        token_features(nhwc, SWIN, "cls")
    with pytest.raises(UserError, match="use token_features: mean"):
        token_features(torch.randn(3, 9, 4), VIT, "cls")  # patch embedding: no class token
    maps = torch.randn(3, 4, 2, 2)
    for mode in ("auto", "cls", "mean", "grid"):  # CNN-style maps are flattened by cav_flattening_type as before
        assert token_features(maps, VIT, mode) is maps and token_features(maps, None, mode) is maps
    with pytest.raises(UserError, match="unknown"):
        token_features(tokens, VIT, "first")


def test_token_layout_of_timm_models():
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=8, embed_dim=8, depth=1,
                                                           num_heads=2, num_classes=2)
    assert token_layout(vit) == VIT
    avg = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=8, embed_dim=8, depth=1,
                                                           num_heads=2, num_classes=2, class_token=False,
                                                           global_pool="avg")
    assert token_layout(avg) == TokenLayout(prefix=0, class_token=False)
    from timm.models.deit import VisionTransformerDistilled

    assert token_layout(VisionTransformerDistilled(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2,
                                                   num_classes=2)) == DEIT_DISTILLED
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, depths=(1,), embed_dim=8, num_heads=(1,),
                             window_size=4, num_classes=2)
    assert token_layout(swin) == SWIN
    assert token_layout(timm.create_model("convnext_tiny", depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))) is None
    assert token_layout(torch.nn.Linear(2, 2)) is None


def test_a_cnns_layout_does_not_import_timm():
    """A timm transformer exists only where timm was imported: a CNN's steps never pay timm's import."""
    import subprocess
    import sys

    code = ("import sys, torch; from lottery_xai.models import build_model; from lottery_xai.attribution import gradcam; "
            "from lottery_xai.tokens import token_layout; m = build_model('small_resnet', 3, False, 32).eval(); "
            "gradcam(m, torch.randn(2, 3, 32, 32), layer='layer3'); "
            "print(token_layout(m), 'timm' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["None", "False"]
