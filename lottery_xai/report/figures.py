"""The figures themselves: pure functions of tables and arrays (the figures of a run, read from its files,
are in :mod:`.run`). Notebooks call these same functions."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..safe_io import atomic_path  # noqa: E402


def save_figure(fig, path: Path | None):
    """Write ``fig`` to ``path`` (atomically) and close it; nothing with no path. Returns the figure."""
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
        plt.close(fig)
    return fig


def safe_name(name: str) -> str:
    """``name`` as a file-name part: letters, digits and ``-_.`` kept, anything else ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def _pct(x):
    return 100.0 * np.asarray(x, dtype=float)


def _weights_axis(ax, fractions) -> None:
    """Log-scaled 'weights remaining' axis, dense on the left, ticks at the rounds' actual values."""
    ticks = np.unique(np.round(_pct(fractions), 1))
    if len(ticks) > 10:  # many rounds: every other label, the dense and the sparsest always, so that none overlap
        keep = list(range(len(ticks) - 1, -1, -2))
        keep[-1] = 0
        ticks = ticks[sorted(keep)]
    ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=8)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.invert_xaxis()
    ax.set_xlabel("prunable weights remaining (%)")


def _label(name: str, width: int = 14) -> str:
    """A class name broken over lines (underscores as spaces) so that it fits beside an image."""
    return "\n".join(textwrap.wrap(str(name).replace("_", " "), width)) or str(name)


def accuracy_vs_weights(runs: dict[str, pd.DataFrame], path: Path | None = None, column: str = "test_acc"):
    """Test accuracy against the share of weights remaining, one line per run (ticket, reinit control...)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"reinit": dict(ls="--", marker="s"), "random": dict(ls=":", marker="^")}
    for label, frame in runs.items():
        frame = frame.sort_values("weights_remaining", ascending=False)
        style = next((s for k, s in styles.items() if k in label), dict(ls="-", marker="o"))
        ax.plot(_pct(frame["weights_remaining"]), _pct(frame[column]), label=label, **style)
    _weights_axis(ax, pd.concat([f["weights_remaining"] for f in runs.values()]))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs sparsity")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_figure(fig, path)


def early_stopping_vs_weights(stops: dict[str, pd.DataFrame], accuracy: dict[str, pd.DataFrame],
                              path: Path | None = None):
    """The Lottery Ticket paper's Figure 3 for one run and its controls: left, the iteration of minimum
    validation loss (step 1) against the share of weights remaining; right, the test accuracy of the weights
    later steps use (step 2; with ``test.checkpoint: early_stop`` the accuracy at early stopping)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"reinit": dict(ls="--", marker="s"), "random": dict(ls=":", marker="^")}
    for ax, runs, column in ((left, stops, "early_stop_iteration"), (right, accuracy, "test_acc")):
        for label, frame in runs.items():
            frame = frame.sort_values("weights_remaining", ascending=False)
            style = next((s for k, s in styles.items() if k in label), dict(ls="-", marker="o"))
            y = frame[column] if column == "early_stop_iteration" else _pct(frame[column])
            ax.plot(_pct(frame["weights_remaining"]), y, label=label, **style)
        _weights_axis(ax, pd.concat([f["weights_remaining"] for f in runs.values()]))
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    left.set_ylabel("early-stopping iteration (min. validation loss)")
    left.set_title("Early-stopping iteration")
    right.set_ylabel("test accuracy (%)")
    right.set_title("Test accuracy")
    return save_figure(fig, path)


