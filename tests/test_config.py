"""Config schema: defaults, overrides, validation, one-line errors with exit status 2."""
import subprocess
import sys
from pathlib import Path

import pytest

from lottery_xai.config import Config, all_keys, describe, load_config, replace
from lottery_xai.errors import UserError
from lottery_xai.rundir import RunDir, experiment_name

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_every_shipped_config_loads():
    for path in sorted((ROOT / "config").glob("*.yaml")):
        cfg = load_config(path)
        assert isinstance(cfg, Config)


def test_original_study_keys_are_top_level():
    keys = set(all_keys())
    for k in ["logs", "data_root", "json_root", "seed", "img_size", "model_arch", "pretrained", "prune_iterations",
              "prune_percent", "labels_for_tcav", "concepts_for_tcav", "bb_layers_for_concepts", "cav_flattening_type"]:
        assert k in keys
    assert all(help_text for _, _, help_text in describe())


def test_overrides_are_typed(tmp_path):
    cfg = load_config(write(tmp_path, "seed: 3\n"), ["train.lr=0.2", "pruning.rewind=epoch:2", "labels_for_tcav=[a, b]",
                                                      "logs=/x/y", "prune_percent=10"])
    assert cfg.seed == 3 and cfg.train.lr == 0.2 and cfg.pruning.rewind == "epoch:2"
    assert cfg.labels_for_tcav == ["a", "b"] and cfg.logs == "/x/y" and cfg.prune_percent == 10.0
    assert load_config(write(tmp_path, "labels_for_tcav: all\n")).labels_for_tcav == ["all"]


@pytest.mark.parametrize("text,overrides,message", [
    ("seeed: 1\n", [], "did you mean 'seed'"),
    ("train:\n  lr_schedul: cosine\n", [], "did you mean 'train.lr_schedule'"),
    ("", ["pruning.scop=global"], "did you mean 'pruning.scope'"),
    ("seed: abc\n", [], "'seed' must be an integer"),
    ("pruning:\n  scope: globl\n", [], "did you mean 'global'"),
    ("pruning:\n  rewind: epoch\n", [], "'pruning.rewind'"),
    ("prune_percent: 120\n", [], "must be <= 100"),
    ("seed: [1\n", [], "not valid YAML"),
    ("pretrained: 1\n", [], "true or false"),
])
def test_bad_configs_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(write(tmp_path, text), overrides)


def test_experiment_name_separates_reinit_control():
    cfg = load_config(None)
    control = replace(cfg, **{"pruning.rewind": "reinit"})
    assert experiment_name(cfg) != experiment_name(control)
    assert RunDir(cfg).root.parent == RunDir(control).root.parent
    assert RunDir(control).sibling(**{"pruning.rewind": "init"}).root == RunDir(cfg).root
    assert experiment_name(replace(cfg, experiment_name="mine")) == "mine"


@pytest.mark.parametrize("args,needle", [
    (["--config", "nope.yaml"], "not found"),
    (["--set", "trian.epochs=1"], "did you mean 'train.epochs'"),
    (["--set", "train.epochs=zero"], "must be an integer"),
    (["--set"], "expected one argument"),  # argparse's own mistakes are one line too, not usage + error
    (["--set", "train.epochs"], "--set expects key=value, got 'train.epochs'"),  # a key with no value: once 3 lines
    (["--rounds", ","], "names no round"),  # once: exit 0, 'wrote' a table it never wrote
    (["--bogus"], "unrecognized arguments"),
])
def test_cli_errors_exit_2_with_one_line(args, needle):
    proc = subprocess.run([sys.executable, str(ROOT / "main_lth_pruning.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_a_home_folder_path_is_expanded_once():
    """``logs: ~/x`` is the home folder's x, not a folder named '~' in the working directory."""
    import os

    cfg = load_config(None, ["logs=~/runs", "data_root=~/data"])
    assert cfg.logs == os.path.join(os.path.expanduser("~"), "runs") and not cfg.logs.startswith("~")
    assert cfg.data_root == os.path.join(os.path.expanduser("~"), "data")
    assert str(RunDir(cfg).root).startswith(os.path.expanduser("~"))


def test_step_before_its_input_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "main_lth_test.py"), "--set", f"logs={tmp_path}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "run step 1" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_the_documented_key_table_is_the_schema():
    """doc/configuration.md holds `python -m lottery_xai.doc_reference keys` exactly: a new, changed or removed key
    must reach it (regenerate the table there)."""
    from pathlib import Path

    from lottery_xai.doc_reference import key_table

    page = (Path(__file__).resolve().parent.parent / "doc" / "configuration.md").read_text()
    assert key_table() in page, ("doc/configuration.md's key table is out of date: regenerate it with "
                                 "python -m lottery_xai.doc_reference keys")
