"""The sanity checks in figures and in the report (``main_sanity_checks.py`` computes them, see
:mod:`lottery_xai.pipeline.sanity`): the similarity curves of every randomisation and measure, one
image's maps at every stage, and the report's part with the verdicts."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import steps
from ..attribution import METHODS
from ..pipeline.sanity import (CHANGES, CONTROL_METHOD, NO_CHANGE, RISE_MEASURES, SUMMARY_COLUMNS, VERDICT_COLUMNS,
                               cascade_stage, read_stage, verdict_threshold)
from ..rundir import RunDir, round_name
from ..safe_io import atomic_path, load_npz, read_csv
from ..steps import draws
from . import figures
from .page import fmt_num, fmt_pct, figure_block, frame_block, new_section, not_computed, part, table_block
from .tables import MissingInput

BASELINE = CONTROL_METHOD  # the random attribution: the sanity check's control (redrawn at every stage: the chance level)


def sanity_tables(run: RunDir) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    if not run.sanity_verdicts().is_file() or not run.sanity_summary().is_file():
        return None
    return (read_csv(run.sanity_verdicts(), VERDICT_COLUMNS, step=steps.label("sanity")),
            read_csv(run.sanity_summary(), SUMMARY_COLUMNS, step=steps.label("sanity")))


def sanity_figures(run: RunDir, summary: pd.DataFrame, image: int = 0) -> list[tuple]:
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
            verdict = measure == s.verdict_measure
            stage = cascade_stage(read_stage(s), int(part["stage"].max())) if verdict and kind == "cascading" else None
            out.append((figures.sanity_cascade(part, measure, verdict_threshold(s) if verdict else None,
                                               randomization=kind, origin=0.0 if measure in RISE_MEASURES else 1.0,
                                               stage=stage, label=measure_label(measure)),
                        f"{kind} randomisation ({what}): {measure_label(measure)} of each stage's maps against the "
                        "original model's (mean and std over the images; dashed: the control, random maps redrawn "
                        "at every stage" + ("; dotted: the verdict's threshold and stage" if verdict else "") + ")",
                        "sanity_checks" if kind == "cascading" else f"sanity_checks_{kind}"))
    if not kinds or not run.heatmap_images().is_file():
        return out
    images = load_npz(run.heatmap_images(), keys=("ids", "images"), step=steps.label("heatmaps"))
    for r in sorted(summary["round"].unique()):
        maps, blocks, image_id = {}, [], None
        for method in summary.loc[summary["round"] == r, "method"].unique():
            path = run.sanity_maps(int(r), method)
            if path.is_file():
                data = load_npz(path, keys=(f"maps_{kinds[0]}", "ids", "blocks"), step=steps.label("sanity"))
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
                        f"sanity_maps_{round_name(int(r))}"))
    return out


@draws("sanity")
def plot_sanity(run: RunDir, save: bool = True) -> list:
    """The sanity-check figures of a run: ``sanity/sanity_checks.png`` (the cascading curves of the
    verdict's measure), ``sanity/sanity_checks_independent.png`` (when computed) and
    ``sanity/sanity_maps_round_XX.png`` (one image's maps at every stage)."""
    tables = sanity_tables(run)
    if tables is None:
        raise MissingInput(f"'{run.sanity_verdicts()}' is missing; run {steps.label('sanity')} first")
    measure = run.cfg.sanity.verdict_measure
    drawn = []
    for fig, _, name in sanity_figures(run, tables[1][tables[1]["measure"] == measure]):
        if save:
            with atomic_path(run.sanity_figure(name)) as tmp:
                fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
            figures.plt.close(fig)
        drawn.append(fig)
    return drawn


def expected_outcome(method: str) -> str:
    """What Adebayo et al. 2018 found for ``method`` (its spec's ``sanity``), as the report writes it."""
    spec = METHODS.get(method)
    found = spec.sanity if spec is not None else None
    return {"fails": f"{NO_CHANGE} (positive control)", "passes": CHANGES}.get(found, "")


def positive_control(verdicts: pd.DataFrame) -> list[dict]:
    """One sentence per known failure in the verdict table (guided backprop, guided Grad-CAM: the methods
    Adebayo et al. 2018 found not to change under randomisation) and per method they found to pass: whether
    the test flags it as they did. A test that does not flag the positive controls cannot vouch for the
    methods it passes."""
    out = []
    for method, rows in verdicts.groupby("method", sort=False):
        spec = METHODS.get(method)
        if spec is None or spec.sanity is None:
            continue
        expected = NO_CHANGE if spec.sanity == "fails" else CHANGES
        where = ", ".join(f"round {int(t.round)} {t.randomization} ({fmt_num(t.similarity)}: {t.verdict})"
                          for t in rows.itertuples())
        agree = bool((rows["verdict"] == expected).all())
        role = ("a positive control: Adebayo et al. 2018 found its maps unchanged under randomisation"
                if spec.sanity == "fails" else "Adebayo et al. 2018 found its maps to change under randomisation")
        verdict = "the test agrees" if agree else "the test does NOT agree"
        out.append({"method": method, "text": f"{role}: {verdict}, {where}.",
                    "cls": "good" if agree else "bad"})
    return out


def stage_label(stage: str) -> str:
    """The cascade's verdict stage in words (``sanity.verdict_stage``)."""
    return {"all": "once every block is random",
            "upper_half": "once the upper half of the blocks is random, from the logits down"}[stage]


def measure_label(measure: str) -> str:
    return {"spearman": "Spearman (signed maps)", "spearman_abs": "Spearman (absolute values)", "ssim": "SSIM",
            "top_iou": "top-k IoU", "emprt": "eMPRT (relative rise of the maps' entropy)"}.get(measure, measure)


def unchanged_rule(s) -> str:
    """The verdict's rule for 'does not change', in words (`sanity` config)."""
    at_most = s.verdict_measure in RISE_MEASURES  # a measure of change: unchanged up to the threshold
    return (f"{measure_label(s.verdict_measure)} {'<=' if at_most else '>='} {verdict_threshold(s):g} "
            f"{stage_label(read_stage(s))}")


@part("sanity")
def sanity_section(run: RunDir, seeds: list[int] | None = None) -> dict:
    cfg = run.cfg
    s = new_section("sanity", "Sanity checks", "Model-parameter randomisation test (Adebayo et al. 2018): blocks of the "
                    "network are re-initialised (cascading: from the logits down, one more per stage; independent: one "
                    "block at a time, the others trained) and each stage's maps of the step-6 images are compared with the "
                    "original model's. A method whose maps stay similar "
                    f"({unchanged_rule(cfg.sanity)}; "
                    "independent: under every single block) does not depend on the weights and cannot tell us anything "
                    "about pruning. The control, random maps redrawn at every stage, shows the chance level of each measure.")
    tables = sanity_tables(run)
    if tables is None:
        return not_computed(s, "Sanity checks", steps.label("sanity"))
    verdicts, summary = tables
    base = summary[(summary["method"] == BASELINE) & (summary["measure"] == cfg.sanity.verdict_measure)]
    control = {(t.round, t.randomization, t.stage): t.mean for t in base.itertuples()}  # the chance level per stage

    def judged(method: str, outcome: str) -> dict:
        if method == BASELINE:
            return {"text": "the control (chance level)", "cls": "dim"}
        return {"text": outcome, "cls": "bad" if outcome == NO_CHANGE else "good"}

    rows = [[t.method, str(int(t.round)), fmt_pct(t.weights_remaining), t.randomization,
             f"{int(t.stage)} (+{t.block})" if t.randomization == "cascading" else f"{int(t.stage)} ({t.block} only)",
             measure_label(t.measure), fmt_num(t.similarity), fmt_num(control.get((t.round, t.randomization, t.stage), np.nan)),
             judged(t.method, t.verdict), expected_outcome(t.method)]
            for t in verdicts.itertuples()]
    s["blocks"].append(table_block(["method", "round", "weights remaining", "randomisation", "stage read", "measure",
                               "similarity", "control at that stage", "verdict", "Adebayo et al. 2018"], rows,
                                   "Verdicts"))
    controls = positive_control(verdicts)
    if controls:
        s["blocks"].append({"kind": "text", "text": "Positive controls: guided backprop and guided Grad-CAM are the "
                            "methods Adebayo et al. 2018 found not to change when the weights are randomised; a test "
                            "that flags them, and passes the methods they found to change, can be trusted with the "
                            "others (sanity.controls tests them besides sanity.methods)."})
        s["blocks"].append({"kind": "sentences", "entries": controls})
    s["blocks"] += [figure_block(fig, caption) for fig, caption, _ in sanity_figures(run, summary)]
    wide = summary.pivot_table(index=["round", "method", "randomization", "measure"], columns="stage",
                               values="mean").reset_index()
    blocks = summary.drop_duplicates("stage").set_index("stage")["block"]
    wide.columns = [c if not isinstance(c, (int, np.integer)) else f"{int(c)}: {blocks[c]}" for c in wide.columns]
    s["blocks"].append({"kind": "details", "summary": "every measure at every stage (mean over the images; cascading: "
                        "that block and every one above it random; independent: that block alone random; emprt is "
                        "the rise of the maps' entropy, 0 = unchanged, the others similarities, 1 = unchanged)",
                        "blocks": [frame_block(wide)]})
    return s
