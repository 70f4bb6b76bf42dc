"""Where the concepts of steps 4 and 5 come from: concept sources, each a value declared where it is defined.

``concepts_for_tcav`` names the concepts of every source at once: a plain name (or ``all``) is an attribute the
dataset labels, ``ace:<class>:<k>`` (or ``ace:all``) a concept ACE discovered (``main_ace.py``). Steps 4 and 5
ask this module which source each name belongs to and what the source has for it; they import no source, so
a new source is one declaration in the module that makes its concepts (as timm registers a model beside its
builder) and that step's key in the ``uses`` of steps 4 and 5 (``tests/pipeline/test_concept_sources.py``
checks both).

A :class:`ConceptSource` says

- ``prefix``: how its names start in concepts_for_tcav (``""`` for the dataset's attributes: the names no other
  source claims);
- ``made_by``: the step that makes its concepts, or None when the dataset holds them;
- ``resolve(run, info, names, asking)``: the names as written, checked (a one-line error for an unknown one or
  a setting the source cannot work with; ``asking``: the key of the step that asks), as the concept names
  steps 4 and 5 store;
- ``layers(cfg)``: the concept layers where it has concepts (None: every layer of bb_layers_for_concepts);
- ``fit(run, r, layer, names, n_runs, seed)``: the CAVs of its concepts at round ``r`` and ``layer``,
  ``dict(concepts, cavs [n, n_runs, D], accuracy [n, n_runs])``, which step 4 appends after the attributes'
  (None for the attributes: step 4 fits them, with the random CAVs, from step 3's activations of the CAV
  splits). Step 5 scores every concept alike, against step 4's random CAVs.

The sources: ``attributes`` (here) and ``ace`` (:mod:`lottery_xai.pipeline.ace`).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import Config
from ..data import require_annotations
from ..rundir import RunDir
from ..steps import get
from .loading import resolve_names

ATTRIBUTES = "attributes"


@dataclass(frozen=True)
class ConceptSource:
    """One source of concepts for steps 4 and 5 (see the module docstring)."""

    key: str
    title: str
    prefix: str
    resolve: Callable[..., list[str]]
    made_by: str | None = None
    layers: Callable[[Config], list[str]] | None = None
    fit: Callable[..., dict] | None = None

    def has_layer(self, cfg: Config, layer: str) -> bool:
        return self.layers is None or layer in self.layers(cfg)


_SOURCES: dict[str, ConceptSource] = {}
_DISCOVERED = False


def register_source(source: ConceptSource) -> ConceptSource:
    """Add a source; a key or a non-empty prefix declared twice is a programming error."""
    for other in _SOURCES.values():
        if other.key != source.key and (source.prefix or not other.prefix) and other.prefix == source.prefix:
            raise ValueError(f"concept sources '{other.key}' and '{source.key}' both claim the prefix {source.prefix!r}")
    old = _SOURCES.get(source.key)
    if old is not None and old.resolve.__module__ != source.resolve.__module__:
        raise ValueError(f"concept source '{source.key}' is declared twice ({old.resolve.__module__} and "
                         f"{source.resolve.__module__})")
    _SOURCES[source.key] = source
    return source


def sources() -> list[ConceptSource]:
    """Every source, the dataset's attributes first (their concepts come first in step 4's files), then in the
    order they were declared; the modules of the pipeline package are imported on first use (they declare)."""
    global _DISCOVERED
    if not _DISCOVERED:
        package = importlib.import_module(__package__)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{__package__}.{module.name}")
        _DISCOVERED = True
    return sorted(_SOURCES.values(), key=lambda s: s.key != ATTRIBUTES)


def source_of(name: str) -> ConceptSource:
    """The source that claims a name of concepts_for_tcav (the attributes: any name no prefix claims)."""
    claims = [s for s in sources() if s.prefix and str(name).startswith(s.prefix)]
    return claims[0] if claims else _SOURCES[ATTRIBUTES]


@dataclass(frozen=True)
class Selection:
    """concepts_for_tcav resolved: each source's concept names, in the order steps 4 and 5 store them."""

    names: dict[str, list[str]]  # source key -> concept names (only the sources concepts_for_tcav names)

    @property
    def attributes(self) -> list[str]:
        return self.names.get(ATTRIBUTES, [])

    def at(self, cfg: Config, layer: str) -> list[str]:
        """Every concept a CAV file of ``layer`` holds and step 5 scores there."""
        return [n for key, names in self.names.items() if _SOURCES[key].has_layer(cfg, layer) for n in names]

    def fitted_apart(self, cfg: Config, layer: str) -> list[tuple[ConceptSource, list[str]]]:
        """The sources at ``layer`` whose CAVs are fitted apart from the attributes', with their names."""
        return [(_SOURCES[key], names) for key, names in self.names.items()
                if _SOURCES[key].fit is not None and names and _SOURCES[key].has_layer(cfg, layer)]


def select_concepts(run: RunDir, info, asking: str) -> Selection:
    """concepts_for_tcav split by source and resolved (``asking``: the key of the step that asks)."""
    written: dict[str, list[str]] = {}
    for name in run.cfg.concepts_for_tcav:
        written.setdefault(source_of(name).key, []).append(name)
    return Selection({s.key: s.resolve(run, info, written[s.key], asking) for s in sources() if s.key in written})


def with_sources_cavs(run: RunDir, r: int, layer: str, selection: Selection, result: dict, seed: int) -> dict:
    """Step 4: ``result`` (a ``fit_all_cavs`` dict of the attributes and the random CAVs) with the CAVs of the
    other sources' concepts at ``layer`` appended after the attributes'."""
    n_random = run.cfg.cav.n_random
    out = dict(result)
    for source, names in selection.fitted_apart(run.cfg, layer):
        extra = source.fit(run, r, layer, names, n_random, seed)
        if not extra["concepts"]:
            continue
        d = extra["cavs"].shape[-1]
        out["cavs"] = np.concatenate([np.asarray(out["cavs"]).reshape(len(out["concepts"]), n_random, d), extra["cavs"]])
        out["accuracy"] = np.concatenate([np.asarray(out["accuracy"]).reshape(len(out["concepts"]), n_random),
                                          extra["accuracy"]])
        out["concepts"] = list(out["concepts"]) + list(extra["concepts"])
    return out


# ---------------------------------------------------------------- the dataset's attributes

def _attribute_names(run: RunDir, info, names: list[str], asking: str) -> list[str]:
    """The labelled attributes concepts_for_tcav names (``all``: every one), checked against the dataset."""
    if not names:
        return []
    # a folder dataset has no labelled concepts (ACE's discovered ones work): say so in one line
    step = get(asking)
    who = f"step {step.number} ({step.script}, " if step.number is not None else f"{step.script} ("
    require_annotations(run.cfg.dataset, "concepts", f"{who}concepts_for_tcav)")
    return resolve_names(names, info.concept_names, "concept", "concepts_for_tcav")


register_source(ConceptSource(ATTRIBUTES, "the attributes the dataset labels (CUB's, the synthetic birds')",
                              prefix="", resolve=_attribute_names))
