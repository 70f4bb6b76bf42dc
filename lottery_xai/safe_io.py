"""Safe file I/O: every write atomic, every read checked, tables updated under a lock of their own.

Writes go to a temporary name in the same folder, then ``os.replace`` (:func:`atomic_path`,
:func:`atomic_dir`), so a killed process leaves either the old file or the new one. The readers
(:func:`load_torch`, :func:`load_npz`, :func:`load_npy`, :func:`read_csv`, :func:`read_json`) load no
pickles and turn a missing, truncated or foreign file into one :class:`~lottery_xai.errors.UserError`
line naming the file and the step to rerun (their ``step`` argument: the text of what writes the file,
e.g. ``steps.label("heatmaps")``). :func:`upsert_table` updates a results table read-modify-write under
a short lock of its own: the rows on disk are re-read, the rows being replaced dropped, the new ones
added, so two processes that split the rounds never lose each other's rows. :func:`fingerprint` is
the start of the SHA-256 of a file's bytes (what a run records of the checkpoints its outputs were
made from, see :mod:`lottery_xai.rundir`).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


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
    except OSError as exc:  # a full disk or a failed rename: name the file the step was writing
        if exc.filename is None or str(exc.filename) == str(tmp):
            exc.filename = str(path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; when the block succeeds it replaces ``path`` (whose old
    content is removed), and whatever happens the temporary folder is gone afterwards."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch(obj, path: str | Path) -> None:
    import torch  # torch takes seconds to import: the data-preparation scripts write files without it

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
    import torch  # as in save_torch

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
    path = Path(path)
    if missing_ok and not path.exists():
        return pd.DataFrame(columns=list(columns))
    _must_exist(path, step)
    try:  # read back exactly what save_csv wrote: floats bit for bit, only empty fields missing
        # (a class or concept named ``NA`` or ``None`` stays a name)
        exact = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}  # 3.x: exact by default
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], **exact)
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


# ---------------------------------------------------------------- tables and fingerprints of files

@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """A short exclusive ``flock`` on ``.{name}.lock`` beside ``path`` (blocking: held only for one update)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def upsert_table(path: str | Path, rows, keys: list[str], sort: list[str], columns: list[str],
                 replace: dict | None = None):
    """Add ``rows`` to the table at ``path``, replacing the rows on disk with the same ``keys`` values
    (and, with ``replace``, every row whose columns equal all its values); returns the table written.

    Read-modify-write under the table's own lock: the table is re-read from disk at each update, so
    rows another process added meanwhile (other rounds, other settings) are kept."""
    path, columns = Path(path), list(columns)
    rows = pd.DataFrame(rows, columns=columns) if not isinstance(rows, pd.DataFrame) else rows[columns]
    with file_lock(path):
        old = read_csv(path, columns, missing_ok=True)
        if len(old):
            new_keys = set(rows[keys].itertuples(index=False, name=None))
            drop = np.array([k in new_keys for k in old[keys].itertuples(index=False, name=None)], dtype=bool)
            if replace:
                drop |= np.logical_and.reduce([(old[c] == v).to_numpy(dtype=bool) for c, v in replace.items()])
            old = old.loc[~drop, columns]
        parts = [f for f in (old, rows) if len(f)]
        table = pd.concat(parts, ignore_index=True) if len(parts) == 2 else (parts[0] if parts else rows)
        table = table.sort_values(sort).reset_index(drop=True)
        save_csv(path, table)
    return table


_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file's bytes; cached per process by (path, inode, size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()[:16]
    return _FINGERPRINTS[key]
