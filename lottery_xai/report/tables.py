"""Analysis tables of a run, read from its files: what notebooks and step 8 build figures from."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import steps
from ..errors import UserError
from ..metrics import METRICS
from ..pipeline.loading import load_data
from ..pipeline.metrics import COLUMN_TYPES as METRIC_TYPES
from ..pipeline.tcav import TCAV_TYPES
from ..rundir import RunDir
from ..safe_io import read_csv
from ..stats.inference import TEST_COLUMNS


class MissingInput(UserError):
    """A figure's input is not on disk yet (its step has not run): step 8 skips that figure."""


def _need(path: Path, step: str) -> Path:
    if not path.is_file():
        raise MissingInput(f"'{path}' is missing; run {step} first")
    return path


METRIC_COLUMNS = ["round", "weights_remaining", "method", "metric", "value"]


def accuracy_runs(run: RunDir) -> dict[str, pd.DataFrame]:
    """Test metrics of this run and of its controls (reinit, random pruning) when they exist on disk."""
    step2 = steps.label("test")
    frames = {label: read_csv(r.test_metrics(), ["round", "weights_remaining", "test_acc"], step=step2)
              for label, r in _controls(run).items() if r.test_metrics().is_file()}
    if not frames:
        raise MissingInput(f"'{run.test_metrics()}' is missing; run {step2} first")
    return frames


def _controls(run: RunDir) -> dict[str, RunDir]:
    """This run and its controls (reinit, random pruning), labelled as the figures show them."""
    cfg = run.cfg
    candidates = {f"ticket (rewind {cfg.pruning.rewind})": run}
    if cfg.pruning.rewind != "reinit":
        candidates["reinit control"] = run.sibling(**{"pruning.rewind": "reinit"})
    if cfg.pruning.method != "random":
        candidates["random pruning"] = run.sibling(**{"pruning.method": "random"})
    return candidates


def early_stopping_runs(run: RunDir) -> dict[str, pd.DataFrame]:
    """Step 1's early-stopping table (the iteration of minimum validation loss per round) of this run and of
    its controls when they exist on disk (the Lottery Ticket paper's Figure 3)."""
    step1 = steps.label("pruning")
    columns = ["round", "weights_remaining", "early_stop_iteration", "early_stop_val_acc"]
    frames = {label: read_csv(r.early_stopping(), columns, step=step1)
              for label, r in _controls(run).items() if r.early_stopping().is_file()}
    if not frames:
        raise MissingInput(f"'{run.early_stopping()}' is missing; run {step1} first")
    return frames


def tcav_table(run: RunDir) -> pd.DataFrame:
    """Step 5's table (MissingInput when it has not run)."""
    columns = ["round", "weights_remaining", "layer", "class", "concept", "tcav_mean", "tcav_std", "significant"]
    return read_csv(_need(run.tcav_scores(), steps.label("tcav")), columns, step=steps.label("tcav"), types=TCAV_TYPES)


def heatmap_methods(run: RunDir) -> list[str]:
    """The methods of heatmaps.methods with maps on disk."""
    return [m for m in run.cfg.heatmaps.methods if any(run.heatmap_file(r, m).is_file() for r in run.rounds())]


def explanation_table(run: RunDir) -> pd.DataFrame:
    """Step 7's table (MissingInput when it has not run)."""
    return read_csv(_need(run.explanation_metrics(), steps.label("metrics")), METRIC_COLUMNS, step=steps.label("metrics"),
                    types=METRIC_TYPES)


def metric_tests(run: RunDir) -> pd.DataFrame | None:
    """Step 7's paired tests (``metrics/tests.csv``), or None when absent."""
    path = run.explanation_tests()
    return read_csv(path, TEST_COLUMNS, step=steps.label("metrics")) if path.is_file() else None


def method_vs_baseline(run: RunDir, method: str = "gradcam", baseline: str = "random") -> pd.DataFrame:
    """Step 7 at the dense and the sparsest round: ``method`` against ``baseline`` on every map metric,
    with whether the method does better (in the metric's own direction)."""
    frame = explanation_table(run)
    frame = frame[frame["method"].isin([method, baseline])]
    rows = []
    for r in (frame["round"].min(), frame["round"].max()):
        part = frame[frame["round"] == r].pivot_table(index="metric", columns="method", values="value")
        if method not in part or baseline not in part:
            continue
        for metric, values in part.iterrows():
            spec = METRICS.get(metric)
            higher = True if spec is None else spec.higher_is_better
            a, b = values[method], values[baseline]
            rows.append({"round": int(r), "weights_remaining": float(frame.loc[frame["round"] == r, "weights_remaining"].iloc[0]),
                         "metric": metric, "better": "higher" if higher else "lower", method: a, baseline: b,
                         "beats_baseline": None if a == b else bool(a > b if higher else a < b)})
    return pd.DataFrame(rows)


