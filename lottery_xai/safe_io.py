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

Shards (the tasks of a cluster, :mod:`lottery_xai.launch`): ``flock`` is not reliable across the nodes of
a cluster (Lustre, NFS), so a task that runs beside others of the same step (one round, one ROAR cell)
names itself (:func:`sharded`, or the environment variable ``LOTTERY_XAI_SHARD``) and then never updates
a shared table: :func:`upsert_table` writes its rows, with the keys, sort and ``replace`` of the update,
into the task's own file ``.shards/<table name>/<shard>.json`` beside the table. :func:`read_csv` sees a
table with its shards applied, and :func:`merge_shards` folds them into the table (then deletes them):
the shards are applied in the order of their names, each as the update it records, so the table is the
one a single process making the same updates in that order would have written, whatever order the
tasks ran in. Without a shard name nothing changes: updates go to the table under its lock.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
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


# What a value of a declared column type must be (a table's ``types``, see :func:`read_csv`); an empty field is
# a missing value, allowed in float and str columns only (what ``save_csv`` writes for NaN and None).
_EXPECTED = {"int": "an integer", "float": "a number (a missing value is an empty field)", "bool": "True or False"}


def _checked_types(frame: pd.DataFrame, types: dict, path: Path, step: str | None) -> pd.DataFrame:
    """``frame`` with its declared columns (``{column: "int" | "float" | "bool" | "str"}``) of that type; a value
    that is not (the text ``nan``, a word in a number column, an empty int) is one error naming file and column."""
    for column, kind in types.items():
        if column not in frame.columns or not len(frame) or kind == "str":
            continue
        values = frame[column]
        if values.dtype.kind in {"bool": "b", "int": "iu", "float": "iuf"}[kind]:
            continue  # as written (an int column with an empty field is read as floats: checked below)
        if kind == "bool":
            parsed = values.map({True: True, False: False, "True": True, "False": False})
            good = parsed.notna() & values.map(lambda v: isinstance(v, (bool, np.bool_, str)))  # 1 == True: not a bool
        else:
            parsed = pd.to_numeric(values, errors="coerce") if values.dtype.kind != "f" else values
            good = parsed.notna() | (values.isna() & (kind == "float"))
            if kind == "int":
                good &= (parsed % 1 == 0).fillna(False)
        if not good.all():
            row = int(np.flatnonzero(~good.to_numpy())[0])
            shown = "an empty field" if pd.isna(values.iloc[row]) else repr(str(values.iloc[row]))
            raise UserError(f"'{path}' cannot be read: column '{column}' holds {shown} on line {row + 2}, not "
                            f"{_EXPECTED[kind]}; correct that line, or delete the file and rerun "
                            f"{step or 'the step that writes it'}")
        frame[column] = parsed.astype(bool if kind == "bool" else (np.int64 if kind == "int" else float))
    return frame


def read_csv(path: str | Path, columns: list | tuple = (), step: str | None = None, missing_ok: bool = False,
             types: dict | None = None):
    """A results table; ``columns`` must be present. ``missing_ok``: an absent file is an empty table. A
    table with shards (see the module docstring) is read with its shards applied. ``types`` (``{column:
    "int" | "float" | "bool" | "str"}``, the table's declared column types): those columns are read as that
    type, and a value that is not one is a one-line error naming the file and the column."""
    path = Path(path)
    found = shard_files(path)
    frame = _with_shards(path, found, columns, step) if found else _read_table(path, columns, step, missing_ok)
    return _checked_types(frame, types, path, step) if types else frame


def _read_table(path: Path, columns, step: str | None, missing_ok: bool):
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
                 replace: dict | None = None, types: dict | None = None):
    """Add ``rows`` to the table at ``path``, replacing the rows on disk with the same ``keys`` values
    (and, with ``replace``, every row whose columns equal all its values); returns the table written.

    Read-modify-write under the table's own lock: the table is re-read from disk at each update, so
    rows another process added meanwhile (other rounds, other settings) are kept. ``types``: the table's
    declared column types, checked when the rows on disk are read (see :func:`read_csv`)."""
    path, columns = Path(path), list(columns)
    rows = pd.DataFrame(rows, columns=columns) if not isinstance(rows, pd.DataFrame) else rows[columns]
    if _SHARD is not None:
        return _upsert_shard(path, rows, keys, sort, columns, replace)
    with file_lock(path):
        table = _upsert(read_csv(path, columns, missing_ok=True, types=types), rows, keys, sort, columns, replace)
        save_csv(path, table)
    return table


def _upsert(old, rows, keys: list[str], sort: list[str], columns: list[str], replace: dict | None):
    """``old`` without the rows that ``rows`` replace (same ``keys``, or matching ``replace``), plus ``rows``, sorted."""
    if len(old):
        new_keys = set(rows[keys].itertuples(index=False, name=None))
        drop = np.array([k in new_keys for k in old[keys].itertuples(index=False, name=None)], dtype=bool)
        if replace:
            drop |= _matching(old, replace)
        old = old.loc[~drop, columns]
    parts = [f for f in (old, rows) if len(f)]
    table = pd.concat(parts, ignore_index=True) if len(parts) == 2 else (parts[0] if parts else rows)
    return table.sort_values(sort).reset_index(drop=True)


