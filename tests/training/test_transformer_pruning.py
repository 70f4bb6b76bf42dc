"""Pruning vision transformers (issue 23, item 3): the linear layers of attention and MLP prunable, the head at its
own rate, global and layerwise; masks held through AdamW with weight decay."""
import numpy as np
import pytest
import torch

from lottery_xai.config import TrainConfig
from lottery_xai.pruning import MaskEnforcer, apply_masks, full_masks, prunable_names, prune, target_fractions
from lottery_xai.training import train_round
from lottery_xai.training.loop import make_optimizer

timm = pytest.importorskip("timm")


def _vit(seed=0, depth=2):
    torch.manual_seed(seed)
    return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=depth,
                                                            num_heads=2, mlp_ratio=2.0, num_classes=3)


def test_attention_and_mlp_linears_are_prunable():
    names = prunable_names(_vit())
    per_block = ["attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"]
    assert names == ["patch_embed.proj.weight", *[f"blocks.{b}.{n}" for b in (0, 1) for n in per_block], "head.weight"]
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, depths=(1, 1), embed_dim=16,
                             num_heads=(1, 2), window_size=4, num_classes=3)
    swin_names = prunable_names(swin)
    for n in ("layers.0.blocks.0.attn.qkv.weight", "layers.0.blocks.0.attn.proj.weight",
              "layers.1.blocks.0.mlp.fc1.weight", "layers.1.blocks.0.mlp.fc2.weight",
              "layers.1.downsample.reduction.weight", "head.fc.weight"):
        assert n in swin_names
    # position embeddings, class token, norms, biases and Swin's relative position tables are never pruned
    assert not [n for n in names + swin_names if not n.endswith(".weight") or "norm" in n or "relative" in n]


def _magnitude_keep(values: dict, fraction: float) -> dict:
    """The hand rule: the round(total * fraction) largest |w| over the given tensors (ties to the first)."""
    flat = np.concatenate([v.detach().abs().numpy().ravel() for v in values.values()])
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:round(flat.size * fraction)]] = True
    out, start = {}, 0
    for n, v in values.items():
        out[n] = keep[start:start + v.numel()].reshape(tuple(v.shape))
        start += v.numel()
    return out


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_one_round_keeps_the_largest_weights_head_at_its_own_rate(scope):
    model = _vit(seed=1)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    body_keep, head_keep = target_fractions(1, "iterative", 50.0, 0.5, [])
    assert (body_keep, head_keep) == (0.5, 0.75)
    fractions = {n: head_keep if n == "head.weight" else body_keep for n in names}
    masks = prune(params, full_masks(model, names), fractions, scope)
    body = {n: params[n] for n in names if n != "head.weight"}
    expected = ({n: _magnitude_keep({n: v}, body_keep)[n] for n, v in body.items()} if scope == "layerwise"
                else _magnitude_keep(body, body_keep))
    expected["head.weight"] = _magnitude_keep({"head.weight": params["head.weight"]}, head_keep)["head.weight"]
    for n in names:
        assert np.array_equal(masks[n].numpy(), expected[n]), n
    assert int(masks["head.weight"].sum()) == round(0.75 * params["head.weight"].numel())


def test_a_pruned_weight_stays_zero_after_a_decayed_adamw_step():
    model = _vit(seed=2)
    names = prunable_names(model)
    masks = prune(dict(model.named_parameters()), full_masks(model, names), {n: 0.5 for n in names}, "layerwise")
    apply_masks(model, masks)
    tc = TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5)
    optimizer = make_optimizer(model, tc)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["weight_decay"] == 0.5
    qkv = model.blocks[0].attn.qkv.weight
    x = torch.randn(4, 3, 32, 32)
    with MaskEnforcer(model, masks, optimizer):
        for _ in range(3):
            optimizer.zero_grad()
            model(x).logsumexp(dim=1).sum().backward()
            assert (qkv.grad[~masks["blocks.0.attn.qkv.weight"]] == 0).all()
            optimizer.step()
    params = dict(model.named_parameters())
    for n, mask in masks.items():
        assert (params[n][~mask] == 0).all(), n
        assert (optimizer.state[params[n]]["exp_avg"][~mask] == 0).all(), n  # no moment builds up behind the mask
    # without the masks the same decayed steps move the pruned weights: the test can fail
    free = _vit(seed=2)
    apply_masks(free, masks)
    opt = make_optimizer(free, tc)
    opt.zero_grad()
    free(x).logsumexp(dim=1).sum().backward()
    opt.step()
    assert (free.blocks[0].attn.qkv.weight[~masks["blocks.0.attn.qkv.weight"]] != 0).any()


def test_adamw_decay_is_decoupled():
    """AdamW (Loshchilov & Hutter): a weight with zero gradient shrinks by lr * weight_decay * w, unlike Adam's
    L2 term, which Adam's normalisation turns into a step of lr."""
    w = torch.nn.Parameter(torch.tensor([2.0, -4.0]))
    opt = make_optimizer(torch.nn.ParameterList([w]), TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5))
    w.grad = torch.zeros(2)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([2.0, -4.0]) * (1 - 0.1 * 0.5))


def test_a_tiny_vit_trains_with_adamw_and_its_masks_hold():
    model = _vit(seed=3, depth=1)
    names = prunable_names(model)
    masks = prune(dict(model.named_parameters()), full_masks(model, names), {n: 0.3 for n in names}, "global")
    apply_masks(model, masks)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 3, (24,), generator=g)
    batches = [{"image": x[i:i + 8], "label": y[i:i + 8]} for i in range(0, 24, 8)]
    tc = TrainConfig(epochs=2, optimizer="adamw", lr=1e-2, weight_decay=0.05, amp=False)
    result = train_round(model, batches, batches, tc, masks, torch.device("cpu"), 3)
    for n, mask in masks.items():
        assert (result.last_state[n][~mask] == 0).all(), n
        assert (result.last_state[n][mask] != 0).float().mean() > 0.99, n
