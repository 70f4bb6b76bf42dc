"""pruning.structure: channels through the pipeline: step 1 removes whole channels and rebuilds the smaller
network from the initial weights of the kept channels, and steps 2 and 3 load that smaller network.

Expected widths and weights are written out by hand for the small ResNet (widths 16, 32, 64, 128; each
channel group keeps round(size * 0.5 ** r) of its channels at prune_percent 50)."""
import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("torch_pruning")

from lottery_xai import rundir as rd  # noqa: E402
from lottery_xai.config import load_config  # noqa: E402
from lottery_xai.pipeline.activations import activations_step  # noqa: E402
from lottery_xai.pipeline.loading import load_round_model  # noqa: E402
from lottery_xai.pipeline.prune import LotteryRun  # noqa: E402
from lottery_xai.pipeline.test import evaluate_rounds  # noqa: E402
from lottery_xai.safe_io import load_torch  # noqa: E402

from conftest import tiny_overrides  # noqa: E402

CPU = torch.device("cpu")
quiet = lambda *_: None  # noqa: E731


def _cfg(data, logs, *extra):
    return load_config(None, tiny_overrides(data, logs, "train.epochs=1", "pruning.structure=channels",
                                            "activations.splits=[train]", "cav.splits=[train]", *extra))


@pytest.fixture(scope="module")
def channels_run(tiny_data, tmp_path_factory):
    cfg = _cfg(tiny_data, tmp_path_factory.mktemp("logs"))
    run = rd.RunDir(cfg)
    LotteryRun(run, CPU, log=quiet).run_rounds([0, 1, 2])
    evaluate_rounds(run, CPU, [0, 1, 2], log=quiet)
    activations_step(run, CPU, [0, 1, 2], log=quiet)
    return run


def test_steps_1_to_3_run_on_the_smaller_network(channels_run):
    run = channels_run
    assert "channels" in run.name  # its own run folder (and its controls' folders are channel runs too)
    test = pd.read_csv(run.test_metrics())
    assert list(test["round"]) == [0, 1, 2]
    for r, (stem, inner3, last) in enumerate([(16, 64, 128), (8, 32, 64), (4, 16, 32)]):
        model, ckpt = load_round_model(run, r, None, CPU)
        assert model.conv1.out_channels == stem and model.layer1.conv2.out_channels == stem  # residual-coupled
        assert model.layer3.conv1.out_channels == inner3 and model.fc.in_features == last
        assert model.fc.out_features == 4  # the classes are never pruned
        # the share of prunable weights is the smaller network's count over the full one's (counted here)
        full = load_round_model(run, 0, None, CPU)[0]
        count = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight") and p.ndim > 1)  # noqa: E731
        assert ckpt["weights_remaining"] == pytest.approx(count(model) / count(full))
        assert test.loc[test["round"] == r, "weights_remaining"].item() == pytest.approx(ckpt["weights_remaining"])
        # step 3 stored the smaller network's features: layer3 has 64 * 0.5 ** r channels (avg-pooled)
        features = np.load(run.activation_file(r, "train", "layer3"), mmap_mode="r")
        assert features.shape[1] == 64 // 2 ** r
        assert all(m.all() for m in ckpt["masks"].values())  # nothing masked: the channels are gone instead
    widths = [load_torch(run.checkpoint(r))["structure"]["groups"]["layer4.conv1"]["kept"] for r in range(3)]
    assert len(widths[1]) == 64 and len(widths[2]) == 32 and set(widths[2]) <= set(widths[1])  # nested


def test_the_next_round_starts_from_the_initial_weights_of_the_kept_channels(channels_run):
    run = channels_run
    lottery = LotteryRun(run, CPU, log=quiet)
    init = load_torch(run.init_state())["state_dict"]
    structure = load_torch(run.checkpoint(1))["structure"]
    kept = {root: g["kept"] for root, g in structure["groups"].items()}
    start = lottery.initial_structured(1, structure).state_dict()
    stem, inner = kept["conv1"], kept["layer1.conv1"]
    assert torch.equal(start["conv1.weight"], init["conv1.weight"][stem])  # 3 input channels: never pruned
    assert torch.equal(start["layer1.conv1.weight"], init["layer1.conv1.weight"][inner][:, stem])
    assert torch.equal(start["layer1.conv2.weight"], init["layer1.conv2.weight"][stem][:, inner])
    assert torch.equal(start["bn1.weight"], init["bn1.weight"][stem])
    # layer4's output channels (written by layer4.conv2 and the downsample, one group) are fc's inputs
    assert torch.equal(start["fc.weight"], init["fc.weight"][:, kept["layer4.conv2"]])
    assert torch.equal(start["bn1.running_mean"], torch.zeros(len(stem)))  # statistics rewound with the weights


def test_channels_are_ranked_by_the_l1_norm_of_the_previous_rounds_filters(channels_run):
    """layer2.conv1's channels feed only layer2.conv2 (no residual): the 16 of 32 with the largest L1 norm of
    round 0's final filters survive into round 1, the 8 best of those (by round 1's weights) into round 2."""
    run = channels_run
    previous = load_torch(run.checkpoint(0))["state_dict"]["layer2.conv1.weight"]
    norms = previous.abs().sum((1, 2, 3))
    expected = sorted(torch.argsort(norms, descending=True)[:16].tolist())
    assert load_torch(run.checkpoint(1))["structure"]["groups"]["layer2.conv1"]["kept"] == expected
    round1 = load_torch(run.checkpoint(1))["state_dict"]["layer2.conv1.weight"]  # 16 filters, in kept order
    best = sorted(torch.argsort(round1.abs().sum((1, 2, 3)), descending=True)[:8].tolist())
    assert load_torch(run.checkpoint(2))["structure"]["groups"]["layer2.conv1"]["kept"] == [expected[i] for i in best]


def test_the_reinit_control_takes_the_tickets_channels_and_fresh_weights(channels_run, tiny_data):
    run = channels_run
    cfg = _cfg(tiny_data, run.cfg.logs, "pruning.rewind=reinit")
    control = rd.RunDir(cfg)
    LotteryRun(control, CPU, log=quiet).run_rounds([1])
    ticket, mine = load_torch(run.checkpoint(1)), load_torch(control.checkpoint(1))
    assert mine["structure"] == ticket["structure"]
    start = LotteryRun(control, CPU, log=quiet).initial_structured(1, mine["structure"]).state_dict()
    init = load_torch(run.init_state())["state_dict"]
    kept = mine["structure"]["groups"]["conv1"]["kept"]
    assert start["conv1.weight"].shape == init["conv1.weight"][kept].shape
    assert not torch.equal(start["conv1.weight"], init["conv1.weight"][kept])  # a fresh draw, not the ticket's
    model, _ = load_round_model(control, 1, None, CPU)
    assert model.conv1.out_channels == 8


def test_a_conv_rate_of_its_own_and_an_l2_ranking_name_their_run(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, "pruning.channel_norm=l2", "pruning.prune_conv_rate=0.75")
    assert rd.RunDir(cfg).name.endswith("_channels-l2_conv0.75_seed0")
    from lottery_xai.errors import UserError

    with pytest.raises(UserError, match="prune_bn"):
        _cfg(tiny_data, tmp_path, "pruning.prune_bn=true")
