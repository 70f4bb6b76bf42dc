"""The report's verdict per method, the section the report opens with: from the dense to the sparsest round,
per family of metrics (:class:`Verdict`, computed once by :func:`verdicts`), the change of the mean with its
paired bootstrap interval (step 7's per-image values) and the corrected Wilcoxon test (``tests.csv``); for the
consistency with the dense map, whether the ticket's drift is within the seed-to-seed band of the replicates
(``null_bands.csv``). A compact table shows them (:func:`verdict_table`: method x family), the sentences below
it say the same numbers in words, with the sanity check's verdict (:func:`method_verdicts`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import steps
from ..attribution import METHODS
from ..pipeline.sanity import NO_CHANGE
from ..rundir import RunDir
from ..safe_io import read_csv
from ..seeds import SeedPurpose, derived_seed
from ..stats.inference import bootstrap_ci
from .page import fmt_interval, fmt_num, fmt_pct, new_section, not_computed, replicate_table, table_block
from .sanity import BASELINE, measure_label, sanity_tables
from .tables import explanation_table, metric_tests

# the metric each verdict reads, per family (the first present in step 7's table)
VERDICT_METRICS = {"faithfulness": ("deletion_auc", "insertion_auc"),
                   "localisation": ("energy_in_box", "pointing_game"),
                   "consistency with the dense map": ("spearman", "ssim"),
                   # the opt-in families (metrics.names), when step 7 computed them
                   "robustness": ("max_sensitivity", "local_lipschitz"),
                   "complexity": ("sparseness", "complexity"),
                   "randomisation": ("random_logit", "randomisation_score")}
LABELS = {"deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC", "energy_in_box": "energy in the box, %",
          "pointing_game": "pointing game", "spearman": "Spearman", "ssim": "SSIM",
          "max_sensitivity": "max-sensitivity", "local_lipschitz": "local Lipschitz estimate",
          "random_logit": "random-logit SSIM", "randomisation_score": "parameter-randomisation score"}


def _pick(frame: pd.DataFrame, candidates: tuple) -> str | None:
    present = set(frame["metric"])
    return next((m for m in candidates if m in present), None)


def _change(run: RunDir, per_image: pd.DataFrame | None, method: str, metric: str, first: int, last: int):
    """The mean per-image difference last - first and its paired bootstrap interval (None without per-image values)."""
    if per_image is None:
        return None
    part = per_image[(per_image["method"] == method) & (per_image["metric"] == metric)]
    wide = part.pivot_table(index="image_id", columns="round", values="value", aggfunc="first")
    if first not in wide or last not in wide:
        return None
    diff = (wide[last] - wide[first]).to_numpy(dtype=float)
    st = run.cfg.stats
    low, high = bootstrap_ci(diff, st.n_bootstrap, st.confidence,
                             derived_seed(run.cfg.seed, SeedPurpose.REPORT_VERDICTS, last))
    return float(np.nanmean(diff)), low, high


@dataclass(frozen=True)
class Verdict:
    """One method and family of metrics, from the dense to the sparsest round (the numbers of a table row)."""

    method: str
    family: str
    metric: str
    dense: float                 # the metric's mean at the dense round
    last: float                  # ... at the sparsest round
    change: float                # the mean change (per image where step 7 kept the per-image values)
    low: float | None            # its interval (None without one)
    high: float | None
    p_adjusted: float | None     # the corrected paired test against the dense round at the sparsest (None: none)
    significant: bool | None
    within_band: bool | None     # the ticket within the seed-to-seed band (None: no band for it)
    band: tuple | None           # (mean, low, high) of the band
    value_interval: tuple = (None, None)  # the interval of ``last`` (step 7's bootstrap over the images)

    @property
    def consistency(self) -> bool:
        return self.family.startswith("consistency")


def _band(bands: pd.DataFrame | None, method: str, metric: str, last: int):
    """(within, (mean, low, high)) of the replicates' seed band of a method and metric at the sparsest round."""
    if bands is None:
        return None, None
    b = bands[(bands["method"] == method) & (bands["metric"] == metric) & (bands["round"] == last)]
    if not len(b):
        return None, None
    within = {"true": True, "false": False}.get(str(b["within_seed_band"].iloc[0]).lower())
    return within, (b["seed_mean"].iloc[0], b["seed_ci_low"].iloc[0], b["seed_ci_high"].iloc[0])


