"""Figures of ACE (main_ace.py) and of the occlusion study (main_occlusion_study.py), from the files on disk.

Everything lands under ``plots/`` through the run directory: ``ace_patches_rXX_<class>.png`` (montage of
each discovered concept's patches closest to its centre, one row per concept), ``ace_similarity_rXX.png``
(cosine of the concepts' mean CAVs, concept x concept), ``ace_similarity_rounds.png`` (each dense
concept's cosine with its match at every round), ``ace_pca_rXX.png`` (the concepts' patch activations
on their first two principal components), ``ace_histograms.png`` (CAV accuracies and TCAV scores of the
concepts against the random CAVs'), ``occlusion_masks.png`` (the study's heatmaps over the images, with
the box, one column per round).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from matplotlib.patches import Rectangle

from .. import steps
from ..pipeline.ace import CONCEPT_COLUMNS, SURVIVAL_COLUMNS, patches_of
from ..pipeline.occlusion_study import COLUMNS as OCCLUSION_COLUMNS
from ..rundir import RunDir
from ..safe_io import load_npy, load_npz, read_csv
from ..steps import draws
from . import figures as _figures
from .figures import safe_name
from .tables import MissingInput


def _plt():
    return _figures.plt


def short_name(name: str, width: int = 14) -> str:
    """A class name short enough for a tick label: itself, or the initials of its words
    (``Blue_winged_Orange_crowned_Shrike`` -> ``BwOcS``)."""
    name = str(name)
    return name if len(name) <= width else "".join(w[:1] for w in name.replace("-", "_").split("_") if w)


def _rname(r: int) -> str:
    return f"r{int(r):02d}"


def ace_table(run: RunDir) -> pd.DataFrame:
    """``ace/concepts.csv`` (MissingInput when main_ace.py has not run)."""
    if not run.ace_concepts().is_file():
        raise MissingInput(f"no ACE concepts in {run.ace_concepts()}; run {steps.label('ace')} first")
    return read_csv(run.ace_concepts(), CONCEPT_COLUMNS, step=steps.label("ace"))


def ace_rounds(run: RunDir) -> list[int]:
    """The rounds with ACE concepts on disk."""
    return [r for r in run.rounds() if run.ace_clusters(r).is_file() and run.ace_cavs(r).is_file()]


def _index(run: RunDir) -> dict:
    if not run.ace_patches().is_file():
        raise MissingInput(f"no ACE patch index in {run.ace_patches()}; run {steps.label('ace')} first")
    return load_npz(run.ace_patches(), step=steps.label("ace"))


# ---------------------------------------------------------------- pure figures

def patch_montage(patches: list[np.ndarray], labels: list[str], title: str, path: Path | None = None):
    """One row per concept: its patches [n, H, W, 3] (values in [0, 1]) side by side, the label on the left."""
    plt = _plt()
    rows = max(1, len(patches))
    cols = max([len(p) for p in patches] + [1])
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols + 1.6, 1.15 * rows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (row, label) in enumerate(zip(patches, labels)):
        for j, patch in enumerate(row):
            axes[i, j].imshow(np.clip(patch, 0, 1))
        axes[i, 0].text(-0.08, 0.5, label, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=7)
    if not patches:
        axes[0, 0].text(0.5, 0.5, "no concept discovered", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    return _figures.save_figure(fig, path)


def similarity_heatmap(matrix: np.ndarray, row_labels: list[str], col_labels: list[str], title: str,
                       path: Path | None = None, xlabel: str = ""):
    """A cosine-similarity matrix in [-1, 1] (NaN cells blank) with its labels."""
    plt = _plt()
    matrix = np.asarray(matrix, dtype=float).reshape(len(row_labels), len(col_labels))
    fig, ax = plt.subplots(figsize=(min(2 + 0.28 * len(col_labels), 24), min(1.5 + 0.25 * len(row_labels), 24)))
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(col_labels)))
    ax.set_xticklabels(col_labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels(row_labels, fontsize=6)
    ax.set_xlabel(xlabel)
    fig.colorbar(im, ax=ax, label="CAV cosine", fraction=0.04)
    ax.set_title(title, fontsize=9)
    return _figures.save_figure(fig, path)


def pca_scatter(points: np.ndarray, groups: np.ndarray, group_labels: list[str], title: str, path: Path | None = None):
    """The first two principal components of ``points`` [n, D] (centred; SVD), coloured by ``groups`` [n]."""
    plt = _plt()
    points = np.asarray(points, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if len(points) >= 2:
        centred = points - points.mean(0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centred @ vt[:1].T, np.zeros(len(points))]
        explained = s ** 2 / max((s ** 2).sum(), 1e-12)
        cmap = plt.get_cmap("tab20")
        for g in np.unique(groups):
            pick = groups == g
            ax.scatter(xy[pick, 0], xy[pick, 1], s=8, alpha=0.7, color=cmap(int(g) % 20), label=group_labels[int(g)])
        ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f} %)")
        ax.set_ylabel(f"PC 2 ({100 * explained[1] if len(explained) > 1 else 0:.0f} %)")
        if len(group_labels) <= 24:
            ax.legend(fontsize=5, ncol=2, loc="best", markerscale=1.5)
    ax.set_title(title, fontsize=9)
    return _figures.save_figure(fig, path)


def score_histograms(values: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path | None = None):
    """One panel per entry {panel title: (concept values, random values)}: overlaid histograms on [0, 1]."""
    plt = _plt()
    fig, axes = plt.subplots(1, max(1, len(values)), figsize=(4 * max(1, len(values)), 3), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, (name, (concept, random)) in zip(axes[0], values.items()):
        for data, label, color in ((concept, "discovered concepts", "C0"), (random, "random", "C7")):
            data = np.asarray(data, dtype=float)
            data = data[np.isfinite(data)]
            if len(data):
                ax.hist(data, bins=bins, alpha=0.6, color=color, label=f"{label} (n={len(data)})", density=True)
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _figures.save_figure(fig, path)


def occlusion_grid(images: np.ndarray, heatmaps: dict[int, np.ndarray], weights_remaining: dict[int, float],
                   boxes: np.ndarray, titles: list[str], path: Path | None = None):
    """Rows: images (uint8 [n, H, W, 3]); columns: the image, then each round's heatmap (count of selected
    squares) over it, with the object box."""
    plt = _plt()
    rounds = sorted(heatmaps)
    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(rounds), figsize=(1.6 * (1 + len(rounds)), 1.6 * n + 0.4), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_ylabel(_figures._label(titles[i]), fontsize=6)
        for j, r in enumerate(rounds, start=1):
            heat = heatmaps[r][i].astype(float)
            axes[i, j].imshow(images[i])
            if heat.max() > 0:
                axes[i, j].imshow(np.ma.masked_equal(heat / heat.max(), 0), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(f"round {r}\n{100 * weights_remaining[r]:.1f} % weights", fontsize=7)
        for ax in axes[i]:
            x0, y0, x1, y1 = boxes[i]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1))
            ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("occlusion sensitivity: selected squares (z < -z*)", fontsize=9)
    return _figures.save_figure(fig, path)


# ---------------------------------------------------------------- the run's figures

def plot_ace_montages(run: RunDir, rounds: list[int] | None = None, save: bool = True) -> list:
    """A montage per class and round of each discovered concept's patches closest to its centre."""
    table, index = ace_table(run), _index(run)
    figures = []
    for r in rounds if rounds is not None else ace_rounds(run):
        clusters = load_npz(run.ace_clusters(r), keys=("concept_class", "concept_id", "concept_top"), step=steps.label("ace"))
        for c in np.unique(index["patch_class"]):
            cls = str(index["class_names"][c])
            pick = np.flatnonzero(clusters["concept_class"] == c)
            rows, labels = [], []
            for i in pick:
                top = clusters["concept_top"][i]
                top = top[top >= 0][:run.cfg.ace.montage_patches]
                k = int(clusters["concept_id"][i])
                rows.append(patches_of(index, top, run.cfg.ace.fill).permute(0, 2, 3, 1).numpy())
                row = table[(table["round"] == r) & (table["class"] == cls) & (table["concept"] == k)]
                star = "*" if len(row) and bool(row["significant"].iloc[0]) else ""
                tcav = f"{row['tcav_mean'].iloc[0]:.2f}" if len(row) else "?"
                labels.append(f"{k}{star} TCAV {tcav}")
            name = f"ace_patches_{_rname(r)}_{safe_name(cls)}"
            figures.append(patch_montage(rows, labels, f"{cls}, round {r}: discovered concepts (* significant)",
                                         run.plot(name) if save else None))
    return figures


