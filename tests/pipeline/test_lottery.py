"""The round loop on a tiny synthetic dataset: rewinding, reinit control, resume after a kill."""
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lottery_xai import rundir as rd
from lottery_xai.errors import UserError
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.pruning import remaining_fractions
from lottery_xai.safe_io import load_torch, save_torch

from conftest import DEVICE, Interrupt, iteration_hook, tiny_cfg


def test_rounds_prune_and_rewind(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path)
    lr = LotteryRun(rd.RunDir(cfg), DEVICE, log=lambda *_: None)
    summary = lr.run_rounds([0, 1, 2])
    run = rd.RunDir(cfg)
    assert list(summary["round"]) == [0, 1, 2]
    assert run.pruning_summary().is_file() and run.init_state().is_file()
    init = load_torch(run.init_state())["state_dict"]
    for r in (1, 2):
        ckpt = load_torch(run.checkpoint(r))
        masks = {n: m.bool() for n, m in ckpt["masks"].items()}
        start = lr.initial_model(r, masks).state_dict()
        for name, mask in masks.items():
            # a rewound weight equals its saved value; a pruned one is 0 before and after training
            assert torch.equal(start[name][mask], init[name][mask])
            assert (start[name][~mask] == 0).all() and (ckpt["state_dict"][name][~mask] == 0).all()
        # BatchNorm running statistics are reset with the weights
        assert torch.equal(start["bn1.running_mean"], torch.zeros_like(start["bn1.running_mean"]))
        assert torch.equal(start["bn1.running_var"], torch.ones_like(start["bn1.running_var"]))
        # 50 % per round of the body, 25 % per round of the classifier
        body = [n for n in masks if n != "fc.weight"]
        kept = sum(int(masks[n].sum()) for n in body) / sum(masks[n].numel() for n in body)
        assert abs(kept - 0.5 ** r) < 1e-3
        assert abs(masks["fc.weight"].float().mean().item() - 0.75 ** r) < 0.05
        assert ckpt["weights_remaining"] == pytest.approx(remaining_fractions(lr.template, masks)[0])
        # the survivors trained away from their rewound (initial) values; the pruned ones stayed exactly 0
        for name, mask in masks.items():
            assert (ckpt["state_dict"][name][mask] != init[name][mask]).float().mean() > 0.9, (r, name)
            assert torch.equal(ckpt["state_dict"][name][~mask], torch.zeros_like(ckpt["state_dict"][name][~mask]))
        assert set(ckpt) >= {"state_dict", "masks", "round", "weights_remaining", "total_weights_remaining",
                             "best_val_acc", "epochs"}
    # masks only shrink
    m1, m2 = (load_torch(run.checkpoint(r))["masks"] for r in (1, 2))
    assert all(not (m2[n] & ~m1[n]).any() for n in m1)


def test_reinit_control_has_same_masks_and_new_values(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path)
    LotteryRun(rd.RunDir(cfg), DEVICE, log=lambda *_: None).run_rounds([0, 1])
    control_cfg = tiny_cfg(tiny_data, tmp_path, "pruning.rewind=reinit")
    control = LotteryRun(rd.RunDir(control_cfg), DEVICE, log=lambda *_: None)
    control.run_rounds([0, 1])
    ticket, reinit = rd.RunDir(cfg), rd.RunDir(control_cfg)
    assert ticket.root != reinit.root and ticket.root.parent == reinit.root.parent
    t1, c1 = load_torch(ticket.checkpoint(1)), load_torch(reinit.checkpoint(1))
    init = load_torch(ticket.init_state())["state_dict"]
    masks = {n: m.bool() for n, m in c1["masks"].items()}
    start = control.initial_model(1, masks).state_dict()
    for name, mask in masks.items():
        assert torch.equal(mask, t1["masks"][name].bool())  # same mask as the ticket
        assert not torch.equal(start[name][mask], init[name][mask])  # different surviving values
        assert (start[name][~mask] == 0).all()


def _steps_per_epoch(lottery, cfg):
    return math.ceil(len(lottery.datasets["train"]) / cfg.data.batch_size)


