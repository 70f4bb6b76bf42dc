"""One self-contained HTML report per run (``main_report.py``): ``report/report.html`` in the run folder.

The page holds the run's config and provenance (Python and package versions, the git commit of the code,
the SHA-256 of every round's checkpoint), the accuracy, the TCAV tables with their significance, the map
grids, every explanation metric with its interval and tests, the replicates' null bands, the sanity checks
and a short verdict per method in plain sentences generated from the numbers. Every figure is a PNG
embedded as a ``data:`` URI (no file, no network is needed to open the page); the page is rendered by
jinja2 (autoescaped) from ``templates/report.html.j2`` and written atomically.

A part whose step has not run is one line ("not computed: run ..."), never an error; the report of a run
that step 1 has not started is a UserError. A rerun rebuilds the page only when a file of the run (or of
its replicates) is newer than it (``--force`` rebuilds it anyway, e.g. after a code update).

The verdict of a method, per family, reads the dense and the sparsest round: the change of the metric's
mean with the percentile bootstrap interval of the mean of the per-image differences (paired, seeded,
``stats.n_bootstrap`` at ``stats.confidence``; from step 7's ``per_image.csv``) and the corrected Wilcoxon
test of ``tests.csv``; for the consistency with the dense map, whether the ticket's drift is within the
seed-to-seed band of the replicates (``null_bands.csv``); and the sanity check's verdict.
"""
from __future__ import annotations

import base64
import io
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from .. import rundir as rd
from ..config import Config, cav_protocol, dump_yaml
from ..errors import UserError
from ..loaders import SeedPurpose, derived_seed
from ..attribution import METHODS
from ..metrics import METRICS
from ..pipeline.sanity import CONTROL_METHOD, NO_CHANGE, SUMMARY_COLUMNS, VERDICT_COLUMNS
from ..safe_io import atomic_path, fingerprint, load_npz, read_csv, write_text
from ..stats.inference import TEST_COLUMNS, bootstrap_ci
from . import figures
from .tables import (STEP2, STEP5, STEP6, STEP7, MissingInput, accuracy_runs, heatmap_methods, tcav_ground_truth,
                     tcav_table)
from .run import plot_heatmaps

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("lottery-xai", "torch", "torchvision", "numpy", "scipy", "pandas", "scikit-learn", "statsmodels",
            "matplotlib", "scikit-image", "opencv-python-headless", "jinja2")
SANITY = "main_sanity_checks.py"
BASELINE = CONTROL_METHOD  # the random attribution: the sanity check's control (redrawn at every stage: the chance level)
REPLICATES = "bash bash_script/run_seeds.sh --seeds 0,1,2 (it ends with main_aggregate.py)"
# the metric each verdict reads, per family (the first present in step 7's table)
VERDICT_METRICS = {"faithfulness": ("deletion_auc", "insertion_auc"),
                   "localisation": ("energy_in_box", "pointing_game"),
                   "consistency with the dense map": ("spearman", "ssim")}
LABELS = {"deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC", "energy_in_box": "energy in the box, %",
          "pointing_game": "pointing game", "spearman": "Spearman", "ssim": "SSIM"}


def _as_run(run: rd.RunDir | Config) -> rd.RunDir:
    return run if isinstance(run, rd.RunDir) else rd.RunDir(run)


# ---------------------------------------------------------------- formatting

