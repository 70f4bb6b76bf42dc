"""timm backbones: ``model_arch: timm:<name>`` (vision transformers, Swin, ConvNeXt and any other timm model).

A timm model is built with ``timm.create_model(name, pretrained=False, num_classes=K, img_size=S, **model_args)``:
the head is timm's own, made for the dataset's K classes; ``img_size`` is passed to the families that take it
(ViT / DeiT / Swin: their position embeddings and windows are made for the run's images, e.g. a 4 x 4 token grid
at the embedded default's 64 px with 16-pixel patches). ``model_args`` (config key ``model_args``: ``key=value``
strings) go to ``timm.create_model`` as they are, e.g. ``[depth=1, embed_dim=32, num_heads=2, patch_size=8]``
for the tiny transformers of the tests. Nothing is downloaded: pretrained weights come only from a local file
(``pretrained: <path>``, see :mod:`lottery_xai.weights`).

Per family (:data:`FAMILIES`), the layers the pipeline needs, named with negative indices so that they hold
whatever the depth (``blocks.-1`` is the last block; :func:`resolve_layer_name`):

============  =============================  ===========  ==========  =====================================
family        CAM layer                      concept      classifier  token layout (:mod:`lottery_xai.tokens`)
============  =============================  ===========  ==========  =====================================
vit (DeiT)    ``blocks.-1.norm1``            ``blocks.-1``  ``head``    [N, T, D], class (and distillation)
                                                                       tokens first, dropped for the grid
swin          ``layers.-1.blocks.-1.norm1``  ``layers.-1``  ``head.fc`` [N, H, W, C] (NHWC)
convnext      ``stages.-1``                  ``stages.-2``  ``head.fc`` [N, C, H, W] (a CNN: nothing to do)
============  =============================  ===========  ==========  =====================================

The CAM layers are pytorch-grad-cam's (tutorials/vision_transformers.md and usage_examples/vit_example.py:
``model.blocks[-1].norm1`` for ViT, because the class token alone is read after the last block, so the
gradient at the last block's output is 0 on every patch token; swinT_example.py: ``model.layers[-1].blocks[-1].norm1``).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import yaml
from torch import nn

from .errors import UserError
from .names import unknown_name
from .weights import check_fit, read_state_dict

PREFIX = "timm:"


@dataclass(frozen=True)
class Family:
    cam_layer: str
    concept_layer: str
    classifier: str
    takes_img_size: bool


FAMILIES = {
    "vit": Family("blocks.-1.norm1", "blocks.-1", "head", True),
    "swin": Family("layers.-1.blocks.-1.norm1", "layers.-1", "head.fc", True),
    "convnext": Family("stages.-1", "stages.-2", "head.fc", False),
}
# timm module of the model's entry point -> family
_MODULES = {"vision_transformer": "vit", "deit": "vit", "swin_transformer": "swin", "convnext": "convnext"}


def is_timm(model_arch: str) -> bool:
    return isinstance(model_arch, str) and model_arch.startswith(PREFIX)


def timm_name(model_arch: str) -> str:
    """``timm:vit_small_patch16_224`` -> ``vit_small_patch16_224``, checked against timm's registry."""
    import timm  # lazy: timm takes seconds to import and only timm: backbones need it

    name = model_arch[len(PREFIX):]
    if not timm.is_model(name):
        raise unknown_name(f"model_arch '{model_arch}': timm has no model '{name}'", name, timm.list_models(),
                           n=3, cutoff=0.6, otherwise="see timm.list_models()")
    return name


def family_of(name: str) -> str | None:
    """The family of a timm model name (None for a family without a table entry here)."""
    import timm  # lazy: timm takes seconds to import and only timm: backbones need it

    module = timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]
    return _MODULES.get(module)


def family_layers(model_arch: str) -> tuple[str, str, str]:
    """(CAM layer, concept layer, classifier) of a ``timm:<name>`` backbone. A family without a table entry
    gets its classifier from timm's pretrained config and no default CAM or concept layer (set
    ``heatmaps.layer`` and ``bb_layers_for_concepts``)."""
    import timm  # lazy: timm takes seconds to import and only timm: backbones need it

    name = timm_name(model_arch)
    family = family_of(name)
    if family is not None:
        f = FAMILIES[family]
        return f.cam_layer, f.concept_layer, f.classifier
    cfg = timm.models.get_pretrained_cfg(name)
    classifier = cfg.classifier if cfg is not None else None
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0]
    return "", "", classifier or "head"


