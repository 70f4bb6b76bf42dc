"""``pretrained: <path>``: weights from a local file, for any backbone (torchvision, timm, ours).

Nothing is downloaded. The file is a PyTorch file (``torch.load(..., weights_only=True)``) or a
``.safetensors`` file holding a state dict, bare or under one of :data:`WRAPPERS` (``state_dict``: also this
tool's own round checkpoints; ``model``: timm's and many training scripts'), with any DistributedDataParallel
``module.`` prefix removed.

Every key of the model must be in the file with the model's shape and the file may hold no other key, except
for the classifier (``Architecture.classifier``): when its shape differs from the model's (ImageNet's 1000
classes against the dataset's K) or it is absent, the model keeps its fresh head for the dataset's classes.
Anything else that does not fit is one line naming the keys and shapes (:func:`check_fit`).

timm backbones (:func:`lottery_xai.timm_backbones.load_timm_file`) are loaded by timm itself, through its local-file overlay
(``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=...))``), so
timm's checkpoint filter applies (a ViT's position embeddings resampled to the run's ``img_size``, older
layouts converted); the keys and shapes are checked first, after the same filter
(the model module's ``checkpoint_filter_fn``), because timm loads non-strictly whenever it drops a head.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import UserError

WRAPPERS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")
_SHOWN = 3  # keys named in a message; the rest are counted


def weights_path(pretrained) -> Path | None:
    """The file named by ``pretrained`` (a path string), None for true / false / empty."""
    if isinstance(pretrained, bool) or pretrained is None:
        return None
    text = str(pretrained).strip()
    if text == "" or text.lower() in ("true", "false"):
        return None
    return Path(text).expanduser()


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The state dict of a local weights file (see the module docstring); UserError in one line when the file
    is missing, unreadable or holds no state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"pretrained: file '{path}' does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors errors: all mean "not a weights file we can read"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"pretrained: file '{path}' is not a readable weights file ({first[:200]})") from None
    if isinstance(data, dict):
        for key in WRAPPERS:
            if isinstance(data.get(key), dict) and data[key]:
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"pretrained: file '{path}' holds no state dict (a mapping of names to tensors, bare or "
                        f"under {', '.join(WRAPPERS)})")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def _some(keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _head_keys(own: dict, classifier) -> set[str]:
    """The parameters and buffers of the classifier module(s) (a name or a tuple of names)."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    return {k for k in own for c in names if c and k.startswith(c + ".") and "." not in k[len(c) + 1:]}


def check_fit(state: dict, model: nn.Module, classifier, path, model_arch: str) -> bool:
    """UserError (one line: the missing keys, the keys the model does not have, the shapes that differ, each
    with at most three named) unless ``state`` fits ``model`` apart from its classifier. Returns whether the
    file's classifier fits too (then it is loaded; otherwise the model keeps its fresh head)."""
    own = model.state_dict()
    head = _head_keys(own, classifier)
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and k not in head and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) of the model missing from the file: {_some(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} key(s) the model does not have: {_some(unexpected)}")
        if shapes:
            shown = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes]
            parts.append(f"{len(shapes)} shape(s) differ: {_some(shown)}")
        raise UserError(f"pretrained: file '{path}' does not fit model_arch '{model_arch}': " + "; ".join(parts))
    return bool(head) and all(k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in head)


def load_local_weights(model: nn.Module, path, classifier: str | None, model_arch: str) -> nn.Module:
    """Load a local weights file into a built model (torchvision, ours): checked by :func:`check_fit`, the
    classifier taken from the file only where it has the model's shape. Returns the model."""
    path = Path(path).expanduser()
    state = read_state_dict(path)
    head_fits = check_fit(state, model, classifier, path, model_arch)
    own = model.state_dict()
    head = _head_keys(own, classifier)
    merged = {k: (state[k] if (k not in head or head_fits) else own[k]) for k in own}
    model.load_state_dict(merged, strict=True)
    return model

