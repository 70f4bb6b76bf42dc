"""LRP through zennit: the rules written out by hand on a two-layer network, zennit's own composites on a
ResNet-18 and a VGG, and the canonizer of this package's residual block (conservation)."""
import pytest
import torch
from torch import nn

pytest.importorskip("zennit")

from lottery_xai.attribution.lrp import LRP_COMPOSITES, build_composite, lrp  # noqa: E402
from lottery_xai.errors import UserError  # noqa: E402
from lottery_xai.models import SmallResNet  # noqa: E402

STAB = 1e-6


def stabilize(z, eps=STAB):
    """zennit's stabilizer: z + eps * sign(z), with sign(0) = +1."""
    return z + eps * (torch.sign(z) + (z == 0).to(z))


def epsilon_rule(a, w, b, relevance, eps=STAB):
    """LRP-epsilon: R_i = a_i sum_j w_ji R_j / (z_j + eps sign z_j), z = W a + b."""
    return a * (w.T @ (relevance / stabilize(w @ a + b, eps)))


def alpha_beta_rule(a, w, b, relevance, alpha, beta):
    """LRP-alpha-beta: R_i = sum_j (alpha (a_i w_ji)^+ / z_j^+ - beta (a_i w_ji)^- / z_j^-) R_j, the bias's positive
    (negative) part in z^+ (z^-)."""
    contributions = w * a[None, :]
    positive = contributions.clamp(min=0)
    negative = contributions.clamp(max=0)
    z_pos = positive.sum(1) + b.clamp(min=0)
    z_neg = negative.sum(1) + b.clamp(max=0)
    share = alpha * positive / stabilize(z_pos)[:, None] - beta * negative / stabilize(z_neg)[:, None]
    return share.T @ relevance


def flat_rule(n_inputs, relevance):
    """Flat: every input of a unit gets an equal share of its relevance."""
    return torch.full((n_inputs,), float(relevance.sum()) / stabilize(torch.tensor(float(n_inputs))).item())


@pytest.fixture(scope="module")
def two_layer():
    """conv 2 -> 3 channels with a 3x3 kernel on a 3x3 image (one output pixel: a dense layer on 18 inputs),
    ReLU, linear 3 -> 2; weights, biases and the input of mixed signs."""
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(3, 2, 3, 3, generator=g))
        model[0].bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
        model[3].weight.copy_(torch.randn(2, 3, generator=g))
        model[3].bias.copy_(torch.tensor([0.05, -0.1]))
    x = torch.randn(1, 2, 3, 3, generator=g)
    return model, x


def hand_lrp(model, x, target, composite, start="logit", alpha=2.0, beta=1.0):
    w1, b1 = model[0].weight.detach().reshape(3, 18).double(), model[0].bias.detach().double()
    w2, b2 = model[3].weight.detach().double(), model[3].bias.detach().double()
    a0 = x.reshape(18).double()
    a1 = torch.relu(w1 @ a0 + b1)
    logits = w2 @ a1 + b2
    r2 = torch.zeros(2, dtype=torch.float64)
    r2[target] = logits[target] if start == "logit" else 1.0
    r1 = epsilon_rule(a1, w2, b2, r2)  # dense layer: epsilon in every composite; the ReLU passes relevance through
    if composite.endswith("_flat"):
        r0 = flat_rule(18, r1).double()
    elif composite == "epsilon":
        r0 = epsilon_rule(a0, w1, b1, r1)
    elif composite == "epsilon_plus":
        r0 = alpha_beta_rule(a0, w1, b1, r1, 1.0, 0.0)
    else:
        r0 = alpha_beta_rule(a0, w1, b1, r1, alpha, beta)
    return r0.reshape(1, 2, 3, 3)


@pytest.mark.parametrize("composite", LRP_COMPOSITES)
@pytest.mark.parametrize("target", [0, 1])
def test_each_composite_equals_the_rules_by_hand(two_layer, composite, target):
    model, x = two_layer
    expected = hand_lrp(model, x, target, composite)
    ours = lrp(model, x, target, composite=composite, channels="none")
    torch.testing.assert_close(ours.double(), expected, rtol=1e-4, atol=1e-6)


