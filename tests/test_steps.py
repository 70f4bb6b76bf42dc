"""The step registry (lottery_xai.steps): one declaration per step, and everything that lists steps reads it."""
import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lottery_xai import steps
from lottery_xai.config import load_config
from lottery_xai.errors import UserError
from lottery_xai.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
quiet = lambda *_: None  # noqa: E731


def test_every_script_is_one_declared_step_and_calls_it_by_its_key():
    declared = {s.script: s for s in steps.all_steps()}
    scripts = sorted(p.name for p in ROOT.glob("main_*.py"))
    assert sorted(declared) == scripts
    for name in scripts:
        text = (ROOT / name).read_text()
        calls = re.findall(r'run_step\("(\w+)", __doc__\)', text)
        assert calls == [declared[name].key], name
        code = [line for line in text.split('"""')[2].splitlines() if line.strip()]
        assert len(code) == 3, f"{name} is more than its one call: {code}"  # import, if __main__, the call


def test_the_numbered_pipeline_and_labels():
    numbered = [s for s in steps.all_steps() if s.number is not None]
    assert [(s.number, s.key) for s in numbered] == [
        (1, "pruning"), (2, "test"), (3, "activations"), (4, "cavs"), (5, "tcav"), (6, "heatmaps"), (7, "metrics"),
        (8, "plots"), (9, "report")]
    assert steps.label("heatmaps") == "step 6 (main_heatmap_save.py)"
    assert steps.label("sanity") == "main_sanity_checks.py"  # a study: its script
    with pytest.raises(UserError, match="unknown step 'heatmap'.*heatmaps"):
        steps.get("heatmap")