def _concept_directions(run: RunDir, r: int, class_names) -> tuple[np.ndarray, list[str]]:
    from ..concepts.ace import unit_mean  # lazy: lottery_xai.concepts imports scikit-learn (1 s)

    cavs = load_npz(run.ace_cavs(r), keys=("concept_class", "concept_id", "cavs"), step=steps.label("ace"))
    labels = [f"{short_name(class_names[int(c)])}:{int(k)}" for c, k in zip(cavs["concept_class"], cavs["concept_id"])]
    return unit_mean(cavs["cavs"]) if len(cavs["cavs"]) else np.zeros((0, 1)), labels


def plot_ace_similarity(run: RunDir, rounds: list[int] | None = None, save: bool = True) -> list:
    """Concept x concept CAV cosine per round, and each dense concept's cosine with its match across rounds."""
    from ..concepts.ace import cosine_matrix  # lazy: scikit-learn (1 s)

    index = _index(run)
    names = [str(s) for s in index["class_names"]]
    figures = []
    for r in rounds if rounds is not None else ace_rounds(run):
        directions, labels = _concept_directions(run, r, names)
        if not labels:
            continue
        figures.append(similarity_heatmap(cosine_matrix(directions, directions), labels, labels,
                                          f"round {r}: cosine of discovered concepts' mean CAVs",
                                          run.plot(f"ace_similarity_{_rname(r)}") if save else None))
    if run.ace_survival().is_file():
        survival = read_csv(run.ace_survival(), SURVIVAL_COLUMNS, step=steps.label("ace"))
        dense = survival[survival["dense_concept"] >= 0]
        keys = sorted({(str(c), int(k)) for c, k in dense[["class", "dense_concept"]].itertuples(index=False)})
        all_rounds = sorted(int(x) for x in dense["round"].unique())
        if keys and all_rounds:
            matrix = np.full((len(keys), len(all_rounds)), np.nan)
            for row in dense.itertuples(index=False):
                matrix[keys.index((str(row[1]), int(row[2]))), all_rounds.index(int(row[0]))] = row.cosine
            figures.append(similarity_heatmap(matrix, [f"{short_name(c)}:{k}" for c, k in keys], [str(x) for x in all_rounds],
                                              "each dense concept: cosine with its match (blank: vanished)",
                                              run.plot("ace_similarity_rounds") if save else None, xlabel="round"))
    return figures


