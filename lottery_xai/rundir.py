"""The run directory: the only module that knows where a step's files live.

Every step writes under ``{logs}/{experiment_name}/`` (see doc/architecture in the README);
a later step finds everything through :class:`RunDir`. Every file is written atomically
(a temporary name in the same folder, then ``os.replace``), so a killed step leaves either
the old file or the new one.
"""
from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .config import Config, dump_yaml, n_rounds
from .errors import UserError


def experiment_name(cfg: Config) -> str:
    """The folder name of a run: built from the settings that change its results."""
    if cfg.experiment_name:
        return cfg.experiment_name
    p = cfg.pruning
    schedule = (
        "cr" + "-".join(str(r) for r in p.compression_rates)
        if p.schedule == "compression_rates"
        else f"p{cfg.prune_percent:g}"
    )
    rewind = p.rewind.replace(":", "")
    if p.rewind == "reinit" and p.reinit_masks_from != "init":
        rewind += "-masks-" + p.reinit_masks_from.replace(":", "")
    parts = [cfg.dataset, cfg.model_arch, p.method, p.scope, schedule, rewind, f"seed{cfg.seed}"]
    return "_".join(parts)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def round_name(r: int) -> str:
    return f"round_{r:02d}"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it to ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes the file private (0600); outputs get the usual permissions
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch(obj, path: str | Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def unreadable(path: str | Path, reason: str, step: str | None = None) -> UserError:
    """The one-line error for a file that exists but cannot be used (truncated, corrupt, wrong content)."""
    fix = f"rerun {step} with --force" if step else "delete it and rerun the step that writes it"
    return UserError(f"'{path}' cannot be read ({reason}); it may be truncated or from another run: {fix}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _must_exist(path: Path, step: str | None, what: str = "file") -> None:
    if not path.is_file():
        raise UserError(f"{what} '{path}' not found; run {step or 'the step that writes it'} first")


def load_torch(path: str | Path, map_location="cpu", step: str | None = None, keys: tuple = ()):
    """Load a checkpoint safely: tensors and plain containers only, onto ``map_location``.
    A missing, truncated or foreign file (or one without ``keys``) is a UserError naming the file."""
    import torch

    path = Path(path)
    _must_exist(path, step, "checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle with non-tensor objects, not a checkpoint at all
        reason = "not a tensor checkpoint" if "Unpickl" in type(exc).__name__ else _reason(exc)
        raise unreadable(path, reason, step) from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise unreadable(path, f"no {', '.join(missing)} in it", step)
    return obj


def load_npz(path: str | Path, keys: tuple = (), step: str | None = None) -> dict:
    """Every array of an ``.npz`` archive, read fully (no pickles); ``keys`` must be present."""
    path = Path(path)
    _must_exist(path, step)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise ValueError("not an .npz archive")
            out = {k: archive[k] for k in archive.files}
    except Exception as exc:
        raise unreadable(path, _reason(exc), step) from None
    missing = [k for k in keys if k not in out]
    if missing:
        raise unreadable(path, f"no {', '.join(missing)} in it", step)
    return out


def load_npy(path: str | Path, step: str | None = None, mmap: bool = False, ndim: int | None = None,
             rows: int | None = None) -> np.ndarray:
    """One ``.npy`` array (memory-mapped with ``mmap``); optionally checks its dimensions and row count."""
    path = Path(path)
    _must_exist(path, step)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if not isinstance(array, np.ndarray):
            raise ValueError("not an .npy array")
    except Exception as exc:
        raise unreadable(path, _reason(exc), step) from None
    if ndim is not None and array.ndim != ndim:
        raise unreadable(path, f"{array.ndim}-d array, expected {ndim}-d", step)
    if rows is not None and len(array) != rows:
        raise unreadable(path, f"{len(array)} rows, expected {rows}", step)
    return array


def read_csv(path: str | Path, columns: list | tuple = (), step: str | None = None, missing_ok: bool = False):
    """A results table; ``columns`` must be present. ``missing_ok``: an absent file is an empty table."""
    import pandas as pd

    path = Path(path)
    if missing_ok and not path.exists():
        return pd.DataFrame(columns=list(columns))
    _must_exist(path, step)
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except Exception as exc:
        raise unreadable(path, _reason(exc), step) from None
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        raise unreadable(path, f"no column {', '.join(map(str, lacking))}", step)
    return frame


def read_json(path: str | Path, step: str | None = None, kind: type | None = dict):
    """A JSON file (of type ``kind`` at its top level)."""
    import json

    path = Path(path)
    _must_exist(path, step)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # binary junk, truncated JSON
        raise unreadable(path, _reason(exc), step) from None
    if kind is not None and not isinstance(obj, kind):
        raise unreadable(path, f"top level is {type(obj).__name__}, expected {kind.__name__}", step)
    return obj


def save_npz(path: str | Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def save_npy(path: str | Path, array) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def save_csv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame atomically."""
    write_text(path, frame.to_csv(index=False))


class RunDir:
    """Paths of one run. ``RunDir(cfg).checkpoint(3)`` and friends; nothing else builds paths."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.name = experiment_name(cfg)
        self.root = Path(cfg.logs) / self.name

    # -- whole run
    def config_file(self, step: str) -> Path:
        return self.root / f"config.{step}.yaml"

    def save_config(self, step: str) -> None:
        write_text(self.config_file(step), dump_yaml(self.cfg))

    def rounds(self) -> list[int]:
        return list(range(n_rounds(self.cfg)))

    def sibling(self, **changes) -> "RunDir":
        """The run with some settings changed, e.g. the reinit control beside a rewound run."""
        from .config import replace

        return RunDir(replace(self.cfg, **changes))

    # -- step 1: pruning
    @property
    def pruning_dir(self) -> Path:
        return self.root / "pruning"

    def init_state(self) -> Path:
        return self.pruning_dir / "init.pt"

    def rewind_state(self) -> Path:
        """Weights after K epochs/iterations of round 0 (late rewinding)."""
        return self.pruning_dir / "rewind.pt"

    def round_dir(self, r: int) -> Path:
        return self.pruning_dir / round_name(r)

    def checkpoint(self, r: int, which: str = "last") -> Path:
        return self.round_dir(r) / ("checkpoint.pt" if which == "last" else "best.pt")

    def round_log(self, r: int) -> Path:
        return self.round_dir(r) / "epochs.csv"

    def pruning_summary(self) -> Path:
        return self.pruning_dir / "summary.csv"

    def finished_rounds(self) -> list[int]:
        return [r for r in self.rounds() if self.checkpoint(r).is_file()]

    # -- step 2: test
    def test_metrics(self) -> Path:
        return self.root / "test" / "metrics.csv"

    def test_per_class(self) -> Path:
        return self.root / "test" / "per_class.csv"

    # -- step 3: activations
    def activations_dir(self, r: int) -> Path:
        return self.root / "activations" / round_name(r)

    def activation_file(self, r: int, split: str, layer: str) -> Path:
        return self.activations_dir(r) / f"{split}_{layer}.npy"

    def activation_meta(self, r: int, split: str, what: str) -> Path:
        """``what`` in labels, concepts, ids."""
        return self.activations_dir(r) / f"{split}_{what}.npy"

    # -- step 4: CAVs
    def cav_file(self, r: int, layer: str) -> Path:
        return self.root / "cavs" / round_name(r) / f"{layer}.npz"

    def cav_accuracy(self) -> Path:
        return self.root / "cavs" / "cav_accuracy.csv"

    # -- step 5: TCAV
    def tcav_scores(self) -> Path:
        return self.root / "tcav" / "tcav_scores.csv"

    # -- step 6: heatmaps
    def heatmap_file(self, r: int, method: str) -> Path:
        return self.root / "heatmaps" / round_name(r) / f"{method}.npz"

    def heatmap_images(self) -> Path:
        """The ids of the images explained at every round (fixed once, reused)."""
        return self.root / "heatmaps" / "images.npz"

    # -- step 7: metrics
    def explanation_metrics(self) -> Path:
        return self.root / "metrics" / "explanations.csv"

    # -- ROAR (main_roar.py)
    def roar_data(self, split: str, what: str) -> Path:
        """Eval-transformed ``images``, ``labels`` of a split, and the train ``fill`` (per-channel mean); shared by rounds."""
        return self.root / "roar" / "data" / f"{split}_{what}.npy"

    def roar_ranks(self, r: int, method: str, split: str) -> Path:
        """Pixel ranks of every image of a split (0 = most important), from round ``r``'s maps."""
        return self.root / "roar" / round_name(r) / f"ranks_{method}_{split}.npy"

    def roar_results(self) -> Path:
        return self.root / "roar" / "roar.csv"

    # -- step 8: plots
    def plot(self, name: str) -> Path:
        return self.root / "plots" / f"{name}.png"

    def require(self, path: Path, step: str) -> Path:
        """Fail with a clear message when a step runs before the step that writes ``path``."""
        if not path.exists():
            raise UserError(f"'{path}' is missing; run {step} first")
        return path
