"""Reference tables of the documentation, generated from the code so that they cannot drift from it:
the configuration keys (from the schema, :func:`lottery_xai.config.describe`) and the steps (from their
declarations, :mod:`lottery_xai.steps`).

    python -m lottery_xai.doc_reference keys    # the key table (Markdown)
    python -m lottery_xai.doc_reference steps   # the table of the steps (Markdown)
"""
from __future__ import annotations

import sys

from . import steps
from .config import describe


def key_table() -> str:
    """The configuration-key table (Markdown): one row per key with its default and help."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, help_text in describe():
        lines.append(f"| `{key}` | `{default}` | {help_text.replace('|', '/')} |")
    return "\n".join(lines)


def step_table() -> str:
    """Every step's declaration (Markdown): its key, number, script, folder, what it needs and uses, its
    rounds, whether its rounds run apart, what it writes and the figures drawn after it."""
    rows = ["| key | number | script | folder | needs | uses | rounds | per round | writes | figures |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in steps.all_steps():
        per_round = "yes" if s.per_round else "no"
        per_round += " (also round 0)" if s.needs_round_0 else ""
        per_round += ", then one call over all" if s.gather else ""
        rounds = s.rounds + (f" (the runs of --{s.across})" if s.across else "")
        rows.append(f"| `{s.key}` | {s.number if s.number is not None else ''} | {s.script} | {s.folder} | "
                    f"{', '.join(s.needs)} | {', '.join(s.uses)} | {rounds} | {per_round} | "
                    f"{'<br>'.join(f'`{w}`' for w in s.writes)} | {'<br>'.join(f'`{f}`' for f in s.figures)} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    tables = {"keys": key_table, "steps": step_table}
    if len(argv) != 1 or argv[0] not in tables:
        print("usage: python -m lottery_xai.doc_reference keys|steps", file=sys.stderr)
        return 2
    print(tables[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