def _num(x, digits: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "–" if not np.isfinite(x) else f"{x:.{digits}f}"


def _interval(value, low, high, digits: int = 3, sign: bool = False) -> str:
    text = _num(value, digits)
    text = "+" + text if sign and text[0].isdigit() else text
    if low is None or high is None or not (np.isfinite(float(low)) and np.isfinite(float(high))):
        return text
    return f"{text} [{_num(low, digits)}, {_num(high, digits)}]"


def _pct(fraction) -> str:
    return f"{100 * float(fraction):.1f} %"


def _table(columns: list[str], rows: list[list], caption: str = "") -> dict:
    return {"kind": "table", "caption": caption, "columns": columns, "rows": rows}


def _frame_table(frame: pd.DataFrame, caption: str = "", digits: int = 3) -> dict:
    rows = [[_num(v, digits) if isinstance(v, (float, np.floating)) else str(v) for v in row]
            for row in frame.itertuples(index=False, name=None)]
    return _table([str(c) for c in frame.columns], rows, caption)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(fig, caption: str) -> dict:
    """A matplotlib figure as an embedded PNG (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, bbox_inches="tight", format="png")
    figures.plt.close(fig)
    return {"kind": "figure", "caption": caption, "src": _png_uri(buffer.getvalue())}


def _file_figure(path: Path, caption: str) -> dict:
    return {"kind": "figure", "caption": caption, "src": _png_uri(Path(path).read_bytes())}


def _figures_block(section: dict, folder: Path, pattern: str, what: str) -> None:
    """A collapsed block of every figure ``folder/pattern`` ("N <what>"); nothing when there is none."""
    pngs = sorted(Path(folder).glob(pattern))
    if pngs:
        section["blocks"].append({"kind": "details", "summary": f"{len(pngs)} {what}",
                                  "blocks": [_file_figure(p, p.stem) for p in pngs]})


def _section(sid: str, title: str, intro: str = "") -> dict:
    return {"id": sid, "title": title, "intro": intro, "blocks": []}


def _missing(section: dict, what: str, command: str) -> dict:
    section["blocks"].append({"kind": "missing", "text": f"{what} not computed: run {command}"})
    return section


# ---------------------------------------------------------------- provenance

def git_commit(root: Path = REPO) -> str:
    """The commit of the code (``git rev-parse HEAD``), with a note when tracked files are modified;
    'not available' outside a git checkout or without git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return "not available (not a git checkout)"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "not available (git not found)"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def package_versions() -> list[list[str]]:
    rows = [["python", platform.python_version()], ["platform", platform.platform()]]
    for name in PACKAGES:
        try:
            rows.append([name, metadata.version(name)])
        except metadata.PackageNotFoundError:
            rows.append([name, "not installed"])
    return rows


def checkpoint_checksums(run: rd.RunDir) -> list[list[str]]:
    """Round, weights remaining, checkpoint file and its SHA-256 (the first 16 hex digits: the fingerprint
    every later step records) of every finished round."""
    rows = []
    summary = read_csv(run.pruning_summary(), ["round", "weights_remaining"], missing_ok=True)
    weights = dict(zip(summary["round"].astype(int), summary["weights_remaining"]))
    for r in run.finished_rounds():
        path = run.checkpoint(r, run.cfg.test.checkpoint)
        if path.is_file():
            rows.append([str(r), _pct(weights.get(r, np.nan)), str(path.relative_to(run.root)), fingerprint(path)])
    return rows


def provenance_section(run: rd.RunDir) -> dict:
    s = _section("provenance", "Configuration and provenance")
    s["blocks"] += [
        {"kind": "text", "text": f"Run folder: {run.root}. Code: git commit {git_commit()}."},
        _table(["round", "weights remaining", "checkpoint", "SHA-256 (first 16 hex digits)"], checkpoint_checksums(run),
               "Checkpoints the results were computed from"),
        {"kind": "details", "summary": "Python and package versions",
         "blocks": [_table(["software", "version"], package_versions())]},
        {"kind": "details", "summary": "the resolved config", "blocks": [{"kind": "pre", "text": dump_yaml(run.cfg)}]},
    ]
    return s


# ---------------------------------------------------------------- replicates (main_aggregate.py)

def replicate_seeds(run: rd.RunDir) -> list[int] | None:
    """The seeds of the replicates folder that includes this run (most seeds first, then newest), or None."""
    for folder in run.aggregates():
        seeds = folder.name.rsplit("seeds", 1)[-1].split("-")
        if all(s.isdigit() for s in seeds) and run.aggregate_dir([int(s) for s in seeds]) == folder:
            return [int(s) for s in seeds]
    return None


def _aggregate(run: rd.RunDir, seeds: list[int] | None, name: str) -> pd.DataFrame | None:
    if seeds is None or not run.aggregate_file(seeds, name).is_file():
        return None
    return read_csv(run.aggregate_file(seeds, name), step="main_aggregate.py")


# ---------------------------------------------------------------- sections

def accuracy_section(run: rd.RunDir, seeds: list[int] | None) -> dict:
    s = _section("accuracy", "Accuracy", "Test accuracy of every round of the ticket and of its controls found beside it.")
    try:
        runs = accuracy_runs(run.cfg)
    except MissingInput:
        return _missing(s, "Test accuracy", STEP2)
    rounds = sorted({int(r) for f in runs.values() for r in f["round"]})
    columns = ["round", "weights remaining", *runs]
    rows = []
    for r in rounds:
        cells = [f.loc[f["round"] == r, "test_acc"] for f in runs.values()]
        weights = next((f.loc[f["round"] == r, "weights_remaining"].iloc[0] for f in runs.values() if (f["round"] == r).any()))
        rows.append([str(r), _pct(weights), *[_pct(c.iloc[0]) if len(c) else "–" for c in cells]])
    s["blocks"] += [_table(columns, rows, "Test accuracy"),
                    _figure(figures.accuracy_vs_weights(runs), "Accuracy against the share of weights remaining")]
    table = _aggregate(run, seeds, "accuracy")
    if table is None:
        return _missing(s, "Accuracy over seeds (replicates)", REPLICATES)
    rows = [[str(t.run), str(int(t.round)), _pct(t.weights_remaining),
             _interval(100 * t.mean, 100 * t.ci_low, 100 * t.ci_high, 2), str(int(t.n_seeds))]
            for t in table.itertuples()]
    s["blocks"].append(_table(["run", "round", "weights remaining", "test accuracy %, mean [CI] over seeds", "seeds"],
                              rows, f"Replicates: seeds {', '.join(map(str, seeds))}"))
    return s


def tcav_section(run: rd.RunDir, seeds: list[int] | None, top: int = 6) -> dict:
    cfg = run.cfg
    p = cav_protocol(cfg)
    threshold = {"paper": f"p < {cfg.tcav.alpha:g} / 2 (Bonferroni at m = 2, Kim et al. 2018)",
                 "none": f"p < {cfg.tcav.alpha:g}", "concepts": f"p < {cfg.tcav.alpha:g} / n_concepts (Bonferroni)"}
    s = _section("tcav", "TCAV", f"Concept sensitivity per class at the concept layers, TCAV protocol {p.label}; "
                 f"significant: two-sided {p.test.capitalize()} t-test against the random CAVs, {threshold[p.correction]}.")
    try:
        table = tcav_table(cfg)
    except MissingInput:
        return _missing(s, "TCAV", STEP5)
    table = table.assign(significant=table["significant"].astype(bool))
    rows = []
    for (r, layer), g in table.groupby(["round", "layer"]):
        sig = g[g["significant"]]
        rows.append([str(r), _pct(g["weights_remaining"].iloc[0]), layer, str(len(g)), str(len(sig)),
                     _pct(len(sig) / max(1, len(g))), _num(sig["tcav_mean"].mean()), _num(sig["tcav_mean"].gt(0.5).mean())])
    s["blocks"].append(_table(["round", "weights remaining", "layer", "(class, concept) pairs", "significant",
                               "share significant", "mean score of the significant", "share of them > 0.5"],
                              rows, "Significance per round"))
    first, last = int(table["round"].min()), int(table["round"].max())
    rows = []
    for (layer, cls), g in table.groupby(["layer", "class"]):
        cells = []
        for r in (first, last):
            sig = g[(g["round"] == r) & g["significant"]].sort_values("tcav_mean", ascending=False)
            shown = ", ".join(f"{c} ({v:.2f})" for c, v in zip(sig["concept"][:top], sig["tcav_mean"][:top]))
            cells.append(f"{len(sig)}: {shown}" + (", ..." if len(sig) > top else "") if len(sig) else "none")
        rows.append([layer, str(cls), *cells])
    s["blocks"].append(_table(["layer", "class", f"round {first}: significant concepts (score)",
                               f"round {last}: significant concepts (score)"], rows,
                              f"Significant concepts per class, dense and sparsest round (top {top} by score)"))
    full = read_csv(run.tcav_scores(), step=STEP5)
    full = full[full["round"].isin([first, last])]
    keep = [c for c in ("round", "layer", "class", "concept", "tcav_mean", "tcav_std", "random_mean", "p_value",
                        "significant") if c in full.columns]
    s["blocks"].append({"kind": "details", "summary": f"every (class, concept) pair at rounds {first} and {last}, "
                        "with its p-value", "blocks": [_frame_table(full[keep], digits=4)]})
    try:
        truth = pd.concat([tcav_ground_truth(cfg, r) for r in (first, last)], ignore_index=True)
        if len(truth):
            s["blocks"].append(_frame_table(truth, "Against the ground truth: share of (class, defining attribute) "
                                            "pairs significant and > 0.5, and of (class, absent attribute) pairs"))
    except UserError:
        pass  # a dataset without known class-defining attributes
    agg = _aggregate(run, seeds, "tcav")
    if agg is None:
        _missing(s, "TCAV over seeds (replicates)", REPLICATES)
    else:
        share = agg.groupby("round").agg(weights=("weights_remaining", "first"), share=("significant_share", "mean"),
                                         always=("significant_share", lambda v: float((v == 1).mean())))
        s["blocks"].append(_table(["round", "weights remaining", "mean share of seeds where a pair is significant",
                                   "pairs significant in every seed"],
                                  [[str(r), _pct(t.weights), _num(t.share), _pct(t.always)] for r, t in share.iterrows()],
                                  f"Replicates: seeds {', '.join(map(str, seeds))}"))
    _figures_block(s, run.plot("tcav").parent, "tcav_*.png", "TCAV figures (step 8)")
    return s


def maps_section(run: rd.RunDir) -> dict:
    s = _section("maps", "Attribution maps", "The same test images at every round (step 6).")
    methods = heatmap_methods(run.cfg)
    if not methods:
        return _missing(s, "Attribution maps", STEP6)
    for method in methods:
        png = run.plot(f"heatmaps_{method}")
        s["blocks"].append(_file_figure(png, method) if png.is_file()
                           else _figure(plot_heatmaps(run.cfg, method, save=False), method))
    return s


def _tests(run: rd.RunDir) -> pd.DataFrame | None:
    path = run.explanation_tests()
    return read_csv(path, TEST_COLUMNS, step=STEP7) if path.is_file() else None


def metrics_section(run: rd.RunDir) -> dict:
    s = _section("metrics", "Explanation metrics",
                 "Mean over the step-6 images per round, with the bootstrap interval over the images. * : differs from "
                 "the dense round, † : differs from the random baseline (Wilcoxon signed-rank on the per-image values, "
                 f"{run.cfg.stats.correction}-corrected over rounds x methods x metrics, at {run.cfg.stats.alpha:g}).")
    if not run.explanation_metrics().is_file():
        return _missing(s, "Explanation metrics", STEP7)
    frame = read_csv(run.explanation_metrics(), ["round", "weights_remaining", "method", "metric", "value"], step=STEP7)
    has_ci = {"ci_low", "ci_high"} <= set(frame.columns)
    if not has_ci:
        _missing(s, "Intervals", f"{STEP7} with --force")
    tests = _tests(run)
    if tests is None:
        _missing(s, "Paired tests", f"{STEP7} with --force")
    marks = {}
    if tests is not None:
        for t in tests[tests["significant"].astype(bool)].itertuples():
            key = (int(t.round), t.method, t.metric)
            marks[key] = marks.get(key, "") + ("*" if t.comparison == "dense" else "†")
    rounds = sorted(frame["round"].unique())
    weights = frame.groupby("round")["weights_remaining"].first()
    for method, g in frame.groupby("method", sort=False):
        rows = []
        for metric, m in g.groupby("metric", sort=False):
            spec = METRICS.get(metric)
            cells = []
            for r in rounds:
                v = m[m["round"] == r]
                if v.empty:
                    cells.append("–")
                    continue
                v = v.iloc[0]
                text = _interval(v["value"], v["ci_low"], v["ci_high"]) if has_ci else _num(v["value"])
                cells.append(text + marks.get((int(r), method, metric), ""))
            rows.append([metric, "" if spec is None else ("higher" if spec.higher_is_better else "lower"), *cells])
        s["blocks"].append(_table(["metric", "better", *[f"round {r} ({_pct(weights[r])})" for r in rounds]], rows,
                                  f"{method}"))
    _figures_block(s, run.plot("metric").parent, "metric_*.png", "metric figures (step 8)")
    return s


def null_band_section(run: rd.RunDir, seeds: list[int] | None) -> dict:
    s = _section("null-bands", "Replicates and null bands",
                 "The change that needs no pruning (the same consistency metric between the dense models of two seeds: "
                 "the seed-to-seed band) and the change random pruning causes at the same sparsity (the random band), "
                 "against the ticket's drift from its dense model.")
    bands = _aggregate(run, seeds, "null_bands")
    if bands is None:
        return _missing(s, "Null bands", REPLICATES)
    rows = []
    for t in bands.sort_values(["method", "metric", "round"]).itertuples():
        within = str(t.within_seed_band).lower()
        verdict = {"true": {"text": "yes", "cls": "good"}, "false": {"text": "no", "cls": "bad"}}.get(within, "–")
        rows.append([t.method, t.metric, str(int(t.round)), _pct(t.weights_remaining),
                     _interval(t.seed_mean, t.seed_ci_low, t.seed_ci_high),
                     _interval(t.random_mean, t.random_ci_low, t.random_ci_high),
                     _interval(t.ticket_mean, t.ticket_ci_low, t.ticket_ci_high), verdict])
    s["blocks"].append(_table(["method", "metric", "round", "weights remaining", "seed-to-seed band",
                               "random-pruning band", "ticket", "ticket within the seed band"], rows,
                              f"Replicates: seeds {', '.join(map(str, seeds))} (mean [CI])"))
    _figures_block(s, run.aggregate_plot(seeds, "x").parent, "*.png", "replicate figures (main_aggregate.py)")
    return s


def sanity_tables(run: rd.RunDir) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    if not run.sanity_verdicts().is_file() or not run.sanity_summary().is_file():
        return None
    return (read_csv(run.sanity_verdicts(), VERDICT_COLUMNS, step=SANITY),
            read_csv(run.sanity_summary(), SUMMARY_COLUMNS, step=SANITY))


def sanity_figures(run: rd.RunDir, summary: pd.DataFrame, image: int = 0) -> list[tuple]:
    """``(figure, caption, name)``: the curves of every measure and randomisation (name ``sanity_checks``
    for cascading, ``sanity_checks_independent``), then per round one image's maps at every stage of the
    first randomisation computed (``sanity_maps_round_XX``; matplotlib figures, not saved)."""
    s = run.cfg.sanity
    kinds = [k for k in ("cascading", "independent") if k in set(summary["randomization"])]
    out = []
    for kind in kinds:
        part = summary[summary["randomization"] == kind]
        for measure in part["measure"].unique():
            what = ("the top k blocks re-initialised" if kind == "cascading" else "only block k re-initialised")
            out.append((figures.sanity_cascade(part, measure, s.threshold if measure == s.verdict_measure else None,
                                               randomization=kind),
                        f"{kind} randomisation ({what}): {measure} of each stage's maps with the original model's "
                        f"(mean and std over the images; dashed: the control, random maps redrawn at every stage)",
                        "sanity_checks" if kind == "cascading" else f"sanity_checks_{kind}"))
    if not kinds or not run.heatmap_images().is_file():
        return out
    images = load_npz(run.heatmap_images(), keys=("ids", "images"), step=STEP6)
    for r in sorted(summary["round"].unique()):
        maps, blocks, image_id = {}, [], None
        for method in summary.loc[summary["round"] == r, "method"].unique():
            path = run.sanity_maps(int(r), method)
            if path.is_file():
                data = load_npz(path, keys=(f"maps_{kinds[0]}", "ids", "blocks"), step=SANITY)
                m = data[f"maps_{kinds[0]}"][:, image].astype(np.float32)
                peak = m.reshape(len(m), -1).max(1)[:, None, None]
                maps[method] = np.where(peak > 0, m / np.where(peak > 0, peak, 1), 0)
                blocks, image_id = [str(b) for b in data["blocks"]], data["ids"][image]
        where = np.flatnonzero(images["ids"] == image_id)
        if maps and len(where):
            how = "as the blocks are re-initialised from the top" if kinds[0] == "cascading" else \
                "with one block at a time re-initialised"
            out.append((figures.sanity_maps(images["images"][where[0]] / 255.0, maps, blocks,
                                            f"round {r}: image {image_id} {how}", randomization=kinds[0]),
                        f"round {r}: the maps of one image at every stage ({kinds[0]})",
                        f"sanity_maps_{rd.round_name(int(r))}"))
    return out


def plot_sanity(cfg: Config, save: bool = True) -> list:
    """The sanity-check figures of a run: ``sanity/sanity_checks.png`` (the cascading curves of the
    verdict's measure), ``sanity/sanity_checks_independent.png`` (when computed) and
    ``sanity/sanity_maps_round_XX.png`` (one image's maps at every stage)."""
    run = _as_run(cfg)
    tables = sanity_tables(run)
    if tables is None:
        raise MissingInput(f"'{run.sanity_verdicts()}' is missing; run {SANITY} first")
    measure = cfg.sanity.verdict_measure
    drawn = []
    for fig, _, name in sanity_figures(run, tables[1][tables[1]["measure"] == measure]):
        if save:
            with atomic_path(run.sanity_figure(name)) as tmp:
                fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
            figures.plt.close(fig)
        drawn.append(fig)
    return drawn


def _spearman_label(measure: str) -> str:
    return {"spearman": "Spearman (signed maps)", "spearman_abs": "Spearman (absolute values)"}.get(measure, measure)


def sanity_section(run: rd.RunDir) -> dict:
    cfg = run.cfg
    s = _section("sanity", "Sanity checks", "Model-parameter randomisation test (Adebayo et al. 2018): blocks of the "
                 "network are re-initialised (cascading: from the logits down, one more per stage; independent: one "
                 "block at a time, the others trained) and each stage's maps of the step-6 images are compared with the "
                 "original model's. A method whose maps stay similar "
                 f"({_spearman_label(cfg.sanity.verdict_measure)} >= {cfg.sanity.threshold:g} once every block is random; "
                 "independent: under every single block) does not depend on the weights and cannot tell us anything "
                 "about pruning. The control, random maps redrawn at every stage, shows the chance level of each measure.")
    tables = sanity_tables(run)
    if tables is None:
        return _missing(s, "Sanity checks", SANITY)
    verdicts, summary = tables
    base = summary[(summary["method"] == BASELINE) & (summary["measure"] == cfg.sanity.verdict_measure)]
    control = {(t.round, t.randomization, t.stage): t.mean for t in base.itertuples()}  # the chance level per stage

    def judged(method: str, outcome: str) -> dict:
        if method == BASELINE:
            return {"text": "the control (chance level)", "cls": "dim"}
        return {"text": outcome, "cls": "bad" if outcome == NO_CHANGE else "good"}

    rows = [[t.method, str(int(t.round)), _pct(t.weights_remaining), t.randomization,
             f"{int(t.stage)} (+{t.block})" if t.randomization == "cascading" else f"{int(t.stage)} ({t.block} only)",
             _spearman_label(t.measure), _num(t.similarity), _num(control.get((t.round, t.randomization, t.stage), np.nan)),
             judged(t.method, t.verdict)]
            for t in verdicts.itertuples()]
    s["blocks"].append(_table(["method", "round", "weights remaining", "randomisation", "stage read", "measure",
                               "similarity", "control at that stage", "verdict"], rows, "Verdicts"))
    s["blocks"] += [_figure(fig, caption) for fig, caption, _ in sanity_figures(run, summary)]
    wide = summary.pivot_table(index=["round", "method", "randomization", "measure"], columns="stage",
                               values="mean").reset_index()
    blocks = summary.drop_duplicates("stage").set_index("stage")["block"]
    wide.columns = [c if not isinstance(c, (int, np.integer)) else f"{int(c)}: {blocks[c]}" for c in wide.columns]
    s["blocks"].append({"kind": "details", "summary": "similarity at every stage (mean over the images; cascading: "
                        "that block and every one above it random; independent: that block alone random)",
                        "blocks": [_frame_table(wide)]})
    return s


# ---------------------------------------------------------------- verdicts in sentences

def _pick(frame: pd.DataFrame, candidates: tuple) -> str | None:
    present = set(frame["metric"])
    return next((m for m in candidates if m in present), None)


def _change(run: rd.RunDir, per_image: pd.DataFrame | None, method: str, metric: str, first: int, last: int):
    """The mean per-image difference last - first and its paired bootstrap interval (None without per-image values)."""
    if per_image is None:
        return None
    part = per_image[(per_image["method"] == method) & (per_image["metric"] == metric)]
    wide = part.pivot_table(index="image_id", columns="round", values="value", aggfunc="first")
    if first not in wide or last not in wide:
        return None
    diff = (wide[last] - wide[first]).to_numpy(dtype=float)
    st = run.cfg.stats
    low, high = bootstrap_ci(diff, st.n_bootstrap, st.confidence, derived_seed(run.cfg.seed, SeedPurpose.REPORT_VERDICTS, last))
    return float(np.nanmean(diff)), low, high


def method_verdicts(run: rd.RunDir, seeds: list[int] | None) -> list[dict]:
    """One plain-sentence verdict per method, from the numbers of steps 7, the replicates and the sanity checks."""
    if not run.explanation_metrics().is_file():
        return []
    frame = read_csv(run.explanation_metrics(), ["round", "weights_remaining", "method", "metric", "value"], step=STEP7)
    if frame.empty:
        return []
    first, last = int(frame["round"].min()), int(frame["round"].max())
    weights = _pct(frame.loc[frame["round"] == last, "weights_remaining"].iloc[0])
    per_image = read_csv(run.explanation_per_image(), step=STEP7) if run.explanation_per_image().is_file() else None
    tests, bands = _tests(run), _aggregate(run, seeds, "null_bands")
    sanity = sanity_tables(run)
    out = []
    for method, g in frame[frame["method"].isin(list(METHODS))].groupby("method", sort=False):
        parts, flagged = [], False
        for family, candidates in VERDICT_METRICS.items():
            metric = _pick(g, candidates)
            if metric is None:
                continue
            rows = g[g["metric"] == metric].set_index("round")
            values = rows["value"]
            label = f"{family} ({LABELS.get(metric, metric)})"
            if family.startswith("consistency"):
                ci = [rows[c].get(last) for c in ("ci_low", "ci_high")] if "ci_low" in rows else [None, None]
                text = f"{label} at {weights} weights is {_interval(values.get(last), *ci)}"
                if bands is not None:
                    b = bands[(bands["method"] == method) & (bands["metric"] == metric) & (bands["round"] == last)]
                    within = str(b["within_seed_band"].iloc[0]).lower() if len(b) else ""
                    text += {"true": "; within the seed-to-seed band: yes", "false": "; within the seed-to-seed band: no"
                             }.get(within, "; within the seed-to-seed band: not computed for this method")
                    if len(b):
                        text += f" (band {_interval(b['seed_mean'].iloc[0], b['seed_ci_low'].iloc[0], b['seed_ci_high'].iloc[0])})"
                else:
                    text += "; within the seed-to-seed band: not computed (no replicates)"
                parts.append(text)
                continue
            change = _change(run, per_image, method, metric, first, last)
            delta = change if change is not None else (values.get(last, np.nan) - values.get(first, np.nan), None, None)
            text = (f"{label} changes by {_interval(*delta, sign=True)} from dense ({_num(values.get(first))}) to {weights} "
                    f"weights ({_num(values.get(last))})")
            if tests is not None:
                t = tests[(tests["method"] == method) & (tests["metric"] == metric) & (tests["comparison"] == "dense")
                          & (tests["round"] == last)]
                if len(t):
                    sig = bool(t["significant"].iloc[0])
                    text += f", {'a significant' if sig else 'not a significant'} change (adjusted p = {_num(t['p_adjusted'].iloc[0], 3)})"
            parts.append(text)
        if sanity is not None:
            v = sanity[0][sanity[0]["method"] == method]
            if len(v):
                same = v[v["verdict"] == NO_CHANGE]
                measure = _spearman_label(run.cfg.sanity.verdict_measure)
                numbers = ", ".join(f"{s:.2f} at round {int(r)} ({kind})"
                                    for r, s, kind in zip(v["round"], v["similarity"], v["randomization"]))
                if method == BASELINE:
                    parts.append(f"sanity check: random maps redrawn at every stage stay at the chance level "
                                 f"({measure} {numbers}), as expected of the negative control")
                elif len(same):
                    flagged = True
                    where = ", ".join(str(r) for r in sorted(set(same["round"].astype(int))))
                    parts.append(f"sanity check FAILED at round {where}: its maps do not change when the weights are "
                                 f"randomised ({measure} {numbers}), so they cannot tell us anything about pruning")
                else:
                    parts.append(f"sanity check passed: its maps change when the weights are randomised "
                                 f"({measure} {numbers})")
            else:
                parts.append("sanity check: not computed for this method")
        else:
            parts.append(f"sanity check: not computed (run {SANITY})")
        out.append({"method": method, "text": "; ".join(parts) + ".", "cls": "bad" if flagged else ""})
    return out


def verdict_section(run: rd.RunDir, seeds: list[int] | None) -> dict:
    s = _section("verdicts", "Verdict per method", "From the dense to the sparsest round, in plain sentences generated "
                 "from the numbers below (interval: paired bootstrap of the mean change over the images; "
                 "significance: the Wilcoxon signed-rank test of the paired values, corrected over all tests, which "
                 "asks whether the changes lean one way rather than whether their mean is zero, so an interval "
                 "containing 0 can go with a significant test when most images change a little one way).")
    items = method_verdicts(run, seeds)
    if not items:
        return _missing(s, "Explanation metrics", STEP7)
    s["blocks"].append({"kind": "sentences", "entries": items})
    return s


# ---------------------------------------------------------------- the page

def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def report_inputs(run: rd.RunDir, seeds: list[int] | None) -> list[Path]:
    """Every file the report reads (a rebuild is due when one is newer than the report)."""
    folders = [run.root / d for d in ("pruning", "test", "tcav", "metrics", "plots", "sanity")]
    found = [run.heatmap_images()] + [p for f in folders if f.is_dir() for p in f.rglob("*")
                                      if p.is_file() and p.suffix in (".csv", ".png", ".npz", ".pt", ".json")]
    if seeds is not None:
        found += [p for p in run.aggregate_dir(seeds).rglob("*") if p.is_file()]
    found += [r.test_metrics() for r in (run.sibling(**{"pruning.rewind": "reinit"}),
                                         run.sibling(**{"pruning.method": "random"}))]
    return [p for p in found if p.is_file()]


def render_report(run: rd.RunDir | Config) -> str:
    """The report page of a run, as HTML text."""
    run = _as_run(run)
    seeds = replicate_seeds(run)
    sections = [verdict_section(run, seeds), provenance_section(run), accuracy_section(run, seeds),
                tcav_section(run, seeds), maps_section(run), metrics_section(run), null_band_section(run, seeds),
                sanity_section(run)]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"{run.cfg.dataset}, {run.cfg.model_arch}, {run.cfg.pruning.method} pruning ({run.cfg.pruning.scope}), "
                f"rewind {run.cfg.pruning.rewind}, seed {run.cfg.seed}; generated {stamp} by main_report.py")
    return _environment().get_template("report.html.j2").render(run_name=run.name, subtitle=subtitle, sections=sections)


@rd.locked("report")
def build_report(run: rd.RunDir | Config, force: bool = False, log=print) -> Path:
    """Write ``report/report.html`` of a run (skipped when it is newer than every file it reads, unless ``force``)."""
    run = _as_run(run)
    if not run.pruning_summary().is_file():
        raise UserError(f"run directory '{run.root}' has no pruning summary; run step 1 (main_lth_pruning.py) first "
                        "(or check logs and experiment_name)")
    target = run.report_file()
    inputs = report_inputs(run, replicate_seeds(run))
    if not force and target.is_file() and all(p.stat().st_mtime_ns <= target.stat().st_mtime_ns for p in inputs):
        log(f"report up to date: {target} (--force rebuilds it)")
        return target
    write_text(target, render_report(run))
    log(f"report written: {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


__all__ = ["build_report", "render_report", "plot_sanity", "method_verdicts", "git_commit", "package_versions",
           "checkpoint_checksums", "replicate_seeds"]
