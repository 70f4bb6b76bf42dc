"""Pruning rules and mask invariants on tiny models."""
import pytest
import torch
from torch import nn

from lottery_xai.config import TrainConfig
from lottery_xai.pruning import (MaskEnforcer, apply_masks, full_masks, prunable_names, prune, remaining_fractions,
                                 target_fractions)
from lottery_xai.training import every_iteration, train_round


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def tiny_batches(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [{"image": x[i:i + 16], "label": y[i:i + 16]} for i in range(0, n, 16)]


def test_prunable_names_skip_biases_and_bn_by_default():
    model = Tiny()
    assert prunable_names(model) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert prunable_names(model, prune_bn=True) == ["conv1.weight", "bn1.weight", "conv2.weight", "fc.weight"]


def _half_masks(model, seed=0):
    torch.manual_seed(seed)
    masks = full_masks(model, prunable_names(model))
    return prune(dict(model.named_parameters()), masks, {n: 0.5 for n in masks}, "layerwise")


@pytest.mark.parametrize("optimizer,momentum,wd", [("sgd", 0.9, 5e-2), ("adam", 0.0, 5e-2), ("sgd", 0.0, 0.0)])
def test_pruned_weights_stay_exactly_zero_through_training(optimizer, momentum, wd):
    torch.manual_seed(0)
    model = Tiny()
    masks = _half_masks(model)
    apply_masks(model, masks)
    batches = tiny_batches()
    seen = []

    def check(it, m):  # after every optimizer step, every pruned weight is exactly 0
        params = dict(m.named_parameters())
        seen.append(all(bool((params[n][~mask] == 0).all()) for n, mask in masks.items()))

    tc = TrainConfig(epochs=2, optimizer=optimizer, lr=0.1, momentum=momentum, weight_decay=wd)
    start = {n: v.detach().clone() for n, v in model.state_dict().items()}  # the rewound (masked) state
    res = train_round(model, batches, batches, tc, masks, torch.device("cpu"), 3, callbacks=[every_iteration(check)])
    assert seen and all(seen)
    for n, mask in masks.items():
        assert (res.last_state[n][~mask] == 0).all()
        assert (res.best_state[n][~mask] == 0).all()
        # survivors trained: (nearly) every one moved away from its starting value
        assert (res.last_state[n][mask] != start[n][mask]).float().mean() > 0.9, n
    # gating is on the mask, not the value: negative survivors train too (the reference's w < eps bug froze them)
    for n, mask in masks.items():
        negative = mask & (start[n] < 0)
        assert negative.any() and (res.last_state[n][negative] != start[n][negative]).float().mean() > 0.9, n


def test_mask_enforcer_removes_its_hooks():
    model = Tiny()
    masks = _half_masks(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with MaskEnforcer(model, masks, opt):
        pass
    loss = model(torch.randn(2, 3, 8, 8)).sum()
    loss.backward()
    assert all(p.grad is not None and (p.grad != 0).any() for n, p in model.named_parameters() if n in masks)


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_remaining_fraction_follows_schedule(scope):
    torch.manual_seed(0)
    model = Tiny()
    names = prunable_names(model)
    masks = full_masks(model, names)
    p = 0.2
    for k in range(1, 6):
        body, fc = target_fractions(k, "iterative", 100 * p, 1.0, [])
        assert body == pytest.approx((1 - p) ** k) and fc == body
        # perturb weights between rounds as training would
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.01 * torch.randn_like(param))
        masks = prune(dict(model.named_parameters()), masks, {n: body for n in names}, scope)
        apply_masks(model, masks)
        alive = {n: int(m.sum()) for n, m in masks.items()}
        if scope == "layerwise":
            for n, m in masks.items():
                assert abs(alive[n] - m.numel() * (1 - p) ** k) <= 1
        else:
            total = sum(m.numel() for m in masks.values())
            assert abs(sum(alive.values()) - total * (1 - p) ** k) <= 1
        frac, total_frac = remaining_fractions(model, masks)
        assert frac == pytest.approx((1 - p) ** k, abs=1.5 / sum(m.numel() for m in masks.values()))
        assert total_frac > frac  # biases and BN are never pruned


def test_classifier_pruned_at_half_rate():
    body, fc = target_fractions(3, "iterative", 20, 0.5, [])
    assert body == pytest.approx(0.8 ** 3) and fc == pytest.approx(0.9 ** 3)
    assert target_fractions(2, "compression_rates", 20, 0.5, [2, 4, 8]) == (0.25, 0.25)


def test_magnitude_pruning_removes_smallest_alive_and_never_revives():
    w = torch.tensor([[0.5, -0.1, 0.3], [-0.9, 0.05, -0.2]])
    masks = {"w": torch.ones_like(w, dtype=torch.bool)}
    m1 = prune({"w": w}, masks, {"w": 4 / 6}, "layerwise")
    assert m1["w"].tolist() == [[True, False, True], [True, False, True]]
    # a dead weight with a large value must stay dead
    w2 = w.clone()
    w2[0, 1] = 10.0
    m2 = prune({"w": w2}, m1, {"w": 3 / 6}, "layerwise")
    assert not m2["w"][0, 1] and int(m2["w"].sum()) == 3
    assert m2["w"].tolist() == [[True, False, True], [True, False, False]]


def test_global_scope_uses_one_threshold():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([0.1, 0.2, 0.3, 0.4])
    masks = {"a": torch.ones(4, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
    glob = prune({"a": a, "b": b}, masks, {"a": 0.5, "b": 0.5}, "global")
    assert glob["a"].all() and not glob["b"].any()
    layer = prune({"a": a, "b": b}, masks, {"a": 0.5, "b": 0.5}, "layerwise")
    assert int(layer["a"].sum()) == 2 and int(layer["b"].sum()) == 2


def test_random_pruning_is_seeded_and_respects_count():
    w = torch.randn(100)
    masks = {"w": torch.ones(100, dtype=torch.bool)}
    m1 = prune({"w": w}, masks, {"w": 0.3}, "layerwise", "random", torch.Generator().manual_seed(1))
    m2 = prune({"w": w}, masks, {"w": 0.3}, "layerwise", "random", torch.Generator().manual_seed(1))
    m3 = prune({"w": w}, masks, {"w": 0.3}, "layerwise", "random", torch.Generator().manual_seed(2))
    assert torch.equal(m1["w"], m2["w"]) and not torch.equal(m1["w"], m3["w"]) and int(m1["w"].sum()) == 30


def test_random_matched_keeps_the_ticket_counts_among_alive_weights_seeded():
    """The LTH random control: per tensor, exactly the ticket's count, only previously alive weights,
    a uniform draw (every alive weight kept with probability count / alive), the same for the same seed."""
    from lottery_xai.pruning import random_matched

    g = torch.Generator().manual_seed(0)
    previous = {"a": torch.rand(6, 5, generator=g) < 0.7, "b": torch.ones(10, dtype=torch.bool)}
    previous["a"][0, :3] = True
    counts = {"a": 7, "b": 4}
    m1 = random_matched(previous, counts, torch.Generator().manual_seed(1))
    m2 = random_matched(previous, counts, torch.Generator().manual_seed(1))
    m3 = random_matched(previous, counts, torch.Generator().manual_seed(2))
    for n in previous:
        assert int(m1[n].sum()) == counts[n] and not (m1[n] & ~previous[n]).any()
        assert torch.equal(m1[n], m2[n])
    assert any(not torch.equal(m1[n], m3[n]) for n in previous)
    # uniform over the alive weights: 3000 draws of 4 of 10, each weight kept 40 % of the time (binomial sd 0.9 %)
    g = torch.Generator().manual_seed(3)
    kept = torch.stack([random_matched({"b": previous["b"]}, {"b": 4}, g)["b"] for _ in range(3000)]).float().mean(0)
    assert (kept - 0.4).abs().max() < 0.04
    with pytest.raises(ValueError, match="alive"):
        random_matched(previous, {"a": int(previous["a"].sum()) + 1, "b": 1}, torch.Generator().manual_seed(0))
