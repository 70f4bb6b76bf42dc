"""Structured (channel) pruning: whole channels leave the network, which becomes a smaller dense one.

Unstructured pruning (:mod:`lottery_xai.pruning`) zeroes single weights through masks that keep the
dense shapes, so a ticket costs what the dense network costs. Here a round removes whole output
channels (conv filters, hidden units of linear layers); the pruned network is rebuilt as a smaller
network with fewer channels, which is what gives a real speed-up.

References.
- Ranking: Li, Kadav, Durdanovic, Samet and Graf 2017, "Pruning filters for efficient ConvNets"
  (ICLR): a filter's importance is the sum of its absolute kernel weights (its L1 norm); each layer
  drops its filters of smallest norm, together with the matching input channels of the next layer
  and the matching BatchNorm channels. ``score='filters'`` is that ranking (``norm='l2'``: the
  filter's Euclidean norm instead). Where one channel is written by several layers (the channels a
  residual addition joins), its score is the mean of the norms of the filters that write it.
- Consistency: Fang, Ma, Song, Mi and Wang 2023, "DepGraph: towards any structural pruning" (CVPR),
  and its library torch-pruning (VainF/Torch-Pruning, 1.6): ``tp.DependencyGraph`` traces the model
  once and couples every dimension that must be pruned together (both sides of a residual
  addition, BatchNorm and LayerNorm channels, the input features of the next conv or linear layer,
  flattening, concatenation, a transformer's embedding dimension across all blocks with its class
  token and position embedding). A coupled set is one *group*; channels are ranked and removed per
  group, and ``Group.prune()`` edits every layer of it. ``score='group'`` ranks with torch-pruning's
  own ``GroupMagnitudeImportance(p, group_reduction='mean', normalizer=None)``: the mean over every
  coupled parameter of the group (producing filters, consuming input slices, norm scales).

What a round keeps is a :data:`Structure`: for each group, named by its root layer (the first, in
``model.named_modules()`` order, of the layers whose outputs are the group's channels), the ORIGINAL
indices of its channels that survive. Every network of a run is rebuilt from a fresh full model
with :func:`restructure`, so a checkpoint needs only the structure next to the smaller state dict:
a rebuilt round-r network with the checkpoint's weights is the pruned trained network, and a
rebuilt network loaded with the full initial weights keeps exactly the initial weights of the kept
channels (the lottery-ticket rewind, here of channels).

Not pruned: the classifier's outputs (the classes; it loses input features when the layer before it
loses channels), the network's input channels, and the projections of attention layers that are
split into heads (``qkv``, ``q_proj``/``k_proj``/``v_proj`` of a module with a ``num_heads``
attribute, as timm's and torchvision's attention): heads stay whole, while the embedding
(residual) dimension and the MLP hidden dimension of a transformer are pruned.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .errors import UserError

STRUCTURE_VERSION = 1
NORMS = ("l1", "l2")
SCORES = ("filters", "group")
_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_HEAD_SPLIT = ("qkv", "q_proj", "k_proj", "v_proj", "in_proj")

# A Structure is plain data (JSON- and torch.save-friendly):
#   {"version": 1, "input_shape": [1, C, H, W],
#    "groups": {root_name: {"kind": "conv" | "linear", "size": channels of the full network, "kept": [original indices]}}}
Structure = dict


def _tp():
    try:
        import torch_pruning  # lazy: torch-pruning takes seconds to import and is needed only by pruning.structure: channels
    except ImportError:  # pragma: no cover - torch-pruning is a dependency
        raise UserError("pruning.structure: channels needs torch-pruning (pip install torch-pruning)") from None
    return torch_pruning


@dataclass(frozen=True)
class ChannelGroup:
    """One coupled set of channels: its root layer, the root's kind, its channel count and the layers
    whose outputs are these channels (more than one where a residual addition joins them)."""

    root: str
    kind: str
    size: int
    producers: tuple


def dependency_graph(model: nn.Module, input_shape: Iterable[int]):
    """torch-pruning's DependencyGraph of ``model``, traced with one zero input of ``input_shape``.

    The trace runs in eval mode (BatchNorm's running statistics are not touched) with gradients on
    (DepGraph follows autograd); the model's mode is restored afterwards."""
    tp = _tp()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(*input_shape, device=device),
                                                         verbose=False)
    finally:
        model.train(was_training)


def _ignored(model: nn.Module, classifier: str | None) -> list[nn.Module]:
    """Layers whose outputs are never pruned: the classifier and head-split attention projections."""
    ignored = [model.get_submodule(classifier)] if classifier else []
    for module in model.modules():
        if hasattr(module, "num_heads"):
            ignored += [getattr(module, n) for n in _HEAD_SPLIT if isinstance(getattr(module, n, None), nn.Module)]
    return ignored