def verdicts(run: RunDir, seeds: list[int] | None) -> tuple[list[Verdict], str]:
    """Every method's verdict per family of metrics (the metric of :data:`VERDICT_METRICS` present in step 7's
    table), and the weights remaining at the sparsest round; ([], "") before step 7."""
    if not run.explanation_metrics().is_file():
        return [], ""
    frame = explanation_table(run)
    if frame.empty:
        return [], ""
    first, last = int(frame["round"].min()), int(frame["round"].max())
    weights = fmt_pct(frame.loc[frame["round"] == last, "weights_remaining"].iloc[0])
    per_image = read_csv(run.explanation_per_image(), step=steps.label("metrics")) if run.explanation_per_image().is_file() else None
    tests, bands = metric_tests(run), replicate_table(run, seeds, "null_bands")
    out = []
    for method, g in frame[frame["method"].isin(list(METHODS))].groupby("method", sort=False):
        for family, candidates in VERDICT_METRICS.items():
            metric = _pick(g, candidates)
            if metric is None:
                continue
            rows = g[g["metric"] == metric].set_index("round")
            values = rows["value"]
            dense, now = values.get(first, np.nan), values.get(last, np.nan)
            ci = tuple(rows[c].get(last) for c in ("ci_low", "ci_high")) if "ci_low" in rows else (None, None)
            if family.startswith("consistency"):  # the similarity with the dense map: its interval, shifted
                shift = [None if v is None else v - dense for v in ci]
                change = (now - dense, *shift)
            else:
                change = _change(run, per_image, method, metric, first, last) or (now - dense, None, None)
            p, sig = None, None
            if tests is not None:
                t = tests[(tests["method"] == method) & (tests["metric"] == metric) & (tests["comparison"] == "dense")
                          & (tests["round"] == last)]
                if len(t):
                    p, sig = float(t["p_adjusted"].iloc[0]), bool(t["significant"].iloc[0])
            within, band = _band(bands, method, metric, last)
            out.append(Verdict(method, family, metric, dense, now, *change, p, sig, within, band, ci))
    return out, weights


def verdict_table(items: list[Verdict], weights: str, seeds: list[int] | None) -> dict:
    """The compact table: one row per method and family of metrics, with the change from the dense round, its
    interval, the corrected significance and whether the ticket stays within the seed-to-seed band."""
    rows = []
    for v in items:
        significance = "–" if v.p_adjusted is None else {
            "text": f"{fmt_num(v.p_adjusted, 3)} ({'significant' if v.significant else 'not significant'})",
            "cls": "bad" if v.significant else ""}  # a significant change is what to look at
        if v.within_band is None:
            band = "no band" if seeds is not None and v.consistency else ("no replicates" if v.consistency else "–")
        else:
            band = {"text": "yes" if v.within_band else "no", "cls": "good" if v.within_band else "bad"}
        rows.append([v.method, f"{v.family} ({LABELS.get(v.metric, v.metric)})", fmt_num(v.dense), fmt_num(v.last),
                     fmt_interval(v.change, v.low, v.high, sign=True), significance, band])
    return table_block(["method", "family (metric)", "dense", f"sparsest ({weights} weights)",
                        "change from dense [interval]", "corrected p (dense vs sparsest)", "within the seed band"],
                       rows, "Verdict table: from the dense to the sparsest round")


def _sentence(v: Verdict, weights: str, bands_exist: bool) -> str:
    label = f"{v.family} ({LABELS.get(v.metric, v.metric)})"
    if v.consistency:
        text = f"{label} at {weights} weights is {fmt_interval(v.last, *v.value_interval)}"
        if not bands_exist:
            return text + "; within the seed-to-seed band: not computed (no replicates)"
        text += {True: "; within the seed-to-seed band: yes", False: "; within the seed-to-seed band: no"
                 }.get(v.within_band, "; within the seed-to-seed band: not computed for this method")
        return text + (f" (band {fmt_interval(*v.band)})" if v.band is not None else "")
    text = (f"{label} changes by {fmt_interval(v.change, v.low, v.high, sign=True)} from dense ({fmt_num(v.dense)}) "
            f"to {weights} weights ({fmt_num(v.last)})")
    if v.p_adjusted is not None:
        text += (f", {'a significant' if v.significant else 'not a significant'} change (adjusted p = "
                 f"{fmt_num(v.p_adjusted, 3)})")
    return text


def method_verdicts(run: RunDir, seeds: list[int] | None, items: list[Verdict] | None = None,
                    weights: str = "") -> list[dict]:
    """One plain-sentence verdict per method, from the numbers of steps 7, the replicates and the sanity checks
    (``items``, ``weights``: :func:`verdicts`' answer, computed here when not given)."""
    if items is None:
        items, weights = verdicts(run, seeds)
    if not items:
        return []
    bands_exist = replicate_table(run, seeds, "null_bands") is not None
    sanity = sanity_tables(run)
    out = []
    for method in dict.fromkeys(v.method for v in items):
        parts, flagged = [_sentence(v, weights, bands_exist) for v in items if v.method == method], False
        if sanity is not None:
            v = sanity[0][sanity[0]["method"] == method]
            if len(v):
                same = v[v["verdict"] == NO_CHANGE]
                measure = measure_label(run.cfg.sanity.verdict_measure)
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
            parts.append(f"sanity check: not computed (run {steps.label('sanity')})")
        out.append({"method": method, "text": "; ".join(parts) + ".", "cls": "bad" if flagged else ""})
    return out


def verdict_section(run: RunDir, seeds: list[int] | None) -> dict:
    s = new_section("verdicts", "Verdict per method", "From the dense to the sparsest round: one row per method and family of "
                    "metrics, then the same numbers in plain sentences, with the sanity check (interval: paired bootstrap of the mean change over the images; "
                    "significance: the Wilcoxon signed-rank test of the paired values, corrected over all tests, which "
                    "asks whether the changes lean one way rather than whether their mean is zero, so an interval "
                    "containing 0 can go with a significant test when most images change a little one way).")
    items, weights = verdicts(run, seeds)
    if not items:
        return not_computed(s, "Explanation metrics", steps.label("metrics"))
    s["blocks"] += [verdict_table(items, weights, seeds),
                    {"kind": "sentences", "entries": method_verdicts(run, seeds, items, weights)}]
    return s
