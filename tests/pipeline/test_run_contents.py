"""A run folder knows what it holds (issue 20, item 8): the settings its checkpoints were made with, recorded once
and compared by every step, and tables read back with their declared column types."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from lottery_xai.config import (NOT_RUN_SETTINGS, RUN_KEYS, RUN_SECTIONS, Config, all_keys, dump_yaml,
                                load_config, run_settings)
from lottery_xai.errors import UserError
from lottery_xai.pipeline.metrics import COLUMN_TYPES
from lottery_xai.pipeline.tcav import TCAV_TABLE_COLUMNS, TCAV_TYPES
from lottery_xai.report.tables import explanation_table, tcav_table
from lottery_xai.rundir import RunDir
from lottery_xai.safe_io import read_csv, save_csv

from conftest import ROOT


def _run(tmp_path, *overrides) -> RunDir:
    return RunDir(load_config(None, [f"logs={tmp_path}", "experiment_name=mine", *overrides]))


def test_step_1_records_the_run_settings_with_their_hash(tmp_path):
    run = _run(tmp_path, "prune_percent=20")
    run.check_settings(record=True)
    record = json.loads(run.settings_file().read_text())
    assert record["settings"]["prune_percent"] == 20 and record["settings"]["train.epochs"] == run.cfg.train.epochs
    assert len(record["hash"]) == 16
    # what does not change the checkpoints is not part of it: the same run
    assert "device" not in record["settings"] and "cav.n_random" not in record["settings"]
    _run(tmp_path, "prune_percent=20", "device=cpu", "cav.n_random=3", "prune_iterations=1").check_settings()
    # a setting that another leaves without effect is not either (compression_rates under the iterative schedule)
    _run(tmp_path, "prune_percent=20", "pruning.compression_rates=[2,3]").check_settings()


def test_every_top_level_key_is_classified():
    """A top-level key or section is a run setting (it changes the checkpoints) or named as not one: a new key or
    section is decided."""
    top = {f.name for f in dataclasses.fields(Config)}  # the keys outside the sections, and the sections
    assert top == set(RUN_KEYS) | set(RUN_SECTIONS) | {k for k in NOT_RUN_SETTINGS if "." not in k}
    assert not (set(RUN_KEYS) | set(RUN_SECTIONS)) & set(NOT_RUN_SETTINGS)
    assert all(any(k.startswith(f"{section}.") for k in all_keys()) for section in RUN_SECTIONS)


def test_the_keys_that_change_step_1s_outputs_are_run_settings(tmp_path):
    """Channel pruning and its ranking, the conv rate and the validation points of the early-stopping record are
    run settings; the checkpoint later steps load, the launcher and its resources are not."""
    plain = run_settings(load_config(None, []))
    assert {"pruning.structure", "pruning.prune_conv_rate", "train.eval_every"} <= set(plain)
    assert not {"test.checkpoint", "launcher", "slurm.time", "slurm.gpus_per_task"} & set(plain)
    assert "pruning.channel_norm" not in plain  # without effect on unstructured pruning
    channels = run_settings(load_config(None, ["pruning.structure=channels", "pruning.channel_norm=l2"]))
    assert channels["pruning.channel_norm"] == "l2" and "pruning.channel_score" in channels
    assert "pruning.prune_conv_rate" not in run_settings(load_config(None, ["pruning.schedule=compression_rates"]))
    _run(tmp_path).check_settings(record=True)
    _run(tmp_path, "test.checkpoint=last", "launcher=slurm", "slurm.time=60").check_settings()  # the same run
    with pytest.raises(UserError, match="pruning.structure 'unstructured' there, 'channels' now"):
        _run(tmp_path, "pruning.structure=channels").check_settings()
    with pytest.raises(UserError, match="train.eval_every 0 there, 100 now"):
        _run(tmp_path, "train.eval_every=100").check_settings()


def test_another_prune_percent_under_the_same_name_is_refused_in_one_line(tmp_path):
    _run(tmp_path, "prune_percent=20").check_settings(record=True)
    other = _run(tmp_path, "prune_percent=50", "train.lr=0.01")
    with pytest.raises(UserError, match=r"holds a run made with other settings \(prune_percent 20\.0 there, 50\.0 now; "
                                        r"train\.lr 0\.1 there, 0\.01 now\); give this one its own experiment_name"):
        other.check_settings()
    with pytest.raises(UserError, match="prune_percent"):
        other.save_config("test")  # every step checks before it writes
    assert not other.config_file("test").exists()


def test_the_figures_and_the_report_of_another_runs_folder_are_refused(tmp_path):
    from lottery_xai.report import build_report, make_all_plots

    run = _run(tmp_path, "prune_percent=20")
    run.check_settings(record=True)
    run.pruning_summary().parent.mkdir(parents=True)
    run.pruning_summary().write_text("round,weights_remaining\n")
    other = _run(tmp_path, "prune_percent=50")
    for draw in (make_all_plots, build_report):
        with pytest.raises(UserError, match="prune_percent 20.0 there, 50.0 now"):
            draw(other, log=lambda *_: None)
    assert not (run.root / "plots").exists() and not run.report_file().exists()


def test_step_1_on_the_command_line_exits_2(tmp_path):
    _run(tmp_path, "prune_percent=20").check_settings(record=True)
    done = subprocess.run([sys.executable, str(ROOT / "main_lth_pruning.py"), "--set", f"logs={tmp_path}",
                           "--set", "experiment_name=mine", "--set", "prune_percent=50", "--set", "device=cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "prune_percent 20.0 there, 50.0 now" in lines[0], done.stderr
    assert not (tmp_path / "mine" / "pruning").exists()  # nothing written over the old run


def test_a_run_made_before_the_record_is_compared_with_its_step_1_config(tmp_path):
    old = _run(tmp_path, "prune_percent=20")
    old.root.mkdir(parents=True)
    old.config_file("pruning").write_text(dump_yaml(old.cfg))  # what step 1 kept before the record existed
    with pytest.raises(UserError, match="prune_percent 20.0 there, 50.0 now"):
        _run(tmp_path, "prune_percent=50").check_settings()
    old.check_settings(record=True)  # the same settings: recorded from now on
    assert old.settings_file().is_file()


def test_a_key_the_record_lacks_counts_as_its_default(tmp_path):
    """A record written before a key existed holds the run made at that key's default."""
    run = _run(tmp_path)
    run.root.mkdir(parents=True)
    settings = run_settings(run.cfg)
    settings.pop("train.label_smoothing")
    run.settings_file().write_text(json.dumps({"hash": "x", "settings": settings}))
    run.check_settings()
    with pytest.raises(UserError, match="train.label_smoothing 0.0 there, 0.1 now"):
        _run(tmp_path, "train.label_smoothing=0.1").check_settings()