def parse_model_args(items: Sequence[str]) -> dict:
    """``["depth=1", "embed_dim=32", "depths=[1, 1]"]`` -> ``{"depth": 1, "embed_dim": 32, "depths": (1, 1)}``:
    each value is read as YAML (numbers, booleans, lists; a list becomes a tuple, as timm's defaults are)."""
    out = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise UserError(f"config key 'model_args' takes key=value strings (e.g. depth=1), got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        if not key.isidentifier():
            raise UserError(f"config key 'model_args': {key!r} is not an argument name")
        if key in out:
            raise UserError(f"config key 'model_args' gives {key!r} twice; keep one")
        if key in ("num_classes", "pretrained", "img_size", "pretrained_cfg_overlay"):
            raise UserError(f"config key 'model_args' cannot set {key!r}: the run sets it (dataset classes, "
                            "pretrained, img_size)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def create_kwargs(name: str, num_classes: int, model_args: Sequence[str] | dict = ()) -> dict:
    """Keyword arguments of ``timm.create_model`` for this run, without ``pretrained`` and ``img_size``."""
    extra = dict(model_args) if isinstance(model_args, dict) else parse_model_args(model_args)
    return {"num_classes": int(num_classes), **extra}


def create(name: str, kwargs: dict, img_size: int, **more) -> nn.Module:
    """``timm.create_model(name, **kwargs, **more)`` with ``img_size`` where the model takes it: always for
    the families of :data:`FAMILIES` that do, tried first (and dropped on timm's TypeError) for another family."""
    import timm  # lazy: timm takes seconds to import and only timm: backbones need it

    family = family_of(name)
    try:
        if img_size and (family is None or FAMILIES[family].takes_img_size):
            try:
                return timm.create_model(name, img_size=int(img_size), **kwargs, **more)
            except TypeError as exc:
                if family is not None or "img_size" not in str(exc):
                    raise
        return timm.create_model(name, **kwargs, **more)
    except TypeError as exc:
        raise UserError(f"model_arch 'timm:{name}' with model_args {kwargs}: {exc}") from None


def _timm_filter(name: str):
    """The ``checkpoint_filter_fn`` of the timm module that defines the model's class, or None."""
    import timm  # lazy: timm takes seconds to import and only timm: backbones need it

    module = sys.modules.get(timm.models.model_entrypoint(name).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def load_timm_file(name: str, kwargs: dict, img_size: int, path, model_arch: str) -> nn.Module:
    """A timm model with weights from a local file through timm's file overlay, keys and shapes checked first
    (after the model module's checkpoint filter). The classifier comes from the file when it has the run's
    number of classes; otherwise timm drops it and the head stays fresh."""
    path = Path(path).expanduser()
    state = read_state_dict(path)
    rng = torch.get_rng_state()
    probe = create(name, kwargs, img_size, pretrained=False)  # the model the file must fit
    torch.set_rng_state(rng)  # the model built below starts from the same draws as without a file (its fresh head)
    classifier = probe.pretrained_cfg.get("classifier") or "head"  # a name, or several (DeiT's head, head_dist)
    filtered = dict(state)
    fn = _timm_filter(name)
    if fn is not None:
        try:
            filtered = fn(dict(state), probe)
        except (KeyError, RuntimeError, ValueError, AssertionError, IndexError):
            filtered = dict(state)  # a filter that cannot read this file: the check below names what differs
    head_fits = check_fit(filtered, probe, classifier, path, model_arch)
    # timm keeps the file's classifier when the overlay's num_classes is the run's, and drops it otherwise
    file_classes = kwargs["num_classes"] if head_fits else -1  # -1: never a run's number of classes
    del probe
    try:
        return create(name, kwargs, img_size, pretrained=True,
                      pretrained_cfg_overlay=dict(file=str(path), num_classes=file_classes))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"pretrained: file '{path}' does not fit model_arch '{model_arch}': "
                        f"{' '.join(s.strip() for s in first[:3])[:300]}") from None


def build_timm(model_arch: str, num_classes: int, pretrained=False, img_size: int = 224,
               model_args: Sequence[str] | dict = ()) -> nn.Module:
    """A ``timm:<name>`` model with a fresh head for ``num_classes`` (initial weights from the global torch RNG:
    seed it first). ``pretrained``: False, or the path of a local weights file (timm's file overlay; keys and
    shapes checked first, see :func:`load_timm_file`). ``pretrained: true`` is refused:
    timm would download, and nothing is fetched at run time."""
    name = timm_name(model_arch)
    kwargs = create_kwargs(name, num_classes, model_args)
    if pretrained is True:
        raise UserError(f"model_arch '{model_arch}': pretrained: true would download timm's weights and nothing is "
                        "fetched at run time; set pretrained to the path of a local weights file "
                        "(.pth, .pt, .bin or .safetensors), or to false")
    if pretrained:
        return load_timm_file(name, kwargs, img_size, pretrained, model_arch)
    return create(name, kwargs, img_size, pretrained=False)


def resolve_layer_name(model: nn.Module, name: str) -> str:
    """A dotted layer name with negative indices (``blocks.-1.norm1``) as the model's own
    (``blocks.11.norm1``); a name without them is returned unchanged. UserError when an index is out of range
    or the container has no length."""
    parts = name.split(".")
    if not any(p.startswith("-") and p[1:].isdigit() for p in parts):
        return name
    module, out = model, []
    for p in parts:
        if p.startswith("-") and p[1:].isdigit():
            children = list(module.named_children())
            k = len(children) + int(p)
            if not 0 <= k < len(children):
                raise UserError(f"layer '{name}': index {p} is out of range at '{'.'.join(out) or 'the model'}' "
                                f"({len(children)} children)")
            p = children[k][0]
        try:
            module = module.get_submodule(p)
        except AttributeError:
            return name  # not resolvable: the caller's lookup reports the unknown name with its matches
        out.append(p)
    return ".".join(out)


def default_cam_layer(model: nn.Module) -> str | None:
    """The CAM layer of :data:`FAMILIES` for a built timm ViT / DeiT or Swin (its own name, indices resolved),
    None for any other model (and without timm)."""
    try:
        # lazy: timm takes seconds to import and only timm: backbones need it
        from timm.models.swin_transformer import SwinTransformer
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    for cls, family in ((VisionTransformer, "vit"), (SwinTransformer, "swin")):
        if isinstance(model, cls):
            return resolve_layer_name(model, FAMILIES[family].cam_layer)
    return None


def grid_side(n_tokens: int) -> int | None:
    """The side of a square grid of ``n_tokens`` tokens, None when it is not a square."""
    side = math.isqrt(n_tokens)
    return side if side * side == n_tokens and side > 0 else None
