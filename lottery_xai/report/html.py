"""One self-contained HTML report per run (``main_report.py``): ``report/report.html`` in the run folder.

The page holds the run's config and provenance (Python and package versions, the git commit of the code,
the SHA-256 of every round's checkpoint), the accuracy, the TCAV tables with their significance, the map
grids, every explanation metric with its interval and tests, the replicates' null bands, the sanity checks
and a short verdict per method in plain sentences generated from the numbers (:mod:`.verdicts`). Every
figure is a PNG embedded as a ``data:`` URI (no file, no network is needed to open the page); the page is
rendered by jinja2 (autoescaped) from ``templates/report.html.j2`` and written atomically.

The page's parts are registered per step (:func:`.page.part`: this module's accuracy, TCAV, maps, metrics
and null bands, :mod:`.sanity`'s sanity checks) and shown in the order of the steps. A part whose step
has not run is one line ("not computed: run ..." with the step's label), never an error; the report of a
run that step 1 has not started is a UserError. A rerun rebuilds the page only when a file of the run (or
of its replicates) is newer than it (``--force`` rebuilds it anyway, e.g. after a code update).
"""
from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from .. import steps
from ..config import cav_protocol, dump_yaml
from ..errors import UserError
from ..metrics import METRICS
from ..pipeline.tcav import TCAV_TYPES
from ..rundir import RunDir
from ..safe_io import fingerprint, read_csv, write_text
from ..steps import step
from . import figures
from .page import (REPLICATES, figure_block, figures_details, file_figure_block, fmt_interval, fmt_num, fmt_pct,
                   frame_block, new_section, not_computed, part, parts, replicate_seeds, replicate_table, table_block)
from .run import plot_heatmaps
from .tables import (MissingInput, accuracy_runs, explanation_table, heatmap_methods, metric_tests, tcav_ground_truth,
                     tcav_table)
from .verdicts import verdict_section

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("lottery-xai", "torch", "torchvision", "numpy", "scipy", "pandas", "scikit-learn", "statsmodels",
            "matplotlib", "scikit-image", "opencv-python-headless", "jinja2")


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


def checkpoint_checksums(run: RunDir) -> list[list[str]]:
    """Round, weights remaining, checkpoint file and its SHA-256 (the first 16 hex digits: the fingerprint
    every later step records) of every finished round."""
    rows = []
    summary = read_csv(run.pruning_summary(), ["round", "weights_remaining"], missing_ok=True)
    weights = dict(zip(summary["round"].astype(int), summary["weights_remaining"]))
    for r in run.finished_rounds():
        path = run.checkpoint(r, run.cfg.test.checkpoint)
        if path.is_file():
            rows.append([str(r), fmt_pct(weights.get(r, np.nan)), str(path.relative_to(run.root)), fingerprint(path)])
    return rows


def provenance_section(run: RunDir) -> dict:
    s = new_section("provenance", "Configuration and provenance")
    s["blocks"] += [
        {"kind": "text", "text": f"Run folder: {run.root}. Code: git commit {git_commit()}."},
        table_block(["round", "weights remaining", "checkpoint", "SHA-256 (first 16 hex digits)"], checkpoint_checksums(run),
                    "Checkpoints the results were computed from"),
        {"kind": "details", "summary": "Python and package versions",
         "blocks": [table_block(["software", "version"], package_versions())]},
        {"kind": "details", "summary": "the resolved config", "blocks": [{"kind": "pre", "text": dump_yaml(run.cfg)}]},
    ]
    return s


# ---------------------------------------------------------------- sections

@part("test")
def accuracy_section(run: RunDir, seeds: list[int] | None) -> dict:
    s = new_section("accuracy", "Accuracy", "Test accuracy of every round of the ticket and of its controls found beside it.")
    try:
        runs = accuracy_runs(run)
    except MissingInput:
        return not_computed(s, "Test accuracy", steps.label("test"))
    rounds = sorted({int(r) for f in runs.values() for r in f["round"]})
    columns = ["round", "weights remaining", *runs]
    rows = []
    for r in rounds:
        cells = [f.loc[f["round"] == r, "test_acc"] for f in runs.values()]
        weights = next((f.loc[f["round"] == r, "weights_remaining"].iloc[0] for f in runs.values() if (f["round"] == r).any()))
        rows.append([str(r), fmt_pct(weights), *[fmt_pct(c.iloc[0]) if len(c) else "–" for c in cells]])
    s["blocks"] += [table_block(columns, rows, "Test accuracy"),
                    figure_block(figures.accuracy_vs_weights(runs), "Accuracy against the share of weights remaining")]
    table = replicate_table(run, seeds, "accuracy")
    if table is None:
        return not_computed(s, "Accuracy over seeds (replicates)", REPLICATES)
    rows = [[str(t.run), str(int(t.round)), fmt_pct(t.weights_remaining),
             fmt_interval(100 * t.mean, 100 * t.ci_low, 100 * t.ci_high, 2), str(int(t.n_seeds))]
            for t in table.itertuples()]
    s["blocks"].append(table_block(["run", "round", "weights remaining", "test accuracy %, mean [CI] over seeds", "seeds"],
                                   rows, f"Replicates: seeds {', '.join(map(str, seeds))}"))
    return s