def tcav_vs_weights(scores: pd.DataFrame, class_name: str, layer: str | None = None, path: Path | None = None,
                    concepts: list[str] | None = None, max_concepts: int = 12):
    """TCAV score per concept against weights remaining, with std error bars; filled marks are significant."""
    df = scores[scores["class"] == class_name]
    if layer is not None:
        df = df[df["layer"] == layer]
    if concepts is None:
        dense = df[df["round"] == df["round"].min()].sort_values("tcav_mean", ascending=False)
        concepts = list(dense["concept"])[:max_concepts]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab20")
    for i, concept in enumerate(concepts):
        c = df[df["concept"] == concept].sort_values("weights_remaining", ascending=False)
        if c.empty:
            continue
        x, y, e = _pct(c["weights_remaining"]), c["tcav_mean"].to_numpy(), c["tcav_std"].to_numpy()
        color = cmap(i % 20)
        ax.errorbar(x, y, yerr=e, color=color, lw=1.2, capsize=2, label=concept)
        sig = c["significant"].astype(bool).to_numpy()
        ax.scatter(x[sig], y[sig], color=color, marker="o", zorder=3)
        ax.scatter(x[~sig], y[~sig], facecolor="white", edgecolor=color, marker="o", zorder=3)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    _weights_axis(ax, df["weights_remaining"])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("TCAV score")
    ax.set_title(f"TCAV for class {class_name}" + (f" at {layer}" if layer else "") + " (filled: significant)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def cav_accuracy_vs_round(acc: pd.DataFrame, path: Path | None = None):
    """Mean held-out CAV accuracy per round and layer; random CAVs dashed (they should sit near 50 %)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for (layer, kind), g in acc.groupby(["layer", "kind"]):
        m = g.groupby("round")["accuracy"].agg(["mean", "std"]).reset_index()
        ax.errorbar(m["round"], _pct(m["mean"]), yerr=_pct(m["std"].fillna(0)), capsize=2,
                    ls="--" if kind == "random" else "-", marker="o", label=f"{layer} {kind}")
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("pruning round")
    ax.set_ylabel("held-out CAV accuracy (%)")
    ax.set_title("How well each layer encodes the concepts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def heatmap_grid(images: np.ndarray, maps_by_round: dict[int, np.ndarray], weights_remaining: dict[int, float],
                 titles: list[str] | None = None, method: str = "gradcam", path: Path | None = None, alpha: float = 0.5):
    """Rows are images, columns the image then every round; each column labelled with the weights remaining.

    ``images``: [N,H,W,3] in [0,1]; ``maps_by_round[r]``: [N,H,W] in [0,1].
    """
    rounds = sorted(maps_by_round)
    n = len(images)
    fig, axes = plt.subplots(n, len(rounds) + 1, figsize=(1.6 * (len(rounds) + 1), 1.6 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_ylabel(_label(titles[i]) if titles else "", fontsize=7)
        for j, r in enumerate(rounds, start=1):
            axes[i, j].imshow(images[i])
            axes[i, j].imshow(maps_by_round[r][i], cmap="jet", alpha=alpha, vmin=0, vmax=1)
    axes[0, 0].set_title("image", fontsize=8)
    for j, r in enumerate(rounds, start=1):
        axes[0, j].set_title(f"round {r}\n{100 * weights_remaining[r]:.1f}% w", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{method} across pruning rounds", fontsize=10)
    return save_figure(fig, path)


def metric_vs_weights(frame: pd.DataFrame, metric: str, higher_is_better: bool | None = None,
                      baseline: str = "random", path: Path | None = None, null_bands: pd.DataFrame | None = None,
                      value: str = "value"):
    """One explanation metric against weights remaining, one line per method, the random baseline dashed.
    With ``ci_low``/``ci_high`` columns each line gets its interval as a shaded band; with ``null_bands``
    (rows of a replicates' ``null_bands.csv``) the consistency figure draws the reference bands too
    (`draw_null_bands`). ``value``: the column plotted (``mean`` for the replicates' table)."""
    df = frame[frame["metric"] == metric]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, g in df.groupby("method"):
        g = g.sort_values("weights_remaining", ascending=False)
        line, = ax.plot(_pct(g["weights_remaining"]), g[value], marker="o", label=method,
                        ls="--" if method == baseline else "-", color="grey" if method == baseline else None)
        if {"ci_low", "ci_high"} <= set(g.columns) and g[["ci_low", "ci_high"]].notna().any().all():
            ax.fill_between(_pct(g["weights_remaining"]), g["ci_low"].astype(float), g["ci_high"].astype(float),
                            color=line.get_color(), alpha=0.15, lw=0)
    if null_bands is not None:
        draw_null_bands(ax, null_bands[null_bands["metric"] == metric], baseline)
    _weights_axis(ax, df["weights_remaining"])
    arrow = "" if higher_is_better is None else (" (higher is better)" if higher_is_better else " (lower is better)")
    ax.set_ylabel(metric + arrow)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def roar_curves(table: pd.DataFrame, path: Path | None = None, baseline: str = "random"):
    """ROAR: test accuracy of the retrained model against the percent of pixels removed, one panel per
    round, one line per method (mean over seeds, std as error bars), the random baseline dashed."""
    rounds = sorted(table["round"].unique())
    fig, axes = plt.subplots(1, len(rounds), figsize=(5.5 * len(rounds), 4), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], rounds):
        part = table[table["round"] == r]
        for method, g in part.groupby("method"):
            stats = g.groupby("percent_removed")["test_acc"].agg(["mean", "std"]).fillna(0.0).sort_index()
            ax.errorbar(stats.index, _pct(stats["mean"]), yerr=_pct(stats["std"]), marker="o", capsize=3, label=method,
                        ls="--" if method == baseline else "-", color="grey" if method == baseline else None)
        ax.set_xlabel("pixels removed, most important first (%)")
        ax.set_title(f"ROAR, maps of round {r} ({_pct(part['weights_remaining'].iloc[0]):.1f}% weights)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test accuracy after retraining (%)")
    return save_figure(fig, path)


# -- sanity checks (main_sanity_checks.py): the model-parameter randomisation test, cascading and independent
# tab10 without its grey (the control's), then tab20's light shades: one colour per method, up to 19
METHOD_COLOURS = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7] + \
    [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i % 2 and i != 15]


def sanity_cascade(summary: pd.DataFrame, measure: str = "spearman", threshold: float | None = None,
                   baseline: str = "random", path: Path | None = None, randomization: str = "cascading",
                   origin: float = 1.0, stage: int | None = None, label: str | None = None):
    """Similarity of each randomisation stage's maps with the original model's maps (mean over the images,
    std as error bars), one panel per round, one line per method, the control (``baseline``: random maps
    redrawn at every stage, the chance level) dashed. Stage 0 is the original model (``origin`` by definition);
    cascading: stage k has the top k blocks re-initialised (x labels ``+block``); independent: only block k
    (x labels ``block only``). ``threshold``: the verdict's line. ``origin``: the measure at stage 0 (1 for a
    similarity; 0 for a measure of change such as eMPRT). ``stage``: the stage the verdict reads (a vertical line).
    ``label``: the measure's name on the y axis (default ``measure``). Methods take the tab10 colours but grey,
    the control's."""
    part = summary[summary["measure"] == measure]
    if "randomization" in part.columns:
        part = part[part["randomization"] == randomization]
    rounds = sorted(part["round"].unique())
    fig, axes = plt.subplots(1, max(1, len(rounds)), figsize=(5.2 * max(1, len(rounds)), 4), squeeze=False,
                             sharey=True)
    methods = sorted(set(part["method"]) - {baseline})  # one colour per method, the same in every panel
    for ax, r in zip(axes[0], rounds):
        g_round = part[part["round"] == r]
        blocks: list[str] = []
        for method, g in g_round.groupby("method"):
            g = g.sort_values("stage")
            x = np.concatenate([[0], g["stage"].to_numpy()])
            y = np.concatenate([[origin], g["mean"].to_numpy(dtype=float)])
            e = np.concatenate([[0.0], g["std"].fillna(0).to_numpy(dtype=float)])
            ax.errorbar(x, y, yerr=e, marker="o", capsize=2, label=f"{method} (control)" if method == baseline else method,
                        ls="--" if method == baseline else "-",
                        color="grey" if method == baseline else METHOD_COLOURS[methods.index(method) % len(METHOD_COLOURS)])
            blocks = blocks if len(blocks) >= len(g) else list(g["block"])
        ax.set_xticks(range(len(blocks) + 1))
        labels = [f"+{b}" for b in blocks] if randomization == "cascading" else [f"{b} only" for b in blocks]
        ax.set_xticklabels(["original"] + labels, rotation=45, ha="right", fontsize=8)
        if threshold is not None:
            ax.axhline(threshold, color="black", lw=0.8, ls=":")
        if stage is not None:
            ax.axvline(stage, color="black", lw=0.8, ls=":")
            ax.annotate("verdict", (stage, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -10),
                        textcoords="offset points", fontsize=7)
        ax.set_title(f"round {r} ({_pct(g_round['weights_remaining'].iloc[0]):.1f}% weights)", fontsize=9)
        ax.set_xlabel("blocks re-initialised, from the logits down" if randomization == "cascading" else
                      "the one block re-initialised (the others trained)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{label or measure} against the original maps")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"Model-parameter randomisation test ({randomization})", fontsize=10)
    return save_figure(fig, path)