def tcav_ground_truth(run: RunDir, round_index: int = 0, layer: str | None = None) -> pd.DataFrame:
    """On data whose class-defining attributes are known (the embedded synthetic set, MNIST even/odd):
    the share of (class, defining attribute) pairs whose TCAV is significant and above 0.5, against the
    share of (class, absent attribute) pairs that are. The first should be high, the second low. The
    ``protocol`` column names the TCAV protocol of the rows (step 5's ``protocol`` column)."""
    _, info = load_data(run.cfg, ())
    if info.defining_attributes is None:
        raise UserError(f"dataset '{run.cfg.dataset}' has no known class-defining attributes")
    table = tcav_table(run)
    table = table[table["round"] == round_index]
    rows = []
    for lay, g in table.groupby("layer"):
        if layer is not None and lay != layer:
            continue
        hit = g["significant"].astype(bool) & (g["tcav_mean"] > 0.5)
        defining = [c in info.defining_attributes.get(k, []) for k, c in zip(g["class"], g["concept"])]
        absent = [not d and info.class_concepts[info.class_names.index(k), info.concept_names.index(c)] == 0
                  for d, k, c in zip(defining, g["class"], g["concept"])]
        defining, absent = np.asarray(defining), np.asarray(absent)
        protocol = ", ".join(sorted(set(g["protocol"]))) if "protocol" in g else "strict"  # older tables: strict
        rows.append({"round": round_index, "layer": lay, "protocol": protocol,
                     "defining_pairs": int(defining.sum()),
                     "defining_significant_above_half": float(hit[defining].mean()) if defining.any() else np.nan,
                     "absent_pairs": int(absent.sum()),
                     "absent_significant_above_half": float(hit[absent].mean()) if absent.any() else np.nan})
    return pd.DataFrame(rows)


COMPARED = {"transform_spearman": "transformation Spearman", "energy_in_box": "content heatmap (energy in box, %)",
            "insertion_auc": "insertion AUC", "spearman": "Spearman with the dense map"}


def loss_comparison(runs: dict[str, RunDir], method: str = "gradcam") -> pd.DataFrame:
    """One row per (loss, round): test accuracy and ``method``'s transformation consistency, content
    heatmap, insertion AUC and consistency with the dense map (steps 2 and 7 of each run)."""
    rows, step2 = [], steps.label("test")
    for label, run in runs.items():
        test = read_csv(_need(run.test_metrics(), step2), ["round", "weights_remaining", "test_acc"], step=step2)
        metrics = explanation_table(run)
        metrics = metrics[(metrics["method"] == method) & metrics["metric"].isin(list(COMPARED))]
        wide = metrics.pivot_table(index="round", columns="metric", values="value")
        for _, t in test.iterrows():
            r = int(t["round"])
            row = {"loss": label, "round": r, "weights_remaining": float(t["weights_remaining"]),
                   "test_acc": float(t["test_acc"])}
            row.update({m: (float(wide.loc[r, m]) if r in wide.index and m in wide.columns else np.nan) for m in COMPARED})
            rows.append(row)
    return pd.DataFrame(rows, columns=["loss", "round", "weights_remaining", "test_acc", *COMPARED])


# -- replicates and null bands (main_aggregate.py)
def null_bands_of(run: RunDir) -> pd.DataFrame | None:
    """The ``null_bands.csv`` of the replicates folder that includes this run's seed (the one with most
    seeds, then the newest), or None when there is none (the figures are then drawn without bands)."""
    folders = run.aggregates()
    if not folders:
        return None
    return read_csv(folders[0] / "null_bands.csv", ["round", "weights_remaining", "method", "metric", "seed_mean"],
                    step=f"{steps.label('aggregate')} --force")


def aggregate_table(run: RunDir, seeds: list[int], name: str) -> pd.DataFrame:
    """One table of the replicates (``accuracy``, ``tcav``, ``metrics``, ``null_bands``)."""
    return read_csv(_need(run.aggregate_file(seeds, name), steps.label("aggregate")), (),
                    step=f"{steps.label('aggregate')} --force")
# -- end replicates and null bands