@part("tcav")
def tcav_section(run: RunDir, seeds: list[int] | None, top: int = 6) -> dict:
    cfg = run.cfg
    p = cav_protocol(cfg)
    threshold = {"paper": f"p < {cfg.tcav.alpha:g} / 2 (Bonferroni at m = 2, Kim et al. 2018)",
                 "none": f"p < {cfg.tcav.alpha:g}", "concepts": f"p < {cfg.tcav.alpha:g} / n_concepts (Bonferroni)"}
    s = new_section("tcav", "TCAV", f"Concept sensitivity per class at the concept layers, TCAV protocol {p.label}; "
                    f"significant: two-sided {p.test.capitalize()} t-test against the random CAVs, {threshold[p.correction]}.")
    try:
        table = tcav_table(run)
    except MissingInput:
        return not_computed(s, "TCAV", steps.label("tcav"))
    table = table.assign(significant=table["significant"].astype(bool))
    rows = []
    for (r, layer), g in table.groupby(["round", "layer"]):
        sig = g[g["significant"]]
        rows.append([str(r), fmt_pct(g["weights_remaining"].iloc[0]), layer, str(len(g)), str(len(sig)),
                     fmt_pct(len(sig) / max(1, len(g))), fmt_num(sig["tcav_mean"].mean()), fmt_num(sig["tcav_mean"].gt(0.5).mean())])
    s["blocks"].append(table_block(["round", "weights remaining", "layer", "(class, concept) pairs", "significant",
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
    s["blocks"].append(table_block(["layer", "class", f"round {first}: significant concepts (score)",
                               f"round {last}: significant concepts (score)"], rows,
                              f"Significant concepts per class, dense and sparsest round (top {top} by score)"))
    full = read_csv(run.tcav_scores(), step=steps.label("tcav"), types=TCAV_TYPES)
    full = full[full["round"].isin([first, last])]
    keep = [c for c in ("round", "layer", "class", "concept", "tcav_mean", "tcav_std", "random_mean", "p_value",
                        "significant") if c in full.columns]
    s["blocks"].append({"kind": "details", "summary": f"every (class, concept) pair at rounds {first} and {last}, "
                        "with its p-value", "blocks": [frame_block(full[keep], digits=4)]})
    try:
        truth = pd.concat([tcav_ground_truth(run, r) for r in (first, last)], ignore_index=True)
        if len(truth):
            s["blocks"].append(frame_block(truth, "Against the ground truth: share of (class, defining attribute) "
                                           "pairs significant and > 0.5, and of (class, absent attribute) pairs"))
    except UserError:
        pass  # a dataset without known class-defining attributes
    agg = replicate_table(run, seeds, "tcav")
    if agg is None:
        not_computed(s, "TCAV over seeds (replicates)", REPLICATES)
    else:
        share = agg.groupby("round").agg(weights=("weights_remaining", "first"), share=("significant_share", "mean"),
                                         always=("significant_share", lambda v: float((v == 1).mean())))
        s["blocks"].append(table_block(["round", "weights remaining", "mean share of seeds where a pair is significant",
                                   "pairs significant in every seed"],
                                  [[str(r), fmt_pct(t.weights), fmt_num(t.share), fmt_pct(t.always)] for r, t in share.iterrows()],
                                  f"Replicates: seeds {', '.join(map(str, seeds))}"))
    figures_details(s, run.plot("tcav").parent, "tcav_*.png", "TCAV figures (step 8)")
    return s


@part("heatmaps")
def maps_section(run: RunDir, seeds: list[int] | None = None) -> dict:
    s = new_section("maps", "Attribution maps", "The same test images at every round (step 6).")
    methods = heatmap_methods(run)
    if not methods:
        return not_computed(s, "Attribution maps", steps.label("heatmaps"))
    for method in methods:
        png = run.plot(f"heatmaps_{method}")
        s["blocks"].append(file_figure_block(png, method) if png.is_file()
                           else figure_block(plot_heatmaps(run, method, save=False), method))
    return s


@part("metrics")
def metrics_section(run: RunDir, seeds: list[int] | None = None) -> dict:
    s = new_section("metrics", "Explanation metrics",
                    "Mean over the step-6 images per round, with the bootstrap interval over the images. * : differs from "
                    "the dense round, † : differs from the random baseline (Wilcoxon signed-rank on the per-image values, "
                    f"{run.cfg.stats.correction}-corrected over rounds x methods x metrics, at {run.cfg.stats.alpha:g}).")
    if not run.explanation_metrics().is_file():
        return not_computed(s, "Explanation metrics", steps.label("metrics"))
    frame = explanation_table(run)
    has_ci = {"ci_low", "ci_high"} <= set(frame.columns)
    if not has_ci:
        not_computed(s, "Intervals", f"{steps.label('metrics')} with --force")
    tests = metric_tests(run)
    if tests is None:
        not_computed(s, "Paired tests", f"{steps.label('metrics')} with --force")
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
                text = fmt_interval(v["value"], v["ci_low"], v["ci_high"]) if has_ci else fmt_num(v["value"])
                cells.append(text + marks.get((int(r), method, metric), ""))
            rows.append([metric, "" if spec is None else ("higher" if spec.higher_is_better else "lower"), *cells])
        s["blocks"].append(table_block(["metric", "better", *[f"round {r} ({fmt_pct(weights[r])})" for r in rounds]], rows,
                                       f"{method}"))
    figures_details(s, run.plot("metric").parent, "metric_*.png", "metric figures (step 8)")
    return s


@part("aggregate")
def null_band_section(run: RunDir, seeds: list[int] | None) -> dict:
    s = new_section("null-bands", "Replicates and null bands",
                    "The change that needs no pruning (the same consistency metric between the dense models of two seeds: "
                    "the seed-to-seed band) and the change random pruning causes at the same sparsity (the random band), "
                    "against the ticket's drift from its dense model.")
    bands = replicate_table(run, seeds, "null_bands")
    if bands is None:
        return not_computed(s, "Null bands", REPLICATES)
    rows = []
    for t in bands.sort_values(["method", "metric", "round"]).itertuples():
        within = str(t.within_seed_band).lower()
        verdict = {"true": {"text": "yes", "cls": "good"}, "false": {"text": "no", "cls": "bad"}}.get(within, "–")
        rows.append([t.method, t.metric, str(int(t.round)), fmt_pct(t.weights_remaining),
                     fmt_interval(t.seed_mean, t.seed_ci_low, t.seed_ci_high),
                     fmt_interval(t.random_mean, t.random_ci_low, t.random_ci_high),
                     fmt_interval(t.ticket_mean, t.ticket_ci_low, t.ticket_ci_high), verdict])
    s["blocks"].append(table_block(["method", "metric", "round", "weights remaining", "seed-to-seed band",
                               "random-pruning band", "ticket", "ticket within the seed band"], rows,
                              f"Replicates: seeds {', '.join(map(str, seeds))} (mean [CI])"))
    figures_details(s, run.aggregate_plot(seeds, "x").parent, "*.png", "replicate figures (main_aggregate.py)")
    return s


# ---------------------------------------------------------------- the page

def _environment():
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def report_inputs(run: RunDir, seeds: list[int] | None) -> list[Path]:
    """Every file the report reads (a rebuild is due when one is newer than the report)."""
    folders = [run.root / steps.get(k).folder for k in ("pruning", "test", "tcav", "metrics", "plots", "sanity")]
    found = [run.heatmap_images()] + [p for f in folders if f.is_dir() for p in f.rglob("*")
                                      if p.is_file() and p.suffix in (".csv", ".png", ".npz", ".pt", ".json")]
    if seeds is not None:
        found += [p for p in run.aggregate_dir(seeds).rglob("*") if p.is_file()]
    found += [r.test_metrics() for r in (run.sibling(**{"pruning.rewind": "reinit"}),
                                         run.sibling(**{"pruning.method": "random"}))]
    return [p for p in found if p.is_file()]


def render_report(run: RunDir) -> str:
    """The report page of a run, as HTML text: the verdicts, the provenance, then the part of every step that
    has one (:func:`lottery_xai.report.page.part`), in the order of the steps."""
    seeds = replicate_seeds(run)
    sections = [verdict_section(run, seeds), provenance_section(run)] + [make(run, seeds) for make in parts()]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"{run.cfg.dataset}, {run.cfg.model_arch}, {run.cfg.pruning.method} pruning ({run.cfg.pruning.scope}), "
                f"rewind {run.cfg.pruning.rewind}, seed {run.cfg.seed}; generated {stamp} by main_report.py")
    return _environment().get_template("report.html.j2").render(run_name=run.name, subtitle=subtitle, sections=sections)


@step("report", number=9, script="main_report.py", title="the run report: one self-contained HTML file with the "
      "config and provenance, accuracy, TCAV, the map grids, every metric with its interval and tests, the null bands "
      "of the replicates, the sanity checks and a verdict per method", folder="report", rounds="none", draws=True,
      pipeline=True, needs=("pruning",), uses=("test", "tcav", "heatmaps", "metrics", "plots", "sanity", "aggregate"),
      writes=("report/report.html",))
def build_report(run: RunDir, force: bool = False, log=print) -> Path:
    """Write ``report/report.html`` of a run (skipped when it is newer than every file it reads, unless ``force``)."""
    if not run.pruning_summary().is_file():
        raise UserError(f"run directory '{run.root}' has no pruning summary; run {steps.label('pruning')} first "
                        "(or check logs and experiment_name)")
    run.check_settings()  # the report's config and provenance must be the run's
    target = run.report_file()
    inputs = report_inputs(run, replicate_seeds(run))
    if not force and target.is_file() and all(p.stat().st_mtime_ns <= target.stat().st_mtime_ns for p in inputs):
        log(f"report up to date: {target} (--force rebuilds it)")
        return target
    write_text(target, render_report(run))
    log(f"report written: {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target