@pytest.mark.parametrize("rewind", ["epoch:1", "iter:3"])
def test_late_rewinding_restores_the_snapshot_and_trains_from_k_to_t(tiny_data, tmp_path, rewind):
    """Frankle et al. 2020 / open_lth: round 1 starts from round 0's state at step K (weights and BatchNorm
    statistics), its first update uses the cosine schedule's learning rate at K, with a fresh optimizer,
    and it trains the T - K remaining iterations."""
    cfg = tiny_cfg(tiny_data, tmp_path, f"pruning.rewind={rewind}")
    assert cfg.train.lr_schedule == "cosine"
    steps, iterations = [], []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: steps.append((opt.param_groups[0]["lr"], len(opt.state))))
    try:
        lr = LotteryRun(rd.RunDir(cfg), DEVICE, callbacks=iteration_hook(lambda r, it, m: iterations.append((r, it))),
                        log=lambda *_: None)
        lr.run_rounds([0, 1])
    finally:
        hook.remove()
    per_epoch = _steps_per_epoch(lr, cfg)
    total = cfg.train.epochs * per_epoch
    k = per_epoch if rewind == "epoch:1" else 3
    assert total > k > 0
    # round 0: T updates from the full schedule; round 1: T - K updates counted on from K
    assert [it for r, it in iterations if r == 0] == list(range(1, total + 1))
    assert [it for r, it in iterations if r == 1] == list(range(k + 1, total + 1))
    assert len(steps) == total + (total - k)
    first_lr, state_size = steps[total]
    assert first_lr == pytest.approx(cfg.train.lr * 0.5 * (1 + math.cos(math.pi * k / total)), rel=1e-12)
    assert state_size == 0  # no optimizer state from round 0
    ckpt = load_torch(rd.RunDir(cfg).checkpoint(1))
    assert ckpt["start_iteration"] == k
    run = rd.RunDir(cfg)
    snapshot = load_torch(run.rewind_state())["state_dict"]
    init = load_torch(run.init_state())["state_dict"]
    masks = {n: m.bool() for n, m in ckpt["masks"].items()}
    start = lr.initial_model(1, masks).state_dict()
    for name, mask in masks.items():
        assert torch.equal(start[name][mask], snapshot[name][mask])
        assert not torch.equal(snapshot[name], init[name])
    assert torch.equal(start["bn1.running_mean"], snapshot["bn1.running_mean"])  # rewound, not reset
    assert not torch.equal(snapshot["bn1.running_mean"], torch.zeros_like(snapshot["bn1.running_mean"]))


def _magnitude_mask(weights, previous, names, keep):
    """Top-|w| among the alive weights of ``names`` (one threshold over them), ``keep`` of them."""
    scores = torch.cat([torch.where(previous[n], weights[n].abs(), torch.full_like(weights[n], -math.inf)).flatten()
                        for n in names])
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    chosen[torch.topk(scores, keep).indices] = True
    out, offset = {}, 0
    for n in names:
        out[n] = chosen[offset:offset + weights[n].numel()].view_as(weights[n])
        offset += weights[n].numel()
    return out


@pytest.fixture(scope="module")
def ticket_logs(tiny_data, tmp_path_factory):
    """Rounds 0-2 of the tiny default run (the ticket), shared by the tests below."""
    logs = tmp_path_factory.mktemp("ticket_logs")
    LotteryRun(rd.RunDir(tiny_cfg(tiny_data, logs)), DEVICE, log=lambda *_: None).run_rounds([0, 1, 2])
    return logs


def test_masks_come_from_the_previous_rounds_last_weights(tiny_data, ticket_logs):
    """Round r's mask recomputed here: the global top-|w| of round r-1's LAST weights among its alive ones,
    the body keeping round(N x 0.5^r) and the classifier (half rate) round(N_fc x 0.75^r) (prune_percent 50)."""
    cfg = tiny_cfg(tiny_data, ticket_logs)
    assert (cfg.pruning.scope, cfg.prune_percent, cfg.pruning.prune_fc_rate) == ("global", 50, 0.5)
    run = rd.RunDir(cfg)
    init = load_torch(run.init_state())["state_dict"]
    for r in (1, 2):
        prev = load_torch(run.checkpoint(r - 1, "last"))
        best = load_torch(run.checkpoint(r - 1, "best"))
        masks = {n: m.bool() for n, m in load_torch(run.checkpoint(r))["masks"].items()}
        previous = {n: m.bool() for n, m in prev["masks"].items()}
        body = [n for n in masks if n != "fc.weight"]
        keep_body = round(sum(masks[n].numel() for n in body) * 0.5 ** r)
        keep_fc = round(masks["fc.weight"].numel() * 0.75 ** r)

        def top(weights):
            return {**_magnitude_mask(weights, previous, body, keep_body),
                    **_magnitude_mask(weights, previous, ["fc.weight"], keep_fc)}

        expected = top(prev["state_dict"])
        for n in masks:
            assert torch.equal(masks[n], expected[n]), (r, n)
        # the check tells the last weights from the rewound ones, and from the best-validation ones where they differ
        assert any(not torch.equal(top(init)[n], expected[n]) for n in masks)
        if any(not torch.equal(best["state_dict"][n], prev["state_dict"][n]) for n in masks):
            assert any(not torch.equal(top(best["state_dict"])[n], expected[n]) for n in masks)


