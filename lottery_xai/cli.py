"""The command line of every step (:func:`run_step`: a ``main_*.py`` script is one call of it) and of the
data-preparation scripts (:func:`data_command`: a ``scripts_data/*.py`` script is one call of it): arguments,
device choice, error handling."""
from __future__ import annotations

import argparse
import errno
import functools
import sys
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import steps
from .config import Config, load_config, n_rounds
from .data.commands import COMMANDS, SHARED
from .errors import UserError
from .rundir import RunDir


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake (a missing value, an unknown option) in one line, status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


ROUND_DEFAULTS = {"all": "all", "chosen": "chosen by the step", "none": "this step does not use rounds"}


def parser(declared: steps.Step, description: str | None = None) -> argparse.ArgumentParser:
    """The command line of a step: the arguments every step accepts (``--config``, ``--set``, ``--rounds``,
    ``--device``, ``--force``; the last three are passed on where the step's entry takes them), then the
    step's own options (its ``arguments``)."""
    p = OneLineParser(description=description or declared.title, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: config/BB_synthetic.yaml, the embedded default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set pruning.rewind=reinit (repeatable)")
    default = ROUND_DEFAULTS.get(declared.rounds, declared.rounds.replace("config:", "the config's "))
    p.add_argument("--rounds", default=None, help=f"comma-separated rounds to process, e.g. 0,3,7 (default: {default})")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (overrides the config's device)")
    p.add_argument("--force", action="store_true", help="redo outputs that are already complete")
    if declared.arguments is not None:
        declared.arguments(p)
    return p


def run_step(key: str, description: str | None = None, argv=None) -> None:
    """The whole of a ``main_*.py`` script: parse the common arguments and the step's own, load the config,
    open the run, pick the rounds (``--rounds``, else the step's default), call the step, then draw its
    figures (the drawing registered for it in the report layer). A UserError or a failed read or write is
    one line on stderr and exit status 2."""
    main_entry(lambda: _run_step(key, description, argv))()


def _run_step(key: str, description: str | None, argv) -> None:
    options = vars(parser(steps.get(key), description).parse_args(argv))
    overrides = list(options.pop("overrides"))
    if options["device"]:
        overrides.append(f"device={options['device']}")
    config, rounds = options.pop("config"), options.pop("rounds")
    options.pop("device")
    execute(key, config, overrides, rounds, **options)


def execute(key: str, config: str | None, overrides: list[str], rounds: str | list[int] | None = None, *,
            draw: bool = True, **options) -> None:
    """Run step ``key`` as its command line does (``main_*.py --config config --set overrides --rounds
    rounds``, plus the step's own ``options`` and ``force``): load the config, open the run, pick the rounds
    (``rounds``, else the step's default), call the step, then draw its figures (unless ``draw`` is False).
    The launcher (:mod:`lottery_xai.launch`) runs every task through it."""
    from .pipeline.maps import check_methods  # lazy: the attribution registry, which the data scripts do not need

    declared = steps.get(key)
    cfg = load_config(config, overrides)
    check_methods(cfg)
    if isinstance(rounds, str) or rounds is None:  # a wrong --rounds is an error
        rounds = select_rounds(rounds, cfg) if rounds else None
    else:
        rounds = select_rounds(",".join(map(str, rounds)), cfg)
    if "rounds" in declared.parameters:
        options["rounds"] = rounds if rounds is not None else declared.default_rounds(cfg)
    if "device" in declared.parameters:
        options["device"] = resolve_device(cfg.device)
    run = RunDir(cfg)
    steps.call(declared, run, **options)
    drawing = steps.drawing(key) if declared.figures and draw else None
    if drawing is not None:  # the step computes; its figures are drawn here (and again by step 8)
        drawing.draw(run, **steps.accepted(drawing.draw, {k: v for k, v in options.items()
                                                           if k not in steps.COMMON_ARGUMENTS}))


def select_rounds(text: str | None, cfg: Config) -> list[int]:
    total = n_rounds(cfg)
    if not text:
        return list(range(total))
    try:
        rounds = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--rounds expects comma-separated integers, got '{text}'") from None
    if not rounds:
        raise UserError(f"--rounds names no round ('{text}'); give comma-separated integers, e.g. --rounds 0,4")
    bad = [r for r in rounds if r < 0 or r >= total]
    if bad:
        raise UserError(f"--rounds {bad} out of range: this config has rounds 0..{total - 1}")
    return rounds


def resolve_device(name: str):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def one_line(text) -> str:
    """A message on one line; an error re-raised from a DataLoader worker keeps only its last line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        lines = [lines[-1].split(": ", 1)[-1]]  # "lottery_xai.errors.UserError: the message"
    return " ".join(lines)


def os_error_message(exc: OSError) -> str:
    """What a failed read or write (full disk, read-only or impossible path, ...) tells the user."""
    where = f"'{exc.filename}'" if exc.filename is not None else "a file"
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (f"no space left on the device (or disk quota exceeded) writing {where}; free some space or "
                "point logs at another disk (--set logs=DIR), then rerun: finished files are kept")
    if code == errno.EROFS:
        return f"{where} is on a read-only file system; point the path at a writable folder (--set logs=DIR for outputs)"
    if isinstance(exc, PermissionError):
        return f"permission denied for {where}; make it accessible or point the path elsewhere (--set logs=DIR for outputs)"
    if isinstance(exc, NotADirectoryError):
        blocker = _regular_file_above(exc.filename)
        part = f"'{blocker}' is a regular file, not a folder" if blocker else "a part of that path is a regular file"
        return (f"{where} cannot be used: {part}; point the path at a folder (--set logs=DIR for outputs) "
                "or remove that file")
    if isinstance(exc, FileExistsError):
        return f"{where} exists and is not a folder; point the path at a folder (--set logs=DIR for outputs) or remove it"
    if isinstance(exc, IsADirectoryError):
        return f"{where} is a folder where a file was expected; remove or rename it"
    if code == errno.ENAMETOOLONG:
        return f"{where}: file name too long; use a shorter logs path or experiment_name"
    if isinstance(exc, FileNotFoundError):
        return f"{where} not found; check the path, or run the step that writes it first"
    return f"{one_line(exc.strerror or exc)} ({where}); check the path and the disk, then rerun"


def _regular_file_above(path) -> str | None:
    """The first component of ``path`` that exists and is not a folder (why a folder cannot be made there)."""
    if path is None:
        return None
    for parent in reversed([Path(path), *Path(path).parents]):
        if parent.exists() and not parent.is_dir():
            return str(parent)
    return None


def _close_progress_bars() -> None:
    """End open tqdm bars with a newline so that the error line starts on a line of its own."""
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


def data_command(key: str, description: str | None = None) -> Callable[[list | None], int]:
    """A data-preparation script's ``main(argv=None) -> int`` (``scripts_data/<key>.py`` is one call of it): the
    command line of the declaration ``key`` of :mod:`lottery_xai.data.commands` (its shared options with its help
    texts, then its own), the work, and its summary line printed (status 0); a usage mistake, a UserError or a
    failed read/write (OSError) is one line on stderr and status 2."""
    declared = COMMANDS[key]

    def main(argv: list | None = None) -> int:
        parser = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        for name, help_text in declared.shared.items():
            flag, settings = SHARED[name]
            parser.add_argument(flag, help=help_text, **settings)
        if declared.options is not None:
            declared.options(parser)
        try:
            line = declared.run(parser.parse_args(argv))
        except UserError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        except OSError as exc:  # a full disk, a read-only or impossible output path
            print(f"error: {os_error_message(exc)}", file=sys.stderr)
            return 2
        print(line)
        return 0

    return main


def main_entry(fn: Callable[[], None]) -> Callable[[], None]:
    """Run a step; a UserError or a failed read/write (OSError) becomes one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper():
        try:
            fn()
        except UserError as exc:
            _close_progress_bars()
            print(f"error: {one_line(exc)}", file=sys.stderr)
            sys.exit(2)
        except OSError as exc:
            _close_progress_bars()
            print(f"error: {os_error_message(exc)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume", file=sys.stderr)
            sys.exit(130)

    return wrapper
