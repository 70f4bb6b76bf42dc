"""Contrastive Grad-CAM consistency (CGC): known answers on hand-built networks, the loss against a
hand computation, gradients through the maps, lambda = 0 is the cross-entropy run, a CGC run resumes."""
import math

import pytest
import torch
from torch import nn

from lottery_xai import rundir as rd
from lottery_xai.crops import resized_crop
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.safe_io import load_torch
from lottery_xai.training.cgc import contrastive_loss, consistency_term, differentiable_maps, mse_loss

from conftest import DEVICE, Interrupt, iteration_hook, tiny_cfg


class Pass(nn.Module):
    """A 'layer' whose output is the input's first channel, then a global mean and a linear head:
    dz_k/dA = w_k / (H W) everywhere, so the grad x activation map of class 0 is A * w_0 / (H W)."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Conv2d(3, 1, 1, bias=False)
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.feat.weight.zero_()
            self.feat.weight[0, 0] = 1.0
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))

    def forward(self, x):
        return self.head(self.feat(x).mean(dim=(2, 3)))


def _crop(n):
    top, left = torch.tensor([0, 3, 5])[:n], torch.tensor([2, 0, 4])[:n]
    h, w = torch.tensor([10, 12, 8])[:n], torch.tensor([9, 13, 11])[:n]
    flip = torch.tensor([True, False, True])[:n]
    return top, left, h, w, flip


@pytest.mark.parametrize("variant", ["grad_x_activation", "gradcam"])
def test_transported_map_equals_the_map_of_the_transformed_image(variant):
    """On the hand-built network the map is proportional to the image's first channel, so the
    map of an exact crop-and-flip of x equals the same crop-and-flip of x's map."""
    torch.manual_seed(0)
    model = Pass().double()
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64) + 0.1  # positive: the ReLU changes nothing
    crop = _crop(3)
    transformed = resized_crop(images, *crop)

    def maps_of(batch):
        batch = batch.clone().requires_grad_(False)
        act = model.feat(batch)
        logits = model.head(act.mean(dim=(2, 3)))
        return differentiable_maps(act, logits, torch.zeros(len(batch), dtype=torch.long), (16, 16), variant)

    m_x, m_t = maps_of(images), maps_of(transformed)
    assert torch.allclose(m_x.sum(dim=(1, 2)), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(m_x, images[:, 0] / images[:, 0].sum(dim=(1, 2), keepdim=True))  # the known map
    carried = resized_crop(m_x, *crop)
    unit = lambda m: m.flatten(1) / m.flatten(1).norm(dim=1, keepdim=True)  # noqa: E731
    assert torch.allclose(unit(carried), unit(m_t), atol=1e-12)
    # the whole term: the positives are exact, so the MSE ablation is 0
    term, _, _ = consistency_term(model, model, images, crop, "feat", variant, contrastive=False)
    assert float(term.detach()) == pytest.approx(0.0, abs=1e-20)


def test_contrastive_loss_equals_a_hand_computation():
    u = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0.5, 0.0, 1.0], [0.0, 1.0, 1.0, 0.2], [2.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    tau = 0.5
    nu = [[x / math.sqrt(sum(t * t for t in row)) for x in row] for row in u.tolist()]
    nv = [[x / math.sqrt(sum(t * t for t in row)) for x in row] for row in v.tolist()]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    losses = []
    for b in range(3):
        terms = [dot(nu[b], nv[b]) / tau] + [dot(nu[b], nu[j]) / tau for j in range(3) if j != b]
        losses.append(-terms[0] + math.log(sum(math.exp(t) for t in terms)))
    assert float(contrastive_loss(u, v, tau)) == pytest.approx(sum(losses) / 3, rel=1e-12)
    mse = sum(sum((a - b) ** 2 for a, b in zip(nu[i], nv[i])) for i in range(3)) / (3 * 4)  # mean over maps and pixels
    assert float(mse_loss(u, v)) == pytest.approx(mse, rel=1e-12)


def test_gc_mse_is_the_references_mean_squared_error():
    """UCDvision/CGC's no-contrast baseline: F.mse_loss of the L2-normalised flattened maps (mean over the
    batch and the pixels), here on two hand-made 2 x 3 x 3 maps."""
    a = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 3.0, 1.0], [0.0, 0.0, 1.0]],
                      [[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]], dtype=torch.float64)
    b = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 2.0, 1.0], [0.0, 1.0, 0.0]],
                      [[0.0, 0.0, 3.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    unit = lambda m: m.flatten(1) / m.flatten(1).norm(dim=1, keepdim=True)  # noqa: E731
    reference = nn.functional.mse_loss(unit(a), unit(b))
    assert float(mse_loss(a, b)) == pytest.approx(float(reference), rel=1e-12)
    assert float(mse_loss(a, b)) == pytest.approx(float(((unit(a) - unit(b)) ** 2).sum()) / 18, rel=1e-12)


def test_gradients_flow_through_the_maps_into_the_parameters():
    """d L_CGC / d theta by autograd (through the create_graph maps) against central finite differences."""
    torch.manual_seed(0)
    # smooth (Softplus) so that finite differences are exact to O(eps^2); the map layer's output is positive
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 4, 3, padding=1), nn.Softplus(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    crop = _crop(3)

    def loss():
        return consistency_term(model, model, images, crop, "1", "grad_x_activation", 0.5)[0]

    weight = model[2].weight  # after the map layer: it reaches the maps only through their gradient (second order)
    (grad,) = torch.autograd.grad(loss(), weight)
    assert grad.abs().max() > 0
    eps = 1e-6
    for index in [(0, 0, 1, 1), (2, 1, 0, 2), (3, 2, 2, 0)]:
        with torch.no_grad():
            weight[index] += eps
        up = float(loss())
        with torch.no_grad():
            weight[index] -= 2 * eps
        down = float(loss())
        with torch.no_grad():
            weight[index] += eps
        assert grad[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9)


def _same_checkpoints(a, b, rounds):
    for r in rounds:
        sa, sb = load_torch(a.checkpoint(r))["state_dict"], load_torch(b.checkpoint(r))["state_dict"]
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (r, key)


class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def test_lambda_zero_trains_as_plain_cross_entropy():
    """train.loss=cgc with cgc_lambda=0 through the training loop ends with exactly the weights of a plain
    torch cross-entropy loop written here (same initial weights, data, SGD settings); lambda > 0 does not."""
    from lottery_xai.config import TrainConfig
    from lottery_xai.training import get_loss, train_round

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 12, 12, generator=g), torch.randint(0, 3, (24,), generator=g)
    batches = [{"image": x[i:i + 8], "label": y[i:i + 8]} for i in range(0, 24, 8)]
    torch.manual_seed(0)
    initial = TinyBN().state_dict()
    lr, momentum, wd, epochs = 0.1, 0.9, 5e-4, 2

    def loop_run(lam):
        model = TinyBN()
        model.load_state_dict(initial)
        tc = TrainConfig(loss="cgc", cgc_lambda=lam, epochs=epochs, optimizer="sgd", lr=lr, momentum=momentum,
                         weight_decay=wd, lr_schedule="none")
        torch.manual_seed(1)
        return train_round(model, batches, batches[:1], tc, {}, torch.device("cpu"), 3,
                           loss=get_loss("cgc", tc, layer="conv2")).last_state

    plain = TinyBN()
    plain.load_state_dict(initial)
    optimizer = torch.optim.SGD(plain.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    for _ in range(epochs):
        for batch in batches:
            plain.train()
            loss = nn.functional.cross_entropy(plain(batch["image"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    expected = plain.state_dict()
    zero = loop_run(0.0)
    for key in expected:
        assert torch.equal(zero[key], expected[key]), key
    half = loop_run(0.5)
    assert any(not torch.equal(half[key], expected[key]) for key in expected)


def test_a_cgc_run_trains_every_round_and_resumes_after_a_kill(tiny_data, tmp_path):
    extra = ("prune_iterations=1", "train.loss=cgc", "train.epochs=3")
    straight = tiny_cfg(tiny_data, tmp_path / "a", *extra)
    summary = LotteryRun(rd.RunDir(straight), DEVICE, log=lambda *_: None).run_rounds([0, 1])
    assert list(summary["round"]) == [0, 1] and summary["best_val_acc"].notna().all()
    killed = tiny_cfg(tiny_data, tmp_path / "b", *extra)

    def kill(r, it, model):
        if r == 1 and it == 9:  # inside the last epoch (4 steps per epoch)
            raise Interrupt

    with pytest.raises(Interrupt):
        LotteryRun(rd.RunDir(killed), DEVICE, callbacks=iteration_hook(kill), log=lambda *_: None).run_rounds([0, 1])
    assert rd.RunDir(killed).resume_state(1).is_file()
    LotteryRun(rd.RunDir(killed), DEVICE, log=lambda *_: None).run_rounds([0, 1])
    _same_checkpoints(rd.RunDir(straight), rd.RunDir(killed), [0, 1])


def _rank_loss(rank, init_file, u_all, v_all, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        half = u_all.shape[0] // 2
        u = u_all[rank * half:(rank + 1) * half].clone().requires_grad_(True)
        loss = contrastive_loss(u, v_all[rank * half:(rank + 1) * half], 0.5)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": u.grad}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_negatives_span_every_process_under_torchrun(tmp_path):
    """2 gloo processes with half the batch each: the mean of their losses is the single-process loss
    on the whole batch, and their summed gradients (what DDP averages, times 2) are its gradient."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    u_all, v_all = torch.rand(6, 10, dtype=torch.float64), torch.rand(6, 10, dtype=torch.float64)
    mp.start_processes(_rank_loss, args=(tmp_path / "init", u_all, v_all, tmp_path), nprocs=2, join=True,
                       start_method="spawn")
    parts = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    u = u_all.clone().requires_grad_(True)
    whole = contrastive_loss(u, v_all, 0.5)
    whole.backward()
    assert float((parts[0]["loss"] + parts[1]["loss"]) / 2) == pytest.approx(float(whole.detach()), rel=1e-12)
    # DDP averages the ranks' gradients of their own losses; the gradient reaching the gathered maps of
    # the other rank is summed back by all_gather's backward, so the average is the whole batch's gradient
    grads = torch.cat([parts[0]["grad"], parts[1]["grad"]]) / 2
    assert torch.allclose(grads, u.grad, rtol=1e-10, atol=1e-12)


def test_unlabelled_images_reach_only_the_label_free_terms(tiny_data, tmp_path):
    from lottery_xai.data.loaders import IGNORED_LABEL, HideLabels
    from lottery_xai.training.losses import labelled_cross_entropy

    items = [{"image": torch.zeros(1), "label": torch.tensor(i % 3)} for i in range(10)]
    hidden = HideLabels(items, 0.3, seed=7)
    assert int(hidden.hidden.sum()) == 3 and torch.equal(hidden.hidden, HideLabels(items, 0.3, seed=7).hidden)
    labels = torch.stack([hidden[i]["label"] for i in range(10)])
    assert (labels[hidden.hidden] == IGNORED_LABEL).all() and (labels[~hidden.hidden] >= 0).all()
    # cross-entropy over the labelled images only; a batch with none contributes 0 and a zero gradient
    logits = torch.randn(10, 3, requires_grad=True)
    keep = ~hidden.hidden
    assert torch.allclose(labelled_cross_entropy(logits, labels),
                          torch.nn.functional.cross_entropy(logits[keep], labels[keep]))
    none = labelled_cross_entropy(logits, torch.full((10,), IGNORED_LABEL))
    (grad,) = torch.autograd.grad(none, logits)
    assert float(none.detach()) == 0.0 and not grad.any()
    # a CGC run with half of the training images unlabelled trains, in its own run folder
    cfg = tiny_cfg(tiny_data, tmp_path, "prune_iterations=0", "train.loss=cgc", "train.unlabeled_fraction=0.5")
    summary = LotteryRun(rd.RunDir(cfg), DEVICE, log=lambda *_: None).run_rounds([0])
    assert "unlabeled0.5" in rd.RunDir(cfg).name and summary["best_val_acc"].notna().all()


@pytest.mark.parametrize("two_views", [True, False])
def test_the_total_is_the_cross_entropies_and_the_weighted_term(monkeypatch, two_views):
    """CE(training view) + CE(x) + CE(T(x)) + lambda L_CGC (UCDvision/CGC: xe_images, images, aug_images),
    and CE(x) + CE(T(x)) + lambda L_CGC without a second view (algorithms.md section 7), written out here
    for the hand-built network: its logits are (m, -m) with m the mean of channel 0, and its map of class 0 is
    channel 0 normalised, so u_b = v_b and L_CGC = mean_b [-1/tau + log(e^(1/tau) + sum_j!=b e^(u_b.u_j / tau))]."""
    import lottery_xai.training.cgc as cgc
    from contextlib import nullcontext

    from lottery_xai.config import TrainConfig

    g = torch.Generator().manual_seed(0)
    images, originals = torch.rand(4, 3, 16, 16, generator=g) + 0.1, torch.rand(4, 3, 16, 16, generator=g) + 0.1
    labels = torch.tensor([0, 1, 1, 0])
    top, left = torch.tensor([0, 3, 5, 2]), torch.tensor([2, 0, 4, 6])
    h, w = torch.tensor([10, 12, 8, 14]), torch.tensor([9, 13, 11, 10])
    flip = torch.tensor([True, False, True, False])
    monkeypatch.setattr(cgc, "random_crops", lambda x: (top, left, h, w, flip))
    lam, tau = 0.7, 0.5
    tc = TrainConfig(loss="cgc", cgc_lambda=lam, cgc_temperature=tau)
    x = originals if two_views else images
    model = Pass()
    total = cgc.CGCLoss(tc, "feat").forward_pass(model, model, images, labels, nullcontext(),
                                                 originals=originals if two_views else None)

    def transformed(b):  # T(x_b): crop, bilinear resize back to 16 x 16 (torch's interpolate), flip
        crop = x[b:b + 1, :, top[b]:top[b] + h[b], left[b]:left[b] + w[b]]
        out = nn.functional.interpolate(crop, size=(16, 16), mode="bilinear", align_corners=False)[0]
        return out.flip(-1) if flip[b] else out

    tx = torch.stack([transformed(b) for b in range(4)])

    def ce(view):
        m = view[:, 0].mean(dim=(1, 2))
        logits = torch.stack([m, -m], dim=1)
        return sum(-logits[b, labels[b]] + torch.logsumexp(logits[b], 0) for b in range(4)) / 4

    u = [tx[b, 0].flatten() / tx[b, 0].flatten().norm() for b in range(4)]
    l_cgc = sum(-1 / tau + math.log(math.exp(1 / tau) + sum(math.exp(float(u[b] @ u[j]) / tau) for j in range(4) if j != b))
                for b in range(4)) / 4
    expected = float(ce(x) + ce(tx)) + lam * l_cgc + (float(ce(images)) if two_views else 0.0)
    assert float(total) == pytest.approx(expected, rel=1e-5)


def test_step_1_gives_cgc_the_evaluation_view_beside_the_training_view(tiny_data, tmp_path):
    from lottery_xai.data.loaders import WithOriginalView
    from lottery_xai.pipeline.loading import load_data

    cfg = tiny_cfg(tiny_data, tmp_path, "train.loss=ce")
    assert cfg.train.loss == "cross_entropy"  # the short name is the same run
    train = load_data(cfg, ("train",))[0]["train"]
    plain = load_data(cfg, ("train",), augment=False)[0]["train"]
    both = WithOriginalView(train, plain)
    both.set_epoch(1)  # augmentation = f(seed, epoch, index): repeatable
    item = both[2]
    assert torch.equal(item["original"], plain[2]["image"]) and torch.equal(item["image"], train[2]["image"])
    assert not torch.equal(item["image"], item["original"])  # augmented vs the evaluation transform
    assert int(item["label"]) == int(plain[2]["label"])