def _producers(DG, group) -> list:
    """(module, plain idxs, root idxs) of the conv/linear layers whose OUTPUTS a group item prunes."""
    found = []
    for item in group:
        module = item.dep.target.module
        if isinstance(module, _PRODUCERS) and DG.is_out_channel_pruning_fn(item.dep.handler):
            found.append((module, list(item.idxs), list(item.root_idxs)))
    return found


def _groups(model: nn.Module, DG, classifier: str | None, conv_only: bool):
    """(ChannelGroup, tp group) per prunable group, in the order of their roots in named_modules()."""
    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    names = {m: n for n, m in model.named_modules()}
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d) if conv_only else _PRODUCERS
    found = []
    for group in DG.get_all_groups(ignored_layers=_ignored(model, classifier), root_module_types=kinds):
        producers = sorted({m for m, _, _ in _producers(DG, group)}, key=order.__getitem__)
        if not producers or (conv_only and not all(isinstance(m, kinds) for m in producers)):
            continue
        root = producers[0]
        size = len(group[0].idxs)
        kind = "linear" if isinstance(root, nn.Linear) else "conv"
        found.append((ChannelGroup(names[root], kind, size, tuple(names[m] for m in producers)), group))
    return sorted(found, key=lambda pair: order[model.get_submodule(pair[0].root)])


