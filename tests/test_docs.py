"""The documentation stays true: its links resolve, its generated tables are the code's, its code excerpts are
the code, environment.yml lists what pyproject.toml lists, and the README's quick commands run."""
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from lottery_xai import steps
from lottery_xai.doc_reference import step_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "doc").glob("*.md"))]
README_LIMIT = 28_000  # the README is a user's guide (issue 20: about a third of the 80 KB it had); details go to doc/


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (a link inside code is not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens, and
    -1, -2, ... on repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M),
                              flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(page: Path) -> list[str]:
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", _prose(page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):  # http(s), mailto: not checked here (no network)
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target})")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading with anchor #{anchor} in {target.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_the_link_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title: with `code`\n## Same\n## Same\n[ok](#a-title-with-code) [ok2](#same-1) "
                    "[bad](missing.md) [bad2](#nowhere) `[not a link](missing2.md)`\n```\n[nor](missing3.md)\n```\n")
    assert _anchors(page) == {"a-title-with-code", "same", "same-1"}
    assert _links(page) == ["#a-title-with-code", "#same-1", "missing.md", "#nowhere"]


def _misshapen_table_rows(text: str) -> list[tuple[int, int, int]]:
    """(line, cells, header cells) of every table row whose number of cell separators (unescaped ``|``, also
    inside code: GitHub splits cells there too, so an absolute value |x| or an option a | b needs ``\\|``)
    differs from its table's header row's."""
    bad, header = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("|"):
            header = None
            continue
        count = len(re.findall(r"(?<!\\)\|", line))
        if header is None:
            header = count
        elif count != header:
            bad.append((number, count, header))
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_row_has_its_header_cells(page):
    bad = _misshapen_table_rows(page.read_text())
    assert not bad, f"{page.relative_to(ROOT)}: rows with a stray | (line, separators, header's): {bad}"


def test_the_table_checker_finds_a_stray_pipe():
    assert _misshapen_table_rows("| a | b |\n| --- | --- |\n| |w| | `x | y` |\n| \\|w\\| | `x \\| y` |\n") == [(3, 6, 3)]


def test_the_readme_is_a_guide_not_the_whole_documentation():
    size = len(README.read_text().encode())
    assert size <= README_LIMIT, (f"README.md is {size} bytes (at most {README_LIMIT}): move measured results, history "
                                  "and long method notes to doc/")


# ------------------------------------------------------------------ environment.yml against pyproject.toml

CONDA_NAMES = {"pytorch": "torch"}  # conda's name -> pip's
NOT_PACKAGES = {"python", "pip", "-e ."}


def _requirement(spec: str) -> tuple[str, str]:
    """(normalised name, lower bound or '') of a requirement such as 'torch>=2.10' or 'grad-cam >= 1.5'."""
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([^,;\s]+))?", spec)
    name = match.group(1).lower().replace("_", "-")
    return CONDA_NAMES.get(name, name), match.group(2) or ""


def test_environment_yml_lists_what_pyproject_lists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_requirement(s) for s in project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted.update(_requirement(s) for s in extra)
    listed = {}
    for entry in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else [entry]:
            if spec.strip() not in NOT_PACKAGES and not spec.startswith("python="):
                name, bound = _requirement(spec)
                listed[name] = bound
    assert sorted(set(wanted) - set(listed)) == [], "in pyproject.toml but not in environment.yml"
    assert sorted(set(listed) - set(wanted)) == [], "in environment.yml but not in pyproject.toml"
    assert {n: b for n, b in listed.items() if b != wanted[n]} == {}, "lower bounds differ from pyproject.toml's"


# ------------------------------------------------------------------ generated tables and code excerpts

def test_the_documented_step_table_is_the_registry():
    """doc/architecture.md holds `python -m lottery_xai.doc_reference steps` exactly (regenerate it there)."""
    assert step_table() in (ROOT / "doc" / "architecture.md").read_text(), \
        "doc/architecture.md's step table is out of date: regenerate it with python -m lottery_xai.doc_reference steps"


def test_the_readme_names_every_step_script():
    readme = README.read_text()
    missing = [s.script for s in steps.all_steps() if f"`{s.script}`" not in readme]
    assert not missing, f"the README's table of steps lacks {missing}"


EXCERPT = re.compile(r"^\*From `([^`]+)`:\*\n```python\n(.*?)^```", re.S | re.M)


def test_the_code_shown_in_the_docs_is_the_code():
    """doc/architecture.md's "Adding a step" shows real code; each block must still be in the file it names."""
    excerpts = EXCERPT.findall((ROOT / "doc" / "architecture.md").read_text())
    assert len(excerpts) >= 4
    stale = [path for path, code in excerpts if code not in (ROOT / path).read_text()]
    assert not stale, f"doc/architecture.md shows code that is no longer in {stale}: copy it again"


# ------------------------------------------------------------------ the README's quick commands
# The quick start's first block is `make run` and `make test`: they take minutes (the whole pipeline, the whole
# suite, and a fresh virtual environment), so the suite does not run them; CI runs `make test` itself
# (.ci/run). The block marked `quick-commands` holds the commands that answer in seconds; each runs here, with
# this interpreter in place of .venv/bin/python.

def _quick_commands() -> list[str]:
    block = re.search(r"<!-- quick-commands:[^>]*-->\n```bash\n(.*?)^```", README.read_text(), re.S | re.M)
    assert block, "README.md has no block marked <!-- quick-commands: ... -->"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("command", _quick_commands())
def test_a_quick_command_of_the_readme_runs(command):
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/python", f"a quick command runs the project's interpreter: {command}"
    done = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
    assert done.stdout.strip(), f"{command} printed nothing"
