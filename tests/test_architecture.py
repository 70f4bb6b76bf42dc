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
    assert "3 kept, 0 broken" in done.stdout


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


def _cycles(graph, modules: set[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): each is an import cycle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return found


def test_no_module_imports_itself_through_others():
    """No import cycle, imports inside functions included (grimp reads them all): report.run <-> report.html <->
    report.ace and training.losses <-> training.cgc were cycles before issue 20, timm_backbones <-> weights after."""
    import grimp

    graph = grimp.build_graph("lottery_xai", cache_dir=None)
    modules = {m for m in graph.modules if m.startswith("lottery_xai")}
    assert {"lottery_xai.report.run", "lottery_xai.report.html", "lottery_xai.training.cgc"} <= modules
    assert _cycles(graph, modules) == []
