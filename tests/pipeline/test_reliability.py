"""Bad inputs end with one line naming the file (or key) and what to do, exit status 2, no traceback.

A tiny run (steps 1-6) is made once; each case copies it, breaks one file (truncated, random bytes,
a valid file of the wrong shape, another architecture's checkpoint, deleted) and runs the real
step script in this process (``runpy`` with ``sys.argv`` set, as ``python main_X.py`` would).
"""
import errno
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tqdm.std

from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.models import build_model
from lottery_xai.safe_io import load_npz

from conftest import run_steps, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
EXTRA = ["prune_iterations=1", "train.epochs=1", "cav.n_random=2", "cav.n_jobs=1", "heatmaps.images_per_class=1",
         "heatmaps.methods=[gradcam,random]", "heatmaps.grid_images=2", "metrics.transform_methods=[gradcam]",
         "metrics.n_steps=4", "metrics.fractions=[0.1]", "metrics.n_transforms=1"]
quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def base_run(tiny_data, tmp_path_factory):
    """Steps 1-6 of a two-round run; returns (logs folder, run folder name)."""
    logs = tmp_path_factory.mktemp("reliability") / "logs"
    cfg = load_config(None, tiny_overrides(tiny_data, logs, *EXTRA))
    rounds = [0, 1]
    LotteryRun(rd.RunDir(cfg), CPU, log=quiet).run_rounds(rounds)
    run_steps(rd.RunDir(cfg), rounds, last=6)
    return logs, rd.RunDir(cfg).name


class Case:
    """A private copy of the run (and, with ``data``, of the dataset) and the overrides that point at it."""

    def __init__(self, base_run, tiny_data, tmp_path, data: bool = False):
        logs, name = base_run
        self.logs = tmp_path / "logs"
        shutil.copytree(logs, self.logs)
        self.data = tmp_path / "data" if data else tiny_data
        if data:
            shutil.copytree(tiny_data, self.data)
        self.root = self.logs / name
        self.overrides = tiny_overrides(self.data, self.logs, *EXTRA)

    def args(self, *extra_sets: str) -> list[str]:
        return set_args([*self.overrides, *extra_sets])


def set_args(settings) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