def sanity_maps(image: np.ndarray, maps: dict[str, np.ndarray], blocks: list[str], title: str = "",
                path: Path | None = None, alpha: float = 0.5, randomization: str = "cascading"):
    """One image's maps at every randomisation stage: rows are methods, columns the original model then
    each stage. ``image``: [H,W,3] in [0,1]; ``maps[method]``: [K+1,H,W], each map scaled to [0,1]."""
    methods = list(maps)
    columns = len(blocks) + 1
    fig, axes = plt.subplots(len(methods), columns, figsize=(1.45 * columns, 1.5 * len(methods)), squeeze=False)
    for i, method in enumerate(methods):
        for j in range(columns):
            axes[i, j].imshow(image)
            axes[i, j].imshow(maps[method][j], cmap="jet", alpha=alpha, vmin=0, vmax=1)
        axes[i, 0].set_ylabel(method, fontsize=7)
    labels = [f"+{b}" for b in blocks] if randomization == "cascading" else [f"{b} only" for b in blocks]
    for j, label in enumerate(["original"] + labels):
        axes[0, j].set_title(label, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "maps as the blocks are re-initialised from the top", fontsize=9)
    return save_figure(fig, path)
# -- end of sanity checks


def loss_comparison(table: pd.DataFrame, columns: dict[str, str], path: Path | None = None):
    """Accuracy and each compared explanation metric against weights remaining, one line per loss."""
    panels = {"test_acc": "test accuracy", **columns}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (column, title) in zip(axes, panels.items()):
        for loss, g in table.groupby("loss", sort=False):
            g = g.sort_values("weights_remaining", ascending=False)
            ax.plot(_pct(g["weights_remaining"]), g[column], marker="o", label=loss)
        _weights_axis(ax, table["weights_remaining"])
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# -- replicates and null bands (main_aggregate.py; step 8 when a replicates folder exists)
def draw_null_bands(ax, bands: pd.DataFrame, baseline: str = "random", method: str | None = None) -> None:
    """Reference bands on a consistency figure, from ``null_bands.csv`` rows of one metric: the seed-to-seed
    band (the change between two dense models of different seeds, hatched grey, horizontal: it needs no
    pruning) and the random-pruning band (the change random pruning causes at each sparsity, orange).
    Drawn for ``method`` (default: the first non-baseline method present, as the bands are per method)."""
    if bands.empty:
        return
    methods = [m for m in bands["method"].unique() if m != baseline]
    method = method or ("gradcam" if "gradcam" in methods else (methods or list(bands["method"].unique()))[0])
    b = bands[bands["method"] == method].sort_values("weights_remaining", ascending=False)
    if b.empty:
        return
    x = _pct(b["weights_remaining"])
    seed = b[["seed_mean", "seed_ci_low", "seed_ci_high"]].astype(float).iloc[0]
    if np.isfinite(seed["seed_mean"]):
        low = seed["seed_ci_low"] if np.isfinite(seed["seed_ci_low"]) else seed["seed_mean"]
        high = seed["seed_ci_high"] if np.isfinite(seed["seed_ci_high"]) else seed["seed_mean"]
        ax.axhspan(low, high, color="grey", alpha=0.2, hatch="//", lw=0, label=f"seed-to-seed band ({method})")
        ax.axhline(seed["seed_mean"], color="grey", lw=0.8, ls=":")
    rnd = b[["random_mean", "random_ci_low", "random_ci_high"]].astype(float)
    ok = rnd["random_mean"].notna().to_numpy()
    if ok.any():
        ax.fill_between(x[ok], rnd["random_ci_low"][ok], rnd["random_ci_high"][ok], color="tab:orange", alpha=0.2,
                        lw=0, label=f"random-pruning band ({method})")
        ax.plot(x[ok], rnd["random_mean"][ok], color="tab:orange", lw=0.8, ls=":")


def accuracy_with_bands(table: pd.DataFrame, path: Path | None = None):
    """Test accuracy over seeds (the replicates' ``accuracy.csv``): mean line and t interval band per run."""
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"reinit": dict(ls="--", marker="s"), "random": dict(ls=":", marker="^")}
    for run, g in table.groupby("run", sort=False):
        g = g.sort_values("weights_remaining", ascending=False)
        x = _pct(g["weights_remaining"])
        n = int(g["n_seeds"].max())
        line, = ax.plot(x, _pct(g["mean"]), label=f"{run} ({n} seed{'s' if n > 1 else ''})",
                        **styles.get(run, dict(ls="-", marker="o")))
        ax.fill_between(x, _pct(g["ci_low"].astype(float)), _pct(g["ci_high"].astype(float)),
                        color=line.get_color(), alpha=0.15, lw=0)
    _weights_axis(ax, table["weights_remaining"])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs sparsity, mean and interval over seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_figure(fig, path)
# -- end replicates and null bands
