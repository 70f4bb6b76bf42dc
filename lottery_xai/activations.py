"""Bottleneck activations: a forward stopped at the layer, flattening, and streaming to `.npy` memory maps.

A vision transformer's token layer is first reduced to its token features (``token_features``: the class token,
the mean over the patch tokens, or the patch grid, :func:`lottery_xai.tokens.token_features`); a CNN's maps are
flattened as they are."""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import nn
from tqdm.auto import tqdm

from .errors import UserError
from .models import get_layer
from .safe_io import atomic_path
from .tokens import resolve_mode, token_features as reduce_tokens, token_layout

FLATTENINGS = ("flatten", "avg_pool", "max_pool")
_DTYPES = {"float32": (np.float32, torch.float32), "float16": (np.float16, torch.float16)}
# Written pages of a memory map count as resident memory of the process until they are dropped;
# dropping them every 8 MiB keeps the process flat whatever the number of images.
_RELEASE_BYTES = 8 << 20


class _StopForward(Exception):
    """Raised from a forward hook once every requested layer has run: nothing after it is computed."""


def _check_flattening(mode: str) -> None:
    if mode not in FLATTENINGS:
        raise UserError(f"cav_flattening_type '{mode}' is unknown; use one of {', '.join(FLATTENINGS)}")


def flatten_activations(acts: torch.Tensor, mode: str) -> torch.Tensor:
    """[N, C, H, W] (or any [N, C, ...]) -> [N, D]: `flatten` keeps every unit, `avg_pool` / `max_pool`
    reduce the spatial dimensions to one value per channel. [N, D] inputs are returned unchanged."""
    _check_flattening(mode)
    if acts.dim() <= 2:
        return acts.reshape(acts.shape[0], -1)
    if mode == "flatten":
        return acts.reshape(acts.shape[0], -1)
    spatial = tuple(range(2, acts.dim()))
    return acts.mean(dim=spatial) if mode == "avg_pool" else acts.amax(dim=spatial)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode (BatchNorm running statistics, no dropout) and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (cpu for a model without any)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


