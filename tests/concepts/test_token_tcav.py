"""Activations and TCAV on a transformer's token features (token_features: cls | mean), against a hand computation
of the gradient through the final LayerNorm and the linear head."""
import numpy as np
import pytest
import torch

from lottery_xai.activations import save_activations
from lottery_xai.concepts.tcav import layer_gradients, tcav_scores

timm = pytest.importorskip("timm")


def _layer_norm_backward(x, gamma, u, eps):
    """d (u . LN(x)) / dx for LN(x) = gamma (x - mean) / sqrt(var + eps) + beta over the last dimension, written
    out: with g = gamma * u, xhat = (x - mean) / sigma: (g - mean(g) - xhat * mean(g * xhat)) / sigma."""
    mean = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
    xhat = (x - mean) / sigma
    g = gamma * u
    return (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / sigma


def _block_output(model, images):
    out = {}
    hook = model.blocks[0].register_forward_hook(lambda m, i, o: out.__setitem__("x", o.detach()))
    with torch.no_grad():
        model(images)
    hook.remove()
    return out["x"].double()


def _vit(**kw):
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1,
                                                            num_heads=2, num_classes=3, **kw).eval()


def test_class_token_gradient_and_tcav_score_by_hand():
    """ViT: logit_k = w_k . LN(x_cls) + b_k after the last block, so d logit_k / d x_cls is LayerNorm's backward of
    w_k, and the TCAV score of a CAV v is the share of images whose gradient . v is positive."""
    model = _vit()
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    x = _block_output(model, images)[:, 0]  # the class token after blocks.0
    w = model.head.weight.detach().double()[targets]
    expected = _layer_norm_backward(x, model.norm.weight.detach().double(), w, model.norm.eps)
    for mode in ("cls", "auto"):
        grads = layer_gradients(model, "blocks.0", images, targets, "avg_pool", token_features=mode)
        assert grads.shape == (6, 16)
        np.testing.assert_allclose(grads.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    cavs = torch.randn(5, 16, generator=torch.Generator().manual_seed(2)).double()
    by_hand = ((expected @ cavs.T) > 0).double().mean(dim=0).numpy()
    np.testing.assert_array_equal(tcav_scores(grads.double(), cavs.numpy()), by_hand)


def test_mean_token_gradient_by_hand():
    """A ViT without class token, averaging its tokens: logit_k = w_k . LN(mean_t x_t) + b_k, so every token's
    gradient is LayerNorm's backward at the mean, divided by T; token_features mean averages them."""
    model = _vit(class_token=False, global_pool="avg")
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([2, 0, 1, 1])
    x = _block_output(model, images)
    t = x.shape[1]
    w = model.head.weight.detach().double()[targets]
    expected = _layer_norm_backward(x.mean(1), model.fc_norm.weight.detach().double(), w, model.fc_norm.eps) / t
    for mode in ("mean", "auto"):
        grads = layer_gradients(model, "blocks.0", images, targets, "avg_pool", token_features=mode)
        np.testing.assert_allclose(grads.numpy(), expected.numpy(), rtol=1e-4, atol=1e-7)


def test_activation_files_hold_the_token_features(tmp_path):
    model = _vit()
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    batches = [{"image": images[i:i + 2], "label": torch.zeros(len(images[i:i + 2]), dtype=torch.long),
                "concepts": torch.zeros(len(images[i:i + 2]), 1), "id": list(range(i, i + len(images[i:i + 2])))}
               for i in range(0, 5, 2)]
    tokens = _block_output(model, images).float()
    for mode, expected in (("cls", tokens[:, 0]), ("mean", tokens[:, 1:].mean(1)),
                           ("grid", tokens[:, 1:].reshape(5, 4, 4, 16).permute(0, 3, 1, 2).reshape(5, -1))):
        path = tmp_path / f"{mode}.npy"
        flattening = "flatten" if mode == "grid" else "avg_pool"
        save_activations(model, ["blocks.0"], batches, {"blocks.0": path}, flattening=flattening, n_images=5,
                         token_features=mode, progress=False)
        np.testing.assert_allclose(np.load(path), expected.numpy(), rtol=1e-5, atol=1e-6)