def test_random_control_matches_the_tickets_layerwise_sparsity(tiny_data, ticket_logs, tmp_path):
    """pruning.method=random (random_sparsity matched): at every round each tensor keeps as many weights as
    the ticket keeps there, a seeded random subset of the control's own alive weights, not the largest."""
    with pytest.raises(UserError, match="pruning.method=magnitude"):  # no ticket beside it: a one-line error
        LotteryRun(rd.RunDir(tiny_cfg(tiny_data, tmp_path, "pruning.method=random")), DEVICE, log=lambda *_: None).masks_for_round(1)
    ticket_cfg = tiny_cfg(tiny_data, ticket_logs)
    control_cfg = tiny_cfg(tiny_data, ticket_logs, "pruning.method=random")
    LotteryRun(rd.RunDir(control_cfg), DEVICE, log=lambda *_: None).run_rounds([0, 1, 2])
    ticket, random = rd.RunDir(ticket_cfg), rd.RunDir(control_cfg)
    assert ticket.root != random.root and "_random_" in random.name
    for r in (1, 2):
        t, c = load_torch(ticket.checkpoint(r)), load_torch(random.checkpoint(r))
        prev = load_torch(random.checkpoint(r - 1))
        assert c["random_sparsity"] == "matched"
        for n, mask in c["masks"].items():
            assert int(mask.sum()) == int(t["masks"][n].sum()), (r, n)  # the ticket's count, tensor by tensor
            assert not (mask & ~prev["masks"][n]).any()  # among the control's alive weights of round r-1
        assert any(not torch.equal(c["masks"][n], t["masks"][n]) for n in c["masks"])
        # not the magnitude choice among the same alive weights with the same counts
        previous = {n: m.bool() for n, m in prev["masks"].items()}
        for n, mask in c["masks"].items():
            if int(mask.sum()) < int(previous[n].sum()) and mask.numel() > 100:
                top = _magnitude_mask(prev["state_dict"], previous, [n], int(mask.sum()))[n]
                assert not torch.equal(mask, top), (r, n)
        # seeded: recomputing the masks from the files on disk gives the same draw
        again = LotteryRun(rd.RunDir(control_cfg), DEVICE, log=lambda *_: None).masks_for_round(r)
        assert all(torch.equal(again[n], c["masks"][n].bool()) for n in again)
    # a round made before the control matched the ticket (uniform random pruning) is not reused
    path = random.checkpoint(2)
    old = load_torch(path)
    del old["random_sparsity"]
    save_torch(old, path)
    with pytest.raises(UserError, match="earlier version"):
        LotteryRun(rd.RunDir(control_cfg), DEVICE, log=lambda *_: None).run_rounds([0, 1, 2])


def test_uniform_random_pruning_is_a_named_option_with_its_own_folder(tiny_data, tmp_path):
    matched = rd.RunDir(tiny_cfg(tiny_data, tmp_path, "pruning.method=random"))
    uniform = rd.RunDir(tiny_cfg(tiny_data, tmp_path, "pruning.method=random", "pruning.random_sparsity=uniform"))
    magnitude = rd.RunDir(tiny_cfg(tiny_data, tmp_path, "pruning.random_sparsity=uniform"))
    assert matched.root != uniform.root and "random-uniform" in uniform.name and "uniform" not in matched.name
    assert magnitude.root == rd.RunDir(tiny_cfg(tiny_data, tmp_path)).root  # the key only concerns method random
    # uniform: global random pruning at the schedule's fractions, without any ticket
    lottery = LotteryRun(uniform, DEVICE, log=lambda *_: None)
    assert lottery.ticket_run is None
    lottery.run_rounds([0, 1])
    masks = load_torch(uniform.checkpoint(1))["masks"]
    body = [n for n in masks if n != "fc.weight"]
    assert sum(int(masks[n].sum()) for n in body) == round(sum(masks[n].numel() for n in body) * 0.5)


def test_killed_run_resumes_to_identical_checkpoints(tiny_data, tmp_path):
    straight = tiny_cfg(tiny_data, tmp_path / "a")
    LotteryRun(rd.RunDir(straight), DEVICE, log=lambda *_: None).run_rounds([0, 1, 2])

    killed = tiny_cfg(tiny_data, tmp_path / "b")

    def kill(r, it, model):
        if r == 1 and it == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        LotteryRun(rd.RunDir(killed), DEVICE, callbacks=iteration_hook(kill), log=lambda *_: None).run_rounds([0, 1, 2])
    run_b = rd.RunDir(killed)
    assert run_b.finished_rounds() == [0] and not run_b.checkpoint(1).exists()
    assert not list(run_b.round_dir(1).glob("*.tmp"))
    LotteryRun(rd.RunDir(killed), DEVICE, log=lambda *_: None).run_rounds([0, 1, 2])

    run_a = rd.RunDir(straight)
    for r in (0, 1, 2):
        for which in ("last", "best"):
            a, b = load_torch(run_a.checkpoint(r, which)), load_torch(run_b.checkpoint(r, which))
            for key in a["state_dict"]:
                assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (r, which, key)
            for key in a["masks"]:
                assert torch.equal(a["masks"][key], b["masks"][key])
            assert a["best_val_acc"] == b["best_val_acc"]
    assert run_a.pruning_summary().read_text().count("\n") == run_b.pruning_summary().read_text().count("\n") == 4
