"""The pieces of the run report's page (``main_report.py``): formatted numbers, tables and embedded
figures as the template's blocks, the note of a part whose step has not run, the replicates found
beside the run, and the registry of the report's parts.

A part of the report belongs to a step: :func:`part` registers ``fn(run, seeds) -> section`` for a step
key, and the page shows the parts in the order of the steps (:func:`lottery_xai.steps.all_steps`), after
the verdicts and the provenance. A new study adds its part where its figures are drawn.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .. import steps
from ..rundir import RunDir
from ..safe_io import read_csv
from . import figures

# how to make the replicates the report reads (a command, not a step of this run)
REPLICATES = "bash bash_script/run_seeds.sh --seeds 0,1,2 (it ends with main_aggregate.py)"

PARTS: dict[str, Callable] = {}


def part(key: str) -> Callable[[Callable], Callable]:
    """Decorator of ``fn(run, seeds) -> section``: step ``key``'s part of the report."""

    def register(fn: Callable) -> Callable:
        PARTS[key] = fn
        return fn

    return register


def parts() -> list[Callable]:
    """The registered parts, in the order of their steps."""
    return [PARTS[s.key] for s in steps.all_steps() if s.key in PARTS]


# ---------------------------------------------------------------- formatting

def fmt_num(x, digits: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "–" if not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_interval(value, low, high, digits: int = 3, sign: bool = False) -> str:
    text = fmt_num(value, digits)
    text = "+" + text if sign and text[0].isdigit() else text
    if low is None or high is None or not (np.isfinite(float(low)) and np.isfinite(float(high))):
        return text
    return f"{text} [{fmt_num(low, digits)}, {fmt_num(high, digits)}]"


def fmt_pct(fraction) -> str:
    return f"{100 * float(fraction):.1f} %"


def table_block(columns: list[str], rows: list[list], caption: str = "") -> dict:
    return {"kind": "table", "caption": caption, "columns": columns, "rows": rows}


def frame_block(frame: pd.DataFrame, caption: str = "", digits: int = 3) -> dict:
    rows = [[fmt_num(v, digits) if isinstance(v, (float, np.floating)) else str(v) for v in row]
            for row in frame.itertuples(index=False, name=None)]
    return table_block([str(c) for c in frame.columns], rows, caption)


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_block(fig, caption: str) -> dict:
    """A matplotlib figure as an embedded PNG (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, bbox_inches="tight", format="png")
    figures.plt.close(fig)
    return {"kind": "figure", "caption": caption, "src": png_uri(buffer.getvalue())}


def file_figure_block(path: Path, caption: str) -> dict:
    return {"kind": "figure", "caption": caption, "src": png_uri(Path(path).read_bytes())}


def figures_details(section: dict, folder: Path, pattern: str, what: str) -> None:
    """A collapsed block of every figure ``folder/pattern`` ("N <what>"); nothing when there is none."""
    pngs = sorted(Path(folder).glob(pattern))
    if pngs:
        section["blocks"].append({"kind": "details", "summary": f"{len(pngs)} {what}",
                                  "blocks": [file_figure_block(p, p.stem) for p in pngs]})


def new_section(sid: str, title: str, intro: str = "") -> dict:
    return {"id": sid, "title": title, "intro": intro, "blocks": []}


def not_computed(section: dict, what: str, command: str) -> dict:
    section["blocks"].append({"kind": "missing", "text": f"{what} not computed: run {command}"})
    return section



# ---------------------------------------------------------------- replicates (main_aggregate.py)

def replicate_seeds(run: RunDir) -> list[int] | None:
    """The seeds of the replicates folder that includes this run (most seeds first, then newest), or None."""
    for folder in run.aggregates():
        seeds = folder.name.rsplit("seeds", 1)[-1].split("-")
        if all(s.isdigit() for s in seeds) and run.aggregate_dir([int(s) for s in seeds]) == folder:
            return [int(s) for s in seeds]
    return None


def replicate_table(run: RunDir, seeds: list[int] | None, name: str) -> pd.DataFrame | None:
    if seeds is None or not run.aggregate_file(seeds, name).is_file():
        return None
    return read_csv(run.aggregate_file(seeds, name), step=steps.label("aggregate"))
