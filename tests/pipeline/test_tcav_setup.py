"""TCAV's set-up: CAV training and TCAV scoring never share a split; a warning where TCAV cannot
depend on the image (a layer followed only by pooling and a linear layer)."""
from pathlib import Path

import pytest
import torch

from lottery_xai.concepts.tcav import gradients_by_class
from lottery_xai.config import Config, load_config
from lottery_xai.errors import UserError
from lottery_xai.models import build_model, linear_after
from lottery_xai.pipeline.activations import warn_linear_tail


def test_default_splits_are_disjoint():
    cfg = Config()
    assert not set(cfg.cav.splits) & set(cfg.tcav.splits)
    assert set(cfg.cav.splits) | set(cfg.tcav.splits) == {"train", "val", "test"}
    for path in sorted(Path("config").glob("*.yaml")):
        cfg = load_config(path)
        assert not set(cfg.cav.splits) & set(cfg.tcav.splits), path


@pytest.mark.parametrize("cav, tcav, shared", [("[train,val]", "[val,test]", "val"), ("[test]", "[test]", "test")])
def test_overlapping_splits_are_refused(cav, tcav, shared):
    with pytest.raises(UserError, match=f"share {shared}"):
        load_config(None, [f"cav.splits={cav}", f"tcav.splits={tcav}", "activations.splits=[train,val,test]"])


@pytest.mark.parametrize("arch, layer, size, tail", [
    ("small_resnet", "layer4", 32, True),
    ("small_resnet", "layer3", 32, False),
    ("small_resnet", "layer4.conv1", 32, False),  # the rest of layer4's block still follows
    ("resnet18", "layer4", 64, True),
    ("resnet18", "layer3", 64, False),
    ("vgg11_bn", "features.27", 64, False),  # max pooling and ReLUs follow
])
def test_linear_tail_detection(arch, layer, size, tail):
    torch.manual_seed(0)
    model = build_model(arch, 5, False, size)
    assert linear_after(model, layer, size) is tail


@pytest.mark.parametrize("layer, image_independent", [("layer4", True), ("layer3", False)])
def test_the_warning_is_right_about_the_gradients(layer, image_independent):
    """What the warning claims, checked on the gradients TCAV uses: at layer4 every image of a class
    gets the same pooled gradient (the classifier row / spatial size); at layer3 they differ."""
    torch.manual_seed(0)
    model = build_model("small_resnet", 3, False, 32).eval()
    images = torch.randn(6, 3, 32, 32)
    loader = [{"image": images, "label": torch.zeros(6, dtype=torch.long)}]
    grads = gradients_by_class(model, layer, loader, [0], flattening="avg_pool", device=torch.device("cpu"))[0]
    same = torch.allclose(torch.as_tensor(grads), torch.as_tensor(grads[:1]).expand_as(torch.as_tensor(grads)), atol=1e-7)
    assert same is image_independent
    if image_independent:
        expected = model.fc.weight[0].detach() / 1.0  # avg_pool CAVs: the spatial mean of the gradient
        assert torch.allclose(torch.as_tensor(grads[0]) / torch.as_tensor(grads[0]).norm(),
                              expected / expected.norm(), atol=1e-5)
    cfg = load_config(None, ["img_size=32", f"bb_layers_for_concepts=[{layer}]"])
    lines = []
    assert warn_linear_tail(cfg, 3, lines.append) == ([layer] if image_independent else [])
    assert (len(lines) == 1 and "earlier layer" in lines[0]) is image_independent


# ---------------------------------------------------------------- protocols (issue 19 item 2)