@pytest.fixture
def quiet_bars(monkeypatch):
    """No progress bars on stderr, so that it holds exactly what the step reports."""
    original = tqdm.std.tqdm.__init__

    def init(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    monkeypatch.setattr(tqdm.std.tqdm, "__init__", init)


@pytest.fixture
def run_step(monkeypatch, capsys, quiet_bars):
    """Run ``main_X.py args...`` in this process; returns (exit status, stdout, stderr)."""
    def run(script: str, *args: str):
        monkeypatch.setattr(sys, "argv", [script, *args])
        capsys.readouterr()
        code = 0
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


def assert_error(result, *words: str) -> str:
    code, _, err = result
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").split("\n")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ---------------------------------------------------------------- corruptions

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(max(64, path.stat().st_size // 4)) + b"\xff\xfe\x00")


def other_architecture(path: Path) -> None:
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = torch.nn.Sequential(torch.nn.Linear(3, 2)).state_dict()
    torch.save(ckpt, path)


def other_dataset(path: Path) -> None:
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = build_model("small_resnet", 7, False, 32).state_dict()  # 7 classes, not 4
    torch.save(ckpt, path)


def cav_of_width(width: int):
    def write(path: Path) -> None:
        cavs = load_npz(path)
        c, k = cavs["accuracy"].shape
        np.savez(path, concepts=cavs["concepts"], cavs=np.ones((c, k, width)), random_cavs=np.ones((k, width)),
                 accuracy=cavs["accuracy"], random_accuracy=cavs["random_accuracy"])
    return write


def without_random_cavs(path: Path) -> None:
    cavs = load_npz(path)
    np.savez(path, **{k: v for k, v in cavs.items() if k != "random_cavs"})


def fewer_rows(path: Path) -> None:
    array = np.load(path)
    np.save(path, array[:-1])


def fewer_maps(path: Path) -> None:
    stored = load_npz(path)
    np.savez(path, **{**stored, "maps": stored["maps"][:3]})


def other_images(path: Path) -> None:
    stored = load_npz(path)
    np.savez(path, **{**stored, "ids": stored["ids"] + 1000})


def garbage_line(path: Path) -> None:
    lines = path.read_text().splitlines()
    lines[4] = "this is not an image line"
    path.write_text("\n".join(lines) + "\n")


STEP2, STEP4, STEP7 = "main_lth_test.py", "main_lth_generate_cavs.py", "main_explanation_metrics.py"
RUN_FILES = [  # (id, file in the run folder, corruption, script, extra arguments, words of the message)
    ("checkpoint-truncated", "pruning/round_01/best.pt", truncate, STEP2, [], ["best.pt", "--force"]),
    ("checkpoint-random-bytes", "pruning/round_01/best.pt", garbage, STEP2, [], ["best.pt"]),
    ("checkpoint-other-architecture", "pruning/round_01/best.pt", other_architecture, STEP2, [],
     ["best.pt", "another architecture"]),
    ("checkpoint-other-dataset", "pruning/round_00/best.pt", other_dataset, STEP2, [], ["best.pt", "fc.weight"]),
    ("last-checkpoint-truncated", "pruning/round_00/checkpoint.pt", truncate, "main_lth_pruning.py", [],
     ["checkpoint.pt"]),
    ("cav-truncated", "cavs/round_00/layer3.npz", truncate, STEP4, [], ["layer3.npz"]),
    ("cav-random-bytes", "cavs/round_01/layer3.npz", garbage, STEP4, [], ["layer3.npz"]),
    ("cav-wrong-dimension", "cavs/round_00/layer3.npz", cav_of_width(5), STEP4, [], ["layer3.npz", "5 values"]),
    ("cav-missing-array", "cavs/round_00/layer3.npz", without_random_cavs, STEP4, [], ["layer3.npz", "random_cavs"]),
    ("cav-wrong-dimension-at-tcav", "cavs/round_00/layer3.npz", cav_of_width(5), "main_lth_tcav.py", ["--force"],
     ["layer3.npz", "5 values"]),
    ("activations-truncated", "activations/round_00/train_layer3.npy", truncate, STEP4, ["--force"],
     ["train_layer3.npy"]),
    ("activations-wrong-rows", "activations/round_00/train_layer3.npy", fewer_rows, STEP4, ["--force"],
     ["train_layer3.npy", "rows"]),
    ("activation-ids-random-bytes", "activations/round_00/train_ids.npy", garbage, STEP4, ["--force"], ["train_ids.npy"]),
    ("heatmap-truncated", "heatmaps/round_00/gradcam.npz", truncate, STEP7, [], ["gradcam.npz"]),
    ("heatmap-wrong-count", "heatmaps/round_00/random.npz", fewer_maps, STEP7, [], ["random.npz", "images.npz"]),
    ("heatmap-images-random-bytes", "heatmaps/images.npz", garbage, STEP7, [], ["images.npz", "after deleting"]),
    ("heatmap-images-of-another-dataset", "heatmaps/images.npz", other_images, STEP7, [],
     ["images.npz", "another dataset"]),
    ("tcav-table-random-bytes", "tcav/tcav_scores.csv", garbage, STEP7, [], ["tcav_scores.csv"]),
    ("test-table-random-bytes", "test/metrics.csv", garbage, "main_plots.py", [], ["metrics.csv"]),
    ("cav-table-random-bytes", "cavs/cav_accuracy.csv", garbage, "main_plots.py", [], ["cav_accuracy.csv"]),
]


@pytest.mark.parametrize("name, file, corrupt, script, extra, words", RUN_FILES, ids=[c[0] for c in RUN_FILES])
def test_broken_run_file_is_one_line(base_run, tiny_data, tmp_path, run_step, name, file, corrupt, script, extra, words):
    case = Case(base_run, tiny_data, tmp_path)
    corrupt(case.root / file)
    assert_error(run_step(script, *case.args(), *extra), *words)


def test_checkpoint_of_another_model_arch(base_run, tiny_data, tmp_path, run_step):
    """The same run folder read with another model_arch: refused in one line naming the setting that differs
    (the run's recorded settings, issue 20 item 8), before any checkpoint is read."""
    case = Case(base_run, tiny_data, tmp_path)
    case.root.rename(case.logs / "named")
    assert_error(run_step(STEP2, *case.args("experiment_name=named", "model_arch=resnet18"), "--force"),
                 "model_arch", "named")


def first_test_image(data: Path) -> Path:
    test_id = json.loads((data / "prepared" / "splits.json").read_text())["test"][0]
    for line in (data / "images.txt").read_text().splitlines():
        number, _, relative = line.partition(" ")
        if int(number) == test_id:
            return data / "images" / relative
    raise AssertionError("no such image")


DATA_FILES = [  # (id, file of the dataset, corruption, words of the message)
    ("splits-truncated", "prepared/splits.json", truncate, ["splits.json"]),
    ("concepts-random-bytes", "prepared/concepts.json", garbage, ["concepts.json"]),
    ("splits-wrong-content", "prepared/splits.json", lambda p: p.write_text('{"train": [1, 2]}'), ["splits.json", "val"]),
    ("images-txt-garbage-line", "images.txt", garbage_line, ["images.txt", "line 5"]),
    ("images-txt-truncated", "images.txt", truncate, ["images.txt"]),
    ("labels-random-bytes", "image_class_labels.txt", garbage, ["image_class_labels.txt"]),
    ("parts-deleted", "parts/part_locs.txt", lambda p: p.unlink(), ["part_locs.txt"]),
    ("image-undecodable", None, truncate, ["cannot read image", ".png"]),
]


@pytest.mark.parametrize("name, file, corrupt, words", DATA_FILES, ids=[c[0] for c in DATA_FILES])
def test_broken_dataset_file_is_one_line(base_run, tiny_data, tmp_path, run_step, name, file, corrupt, words):
    case = Case(base_run, tiny_data, tmp_path, data=True)
    corrupt(case.data / file if file else first_test_image(case.data))
    assert_error(run_step(STEP2, *case.args(), "--force"), *words)


# ---------------------------------------------------------------- config files and values

@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", ["bad.yaml", "not a YAML text file"]),
    (b"seed: 1\ntrain:\n  epochs: 2\n  epochs: 3\n", ["bad.yaml", "'epochs' is given twice", "line 4"]),
    (b"seed: 1\nseed: 2\n", ["bad.yaml", "'seed' is given twice"]),
    (b"seed: [1\n", ["bad.yaml", "not valid YAML"]),
], ids=["binary", "duplicate-nested-key", "duplicate-key", "unclosed-list"])
def test_bad_config_file_is_one_line(tmp_path, run_step, content, words):
    (tmp_path / "bad.yaml").write_bytes(content)
    assert_error(run_step("main_plots.py", "--config", str(tmp_path / "bad.yaml")), *words)


def test_config_folder_is_one_line(tmp_path, run_step):
    assert_error(run_step("main_plots.py", "--config", str(tmp_path)), "is a folder")


BAD_VALUES = [
    ("prune_percent=100", "prune_percent"),
    ("cav.n_jobs=0", "cav.n_jobs"),
    ("heatmaps.methods=[]", "heatmaps.methods"),
    ("labels_for_tcav=[]", "labels_for_tcav"),
    ("concepts_for_tcav=[]", "concepts_for_tcav"),
    ("roar.methods=[]", "roar.methods"),
    ("roar.rounds=[]", "roar.rounds"),
    ("metrics.transform_methods=[gradcan]", "did you mean 'gradcam'"),
    ("heatmaps.methods=[gradcam,gradcan]", "heatmaps.methods"),
    ("heatmaps.methods=[gradcam,gradcam]", "more than once"),
    ("experiment_name=../x", "experiment_name"),
    ("experiment_name=/abs", "experiment_name"),
    ("experiment_name=a/b", "experiment_name"),
    ("experiment_name=..", "experiment_name"),
    ("roar.percents=[-10]", "roar.percents"),
    ("roar.percents=[100]", "roar.percents"),
    ("metrics.fractions=[0]", "metrics.fractions"),
    ("metrics.fractions=[1.5]", "metrics.fractions"),
    ("metrics.fractions=[]", "metrics.fractions"),
    ("tcav.alpha=0", "tcav.alpha"),
    ("cav.C=0", "cav.C"),
    ("train.lr=0", "train.lr"),
    ("metrics.top_fraction=0", "metrics.top_fraction"),
    ("cav.splits=[]", "cav.splits"),
    ("tcav.splits=[tset]", "did you mean 'test'"),
    ("activations.splits=[val]", "cav.splits"),  # the CAVs' train split would have no activations
    ("cav.splits=[train,val]", "share val"),  # TCAV would score CAV training images
]


@pytest.mark.parametrize("setting, word", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_nonsense_value_is_one_line(run_step, setting, word):
    assert_error(run_step("main_plots.py", "--set", setting), word)


def test_empty_transform_methods_means_none():
    assert load_config(None, ["metrics.transform_methods=[]"]).metrics.transform_methods == []


# ---------------------------------------------------------------- writes that fail

def test_logs_under_a_regular_file(tiny_data, tmp_path, run_step):
    (tmp_path / "file").write_text("not a folder")
    logs = tmp_path / "file" / "logs"
    assert_error(run_step("main_lth_pruning.py", *set_args(tiny_overrides(tiny_data, logs, *EXTRA))),
                 f"'{tmp_path / 'file'}' is a regular file")


def test_logs_is_a_regular_file(tiny_data, tmp_path, run_step):
    (tmp_path / "file").write_text("not a folder")
    assert_error(run_step("main_lth_pruning.py", *set_args(tiny_overrides(tiny_data, tmp_path / "file", *EXTRA))),
                 f"'{tmp_path / 'file'}' is a regular file")


def test_full_disk_is_one_line_and_leaves_no_temporary(base_run, tiny_data, tmp_path, run_step, monkeypatch):
    case = Case(base_run, tiny_data, tmp_path)
    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        if str(dst).startswith(str(case.root)):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    assert_error(run_step(STEP2, *case.args(), "--force"), "no space left", "config.test.yaml", "logs=")
    assert not list(case.root.rglob("*.tmp"))


def test_full_disk_before_a_memory_map(base_run, tiny_data, tmp_path, run_step, monkeypatch):
    """Activations are streamed to memory maps, which would die with SIGBUS on a full disk: the room is checked first."""
    import collections

    from lottery_xai import activations

    case = Case(base_run, tiny_data, tmp_path)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(activations.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))
    assert_error(run_step("main_lth_save_activations.py", *case.args(), "--force"), "no space left", ".npy")
    assert not list(case.root.rglob("*.tmp"))


# ---------------------------------------------------------------- steps run before the steps they need

def test_step7_before_step6(base_run, tiny_data, tmp_path, run_step):
    case = Case(base_run, tiny_data, tmp_path)
    shutil.rmtree(case.root / "heatmaps")
    assert_error(run_step(STEP7, *case.args()), "images.npz", "step 6")
    assert not (case.root / "metrics" / "explanations.csv").exists()
    assert not (case.root / "heatmaps").exists()


def test_step7_with_a_method_missing_at_a_round(base_run, tiny_data, tmp_path, run_step):
    case = Case(base_run, tiny_data, tmp_path)
    (case.root / "heatmaps" / "round_01" / "random.npz").unlink()
    assert_error(run_step(STEP7, *case.args()), "round_01/random.npz", "step 6")
    assert not (case.root / "metrics" / "explanations.csv").exists()


def test_step7_and_step8_before_step1(tiny_data, tmp_path, run_step):
    args = set_args(tiny_overrides(tiny_data, tmp_path / "logs", *EXTRA))
    assert_error(run_step(STEP7, *args), "summary.csv", "step 1")
    assert_error(run_step("main_plots.py", *args), "run directory", "step 1")


def test_step8_with_nothing_to_draw(base_run, tiny_data, tmp_path, run_step):
    case = Case(base_run, tiny_data, tmp_path)
    for folder in ("test", "cavs", "tcav", "heatmaps", "plots"):
        shutil.rmtree(case.root / folder, ignore_errors=True)
    assert_error(run_step("main_plots.py", *case.args()), "nothing to draw", "metrics.csv", "step 2")
    assert not list((case.root / "plots").glob("*.png"))


def test_step8_draws_what_exists_and_names_what_is_missing(base_run, tiny_data, tmp_path, run_step):
    case = Case(base_run, tiny_data, tmp_path)
    for folder in ("cavs", "tcav", "heatmaps", "plots"):
        shutil.rmtree(case.root / folder, ignore_errors=True)  # (steps never draw: plots/ may not exist)
    code, out, err = run_step("main_plots.py", *case.args())
    assert code == 0, err
    assert (case.root / "plots" / "accuracy_vs_weights.png").is_file()
    assert "cav_accuracy.csv' is missing" in out and "tcav_scores.csv' is missing" in out
    assert "explanations.csv' is missing" in out


# ---------------------------------------------------------------- the real command line

def test_subprocess_reports_one_line(base_run, tiny_data, tmp_path):
    """As a user runs it: a fresh interpreter, a corrupt checkpoint, progress bars off only by the environment."""
    case = Case(base_run, tiny_data, tmp_path)
    garbage(case.root / "pruning" / "round_00" / "best.pt")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "main_lth_test.py", *case.args()], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert_error((done.returncode, done.stdout, done.stderr), "round_00/best.pt")


def test_worker_error_keeps_its_last_line():
    from lottery_xai.cli import one_line

    text = ("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in <module>\nlottery_xai.errors.UserError: cannot read image a.png (truncated)')
    assert one_line(text) == "cannot read image a.png (truncated)"


def test_truncated_mnist_files(tmp_path):
    import gzip
    import struct

    from lottery_xai.data.mnist import read_idx
    from lottery_xai.errors import UserError

    header = bytes([0, 0, 8, 3]) + struct.pack(">3i", 10, 28, 28)
    (tmp_path / "images").write_bytes(header + bytes(100))  # 10 images announced, 100 bytes there
    with pytest.raises(UserError, match="images is truncated"):
        read_idx(tmp_path / "images")
    (tmp_path / "images.gz").write_bytes(gzip.compress(header + bytes(7840))[:30])
    with pytest.raises(UserError, match="images.gz cannot be read"):
        read_idx(tmp_path / "images.gz")