def test_run_all_runs_the_registry_pipeline_in_the_order_it_had():
    """bash_script/run_all.sh reads `python -m lottery_xai.steps pipeline`: the scripts in the order the script
    listed them by hand before the registry (steps 1 and 2 also for the reinit control)."""
    done = subprocess.run([sys.executable, "-m", "lottery_xai.steps", "pipeline"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "main_lth_pruning.py control", "main_lth_test.py control", "main_lth_save_activations.py",
        "main_lth_generate_cavs.py", "main_lth_tcav.py", "main_heatmap_save.py", "main_explanation_metrics.py",
        "main_plots.py", "main_report.py"]
    assert "lottery_xai.steps pipeline" in (ROOT / "bash_script" / "run_all.sh").read_text()


def test_run_all_runs_each_listed_script_and_the_control(tmp_path):
    """The loop of run_all.sh, with a stand-in interpreter that records what it is asked to run."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nif [ "$1" = "-m" ]; then exec {sys.executable} "$@"; fi\n'
                    f'echo "$@" >> {tmp_path / "calls.txt"}\n')
    fake.chmod(0o755)
    config = tmp_path / "c.yaml"
    config.write_text("dataset: folder\n")  # not the synthetic data: common.sh generates nothing
    done = subprocess.run(["bash", "bash_script/run_all.sh", str(config), "--set", "seed=3"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    calls = [line.split()[0] + (" reinit" if "pruning.rewind=reinit" in line else "")
             for line in (tmp_path / "calls.txt").read_text().splitlines()]
    assert calls == ["main_lth_pruning.py", "main_lth_pruning.py reinit", "main_lth_test.py", "main_lth_test.py reinit",
                     "main_lth_save_activations.py", "main_lth_generate_cavs.py", "main_lth_tcav.py",
                     "main_heatmap_save.py", "main_explanation_metrics.py", "main_plots.py", "main_report.py"]


def test_the_scripts_take_python_from_PYTHON_then_the_venv_then_the_path(tmp_path):
    """After `make run` a user can run `bash bash_script/run_seeds.sh ...` without naming the interpreter."""
    (tmp_path / "bash_script").mkdir()
    (tmp_path / "bash_script" / "common.sh").write_text((ROOT / "bash_script" / "common.sh").read_text())
    (tmp_path / "c.yaml").write_text("dataset: folder\n")

    def chosen(**env):
        done = subprocess.run(["bash", "-c", 'source bash_script/common.sh c.yaml; echo "$PY"'], cwd=tmp_path,
                              env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert chosen() == "python"
    venv = tmp_path / ".venv" / "bin" / "python"
    venv.parent.mkdir(parents=True)
    venv.write_text("#!/bin/sh\n")
    venv.chmod(0o755)
    assert chosen() == ".venv/bin/python"
    assert chosen(PYTHON="/opt/py/bin/python3") == "/opt/py/bin/python3"


def test_folders_locks_and_fingerprints_read_the_declarations(tmp_path):
    run = RunDir(load_config(None, [f"logs={tmp_path}"]))
    assert run.fingerprints_file("occlusion_study") == run.root / "occlusion" / "fingerprints.json"
    assert run.fingerprints_file("heatmaps") == run.root / "heatmaps" / "fingerprints.json"
    for declared in steps.all_steps():
        if declared.folder:
            leftover = run.root / declared.folder / "sub" / f".x.{declared.key}.tmp"
            leftover.parent.mkdir(parents=True, exist_ok=True)
            leftover.write_text("")
    (run.root / "plots").mkdir(exist_ok=True)
    for name in (".heatmaps_gradcam.png.1.tmp", ".roar.png.2.tmp", ".accuracy_vs_weights.png.3.tmp"):
        (run.root / "plots" / name).write_text("")
    def names(key):
        return sorted(p.name for p in run.temporaries(key))

    assert names("heatmaps") == [".heatmaps_gradcam.png.1.tmp", ".x.heatmaps.tmp"]
    assert names("roar") == [".roar.png.2.tmp", ".x.roar.tmp"]
    # step 8 owns the rest of plots/, not the figures steps 6 and ROAR draw there themselves
    assert names("plots") == [".accuracy_vs_weights.png.3.tmp", ".x.plots.tmp"]
    assert run.temporaries("aggregate") == []  # it writes beside the run, no folder of its own


def test_each_step_with_figures_has_its_drawing_and_the_report_its_parts():
    from lottery_xai.report.page import PARTS, parts

    with_figures = {s.key for s in steps.all_steps() if s.figures}
    assert with_figures == {d.key for d in steps.drawings()} == {"heatmaps", "roar", "ace", "occlusion_study",
                                                                "sanity", "aggregate"}
    assert [s.key for s in steps.all_steps() if s.key in PARTS] == ["test", "tcav", "heatmaps", "metrics",
                                                                     "aggregate", "sanity"]
    assert len(parts()) == len(PARTS)


def test_the_import_contract_of_compute_steps_agrees_with_the_registry():
    """pyproject's "compute steps never draw" covers the module of every step declared draws=False and of none
    declared draws=True."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["name"] == "compute steps never draw"]

    def covered(module: str) -> bool:
        return any(module == source or module.startswith(source + ".") for source in contract["source_modules"])

    for declared in steps.all_steps():
        assert covered(declared.module) == (not declared.draws), (declared.key, declared.module)


def _pattern(path: str) -> str:
    """A declared path as an fnmatch pattern: round_XX, {name} and {a,b} stand for any text."""
    return re.sub(r"\{[^}]*\}", "*", path.replace("round_XX", "round_*"))


def test_what_a_run_holds_is_what_its_steps_declare(sanity_run):
    """Every file of a run made by steps 1-8 (the sanity_run fixture) is one that a declaration names in its
    writes or figures (the launcher trusts them), and each of those steps wrote something it declares."""
    run = RunDir(load_config(None, sanity_run))
    declared = {s.key: [_pattern(p) for p in (*s.writes, *s.figures)] for s in steps.all_steps()}
    files = [str(p.relative_to(run.root)) for p in run.root.rglob("*")  # without the locks of steps and tables
             if p.is_file() and ".locks" not in p.parts and not (p.name.startswith(".") and p.name.endswith(".lock"))]
    stray = [f for f in files if not any(fnmatch.fnmatch(f, p) for ps in declared.values() for p in ps)]
    assert not stray
    for key in ("pruning", "test", "activations", "cavs", "tcav", "heatmaps", "metrics", "plots"):
        assert any(fnmatch.fnmatch(f, p) for f in files for p in declared[key]), key


def test_a_new_study_is_one_module_and_one_declaration(tmp_path, capsys):
    """A step declared with @step gets its command line (its own options, its default rounds), its lock, its
    folder and its label; nothing else lists it."""
    from lottery_xai.cli import run_step

    seen = {}

    def options(parser):
        parser.add_argument("--greeting", default="hello")

    @steps.step("toy_study", script="main_toy_study.py", title="a toy study", folder="toy", needs=("pruning",),
                rounds="config:sanity.rounds", per_round=True, arguments=options, writes=("toy/{greeting}.txt",))
    def toy_step(run, rounds, greeting="hello", force=False, log=print):
        seen.update(rounds=rounds, greeting=greeting, force=force, locked=run.lock_file("toy_study").is_file())
        run.root.joinpath("toy").mkdir(parents=True, exist_ok=True)
        run.root.joinpath("toy", f"{greeting}.txt").write_text(str(rounds))

    try:
        (tmp_path / "run").mkdir()
        logs = ["--set", f"logs={tmp_path}", "--set", "experiment_name=run", "--set", "prune_iterations=4"]
        run_step("toy_study", argv=[*logs, "--greeting", "hi", "--force"])
        assert capsys.readouterr().err == ""
        assert seen == {"rounds": [0, 4], "greeting": "hi", "force": True, "locked": True}  # sanity.rounds: [0, -1]
        assert (tmp_path / "run" / "toy" / "hi.txt").read_text() == "[0, 4]"
        assert steps.label("toy_study") == "main_toy_study.py"
        assert RunDir(load_config(None, [f"logs={tmp_path}", "experiment_name=run"])).fingerprints_file(
            "toy_study") == tmp_path / "run" / "toy" / "fingerprints.json"
    finally:
        steps._STEPS.pop("toy_study", None)
