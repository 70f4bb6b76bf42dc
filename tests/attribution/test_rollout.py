"""Attention rollout (Abnar & Zuidema 2020) on tiny vision transformers, against the formula written here."""
import pytest
import torch
import torch.nn.functional as F

from lottery_xai.errors import UserError

timm = pytest.importorskip("timm")

from lottery_xai.attribution.rollout import attention_rollout  # noqa: E402


def _vit(depth=2, seed=0, **kw):
    torch.manual_seed(seed)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=depth, num_heads=2, num_classes=3, **kw).eval()


def _attention_by_formula(model, images):
    """Each block's softmax(q k^T / sqrt(d)) [N, heads, T, T], from the block's input and its own weights."""
    inputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for b in model.blocks]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    out = []
    for block, x in zip(model.blocks, inputs):
        n, t, d = x.shape
        heads = block.attn.num_heads
        qkv = block.attn.qkv(block.norm1(x)).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        out.append(torch.softmax(q @ k.transpose(-2, -1) / (d // heads) ** 0.5, dim=-1))
    return out


def _rollout_by_formula(attentions, fusion="mean", discard=0.0, prefix=1):
    """The paper: heads averaged, A' = 0.5 A + 0.5 I rows re-normalised, A'_L ... A'_1, class row over patches.
    vit-explain's options: max/min fusion, the lowest `discard` of the entries set to 0 (except [0, 0])."""
    n, _, t, _ = attentions[0].shape
    maps = []
    for i in range(n):
        rolled = torch.eye(t, dtype=torch.float64)
        for a in attentions:
            a = a[i].double()
            fused = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[fusion].clone()
            k = int(t * t * discard)
            if k:
                order = torch.argsort(fused.flatten(), stable=True)[:k]
                flat = fused.flatten()
                flat[order[order != 0]] = 0
                fused = flat.view(t, t)
            a2 = (fused + torch.eye(t, dtype=torch.float64)) / 2
            a2 = a2 / a2.sum(dim=1, keepdim=True)
            rolled = a2 @ rolled
        side = int((t - prefix) ** 0.5)
        maps.append(rolled[0, prefix:].reshape(side, side))
    return torch.stack(maps).float()


def test_uniform_attention_has_a_closed_form():
    """Zero q and k: every head attends uniformly (J / T); 0.5 (J/T + I) multiplied L times gives the class row
    (1 - 0.5^L) / T on every patch."""
    model = _vit(depth=3)
    for block in model.blocks:
        torch.nn.init.zeros_(block.attn.qkv.weight)
        torch.nn.init.zeros_(block.attn.qkv.bias)
    maps = attention_rollout(model, torch.randn(2, 3, 32, 32), upsample=False)
    assert maps.shape == (2, 4, 4)
    torch.testing.assert_close(maps, torch.full((2, 4, 4), (1 - 0.5 ** 3) / 17), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.5), ("max", 0.9)])
def test_rollout_equals_the_formula(fusion, discard):
    model = _vit(depth=2, seed=3)
    with torch.no_grad():  # sharper attention than the tiny init gives, so that discarding and fusion matter
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = _rollout_by_formula(_attention_by_formula(model, images), fusion, discard)
    maps = attention_rollout(model, images, head_fusion=fusion, discard_ratio=discard, upsample=False)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    upsampled = attention_rollout(model, images, head_fusion=fusion, discard_ratio=discard)
    torch.testing.assert_close(upsampled, F.interpolate(expected[:, None], size=(32, 32), mode="bilinear",
                                                        align_corners=False)[:, 0], rtol=1e-5, atol=1e-6)


def test_distillation_token_is_dropped_and_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    from timm.models.deit import VisionTransformerDistilled

    model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                                       num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    fused = [b.attn.fused_attn for b in model.blocks]
    with torch.no_grad():
        before = model(images)
    maps = attention_rollout(model, images, upsample=False)
    torch.testing.assert_close(maps, _rollout_by_formula(_attention_by_formula(model, images), prefix=2),
                               rtol=1e-5, atol=1e-6)
    assert [b.attn.fused_attn for b in model.blocks] == fused
    with torch.no_grad():
        assert torch.equal(model(images), before)
    assert all(not m._forward_hooks for m in model.modules())


def test_rollout_refuses_models_without_a_class_token_row():
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, depths=(1, 1), embed_dim=16,
                             num_heads=(1, 2), window_size=4, num_classes=3).eval()
    with pytest.raises(UserError, match="class token"):
        attention_rollout(swin, torch.randn(1, 3, 32, 32))
    with pytest.raises(UserError, match="class token"):
        attention_rollout(_vit(class_token=False, global_pool="avg"), torch.randn(1, 3, 32, 32))
    with pytest.raises(UserError, match="head_fusion"):
        attention_rollout(_vit(), torch.randn(1, 3, 32, 32), head_fusion="median")
    with pytest.raises(UserError, match="training mode"):
        attention_rollout(_vit().train(), torch.randn(1, 3, 32, 32))


def test_registered_as_a_transformer_only_method():
    """The method registry's attention_rollout follows every method's calling convention on a ViT (float maps
    [N, H, W], the layer argument accepted and ignored, the model untouched), and a config that asks for it
    with another backbone is refused before any step works."""
    from lottery_xai.attribution import attribute, get_method
    from lottery_xai.config import load_config
    from lottery_xai.pipeline.maps import check_methods

    model = _vit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    maps = get_method("attention_rollout")(model, images, None, layer="blocks.1.norm1")
    assert maps.shape == (3, 32, 32) and maps.dtype == torch.float32
    torch.testing.assert_close(maps, attention_rollout(model, images))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == fused
    normalised = attribute("attention_rollout", model, images, None, layer="blocks.1.norm1", normalize="max")
    assert torch.allclose(normalised.flatten(1).amax(1), torch.ones(3))
    vit = ["model_arch=timm:vit_small_patch16_224", "model_args=[depth=1,embed_dim=16,num_heads=2,patch_size=8]"]
    check_methods(load_config(None, vit + ["heatmaps.methods=[gradcam,attention_rollout]"]))
    for arch in (["model_arch=small_resnet"], ["model_arch=timm:swin_tiny_patch4_window7_224"]):
        with pytest.raises(UserError, match="explains vision transformers"):
            check_methods(load_config(None, arch + ["heatmaps.methods=[gradcam,attention_rollout]"]))