def channel_groups(model: nn.Module, input_shape, classifier: str | None = None, conv_only: bool = False) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` (DepGraph's groups rooted at conv/linear outputs,
    the classifier's outputs and head-split attention projections excluded; ``conv_only``: groups
    written by conv layers only, as ``pruning.layers: conv``)."""
    return [g for g, _ in _groups(model, dependency_graph(model, input_shape), classifier, conv_only)]


def full_structure(model: nn.Module, input_shape, classifier: str | None = None, conv_only: bool = False) -> Structure:
    """The structure that keeps every channel of ``model`` (a full network; round 0)."""
    groups = channel_groups(model, input_shape, classifier, conv_only)
    return {"version": STRUCTURE_VERSION, "input_shape": [int(s) for s in input_shape],
            "groups": {g.root: {"kind": g.kind, "size": g.size, "kept": list(range(g.size))} for g in groups}}


def check_structure(structure) -> Structure:
    """``structure`` if it is a Structure of this version (ValueError naming what is wrong otherwise)."""
    if not isinstance(structure, dict) or structure.get("version") != STRUCTURE_VERSION:
        raise ValueError(f"not a structure record of version {STRUCTURE_VERSION}")
    for root, g in structure.get("groups", {}).items():
        kept = g.get("kept")
        if not isinstance(kept, list) or not kept or sorted(set(kept)) != kept or kept[0] < 0 or kept[-1] >= g.get("size", 0):
            raise ValueError(f"group {root}: 'kept' must be sorted distinct indices below its size {g.get('size')}")
    return structure


def kept_counts(structure: Structure) -> dict[str, int]:
    return {root: len(g["kept"]) for root, g in structure["groups"].items()}


def _norms(weight: torch.Tensor, idxs: list, norm: str) -> torch.Tensor:
    w = weight.detach().float()[idxs].flatten(1)
    return w.abs().sum(1) if norm == "l1" else w.pow(2).sum(1).sqrt()


@torch.no_grad()
def channel_scores(model: nn.Module, structure: Structure, norm: str = "l1", score: str = "filters",
                   DG=None) -> dict[str, torch.Tensor]:
    """Per group of ``structure``, the importance of each of its channels present in ``model`` (a
    network rebuilt to ``structure``), in the model's current channel order (``structure``'s kept order).

    ``score='filters'`` (Li et al. 2017): the L1 (``norm='l1'``) or L2 norm of each filter that writes the
    channel, averaged over the layers that write it. ``score='group'``: torch-pruning's
    ``GroupMagnitudeImportance(p=1|2, group_reduction='mean', normalizer=None)`` of the whole group."""
    if norm not in NORMS or score not in SCORES:
        raise ValueError(f"norm must be one of {NORMS} and score one of {SCORES}, got {norm!r}, {score!r}")
    DG = DG if DG is not None else dependency_graph(model, structure["input_shape"])
    out = {}
    for root, g in structure["groups"].items():
        module = model.get_submodule(root)
        pruner = DG.get_pruner_of_module(module)
        n = pruner.get_out_channels(module)
        if n != len(g["kept"]):
            raise ValueError(f"group {root}: the model has {n} channels, the structure keeps {len(g['kept'])}")
        group = DG.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
        if score == "group":
            tp = _tp()
            imp = tp.importance.GroupMagnitudeImportance(p=1 if norm == "l1" else 2, group_reduction="mean",
                                                         normalizer=None)(group)
            out[root] = imp.detach().float().cpu()
            continue
        total, count = torch.zeros(n), torch.zeros(n)
        for layer, idxs, root_idxs in _producers(DG, group):
            total.index_add_(0, torch.tensor(root_idxs), _norms(layer.weight, idxs, norm).cpu())
            count.index_add_(0, torch.tensor(root_idxs), torch.ones(len(root_idxs)))
        out[root] = total / count.clamp(min=1)
    return out


def _keep_top(scores: torch.Tensor, n_keep: int) -> list[int]:
    """Positions of the ``n_keep`` largest scores, ascending (a stable sort breaks ties by position)."""
    order = torch.sort(scores, descending=True, stable=True).indices[:n_keep]
    return sorted(int(i) for i in order)


def next_structure(structure: Structure, scores: dict[str, torch.Tensor], keep_fraction: dict[str, float]) -> Structure:
    """The structure of the next round: group ``root`` keeps ``round(size * keep_fraction[root])`` of its
    ORIGINAL channel count (at least one, never more than are alive), its highest-scoring alive channels
    (``scores[root]`` in the order of ``structure``'s kept channels). Fractions of the original counts, as
    the unstructured schedule, so rounding never accumulates across rounds."""
    new = copy.deepcopy(structure)
    for root, g in new["groups"].items():
        alive = len(g["kept"])
        n_keep = min(max(1, round(g["size"] * float(keep_fraction[root]))), alive)
        positions = _keep_top(scores[root].float(), n_keep)
        g["kept"] = [g["kept"][p] for p in positions]
    return new


def random_scores(structure: Structure, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Uniform random scores per alive channel (``pruning.method: random``), groups in the structure's order."""
    return {root: torch.rand(len(g["kept"]), generator=generator) for root, g in structure["groups"].items()}


def restructure(model: nn.Module, current: Structure, target: Structure, DG=None) -> nn.Module:
    """Remove, in place, the channels that ``current`` keeps and ``target`` does not (``model`` is built to
    ``current``; a fresh full model is built to :func:`full_structure`). Every group is pruned once, through
    torch-pruning's ``DG.get_pruning_group(root, prune_out_channels, idxs).prune()``, which edits every
    coupled layer. Returns ``model``."""
    check_structure(target)
    if set(current["groups"]) != set(target["groups"]):
        raise ValueError("the two structures name different groups: they were made for different models or "
                         "pruning.layers settings")
    todo = {}
    for root, g in target["groups"].items():
        have = current["groups"][root]["kept"]
        missing = set(g["kept"]) - set(have)
        if missing:
            raise ValueError(f"group {root}: the target keeps channels {sorted(missing)[:5]} this network no longer has")
        keep = set(g["kept"])
        drop = [i for i, original in enumerate(have) if original not in keep]
        if drop:
            todo[root] = drop
    if not todo:
        return model
    DG = DG if DG is not None else dependency_graph(model, target["input_shape"])
    for root, drop in todo.items():
        module = model.get_submodule(root)
        DG.get_pruning_group(module, DG.get_pruner_of_module(module).prune_out_channels, drop).prune()
    return model


def unpruned(structure: Structure) -> Structure:
    """The structure of the full network ``structure`` was made from (every channel of every group kept)."""
    return {**structure, "groups": {r: {**g, "kept": list(range(g["size"]))} for r, g in structure["groups"].items()}}


def build_structured(make_full: Callable[[], nn.Module], structure: Structure, state: dict | None = None,
                     full_state: dict | None = None) -> nn.Module:
    """A network of ``structure``: a fresh full model from ``make_full()``, with ``full_state`` (the full
    network's weights, e.g. the initial ones) loaded BEFORE the channels are removed, and/or ``state`` (a
    state dict of the smaller network, e.g. a round's checkpoint) loaded after."""
    model = make_full()
    if full_state is not None:
        model.load_state_dict(full_state)
    restructure(model, unpruned(structure), structure)
    if state is not None:
        model.load_state_dict(state)
    return model


def parameter_counts(model: nn.Module, names: Iterable[str]) -> tuple[int, int]:
    """(elements of the named parameters, elements of all parameters) of ``model``."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names), sum(p.numel() for p in model.parameters())


def remaining_fractions(full: nn.Module, small: nn.Module, names: Iterable[str]) -> tuple[float, float]:
    """(share of the prunable weights left, share of all parameters left) of the smaller network
    ``small`` against the full one (``names``: the prunable tensors, present in both)."""
    names = list(names)
    p_full, t_full = parameter_counts(full, names)
    p_small, t_small = parameter_counts(small, names)
    return p_small / max(p_full, 1), t_small / max(t_full, 1)