def test_a_protocol_change_recomputes_steps_4_and_5_and_is_recorded(tiny_data, tmp_path):
    """Steps 4-5 under the default (reference) protocol, then under strict in the same run folder: the CAVs and the
    TCAV rows are recomputed (logged), the protocol column says which protocol made the rows, step 5 refuses CAVs
    of another protocol, and a table from before the protocol column is read as the strict protocol's."""
    import json

    import numpy as np
    import pandas as pd

    from conftest import DEVICE, run_steps, tiny_overrides
    from lottery_xai import rundir as rd
    from lottery_xai.pipeline.cavs import cavs_step
    from lottery_xai.pipeline.prune import LotteryRun
    from lottery_xai.pipeline.tcav import tcav_step
    from lottery_xai.safe_io import save_csv, write_text

    overrides = tiny_overrides(tiny_data, tmp_path, "prune_iterations=0", "train.epochs=1", "cav.n_random=3",
                               "cav.n_jobs=1")
    cfg = load_config(None, overrides)
    strict = load_config(None, overrides + ["tcav.protocol=strict"])
    run = rd.RunDir(cfg)
    assert rd.RunDir(strict).root == run.root
    LotteryRun(rd.RunDir(cfg), DEVICE, log=lambda *_: None).run_rounds([0])
    run_steps(rd.RunDir(cfg), [0], last=5)
    table = pd.read_csv(run.tcav_scores())
    assert list(table.columns)[-1] == "protocol" and set(table["protocol"]) == {"reference"}
    cav_file = run.cav_file(0, "layer3")
    assert len(np.load(cav_file)["random_cavs"]) == 3 * 2  # the reference null: ordered pairs of 3 random sets
    recorded = run.fingerprints("cavs")["round_00/layer3#settings"]
    assert recorded.startswith(run.round_fingerprint(0) + "|") and json.loads(recorded.split("|", 1)[1])["negatives"] == "random"
    assert run.fingerprints("tcav")["round_00/layer3"] == run.round_fingerprint(0)  # step 7 and ACE compare this

    with pytest.raises(UserError, match="other CAV settings"):
        tcav_step(rd.RunDir(strict), DEVICE, [0], log=lambda *_: None)  # CAVs of the reference protocol, strict step 5
    logged, before = [], cav_file.stat().st_mtime_ns
    cavs_step(rd.RunDir(strict), [0], log=logged.append)
    tcav_step(rd.RunDir(strict), DEVICE, [0], log=logged.append)
    assert cav_file.stat().st_mtime_ns != before and len(np.load(cav_file)["random_cavs"]) == 3
    assert any("made with other settings (negatives 'random' -> 'rest'" in line for line in logged)
    assert any(line.startswith("round 0: tcav/round_00/layer3 was made with other settings") for line in logged)
    assert set(pd.read_csv(run.tcav_scores())["protocol"]) == {"strict"}
    logged = []
    cavs_step(rd.RunDir(strict), [0], log=logged.append)
    tcav_step(rd.RunDir(strict), DEVICE, [0], log=logged.append)
    assert not [line for line in logged if "recomputing" in line]  # same settings: nothing recomputed

    # a table (and fingerprints) from before the protocols, with a row of a round this call does not redo
    old = pd.read_csv(run.tcav_scores()).drop(columns="protocol")
    extra = old.iloc[:1].assign(round=7)
    save_csv(run.tcav_scores(), pd.concat([old, extra]))
    prints = run.fingerprints("tcav")
    del prints["round_00/layer3#settings"]
    write_text(run.fingerprints_file("tcav"), json.dumps(prints))
    logged = []
    tcav_step(rd.RunDir(strict), DEVICE, [0], log=logged.append)
    assert any("no recorded settings" in line for line in logged)
    table = pd.read_csv(run.tcav_scores())
    assert table.set_index("round")["protocol"].to_dict() == {0: "strict", 7: "strict"}
    # a key that departs from the protocol is named in the column
    welch = load_config(None, overrides + ["tcav.test=welch"])
    cavs_step(rd.RunDir(welch), [0], log=lambda *_: None)
    tcav_step(rd.RunDir(welch), DEVICE, [0], log=lambda *_: None)
    table = pd.read_csv(run.tcav_scores())
    assert set(table.loc[table["round"] == 0, "protocol"]) == {"reference (tcav.test=welch)"}
