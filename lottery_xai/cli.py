"""What every numbered step shares on the command line: arguments, device choice, error handling."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable

from .config import Config, load_config, n_rounds
from .errors import UserError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=None, help="YAML config (default: config/BB_synthetic.yaml, the embedded default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set pruning.rewind=reinit (repeatable)")
    p.add_argument("--rounds", default=None, help="comma-separated rounds to process, e.g. 0,3,7 (default: all)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (overrides the config's device)")
    p.add_argument("--force", action="store_true", help="redo outputs that are already complete")
    return p


def parse(description: str, argv=None, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """Parse the standard arguments and load the config; returns (args, cfg)."""
    p = parser(description)
    if extra:
        extra(p)
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config, overrides)
    args.round_list = select_rounds(args.rounds, cfg)
    return args, cfg


def select_rounds(text: str | None, cfg: Config) -> list[int]:
    total = n_rounds(cfg)
    if not text:
        return list(range(total))
    try:
        rounds = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--rounds expects comma-separated integers, got '{text}'") from None
    bad = [r for r in rounds if r < 0 or r >= total]
    if bad:
        raise UserError(f"--rounds {bad} out of range: this config has rounds 0..{total - 1}")
    return rounds


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def main_entry(fn: Callable[[], None]) -> Callable[[], None]:
    """Run a step; a UserError becomes one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper():
        try:
            fn()
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume", file=sys.stderr)
            sys.exit(130)

    return wrapper
