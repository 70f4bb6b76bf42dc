"""The Lottery Ticket paper's networks on its schedules (config/LTH_*.yaml) and the data they read: the ten
MNIST digits (scikit-learn's digits here) and CIFAR-10's layout through the folder dataset. Expected values
are the paper's (Frankle & Carbin 2019, Figure 2) and hand counts."""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.data import build_datasets
from lottery_xai.data.mnist import prepare_mnist_eo
from lottery_xai.models import build_model
from lottery_xai.pipeline.loading import load_round_model
from lottery_xai.pipeline.prune import LotteryRun, keep_fractions
from lottery_xai.pipeline.test import evaluate_rounds
from lottery_xai.safe_io import load_torch

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
quiet = lambda *_: None  # noqa: E731


def test_the_configs_hold_the_papers_settings():
    lenet = load_config(ROOT / "config" / "LTH_lenet300_mnist.yaml")
    conv6 = load_config(ROOT / "config" / "LTH_conv6_cifar10.yaml")
    for cfg, lr, iterations_per_epoch, iterations in ((lenet, 1.2e-3, 55000 / 60, 50_000), (conv6, 3e-4, 45000 / 60, 30_000)):
        t = cfg.train
        assert (t.optimizer, t.lr, t.weight_decay, t.lr_schedule, cfg.data.batch_size) == ("adam", lr, 0.0, "none", 60)
        assert abs(t.epochs * np.ceil(iterations_per_epoch) - iterations) / iterations < 0.01
        assert not cfg.data.augment and cfg.pruning.rewind == "init" and cfg.pruning.scope == "layerwise"
        assert cfg.test.checkpoint == "early_stop" and t.eval_every == 100
    assert (lenet.model_arch, lenet.dataset, lenet.img_size) == ("lenet_300_100", "mnist", 28)
    assert (conv6.model_arch, conv6.dataset, conv6.img_size) == ("conv6", "folder", 32)
    # per-layer rates at round 2: fc 20 %, output 10 %, conv 15 % (Conv-6), per round of the original count
    names = {"features.0.weight", "fc1.weight", "fc.weight"}
    model = build_model("conv6", 10, False, 32)
    keep = keep_fractions(conv6, sorted(names), 2, model)
    assert keep == pytest.approx({"features.0.weight": 0.85 ** 2, "fc1.weight": 0.8 ** 2, "fc.weight": 0.9 ** 2})
    keep = keep_fractions(lenet, ["fc1.weight", "fc2.weight", "fc.weight"], 1, build_model("lenet_300_100", 10, False, 28))
    assert keep == pytest.approx({"fc1.weight": 0.8, "fc2.weight": 0.8, "fc.weight": 0.9})


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    prepare_mnist_eo(root, root / "prepared", source="sklearn", val_fraction=0.0833333)
    return root


def test_mnist_is_the_ten_digits(digits):
    from sklearn.datasets import load_digits

    datasets, info = build_datasets("mnist", digits, digits / "prepared", 28, splits=("train", "test"),
                                    augment_train=False)
    assert info.num_classes == 10 and info.class_names[3] == "three" and info.n_concepts == 0
    target = load_digits().target
    train = datasets["train"]
    labels = [int(train[i]["label"]) for i in range(0, len(train), 97)]
    assert labels == [int(target[train.ids[i]]) for i in range(0, len(train), 97)]
    assert train[0]["concepts"].shape == (0,) and train[0]["image"].shape == (3, 28, 28)
    even_odd, _ = build_datasets("mnist_eo", digits, digits / "prepared", 28, splits=("train",), augment_train=False)
    assert int(even_odd["train"][5]["label"]) == int(target[train.ids[5]]) % 2  # the same splits, its own labels


def test_lenet_on_its_schedule_prunes_the_output_layer_at_half_the_rate(digits, tmp_path):
    cfg = load_config(ROOT / "config" / "LTH_lenet300_mnist.yaml",
                      [f"data_root={digits}", f"json_root={digits}/prepared", f"logs={tmp_path}", "device=cpu",
                       "train.epochs=1", "prune_iterations=1", "train.eval_every=5"])
    run = rd.RunDir(cfg)
    LotteryRun(run, CPU, log=quiet).run_rounds([0, 1])
    evaluate_rounds(run, CPU, [0, 1], log=quiet)
    masks = load_torch(run.checkpoint(1))["masks"]
    assert {n: int(m.sum()) for n, m in masks.items()} == {"fc1.weight": round(784 * 300 * 0.8),
                                                           "fc2.weight": round(300 * 100 * 0.8),
                                                           "fc.weight": round(100 * 10 * 0.9)}
    table = pd.read_csv(run.early_stopping())
    for r in (0, 1):
        stop = load_torch(run.checkpoint(r, "early_stop"))
        assert stop["which"] == "early_stop" and stop["early_stop_iteration"] == table["early_stop_iteration"][r]
        points = pd.read_csv(run.round_validation(r))
        assert table["early_stop_iteration"][r] == points["iteration"][points["val_loss"].idxmin()]
        model, _ = load_round_model(run, r, None, CPU)  # test.checkpoint: early_stop
        assert all(torch.equal(v, stop["state_dict"][k]) for k, v in model.state_dict().items())
    assert list(pd.read_csv(run.test_metrics())["round"]) == [0, 1]


def _cifar_layout(root: Path, per_class: int = 2) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def test_conv6_with_channels_prunes_conv_and_fc_groups_at_their_rates(tmp_path):
    pytest.importorskip("torch_pruning")
    from lottery_xai.data.folder import prepare_folder

    data = tmp_path / "cifar10"
    _cifar_layout(data)
    prepare_folder(data, data / "prepared")
    cfg = load_config(ROOT / "config" / "LTH_conv6_cifar10.yaml",
                      [f"data_root={data}", f"json_root={data}/prepared", f"logs={tmp_path / 'logs'}", "device=cpu",
                       "train.epochs=1", "prune_iterations=1", "data.num_workers=0", "pruning.structure=channels"])
    run = rd.RunDir(cfg)
    LotteryRun(run, CPU, log=quiet).run_rounds([0, 1])
    model, _ = load_round_model(run, 1, None, CPU)
    convs = [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert convs == [round(c * 0.85) for c in (64, 64, 128, 128, 256, 256)]  # conv groups: 15 %
    assert (model.fc1.out_features, model.fc2.out_features) == (round(256 * 0.8),) * 2  # fc groups: 20 %
    assert model.fc1.in_features == round(256 * 0.85) * 4 * 4 and model.fc.out_features == 10
