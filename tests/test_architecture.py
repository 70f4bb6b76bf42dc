"""The package's layers, as import contracts (pyproject.toml, [tool.importlinter]), checked with import-linter."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(cwd))  # the package found first is the one in cwd
    return subprocess.run([*LINT, "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path):
    """A compute step that imports the report layer (a step that draws) fails the check."""
    shutil.copytree(ROOT / "lottery_xai", tmp_path / "lottery_xai", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    step = tmp_path / "lottery_xai" / "pipeline" / "tcav.py"
    step.write_text(step.read_text() + "\nfrom ..report import plot_tcav  # noqa: E402,F401\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "lottery_xai.pipeline.tcav -> lottery_xai.report" in done.stdout
    assert "BROKEN" in done.stdout