# ---------------------------------------------------------------- tables read back with their column types

def _tcav_rows(**changes) -> pd.DataFrame:
    rows = pd.DataFrame({"round": [0, 0], "weights_remaining": [1.0, 1.0], "layer": "layer3", "class": ["a", "NA"],
                         "concept": ["bill", "None"], "tcav_mean": [0.7, 0.4], "tcav_std": [0.1, np.nan],
                         "random_mean": [0.5, 0.5], "p_value": [0.01, np.nan], "significant": [True, False],
                         "n_images": [4, 4], "protocol": "reference"})
    return rows.assign(**changes)[TCAV_TABLE_COLUMNS]


def test_missing_values_and_names_like_nan_read_back_as_written(tmp_path):
    """What the steps write for a missing value is an empty field: it reads back as NaN, and a class named NA
    or a concept named None stays a name."""
    run = _run(tmp_path)
    save_csv(run.tcav_scores(), _tcav_rows())
    table = tcav_table(run)
    assert table["class"].tolist() == ["a", "NA"] and np.isnan(table["tcav_std"].iloc[1])
    assert table["significant"].dtype == bool and table["round"].dtype.kind == "i"
    back = read_csv(run.tcav_scores(), types=TCAV_TYPES)
    assert back["concept"].tolist() == ["bill", "None"] and np.isnan(back["p_value"].iloc[1])


@pytest.mark.parametrize("column,text,expected", [
    ("p_value", "nan", "not a number"), ("tcav_mean", "high", "not a number"), ("significant", "yes", "not True or False"),
    ("round", "", "not an integer"), ("n_images", "4.5", "not an integer")])
def test_a_value_of_the_wrong_type_in_tcav_scores_is_one_line_naming_file_and_column(tmp_path, column, text, expected):
    run = _run(tmp_path)
    save_csv(run.tcav_scores(), _tcav_rows(**{column: [text, text]}))
    with pytest.raises(UserError) as error:
        tcav_table(run)
    message = str(error.value)
    assert "\n" not in message and str(run.tcav_scores()) in message and f"column '{column}'" in message
    assert expected in message and "line 2" in message
    with pytest.raises(UserError, match=f"column '{column}'"):
        read_csv(run.tcav_scores(), TCAV_TABLE_COLUMNS, types=TCAV_TYPES)


def test_the_text_nan_in_explanations_csv_is_one_line_for_step_8_and_the_report(tmp_path):
    run = _run(tmp_path)
    rows = pd.DataFrame({"round": [0, 1], "weights_remaining": [1.0, 0.5], "method": "gradcam",
                         "metric": "deletion_auc", "value": [0.3, np.nan], "n_images": [4, 4], "ci_low": [0.2, np.nan],
                         "ci_high": [0.4, np.nan]})
    save_csv(run.explanation_metrics(), rows)
    assert np.isnan(explanation_table(run)["value"].iloc[1])  # missing: an empty field, NaN
    run.explanation_metrics().write_text(run.explanation_metrics().read_text().replace("0.5,gradcam,deletion_auc,,",
                                                                                       "0.5,gradcam,deletion_auc,nan,"))
    with pytest.raises(UserError, match=r"explanations.csv' cannot be read: column 'value' holds 'nan' on line 3"):
        explanation_table(run)
    with pytest.raises(UserError, match="column 'value'"):
        read_csv(run.explanation_metrics(), types=COLUMN_TYPES)
