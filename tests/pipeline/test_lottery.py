"""The round loop on a tiny synthetic dataset: rewinding, reinit control, resume after a kill."""
import pytest
import torch

from lottery_xai import rundir as rd
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.pruning import remaining_fractions

from conftest import DEVICE, Interrupt, iteration_hook, tiny_cfg


def test_rounds_prune_and_rewind(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path)
    lr = LotteryRun(cfg, DEVICE, log=lambda *_: None)
    summary = lr.run_rounds([0, 1, 2])
    run = rd.RunDir(cfg)
    assert list(summary["round"]) == [0, 1, 2]
    assert run.pruning_summary().is_file() and run.init_state().is_file()
    init = rd.load_torch(run.init_state())["state_dict"]
    for r in (1, 2):
        ckpt = rd.load_torch(run.checkpoint(r))
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
        assert set(ckpt) >= {"state_dict", "masks", "round", "weights_remaining", "total_weights_remaining",
                             "best_val_acc", "epochs"}
    # masks only shrink
    m1, m2 = (rd.load_torch(run.checkpoint(r))["masks"] for r in (1, 2))
    assert all(not (m2[n] & ~m1[n]).any() for n in m1)


def test_reinit_control_has_same_masks_and_new_values(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path)
    LotteryRun(cfg, DEVICE, log=lambda *_: None).run_rounds([0, 1])
    control_cfg = tiny_cfg(tiny_data, tmp_path, "pruning.rewind=reinit")
    control = LotteryRun(control_cfg, DEVICE, log=lambda *_: None)
    control.run_rounds([0, 1])
    ticket, reinit = rd.RunDir(cfg), rd.RunDir(control_cfg)
    assert ticket.root != reinit.root and ticket.root.parent == reinit.root.parent
    t1, c1 = rd.load_torch(ticket.checkpoint(1)), rd.load_torch(reinit.checkpoint(1))
    init = rd.load_torch(ticket.init_state())["state_dict"]
    masks = {n: m.bool() for n, m in c1["masks"].items()}
    start = control.initial_model(1, masks).state_dict()
    for name, mask in masks.items():
        assert torch.equal(mask, t1["masks"][name].bool())  # same mask as the ticket
        assert not torch.equal(start[name][mask], init[name][mask])  # different surviving values
        assert (start[name][~mask] == 0).all()


def test_late_rewinding_restores_the_epoch_snapshot(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path, "pruning.rewind=epoch:1")
    lr = LotteryRun(cfg, DEVICE, log=lambda *_: None)
    lr.run_rounds([0, 1])
    run = rd.RunDir(cfg)
    snap = rd.load_torch(run.rewind_state())["state_dict"]
    init = rd.load_torch(run.init_state())["state_dict"]
    masks = {n: m.bool() for n, m in rd.load_torch(run.checkpoint(1))["masks"].items()}
    start = lr.initial_model(1, masks).state_dict()
    for name, mask in masks.items():
        assert torch.equal(start[name][mask], snap[name][mask])
        assert not torch.equal(snap[name], init[name])


def test_killed_run_resumes_to_identical_checkpoints(tiny_data, tmp_path):
    straight = tiny_cfg(tiny_data, tmp_path / "a")
    LotteryRun(straight, DEVICE, log=lambda *_: None).run_rounds([0, 1, 2])

    killed = tiny_cfg(tiny_data, tmp_path / "b")

    def kill(r, it, model):
        if r == 1 and it == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        LotteryRun(killed, DEVICE, callbacks=iteration_hook(kill), log=lambda *_: None).run_rounds([0, 1, 2])
    run_b = rd.RunDir(killed)
    assert run_b.finished_rounds() == [0] and not run_b.checkpoint(1).exists()
    assert not list(run_b.round_dir(1).glob("*.tmp"))
    LotteryRun(killed, DEVICE, log=lambda *_: None).run_rounds([0, 1, 2])

    run_a = rd.RunDir(straight)
    for r in (0, 1, 2):
        for which in ("last", "best"):
            a, b = rd.load_torch(run_a.checkpoint(r, which)), rd.load_torch(run_b.checkpoint(r, which))
            for key in a["state_dict"]:
                assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (r, which, key)
            for key in a["masks"]:
                assert torch.equal(a["masks"][key], b["masks"][key])
            assert a["best_val_acc"] == b["best_val_acc"]
    assert run_a.pruning_summary().read_text().count("\n") == run_b.pruning_summary().read_text().count("\n") == 4
