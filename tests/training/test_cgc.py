"""Contrastive Grad-CAM consistency (CGC): known answers on hand-built networks, the loss against a
hand computation, gradients through the maps, lambda = 0 is the cross-entropy run, a CGC run resumes."""
import math

import pytest
import torch
from torch import nn

from lottery_xai import rundir as rd
from lottery_xai.crops import resized_crop
from lottery_xai.pipeline.prune import LotteryRun
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
    mse = sum(sum((a - b) ** 2 for a, b in zip(nu[i], nv[i])) for i in range(3)) / 3
    assert float(mse_loss(u, v)) == pytest.approx(mse, rel=1e-12)


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
        sa, sb = rd.load_torch(a.checkpoint(r))["state_dict"], rd.load_torch(b.checkpoint(r))["state_dict"]
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (r, key)


def test_lambda_zero_is_the_cross_entropy_run(tiny_data, tmp_path):
    ce = tiny_cfg(tiny_data, tmp_path, "prune_iterations=1")
    cgc = tiny_cfg(tiny_data, tmp_path, "prune_iterations=1", "train.loss=cgc", "train.cgc_lambda=0")
    LotteryRun(ce, DEVICE, log=lambda *_: None).run_rounds([0, 1])
    LotteryRun(cgc, DEVICE, log=lambda *_: None).run_rounds([0, 1])
    a, b = rd.RunDir(ce), rd.RunDir(cgc)
    assert a.root != b.root
    _same_checkpoints(a, b, [0, 1])


def test_a_cgc_run_trains_every_round_and_resumes_after_a_kill(tiny_data, tmp_path):
    extra = ("prune_iterations=1", "train.loss=cgc", "train.epochs=3")
    straight = tiny_cfg(tiny_data, tmp_path / "a", *extra)
    summary = LotteryRun(straight, DEVICE, log=lambda *_: None).run_rounds([0, 1])
    assert list(summary["round"]) == [0, 1] and summary["best_val_acc"].notna().all()
    killed = tiny_cfg(tiny_data, tmp_path / "b", *extra)

    def kill(r, it, model):
        if r == 1 and it == 9:  # inside the last epoch (4 steps per epoch)
            raise Interrupt

    with pytest.raises(Interrupt):
        LotteryRun(killed, DEVICE, callbacks=iteration_hook(kill), log=lambda *_: None).run_rounds([0, 1])
    assert rd.RunDir(killed).resume_state(1).is_file()
    LotteryRun(killed, DEVICE, log=lambda *_: None).run_rounds([0, 1])
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
    from lottery_xai.loaders import IGNORED_LABEL, HideLabels
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
    summary = LotteryRun(cfg, DEVICE, log=lambda *_: None).run_rounds([0])
    assert "unlabeled0.5" in rd.RunDir(cfg).name and summary["best_val_acc"].notna().all()


def test_the_total_is_three_cross_entropies_and_the_weighted_term():
    """With an original view beside the training view: CE(training view) + CE(x) + CE(T(x)) + lambda L,
    T drawn from the global generator on x (the original view), as a hand assembly of the parts gives."""
    from contextlib import nullcontext

    from lottery_xai.config import TrainConfig
    from lottery_xai.training.cgc import CGCLoss, random_crops

    model = Pass()
    tc = TrainConfig(loss="cgc", cgc_lambda=0.7)
    images, originals = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 1, 0])
    torch.manual_seed(3)
    total = CGCLoss(tc, "feat").forward_pass(model, model, images, labels, nullcontext(), originals=originals)
    torch.manual_seed(3)
    crop = random_crops(originals)
    term, logits_x, logits_t = consistency_term(model, model, originals, crop, "feat", tc.cgc_map, tc.cgc_temperature)
    ce = nn.functional.cross_entropy
    expected = ce(model(images), labels) + ce(logits_x, labels) + ce(logits_t, labels) + 0.7 * term
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    # without a second view (data.augment: false) the training view is x and counts once
    torch.manual_seed(3)
    single = CGCLoss(tc, "feat").forward_pass(model, model, originals, labels, nullcontext())
    assert float(single) == pytest.approx(float(expected - ce(model(images), labels)), rel=1e-6)


def test_step_1_gives_cgc_the_evaluation_view_beside_the_training_view(tiny_data, tmp_path):
    from lottery_xai.loaders import WithOriginalView
    from lottery_xai.pipeline.rounds import load_data

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