def _matching(frame, replace: dict) -> np.ndarray:
    return np.logical_and.reduce([(frame[c] == v).to_numpy(dtype=bool) for c, v in replace.items()])


# ---------------------------------------------------------------- shards (see the module docstring)

SHARD_ENV = "LOTTERY_XAI_SHARD"
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


def _check_shard(name: str | None) -> str | None:
    if name is not None and not SHARD_NAME.match(name):
        raise ValueError(f"shard name {name!r} must be letters, digits and _ . + = - (a file name)")
    return name or None


_SHARD: str | None = _check_shard(os.environ.get(SHARD_ENV) or None)


def current_shard() -> str | None:
    """The name of this process's shard (None: updates go to the shared tables)."""
    return _SHARD


@contextmanager
def sharded(name: str | None) -> Iterator[None]:
    """Within the block, table updates and fingerprints go to the shard ``name`` (None: to the tables)."""
    global _SHARD
    old, _SHARD = _SHARD, _check_shard(name)
    try:
        yield
    finally:
        _SHARD = old


def shard_dir(path: str | Path) -> Path:
    """The folder of the shards of the file at ``path``: ``.shards/<its name>/`` beside it."""
    path = Path(path)
    return path.parent / ".shards" / path.name


def shard_files(path: str | Path) -> list[Path]:
    """The shards of the file at ``path``, in the order they are applied (by name)."""
    folder = shard_dir(path)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def own_shard(path: str | Path) -> Path:
    """This process's shard of the file at ``path``."""
    return shard_dir(path) / f"{_SHARD}.json"


def _read_shard(path: Path) -> tuple[dict, "pd.DataFrame"]:
    spec = read_json(path)
    try:
        exact = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
        rows = pd.read_csv(io.StringIO(spec["rows"]), keep_default_na=False, na_values=[""], **exact)
        columns, keys, sort = list(spec["columns"]), list(spec["keys"]), list(spec["sort"])
        replaces = [dict(r) for r in spec["replace"]]
        rows = rows[columns] if len(rows.columns) else pd.DataFrame(columns=columns)
    except Exception as exc:
        raise unreadable(path, _reason(exc), "the task that wrote it (or delete it)") from None
    return {"columns": columns, "keys": keys, "sort": sort, "replace": replaces}, rows


def _upsert_shard(path: Path, rows, keys, sort, columns, replace):
    """An update of ``path`` by a shard: into the shard's own file (one writer); returns the table as read."""
    own = own_shard(path)
    replaces, old = [], pd.DataFrame(columns=columns)
    if own.is_file():
        spec, old = _read_shard(own)
        replaces = spec["replace"]
    mine = _upsert(old, rows, keys, sort, columns, replace)
    if replace:
        replaces = [*replaces, dict(replace)]
    record = {"columns": columns, "keys": list(keys), "sort": list(sort), "replace": replaces,
              "rows": mine.to_csv(index=False)}
    write_text(own, json.dumps(record, indent=1, default=_plain) + "\n")
    return read_csv(path, columns)


def _plain(value):
    """numpy scalars in a ``replace`` mapping, as JSON numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _with_shards(path: Path, found: list[Path], columns, step: str | None):
    """The table at ``path`` with its shards ``found`` applied in order."""
    specs = [_read_shard(f) for f in found]
    table = _read_table(path, specs[0][0]["columns"], step, missing_ok=True)
    for spec, rows in specs:
        for replace in spec["replace"]:  # every row a shard's rows came after: its replace drops from the table
            if len(table):
                table = table.loc[~_matching(table, replace)].reset_index(drop=True)
        table = _upsert(table, rows, spec["keys"], spec["sort"], spec["columns"], None)
    lacking = [c for c in columns if c not in table.columns]
    if lacking:
        raise unreadable(path, f"no column {', '.join(map(str, lacking))}", step)
    return table


def merge_shards(path: str | Path) -> bool:
    """Fold the shards of the table or JSON record at ``path`` into it (in the order of their names), then
    delete them; False when it has none. Run it when no task writes them any more (the launcher runs it
    after the tasks of a step, in the next task)."""
    path = Path(path)
    with file_lock(path):
        found = shard_files(path)
        if not found:
            return False
        if path.suffix == ".json":  # a record of {unit: value}: the shards' entries over the file's
            data = read_json(path) if path.is_file() else {}
            for f in found:
                data.update(read_json(f))
            write_text(path, json.dumps(dict(sorted(data.items())), indent=1) + "\n")
        else:
            save_csv(path, _with_shards(path, found, (), None))
        for f in found:
            f.unlink()
        for folder in (shard_dir(path), shard_dir(path).parent):
            try:
                folder.rmdir()
            except OSError:  # not empty: other files' shards
                pass
    return True


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
