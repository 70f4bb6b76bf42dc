"""Method declarations: what each attribution method is, whether it takes a layer, and its options.

The counterpart of `lottery_xai.metrics.base.MetricSpec` for the maps: one `MethodSpec` per registered
method, declared in `lottery_xai.attribution.__init__` next to the others. The steps read `METHODS` /
`get_method(name)` instead of keeping their own lists: step 6, step 7's recomputations, the sanity
check, ROAR and the human study all build a method's keyword options from the config through its
spec's `configured` function (`lottery_xai.pipeline.maps`), and `attribute` checks the options a
caller passes against the function's own keyword arguments. A new method is one function and one
declaration.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from lottery_xai.errors import UserError
from lottery_xai.names import unknown_name
from lottery_xai.tokens import token_layout

if TYPE_CHECKING:
    from lottery_xai.config import HeatmapConfig

# gradient: derivatives of the target at the input (saliency, integrated gradients, the noise tunnel);
# cam: channel-weighted activations at a layer; perturbation: forwards of altered copies (occlusion);
# propagation: modified backward rules (guided backprop, LRP); attention: the model's attention weights
# (attention rollout); baseline: maps that ignore the model.
FAMILIES = frozenset({"gradient", "cam", "perturbation", "propagation", "attention", "baseline"})
# What Adebayo et al. 2018 found in the model-parameter randomisation test: 'fails' (the maps barely change
# when the weights are randomised: the test's positive controls) or 'passes'.
SANITY_EXPECTATIONS = frozenset({"fails", "passes"})


@dataclass(frozen=True)
class MethodSettings:
    """What a method's configured options are made from: ``heatmaps.*`` (`settings`), the seed of the maps
    being made (`seed`; a spec derives its own streams from it), the images' normalisation (`mean`, `std`,
    per channel; None when unknown) and `adaptive` (False: integrated gradients keeps ``heatmaps.ig_steps``
    for every image, as the sanity check wants: it compares maps, it does not read their completeness)."""

    settings: "HeatmapConfig"
    seed: int
    mean: tuple | None = None
    std: tuple | None = None
    adaptive: bool = True


@dataclass(frozen=True)
class MethodSpec:
    """Declaration of one attribution method.

    `fn(model, images, targets, *, layer=None, **options) -> maps [N, H, W]` is the function (every
    method's calling convention); `fixed` are options this registration always passes (e.g.
    ``kind="smoothgrad_sq"`` for the noise tunnel, ``composite="epsilon"`` for LRP) and a caller may not
    override; `configured` builds the other options from the config (`MethodSettings`), None when the
    function's defaults are all the config changes. `takes_layer`: the method explains a layer (the
    CAMs): the steps pass the CAM layer, the others get None. `report`: a function with `fn`'s
    arguments returning ``(maps, {detail: tensor [N]})`` (integrated gradients: its completeness).
    `transformer_only`: the method reads token layers or attention (refused for a CNN). `class_agnostic`:
    the map does not depend on the target (EigenCAM, the random baseline; the random-logit test is then
    1 by construction). `sanity`: what
    Adebayo et al. 2018 found for it in the model-parameter randomisation test ('fails' for guided
    backprop and guided Grad-CAM, the test's positive controls; 'passes'; None: not tested there).
    `reference`: the paper and code the defaults follow (for the docs).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    family: str
    help: str
    takes_layer: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)
    configured: Callable[[MethodSettings], Mapping[str, Any]] | None = None
    report: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
    transformer_only: bool = False
    class_agnostic: bool = False
    sanity: str | None = None
    reference: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.name!r}: family {self.family!r} not in {sorted(FAMILIES)}")
        if self.sanity is not None and self.sanity not in SANITY_EXPECTATIONS:
            raise ValueError(f"method {self.name!r}: sanity {self.sanity!r} not in {sorted(SANITY_EXPECTATIONS)}")
        object.__setattr__(self, "fixed", dict(self.fixed))
        accepted = _keyword_options(self.fn)
        unknown = sorted(set(self.fixed) - set(accepted))
        if unknown:
            raise ValueError(f"method {self.name!r}: {self.fn.__name__} has no option {unknown[0]!r} to fix")

    @property
    def options(self) -> dict[str, Any]:
        """The options a caller may pass, with their defaults: `fn`'s keyword-only arguments but `layer` and
        the fixed ones."""
        return {name: default for name, default in _keyword_options(self.fn).items() if name not in self.fixed}

    def check_options(self, options: Mapping[str, Any]) -> None:
        """UserError naming the closest valid option when `options` holds one the method does not take (a
        typo in a config cannot pass silently), or one this registration fixes."""
        accepted = list(self.options)
        for option in options:
            if option in self.fixed:
                raise UserError(f"attribution method {self.name!r} fixes {option}={self.fixed[option]!r}; "
                                f"do not pass it")
            if option not in accepted:
                raise unknown_name(f"attribution method {self.name!r} has no option {option!r}", option, accepted,
                                   n=1, otherwise=f"{self.name} takes {', '.join(accepted) or 'no options'}")

    def configured_options(self, settings: MethodSettings) -> dict[str, Any]:
        """The options the config sets for this method (`configured`), checked."""
        options = dict(self.configured(settings)) if self.configured is not None else {}
        self.check_options(options)
        return options

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, targets=None, *, layer: str | None = None,
                 **options) -> torch.Tensor:
        """Raw maps [N, H, W]: `fn` with the fixed options and `options` (checked)."""
        self.check_options(options)
        return self.fn(model, images, targets, layer=layer, **self.fixed, **options)

    def with_report(self, model: torch.nn.Module, images: torch.Tensor, targets=None, *, layer: str | None = None,
                    **options) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(raw maps, per-image details) through `report`; methods without one report nothing."""
        if self.report is None:
            return self(model, images, targets, layer=layer, **options), {}
        self.check_options(options)
        return self.report(model, images, targets, layer=layer, **self.fixed, **options)

    def check_model(self, model: torch.nn.Module) -> None:
        """UserError when the method cannot explain `model` (a transformer-only method on a network without
        token layers)."""
        if not self.transformer_only:
            return
        if token_layout(model) is None:
            raise UserError(f"attribution method {self.name!r} explains vision transformers (attention, token "
                            f"layers); this model has none: choose a timm ViT/DeiT backbone or another method")


def _keyword_options(fn: Callable[..., Any]) -> dict[str, Any]:
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "layer"}


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add `spec` to `METHODS` (a name may be registered once)."""
    if spec.name in METHODS:
        raise ValueError(f"attribution method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def unregister(name: str) -> MethodSpec:
    """Remove the method called `name` from `METHODS` and return its spec."""
    return METHODS.pop(get_method(name).name)


def get_method(name: str) -> MethodSpec:
    """The method registered as `name` (callable with the methods' convention); UserError with the closest
    names when unknown."""
    if name in METHODS:
        return METHODS[name]
    raise unknown_name(f"unknown attribution method {name!r}", name, METHODS, otherwise=f"choose from {', '.join(METHODS)}")


def layer_methods() -> frozenset[str]:
    """The registered methods whose `layer` argument matters (the CAMs)."""
    return frozenset(name for name, spec in METHODS.items() if spec.takes_layer)


def transformer_methods() -> frozenset[str]:
    """The registered methods that explain vision transformers only (attention rollout): refused for a CNN."""
    return frozenset(name for name, spec in METHODS.items() if spec.transformer_only)
