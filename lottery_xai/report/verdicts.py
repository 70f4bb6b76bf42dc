"""The report's verdict per method, in plain sentences generated from the numbers: from the dense to the
sparsest round, per family of metrics, the change of the mean with its paired bootstrap interval (step 7's
per-image values) and the corrected Wilcoxon test (``tests.csv``); for the consistency with the dense map,
whether the ticket's drift is within the seed-to-seed band of the replicates (``null_bands.csv``); and the
sanity check's verdict."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import steps
from ..attribution import METHODS
from ..pipeline.sanity import NO_CHANGE
from ..rundir import RunDir
from ..safe_io import read_csv
from ..seeds import SeedPurpose, derived_seed
from ..stats.inference import bootstrap_ci
from .page import fmt_interval, fmt_num, fmt_pct, new_section, not_computed, replicate_table
from .sanity import BASELINE, measure_label, sanity_tables
from .tables import explanation_table, metric_tests

# the metric each verdict reads, per family (the first present in step 7's table)
VERDICT_METRICS = {"faithfulness": ("deletion_auc", "insertion_auc"),
                   "localisation": ("energy_in_box", "pointing_game"),
                   "consistency with the dense map": ("spearman", "ssim")}
LABELS = {"deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC", "energy_in_box": "energy in the box, %",
          "pointing_game": "pointing game", "spearman": "Spearman", "ssim": "SSIM"}


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


def method_verdicts(run: RunDir, seeds: list[int] | None) -> list[dict]:
    """One plain-sentence verdict per method, from the numbers of steps 7, the replicates and the sanity checks."""
    if not run.explanation_metrics().is_file():
        return []
    frame = explanation_table(run)
    if frame.empty:
        return []
    first, last = int(frame["round"].min()), int(frame["round"].max())
    weights = fmt_pct(frame.loc[frame["round"] == last, "weights_remaining"].iloc[0])
    per_image = read_csv(run.explanation_per_image(), step=steps.label("metrics")) if run.explanation_per_image().is_file() else None
    tests, bands = metric_tests(run), replicate_table(run, seeds, "null_bands")
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
                text = f"{label} at {weights} weights is {fmt_interval(values.get(last), *ci)}"
                if bands is not None:
                    b = bands[(bands["method"] == method) & (bands["metric"] == metric) & (bands["round"] == last)]
                    within = str(b["within_seed_band"].iloc[0]).lower() if len(b) else ""
                    text += {"true": "; within the seed-to-seed band: yes", "false": "; within the seed-to-seed band: no"
                             }.get(within, "; within the seed-to-seed band: not computed for this method")
                    if len(b):
                        text += f" (band {fmt_interval(b['seed_mean'].iloc[0], b['seed_ci_low'].iloc[0], b['seed_ci_high'].iloc[0])})"
                else:
                    text += "; within the seed-to-seed band: not computed (no replicates)"
                parts.append(text)
                continue
            change = _change(run, per_image, method, metric, first, last)
            delta = change if change is not None else (values.get(last, np.nan) - values.get(first, np.nan), None, None)
            text = (f"{label} changes by {fmt_interval(*delta, sign=True)} from dense ({fmt_num(values.get(first))}) to {weights} "
                    f"weights ({fmt_num(values.get(last))})")
            if tests is not None:
                t = tests[(tests["method"] == method) & (tests["metric"] == metric) & (tests["comparison"] == "dense")
                          & (tests["round"] == last)]
                if len(t):
                    sig = bool(t["significant"].iloc[0])
                    text += f", {'a significant' if sig else 'not a significant'} change (adjusted p = {fmt_num(t['p_adjusted'].iloc[0], 3)})"
            parts.append(text)
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
    s = new_section("verdicts", "Verdict per method", "From the dense to the sparsest round, in plain sentences generated "
                    "from the numbers below (interval: paired bootstrap of the mean change over the images; "
                    "significance: the Wilcoxon signed-rank test of the paired values, corrected over all tests, which "
                    "asks whether the changes lean one way rather than whether their mean is zero, so an interval "
                    "containing 0 can go with a significant test when most images change a little one way).")
    items = method_verdicts(run, seeds)
    if not items:
        return not_computed(s, "Explanation metrics", steps.label("metrics"))
    s["blocks"].append({"kind": "sentences", "entries": items})
    return s