def plot_ace_pca(run: RunDir, rounds: list[int] | None = None, save: bool = True) -> list:
    """The concepts' member patches' activations on their first two principal components, per round."""
    index = _index(run)
    names = [str(s) for s in index["class_names"]]
    figures = []
    for r in rounds if rounds is not None else ace_rounds(run):
        path = run.ace_patch_activations(r)
        if not path.is_file():
            continue
        concept = load_npz(run.ace_clusters(r), keys=("concept",), step=steps.label("ace"))["concept"]
        acts = load_npy(path, steps.label("ace"), mmap=True, ndim=2, rows=len(concept))
        rows = np.flatnonzero(concept >= 0)
        keys = sorted({(int(c), int(k)) for c, k in zip(index["patch_class"][rows], concept[rows])})
        group = np.array([keys.index((int(c), int(k))) for c, k in zip(index["patch_class"][rows], concept[rows])])
        labels = [f"{short_name(names[c])}:{k}" for c, k in keys]
        figures.append(pca_scatter(np.asarray(acts[rows]), group, labels,
                                   f"round {r}: activations of the concepts' patches (PCA)",
                                   run.plot(f"ace_pca_{_rname(r)}") if save else None))
    return figures


def plot_ace_histograms(run: RunDir, rounds: list[int] | None = None, save: bool = True):
    """CAV accuracies and TCAV scores of the discovered concepts against the random CAVs', at the dense
    and the sparsest round with ACE outputs."""
    done = rounds if rounds is not None else ace_rounds(run)
    if not done:
        raise MissingInput(f"no ACE round on disk in {run.ace_dir}; run {steps.label('ace')} first")
    values = {}
    for r in sorted({min(done), max(done)}):
        cavs = load_npz(run.ace_cavs(r), keys=("accuracy", "tcav", "random_accuracy", "random_tcav"), step=steps.label("ace"))
        values[f"round {r}: CAV accuracy"] = (cavs["accuracy"].ravel(), cavs["random_accuracy"].ravel())
        values[f"round {r}: TCAV score"] = (cavs["tcav"].ravel(), cavs["random_tcav"].ravel())
    return score_histograms(values, "discovered concepts against random CAVs",
                            run.plot("ace_histograms") if save else None)