def test_alpha_beta_parameters_and_start(two_layer):
    model, x = two_layer
    torch.testing.assert_close(lrp(model, x, 1, composite="epsilon_alpha_beta", alpha=3.0, beta=2.0,
                                   channels="none").double(),
                               hand_lrp(model, x, 1, "epsilon_alpha_beta", alpha=3.0, beta=2.0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lrp(model, x, 0, composite="epsilon", start="one", channels="none").double(),
                               hand_lrp(model, x, 0, "epsilon", start="one"), rtol=1e-4, atol=1e-6)
    with pytest.raises(UserError, match="alpha - beta = 1"):
        lrp(model, x, 0, composite="epsilon_alpha_beta", alpha=2.0, beta=2.0)
    with pytest.raises(UserError, match="composite"):
        lrp(model, x, 0, composite="gamma")


@pytest.mark.parametrize("ours, theirs", [
    ("epsilon_plus_flat", "EpsilonPlusFlat"), ("epsilon_alpha_beta_flat", "EpsilonAlpha2Beta1Flat"),
    ("epsilon_plus", "EpsilonPlus"), ("epsilon_alpha_beta", "EpsilonAlpha2Beta1")])
def test_equals_zennits_composites_on_torchvision_models(ours, theirs):
    import zennit.composites
    from torchvision.models import resnet18, vgg11_bn
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    images, targets = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([1, 4])
    models = [(resnet18(num_classes=5), ResNetCanonizer())]
    if ours == "epsilon_plus_flat":  # zennit's recommendation for VGG
        models.append((vgg11_bn(num_classes=5), VGGCanonizer()))
    for model, canonizer in models:
        model.eval()
        with torch.no_grad():
            for m in model.modules():  # non-trivial BatchNorm statistics, so that the merge matters
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2, generator=g)
                    m.running_var.uniform_(0.5, 2.0, generator=g)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        composite = getattr(zennit.composites, theirs)(canonizers=[canonizer])
        with Gradient(model=model, composite=composite) as attributor:
            _, expected = attributor(images, lambda out: torch.eye(5)[targets] * out)
        torch.testing.assert_close(lrp(model, images, targets, composite=ours, channels="none"), expected)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # canonizers undone
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_small_resnet_canonizer_conserves_relevance():
    """Without biases (BatchNorm at identity, no fc bias) LRP-epsilon conserves the logit exactly, but only when
    the residual sum is a zennit Sum module: a plain `out + identity` hands the whole relevance to both branches."""
    torch.manual_seed(0)
    model = SmallResNet(5).eval()
    with torch.no_grad():
        model.fc.bias.zero_()
    g = torch.Generator().manual_seed(2)
    images, targets = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([1, 3])
    logit = model(images).gather(1, targets[:, None])[:, 0].detach()
    conserved = lrp(model, images, targets, composite="epsilon", channels="sum").sum(dim=(1, 2))
    torch.testing.assert_close(conserved, logit, rtol=1e-3, atol=1e-5)
    plain = lrp(model, images, targets, composite="epsilon", channels="sum", canonize=False).sum(dim=(1, 2))
    assert not torch.allclose(plain, logit, rtol=0.1)


def fold_batchnorm(model: SmallResNet) -> SmallResNet:
    """A copy of `model` with every BatchNorm folded by hand into the convolution before it (BatchNorm at identity)."""
    import copy

    folded = copy.deepcopy(model)
    pairs = [(folded.conv1, folded.bn1)]
    for i in range(1, 5):
        block = getattr(folded, f"layer{i}")
        pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        if block.downsample is not None:
            pairs.append((block.downsample[0], block.downsample[1]))
    with torch.no_grad():
        for conv, bn in pairs:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale[:, None, None, None])
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            bn.running_mean.zero_(), bn.running_var.fill_(1.0 - bn.eps), bn.weight.fill_(1.0), bn.bias.zero_()
    return folded


def test_batchnorm_is_merged_for_the_small_resnet():
    """The canonizers fold every BatchNorm of the small ResNet into its convolution: the relevance equals that of
    the same network folded by hand (where the BatchNorms are identities and LRP passes them through)."""
    torch.manual_seed(0)
    model = SmallResNet(5).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
    images, targets = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 2])
    folded = fold_batchnorm(model)
    torch.testing.assert_close(folded(images), model(images), rtol=1e-4, atol=1e-5)
    for composite in ("epsilon", "epsilon_plus_flat"):
        expected = lrp(folded, images, targets, composite=composite, channels="none")
        torch.testing.assert_close(lrp(model, images, targets, composite=composite, channels="none"), expected,
                                   rtol=1e-3, atol=1e-3 * float(expected.abs().max()))
    with build_composite("epsilon").context(model):  # the canonized forward is the same function
        canonized = model(images)
    torch.testing.assert_close(canonized, model(images), rtol=1e-4, atol=1e-5)