class LayerCapture:
    """The one layer capture of the package: a forward hook that records a module's output.

    ``mode="leaf"`` (explanations, TCAV): the output becomes a fresh leaf that requires grad and grad
    mode is switched on at the layer, so a forward started under ``torch.no_grad()`` records only
    layer -> logits and ``torch.autograd.grad`` to the layer touches no parameter below it.
    ``mode="attached"`` (training losses): the output stays attached to the graph below it.
    In both the forward continues on a clone (an in-place op after the layer, ``ReLU(inplace=True)``
    or ``out += identity``, can neither modify the captured tensor nor fail on a leaf).
    ``mode="value"`` (activations): the output is stored as it is and the forward is not changed.
    A module that runs twice in one forward is an error (``repeat="error"``) or keeps its first
    output (``repeat="first"``). ``then(name)`` runs after each capture (``StopForward`` may be raised
    from it to end the forward early). The hook is removed on exit, whatever happens.
    """

    def __init__(self, module: nn.Module, name: str, mode: str = "leaf", repeat: str = "error",
                 then: Callable[[str], None] | None = None):
        if mode not in ("leaf", "attached", "value") or repeat not in ("error", "first"):
            raise ValueError(f"unknown capture mode {mode!r} or repeat {repeat!r}")
        self.module, self.name, self.mode, self.repeat, self.then = module, name, mode, repeat, then
        self.activation: torch.Tensor | None = None
        self._calls = 0
        self._handle = None

    def __enter__(self) -> "LayerCapture":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> bool:
        self._handle.remove()
        self._handle = None
        return False

    def reset(self) -> None:
        self.activation, self._calls = None, 0

    def _hook(self, module: nn.Module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise UserError(f"layer {self.name!r} returns {type(output).__name__}, not a tensor; "
                            "pick a layer whose output is a feature map")
        self._calls += 1
        if self._calls > 1:
            if self.repeat == "first":
                return None
            raise UserError(f"layer {self.name!r} runs more than once per forward pass (a shared module); "
                            "pick a layer that runs once, e.g. its parent block")
        if self.mode == "value":
            self.activation = output
            if self.then is not None:
                self.then(self.name)
            return None
        if self.mode == "leaf":
            activation = output.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # record only from here to the logits
        else:
            activation = output if output.requires_grad else output.requires_grad_(True)
        self.activation = activation
        if self.then is not None:
            self.then(self.name)
        return activation.clone()


def forward_with_capture(model: nn.Module, images: torch.Tensor, layer: str, *, detach: bool = True,
                         repeat: str = "error") -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model(images)`` once and return (activation of ``layer``, logits [N, K]); ``detach``:
    ``mode="leaf"`` (no graph below the layer) or ``"attached"``, see :class:`LayerCapture`."""
    capture = LayerCapture(get_layer(model, layer), layer, "leaf" if detach else "attached", repeat)
    with capture:
        with torch.no_grad() if detach else torch.enable_grad():  # restores the caller's grad mode on exit
            logits = model(images)
    if capture.activation is None:
        raise UserError(f"layer {layer!r} did not run in the forward pass; pick a layer on the path to the logits")
    n = images.shape[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"the model must return logits [N, K] with N = {n}, got {shape}")
    return capture.activation, logits


class _Store(dict):
    resets: list = []


@contextlib.contextmanager
def _capture(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Value captures of ``layers`` that stop the forward once all of them have run."""
    captures: dict[str, LayerCapture] = {}
    store = _Store()

    def done(name: str):
        store[name] = captures[name].activation
        if len(store) == len(captures):
            raise _StopForward

    captures.update({name: LayerCapture(get_layer(model, name), name, "value", "first", then=done) for name in layers})
    with contextlib.ExitStack() as stack:
        for c in captures.values():
            stack.enter_context(c)
        store.resets = [c.reset for c in captures.values()]
        yield store


def _run_captured(model: nn.Module, images: torch.Tensor, store: dict, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """One forward with `_capture` hooks in place; returns {layer: output}."""
    store.clear()
    for reset in getattr(store, "resets", ()):
        reset()
    try:
        model(images)
    except _StopForward:
        pass
    missing = [n for n in layers if n not in store]
    if missing:
        raise UserError(f"layer(s) {', '.join(missing)} never ran in the model's forward; choose layers the forward uses")
    out = dict(store)
    store.clear()
    return out


@torch.no_grad()
def layer_activations(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """The output of `layer` (dotted name) for `images`; the forward stops there, nothing after it runs.
    The model is used in whatever mode it is in (call ``model.eval()`` first for explanations)."""
    with _capture(model, [layer]) as store:
        return _run_captured(model, images, store, [layer])[layer]


def _release(mm: np.memmap) -> None:
    """Unmap the already-written pages of the shared file mapping from this process. Nothing is lost:
    the kernel moves their dirty state to the page cache, which writes them to the file."""
    raw = getattr(mm, "_mmap", None)
    if raw is not None and hasattr(raw, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        raw.madvise(mmap.MADV_DONTNEED)


class StreamWriter:
    """One pre-sized `.npy` memory map at a temporary name (``rundir.atomic_path``, the package's one
    atomic writer), filled row block by row block, renamed when complete."""

    def __init__(self, path: Path, n_rows: int, row_shape: tuple, dtype) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a memory map on a full disk dies with SIGBUS mid-write: check the room first, so a full disk is an OSError
        needed = int(np.prod((n_rows, *row_shape))) * np.dtype(dtype).itemsize
        if needed > shutil.disk_usage(self.path.parent).free:
            raise OSError(errno.ENOSPC, f"{needed / 2**20:.0f} MiB needed", str(self.path))
        self._atomic = atomic_path(self.path)
        self.tmp = self._atomic.__enter__()
        try:
            self.mm = open_memmap(self.tmp, mode="w+", dtype=dtype, shape=(n_rows, *row_shape))
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.unreleased = 0

    def write(self, start: int, block: np.ndarray) -> None:
        self.mm[start:start + len(block)] = block
        self.unreleased += block.nbytes
        if self.unreleased >= _RELEASE_BYTES:
            _release(self.mm)
            self.unreleased = 0

    def commit(self) -> tuple:
        shape = self.mm.shape
        self.mm.flush()
        del self.mm
        self._atomic.__exit__(None, None, None)  # atomic: the final name holds a complete file or nothing
        return shape

    def abort(self) -> None:
        if hasattr(self, "mm"):
            del self.mm
        failed = RuntimeError("aborted")
        self._atomic.__exit__(RuntimeError, failed, None)  # removes the temporary, renames nothing


def _as_numpy_column(values) -> np.ndarray:
    """Labels / concepts / ids of a batch as a numpy array (tensors, lists of numbers or of strings)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def save_activations(
    model: nn.Module,
    layers: Sequence[str],
    loader: Iterable[Mapping],
    out_paths: Mapping[str, str | os.PathLike],
    *,
    flattening: str,
    n_images: int,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    extra_paths: Mapping[str, str | os.PathLike] | None = None,
    progress: bool = True,
    token_features: str = "auto",
) -> dict:
    """Stream the activations of every requested layer to `.npy` files in ONE pass over `loader`.

    `loader` yields dict batches with keys ``image``, ``label``, ``concepts``, ``id`` (and ``index``), in
    split order; rows are written in the order the loader yields them. Each forward stops after the
    last requested layer has run. `out_paths[layer]` receives an [n_images, D] array of `dtype`;
    `extra_paths` may name files for ``labels``, ``concepts`` and ``ids``. Files are pre-sized memory
    maps at a temporary name, renamed into place only when complete. The model runs in eval mode
    (restored afterwards) on `device` (default: where the model is). Returns the shape of each file.
    A transformer's token layers are reduced by ``token_features`` (cls | mean | grid | auto, see
    :mod:`lottery_xai.tokens`) before ``flattening``; nothing changes for a CNN.
    """
    _check_flattening(flattening)
    layout = token_layout(model)
    resolve_mode(token_features, layout)  # an unknown mode fails before any work is done
    if dtype not in _DTYPES:
        raise UserError(f"activation dtype '{dtype}' is unknown; use float32 or float16")
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise UserError("no layer requested; set bb_layers_for_concepts to at least one layer name")
    missing = [l for l in layers if l not in out_paths]
    if missing:
        raise UserError(f"no output path for layer(s) {', '.join(missing)}")
    for name in layers:
        get_layer(model, name)  # a typo fails before any work is done
    extra_paths = dict(extra_paths or {})
    unknown = set(extra_paths) - {"labels", "concepts", "ids"}
    if unknown:
        raise UserError(f"extra_paths keys {sorted(unknown)} are unknown; use labels, concepts, ids")
    np_dtype, torch_dtype = _DTYPES[dtype]
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    batch_key = {"labels": "label", "concepts": "concepts", "ids": "id"}

    writers: dict[str, StreamWriter] = {}
    done = 0
    try:
        with eval_mode(model), torch.no_grad(), _capture(model, layers) as store:
            for batch in tqdm(loader, desc="activations", unit="batch", disable=not progress, leave=False):
                images = batch["image"].to(device, non_blocking=True)
                b = images.shape[0]
                if done + b > n_images:
                    raise UserError(f"the loader yields more than n_images={n_images} images; pass the split's size")
                acts = _run_captured(model, images, store, layers)
                flat = [flatten_activations(reduce_tokens(acts[n], layout, token_features, n), flattening).to(torch_dtype)
                        for n in layers]
                widths = [f.shape[1] for f in flat]
                block = torch.cat(flat, dim=1).cpu().numpy()  # one device->cpu transfer per batch
                if not writers:
                    for name, d in zip(layers, widths):
                        writers[name] = StreamWriter(Path(out_paths[name]), n_images, (d,), np_dtype)
                    for what, path in extra_paths.items():
                        col = _as_numpy_column(batch[batch_key[what]])
                        col_dtype = col.dtype if col.dtype.kind != "U" else np.dtype(f"<U{max(64, col.dtype.itemsize // 4)}")
                        writers[what] = StreamWriter(Path(path), n_images, col.shape[1:], col_dtype)
                start = 0
                for name, d in zip(layers, widths):
                    writers[name].write(done, block[:, start:start + d])
                    start += d
                for what in extra_paths:
                    col = _as_numpy_column(batch[batch_key[what]])
                    if col.dtype.kind == "U" and col.dtype.itemsize > writers[what].mm.dtype.itemsize:
                        raise UserError(f"an image id is longer than {writers[what].mm.dtype.itemsize // 4} characters")
                    writers[what].write(done, col)
                done += b
        if done == 0:
            raise UserError("the loader yielded no images; check the split's contents")
        if done != n_images:
            raise UserError(f"the loader yielded {done} images but n_images={n_images}; pass the split's size")
        return {"n_images": done, **{name: w.commit() for name, w in writers.items()}}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