def occlusion_table(run: RunDir) -> pd.DataFrame:
    if not run.occlusion_table().is_file():
        raise MissingInput(f"no occlusion study in {run.occlusion_table()}; run {steps.label('occlusion_study')} first")
    return read_csv(run.occlusion_table(), OCCLUSION_COLUMNS, step=steps.label("occlusion_study"))


@draws("occlusion_study")
def plot_occlusion(run: RunDir, n_images: int = 8, save: bool = True):
    """The occlusion heatmaps over the study's images (spread over the classes), one column per round."""
    if not run.occlusion_images().is_file():
        raise MissingInput(f"no occlusion study in {run.occlusion_dir}; run {steps.label('occlusion_study')} first")
    images = load_npz(run.occlusion_images(), keys=("ids", "labels", "bbox", "images", "class_names"),
                      step=steps.label("occlusion_study"))
    heat, remaining = {}, {}
    for r in run.rounds():
        if run.occlusion_file(r).is_file():
            stored = load_npz(run.occlusion_file(r), keys=("ids", "heatmap", "weights_remaining"), step=steps.label("occlusion_study"))
            if np.array_equal(stored["ids"], images["ids"]):
                heat[r], remaining[r] = stored["heatmap"], float(stored["weights_remaining"])
    if not heat:
        raise MissingInput(f"no round of the occlusion study in {run.occlusion_dir}; run {steps.label('occlusion_study')} first")
    pick = np.unique(np.linspace(0, len(images["ids"]) - 1, min(n_images, len(images["ids"]))).round().astype(int))
    titles = [str(images["class_names"][images["labels"][i]]) for i in pick]
    return occlusion_grid(images["images"][pick], {r: h[pick] for r, h in heat.items()}, remaining,
                          images["bbox"][pick], titles, run.plot("occlusion_masks") if save else None)


@draws("ace")
def plot_ace(run: RunDir, rounds: list[int] | None = None, log=print) -> list[Path]:
    """Every ACE figure whose inputs exist (montages, similarity maps, PCA, histograms); returns the files.
    MissingInput when ACE has not run."""
    if not run.ace_concepts().is_file():
        raise MissingInput(f"'{run.ace_concepts()}' is missing; run {steps.label('ace')} first")
    for label, job in (("ACE montages", plot_ace_montages), ("ACE similarity", plot_ace_similarity),
                       ("ACE PCA", plot_ace_pca), ("ACE histograms", plot_ace_histograms)):
        try:
            job(run, rounds)
        except MissingInput as exc:
            log(f"skipped {label} plot: {exc}")
    _figures.plt.close("all")
    return sorted(run.root.joinpath("plots").glob("ace_*.png"))
