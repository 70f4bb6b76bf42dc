"""The data-preparation scripts (scripts_data/*.py) are one call each of a command declared in
lottery_xai/data/commands.py, as the main_*.py scripts are one call of a declared step."""
import re

from lottery_xai.data.commands import COMMANDS, SHARED

from conftest import ROOT


def test_every_data_script_is_one_declared_command():
    scripts = sorted(p.stem for p in (ROOT / "scripts_data").glob("*.py"))
    assert scripts == sorted(COMMANDS)
    for name in scripts:
        text = (ROOT / "scripts_data" / f"{name}.py").read_text()
        assert re.findall(r'data_command\("(\w+)", __doc__\)', text) == [name], name
        code = [line for line in text.split('"""')[2].splitlines() if line.strip() and not line.startswith(("import", "from"))]
        assert len(code) == 4, f"{name} is more than its one call: {code}"  # sys.path, main =, if __main__, exit


def test_a_command_takes_only_shared_options_that_exist_and_says_what_each_is_for():
    for command in COMMANDS.values():
        assert set(command.shared) <= set(SHARED) and all(text.strip() for text in command.shared.values())
