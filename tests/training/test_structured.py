"""Structured (channel) pruning through torch-pruning's DependencyGraph (lottery_xai.structured).

Expected values come from hand computations (filter norms, which channel feeds which layer, written out
per architecture below), never from the code under test."""
import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from lottery_xai import structured as st  # noqa: E402
from lottery_xai.lth_models import LeNet  # noqa: E402
from lottery_xai.models import SmallResNet  # noqa: E402


class Chain(nn.Module):
    """conv1 (1 -> 4 filters of 2x2) -> ReLU -> conv2 (4 -> 2, 1x1) -> mean -> fc (2 -> 3)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 2, bias=False)
        self.conv2 = nn.Conv2d(4, 2, 1, bias=False)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def _chain():
    torch.manual_seed(0)
    model = Chain()
    with torch.no_grad():
        # filter L1 norms 4, 3, 8, 2; L2 norms 2, 3, 4, 1
        model.conv1.weight.copy_(torch.tensor([[1.0, 1, 1, 1], [3, 0, 0, 0], [-2, 2, -2, 2], [0.5, -0.5, 0.5, -0.5]]).view(4, 1, 2, 2))
    return model


SHAPE = (1, 1, 6, 6)


def test_l1_filter_ranking_matches_a_hand_computation():
    model = _chain()
    s0 = st.full_structure(model, SHAPE, classifier="fc")
    assert sorted(s0["groups"]) == ["conv1", "conv2"]
    scores = st.channel_scores(model, s0, norm="l1")
    assert torch.allclose(scores["conv1"], torch.tensor([4.0, 3.0, 8.0, 2.0]))
    s1 = st.next_structure(s0, scores, {"conv1": 0.5, "conv2": 1.0})
    assert s1["groups"]["conv1"]["kept"] == [0, 2]  # norms 4 and 8 survive, 3 and 2 go
    l2 = st.channel_scores(model, s0, norm="l2")
    assert torch.allclose(l2["conv1"], torch.tensor([2.0, 3.0, 4.0, 1.0]))
    assert st.next_structure(s0, l2, {"conv1": 0.5, "conv2": 1.0})["groups"]["conv1"]["kept"] == [1, 2]


def test_group_score_is_depgraph_group_magnitude():
    """score='group': the mean of the channel's filter norm and of its input slice's norm in conv2 (no BN here)."""
    model = _chain()
    s0 = st.full_structure(model, SHAPE, classifier="fc")
    scores = st.channel_scores(model, s0, norm="l1", score="group")
    w1, w2 = model.conv1.weight.detach(), model.conv2.weight.detach()
    expected = (w1.abs().sum((1, 2, 3)) + w2.abs().sum((0, 2, 3))) / 2
    assert torch.allclose(scores["conv1"], expected)


def test_pruned_chain_keeps_the_channels_and_their_weights():
    model = _chain()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    s0 = st.full_structure(model, SHAPE, classifier="fc")
    s1 = st.next_structure(s0, st.channel_scores(model, s0), {"conv1": 0.5, "conv2": 0.5})
    small = st.build_structured(_chain, s1, full_state=init)
    k1, k2 = s1["groups"]["conv1"]["kept"], s1["groups"]["conv2"]["kept"]
    assert torch.equal(small.conv1.weight, init["conv1.weight"][k1])
    assert torch.equal(small.conv2.weight, init["conv2.weight"][k2][:, k1])
    assert torch.equal(small.fc.weight, init["fc.weight"][:, k2])
    assert small.fc.out_features == 3  # the classifier's outputs are never pruned


def test_fractions_are_of_the_original_count_and_never_revive():
    s = {"version": 1, "input_shape": [1], "groups": {"a": {"kind": "conv", "size": 10, "kept": list(range(10))}}}
    s1 = st.next_structure(s, {"a": torch.arange(10.0)}, {"a": 0.8})
    assert s1["groups"]["a"]["kept"] == list(range(2, 10))
    s2 = st.next_structure(s1, {"a": torch.arange(8.0).flip(0)}, {"a": 0.64})  # round(6.4) = 6 of the original 10
    assert s2["groups"]["a"]["kept"] == [2, 3, 4, 5, 6, 7]
    s3 = st.next_structure(s2, {"a": torch.zeros(6)}, {"a": 0.0})  # at least one channel stays
    assert s3["groups"]["a"]["kept"] == [2]


def _random_structure(s0, seed, fraction=0.5):
    return st.next_structure(s0, st.random_scores(s0, torch.Generator().manual_seed(seed)),
                             {r: fraction for r in s0["groups"]})


def _check_sliced(small, init, out_group, in_group, structure, extra_same=()):
    """Each layer of the smaller network holds the full network's initial weights of its kept output
    channels (``out_group``) and kept input channels (``in_group``); None = not pruned on that side."""
    kept = {root: g["kept"] for root, g in structure["groups"].items()}
    for layer, out in out_group.items():
        w = init[layer + ".weight"]
        rows = kept[out] if out else list(range(w.shape[0]))
        source = in_group.get(layer)
        cols = kept[source] if source else list(range(w.shape[1]))
        assert torch.equal(small.get_submodule(layer).weight.detach(), w[rows][:, cols]), layer
    for bn, group in extra_same:
        assert torch.equal(small.get_submodule(bn).weight.detach(), init[bn + ".weight"][kept[group]]), bn


def _zeroed_full(model, init, in_group, structure):
    """The full network whose layers ignore every removed channel: their input weights of it are 0."""
    model.load_state_dict(init)
    kept = {root: set(g["kept"]) for root, g in structure["groups"].items()}
    with torch.no_grad():
        for layer, source in in_group.items():
            if source is None:
                continue
            w = model.get_submodule(layer).weight
            removed = [c for c in range(w.shape[1]) if c not in kept[source]]
            w[:, removed] = 0
    return model


def _small_resnet():
    return SmallResNet(5, stem_stride=1)


# SmallResNet, written out: the stream of each stage is written by the stage's conv2 and downsample
# (stage 1: by the stem conv1 and layer1.conv2, there is no downsample); its root is the first writer.
RESNET_OUT = {"conv1": "conv1", "layer1.conv1": "layer1.conv1", "layer1.conv2": "conv1"}
RESNET_IN = {"conv1": None, "layer1.conv1": "conv1", "layer1.conv2": "layer1.conv1"}
for _i in (2, 3, 4):
    _stream, _prev = f"layer{_i}.conv2", ("conv1" if _i == 2 else f"layer{_i - 1}.conv2")
    RESNET_OUT.update({f"layer{_i}.conv1": f"layer{_i}.conv1", f"layer{_i}.conv2": _stream, f"layer{_i}.downsample.0": _stream})
    RESNET_IN.update({f"layer{_i}.conv1": _prev, f"layer{_i}.conv2": f"layer{_i}.conv1", f"layer{_i}.downsample.0": _prev})
RESNET_OUT["fc"], RESNET_IN["fc"] = None, "layer4.conv2"


def test_small_resnet_residual_channels_stay_consistent_and_keep_init_weights():
    torch.manual_seed(0)
    full = _small_resnet().eval()
    init = {k: v.clone() for k, v in full.state_dict().items()}
    s0 = st.full_structure(full, (1, 3, 16, 16), classifier="fc")
    assert sorted(s0["groups"]) == sorted({g for g in RESNET_OUT.values() if g})
    s1 = _random_structure(s0, seed=1)
    small = st.build_structured(_small_resnet, s1, full_state=init).eval()
    _check_sliced(small, init, RESNET_OUT, RESNET_IN, s1,
                  extra_same=[("bn1", "conv1"), ("layer1.bn2", "conv1"), ("layer3.bn2", "layer3.conv2"),
                              ("layer3.downsample.1", "layer3.conv2"), ("layer2.bn1", "layer2.conv1")])
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = _zeroed_full(_small_resnet().eval(), init, RESNET_IN, s1)
    with torch.no_grad():
        assert torch.allclose(small(x), reference(x), atol=1e-5)


def test_torchvision_resnet18_residual_channels_stay_consistent():
    torchvision = pytest.importorskip("torchvision")

    def make():
        return torchvision.models.resnet18(num_classes=4)

    torch.manual_seed(0)
    full = make().eval()
    init = {k: v.clone() for k, v in full.state_dict().items()}
    # resnet18 written out: stage k's stream is written by every block's conv2 and block 0's downsample
    # (stage 1: the stem conv1 and both blocks' conv2)
    out_g, in_g = {"conv1": "conv1", "fc": None}, {"conv1": None, "fc": "layer4.0.conv2"}
    for k in (1, 2, 3, 4):
        stream = "conv1" if k == 1 else f"layer{k}.0.conv2"
        prev = "conv1" if k in (1, 2) else f"layer{k - 1}.0.conv2"
        for b in (0, 1):
            out_g.update({f"layer{k}.{b}.conv1": f"layer{k}.{b}.conv1", f"layer{k}.{b}.conv2": stream})
            in_g.update({f"layer{k}.{b}.conv1": prev if b == 0 else stream, f"layer{k}.{b}.conv2": f"layer{k}.{b}.conv1"})
        if k > 1:
            out_g[f"layer{k}.0.downsample.0"], in_g[f"layer{k}.0.downsample.0"] = stream, prev
    s0 = st.full_structure(full, (1, 3, 32, 32), classifier="fc")
    assert sorted(s0["groups"]) == sorted({g for g in out_g.values() if g})
    s1 = _random_structure(s0, seed=2, fraction=0.25)
    small = st.build_structured(make, s1, full_state=init).eval()
    _check_sliced(small, init, out_g, in_g, s1, extra_same=[("layer2.1.bn2", "layer2.0.conv2")])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(small(x), _zeroed_full(make().eval(), init, in_g, s1)(x), atol=1e-4)


def test_rebuilt_round_network_equals_the_pruned_trained_network():
    """Round r's smaller network trained, saved as (structure, state dict), rebuilt from a fresh full model:
    the same outputs; and pruning that trained network further equals rebuilding the next structure."""
    torch.manual_seed(0)
    full = _small_resnet()
    init = {k: v.clone() for k, v in full.state_dict().items()}
    s0 = st.full_structure(full, (1, 3, 16, 16), classifier="fc")
    s1 = st.next_structure(s0, st.channel_scores(full, s0), {r: 0.5 for r in s0["groups"]})
    model = st.build_structured(_small_resnet, s1, full_state=init)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):  # a few steps: the weights and BatchNorm statistics move
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    rebuilt = st.build_structured(_small_resnet, s1, state=model.state_dict()).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    s2 = st.next_structure(s1, st.channel_scores(model, s1), {r: 0.25 for r in s0["groups"]})
    st.restructure(model, s1, s2)
    again = st.build_structured(_small_resnet, s2, state=model.state_dict()).eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert all(set(s2["groups"][r]["kept"]) <= set(s1["groups"][r]["kept"]) for r in s1["groups"])


def test_lenet_neurons_pruned_with_their_initial_weights():
    torch.manual_seed(0)
    full = LeNet(10, 8)
    init = {k: v.clone() for k, v in full.state_dict().items()}
    s0 = st.full_structure(full, (1, 3, 8, 8), classifier="fc")
    assert {r: g["size"] for r, g in s0["groups"].items()} == {"fc1": 300, "fc2": 100}
    s1 = _random_structure(s0, seed=3, fraction=0.8)
    small = st.build_structured(lambda: LeNet(10, 8), s1, full_state=init)
    _check_sliced(small, init, {"fc1": "fc1", "fc2": "fc2", "fc": None}, {"fc1": None, "fc2": "fc1", "fc": "fc2"}, s1)
    assert (small.fc1.out_features, small.fc2.out_features) == (240, 80)
    assert torch.equal(small.fc1.bias, init["fc1.bias"][s1["groups"]["fc1"]["kept"]])


def test_conv_only_leaves_linear_layers_whole():
    torch.manual_seed(0)
    model = LeNet(10, 8)
    assert st.full_structure(model, (1, 3, 8, 8), classifier="fc", conv_only=True)["groups"] == {}


def test_vit_embedding_and_mlp_pruned_heads_kept():
    timm = pytest.importorskip("timm")

    def make():
        torch.manual_seed(0)
        return timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2,
                                                                num_heads=2, mlp_ratio=2.0, num_classes=3)

    full = make().eval()
    init = {k: v.clone() for k, v in full.state_dict().items()}
    s0 = st.full_structure(full, (1, 3, 16, 16), classifier="head")
    # one embedding (residual) group through both blocks, one MLP hidden group per block; no qkv group
    assert sorted(s0["groups"]) == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1", "patch_embed.proj"]
    s1 = _random_structure(s0, seed=4)
    small = st.build_structured(make, s1, full_state=init).eval()
    embed, hidden = s1["groups"]["patch_embed.proj"]["kept"], s1["groups"]["blocks.0.mlp.fc1"]["kept"]
    assert small.blocks[0].attn.qkv.out_features == 48 and small.blocks[1].attn.proj.in_features == 16  # heads whole
    assert torch.equal(small.blocks[0].attn.qkv.weight, init["blocks.0.attn.qkv.weight"][:, embed])
    assert torch.equal(small.blocks[1].attn.proj.weight, init["blocks.1.attn.proj.weight"][embed])
    assert torch.equal(small.blocks[0].mlp.fc1.weight, init["blocks.0.mlp.fc1.weight"][hidden][:, embed])
    assert torch.equal(small.cls_token, init["cls_token"][..., embed])
    assert small(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_structure_checks():
    with pytest.raises(ValueError):
        st.check_structure({"version": 1, "groups": {"a": {"size": 3, "kept": [2, 1]}}})
    with pytest.raises(ValueError):
        st.check_structure({"version": 99, "groups": {}})
    model = _chain()
    s0 = st.full_structure(model, SHAPE, classifier="fc")
    s1 = st.next_structure(s0, st.channel_scores(model, s0), {"conv1": 0.5, "conv2": 1.0})
    s1_other = st.next_structure(s0, {"conv1": -st.channel_scores(model, s0)["conv1"], "conv2": torch.ones(2)},
                                 {"conv1": 0.5, "conv2": 1.0})
    with pytest.raises(ValueError, match="no longer has"):  # a network of s1 cannot become one of another subset
        st.restructure(st.build_structured(_chain, s1), s1, s1_other)
