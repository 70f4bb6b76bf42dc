"""Metric declarations: what each explanation metric is, which way is better, and what it needs.

Reports and plots read `family`, `higher_is_better` and `needs` from here instead of
hard-coding them (the Quantus idea). The concrete metrics are declared in
`lottery_xai.metrics.__init__`. Step 7 computes every registered metric whose needs its inputs
provide with `compute_metrics` (a `MetricInputs` per round and method), so a new metric is one
declaration.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from lottery_xai.errors import UserError
from lottery_xai.models import require_eval
from lottery_xai.names import unknown_name

if TYPE_CHECKING:
    import pandas as pd

    from lottery_xai.config import MetricsConfig

# Quantus's five families and this package's consistency (across rounds and under transformation)
FAMILIES = frozenset({"faithfulness", "localisation", "consistency", "robustness", "complexity", "randomisation"})
# "tcav_scores" is not a per-image input: it marks the metrics computed from two TCAV tables. "recompute": the
# method can be computed again on other images or for other classes (robustness, the random-logit test);
# "sanity_scores": the sanity step's per-image table (the parameter-randomisation score).
NEEDS = frozenset({"model", "box", "parts", "second_map", "transform", "retraining", "tcav_scores", "true_class_maps",
                   "recompute", "sanity_scores"})
DEFAULT_SELECTION = "default"  # in metrics.names: every metric declared with default=True
# Needs that replace the stored maps as a metric's input: every other metric reads the maps of one method.
WITHOUT_MAPS = frozenset({"retraining", "tcav_scores"})


@dataclass(frozen=True)
class MetricInputs:
    """What step 7 hands the metrics: one round's stored maps of one method with what they are compared
    with, or (``maps`` None) the round's and the dense model's TCAV tables. None = not available.

    `settings` is ``cfg.metrics``; `scale` is the image side over 224 (the pixel settings are given at
    224 px; 1 with ``metrics.pixel_scaling: fixed``). `attribution_fn` and `seed` recompute the method on
    transformed images (``transform``). `train_mean` is the training set's per-channel mean and
    `normalisation` the (mean, std) the images were normalised with, both per channel (the fills and
    the noise range of the faithfulness metrics). `tie_seed` seeds the random tie-breaking of the
    rankings (``metrics.ties``), `noise_seed` the region-perturbation noise (0 when not given) and, each
    through its own derived seed, the draws of the opt-in metrics (ROAD, robustness, random logit,
    infidelity: the same draws at every round and for every method, so their differences are paired).
    `recompute(model, images, targets) -> maps` is the method with its configured options and the round's
    map seed (the stored maps' own settings); `sanity_table` the sanity step's ``per_image.csv`` with
    `method`, `round` and `image_ids` saying which rows are these maps'.
    """

    settings: "MetricsConfig"
    maps: torch.Tensor | None = None
    model: torch.nn.Module | None = None
    images: torch.Tensor | None = None
    targets: torch.Tensor | None = None  # None: the predicted class
    boxes: torch.Tensor | None = None
    parts: torch.Tensor | None = None
    second_map: torch.Tensor | None = None  # the dense model's map of the same images
    attribution_fn: Callable[..., torch.Tensor] | None = None
    seed: int | None = None
    true_class_maps: torch.Tensor | None = None  # the same method's maps of each image's ground-truth class
    train_mean: torch.Tensor | None = None  # [C], normalised units
    normalisation: tuple | None = None  # (mean [C], std [C]) of the images' normalisation
    tie_seed: int | None = None
    noise_seed: int | None = None
    tcav_round: "pd.DataFrame | None" = None
    tcav_dense: "pd.DataFrame | None" = None
    recompute: Callable[..., torch.Tensor] | None = None
    sanity_table: "pd.DataFrame | None" = None
    method: str | None = None
    round: int | None = None
    image_ids: Any = None  # [N] the ids of the images (the sanity table's image_id)

    @property
    def scale(self) -> float:
        if getattr(self.settings, "pixel_scaling", "scaled") == "fixed":
            return 1.0
        return (self.images if self.images is not None else self.maps).shape[-1] / 224

    @property
    def provided(self) -> frozenset[str]:
        """The `NEEDS` these inputs satisfy ("parts" only with at least one part per image)."""
        has_model = self.model is not None and self.images is not None
        got = {
            "model": has_model,
            "box": self.boxes is not None,
            "parts": self.parts is not None and self.parts.shape[1] > 0,
            "second_map": self.second_map is not None,
            "transform": has_model and self.attribution_fn is not None and self.seed is not None,
            "tcav_scores": self.tcav_round is not None and self.tcav_dense is not None,
            "true_class_maps": self.true_class_maps is not None,
            "retraining": False,  # ROAR retrains in its own step
            "recompute": has_model and self.recompute is not None,
            "sanity_scores": self.sanity_table is not None and self.method is not None and self.round is not None
            and self.image_ids is not None,
        }
        return frozenset(need for need, ok in got.items() if ok)


@dataclass(frozen=True)
class MetricSpec:
    """Declaration of one metric.

    `fn` is the public function that computes it; `output` names the entry of the dict
    (or the column of the DataFrame) `fn` returns that holds this metric, None when `fn`
    returns the values directly; `options` are keyword arguments fixed for this metric
    (e.g. ``order="morf"``). `arguments` builds `fn`'s other keyword arguments from a
    `MetricInputs` (the data and the configured settings); step 7 computes the metric when
    `needs` are provided. Several specs may share one `fn` call: `compute_metrics` groups them
    by ``(fn, options)`` to compute, say, deletion and insertion AUC in one pass, so specs of
    one group must share `arguments`.
    """

    name: str
    family: str
    higher_is_better: bool
    needs: frozenset[str]
    fn: Callable[..., Any] | None
    help: str
    output: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    step: str | None = None  # computed by this script's own step instead of by `fn` in step 7 (ROAR retrains)
    arguments: Callable[[MetricInputs], Mapping[str, Any]] | None = None
    tested: bool = True  # step 7's paired tests include it (False: a diagnostic count, e.g. the skipped maps)
    default: bool = True  # in step 7's default selection (metrics.names: [default]); False: opt-in

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"metric {self.name!r}: family {self.family!r} not in {sorted(FAMILIES)}")
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown needs {sorted(unknown)}; allowed {sorted(NEEDS)}")
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "options", dict(self.options))
        if self.fn is not None and self.step is None and self.arguments is None:
            raise ValueError(f"metric {self.name!r}: step 7 computes it, so declare the arguments "
                             f"of {self.fn.__name__}")

    @property
    def in_step7(self) -> bool:
        """Whether step 7 computes this metric (ROAR's are computed by their own step)."""
        return self.fn is not None and self.step is None

    def call(self, **kwargs: Any) -> Any:
        """`fn`'s whole result for this metric's fixed options plus `kwargs`."""
        if self.fn is None:
            raise UserError(f"metric {self.name!r} is computed by {self.step}, not by step 7")
        clash = set(kwargs) & set(self.options)
        if clash:
            raise UserError(f"metric {self.name!r} fixes {sorted(clash)}; do not pass them")
        return self.fn(**self.options, **kwargs)

    def pick(self, result: Any) -> Any:
        """This metric's values in a result of `fn`."""
        return result if self.output is None else result[self.output]

    def compute(self, **kwargs: Any) -> Any:
        """Call `fn` with this metric's fixed options plus `kwargs` and return this metric's values."""
        return self.pick(self.call(**kwargs))

    def shares_call(self, other: "MetricSpec") -> bool:
        """Whether one call of `fn` yields both metrics (same `fn` and `options`)."""
        return self.fn is other.fn and self.options == other.options


METRICS: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    """Add `spec` to `METRICS` (a name may be registered once)."""
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} is already registered")
    for other in METRICS.values():
        if spec.in_step7 and other.in_step7 and spec.shares_call(other) and spec.arguments is not other.arguments:
            raise ValueError(f"metric {spec.name!r} shares {spec.fn.__name__}'s call with {other.name!r}: "
                             f"declare the same arguments")
    METRICS[spec.name] = spec
    return spec


def unregister(name: str) -> MetricSpec:
    """Remove the metric called `name` from `METRICS` and return its spec."""
    return METRICS.pop(get_metric(name).name)


def compute_metrics(inputs: MetricInputs, select: Callable[[MetricSpec], bool] | None = None) -> dict[str, Any]:
    """The values of every registered metric among `select` (None: the default ones, ``spec.default``; step 7
    passes ``metrics.names``' selection) that step 7 computes from `inputs`.

    A metric is computed when its needs are provided and it reads what `inputs` hold (the maps of one
    method, or, for ``tcav_scores``, the TCAV tables); ROAR's (``spec.step``) never are. Metrics sharing
    ``(fn, options)`` come from one call. Values are in registration order: per-image tensors or, for
    the TCAV metrics, per-(class, concept) columns.
    """
    provided, with_maps = inputs.provided, inputs.maps is not None
    if select is None:
        def select(spec: MetricSpec) -> bool:
            return spec.default
    wanted = [spec for spec in METRICS.values()
              if spec.in_step7 and spec.needs <= provided and with_maps == (not spec.needs & WITHOUT_MAPS)
              and select(spec)]
    calls: list[tuple[MetricSpec, Any]] = []  # (first metric, result) per call, in the order of the first metrics
    out = {}
    for spec in wanted:
        shared = [result for first, result in calls if first.shares_call(spec)]
        if not shared:
            shared = [spec.call(**spec.arguments(inputs))]
            calls.append((spec, shared[0]))
        out[spec.name] = spec.pick(shared[0])
    return out


def select_metrics(names: list[str] | tuple[str, ...]) -> frozenset[str]:
    """The metric names a selection means (``metrics.names``): each entry is a registered metric, a family
    (every metric of it) or ``default`` (every metric declared with ``default=True``); an unknown entry is a
    UserError naming the closest ones."""
    chosen: set[str] = set()
    for entry in names:
        if entry == DEFAULT_SELECTION:
            chosen |= {name for name, spec in METRICS.items() if spec.default}
        elif entry in FAMILIES:
            chosen |= {name for name, spec in METRICS.items() if spec.family == entry}
        elif entry in METRICS:
            chosen.add(entry)
        else:
            allowed = [DEFAULT_SELECTION, *sorted(FAMILIES), *METRICS]
            raise unknown_name(f"config key 'metrics.names' names {entry!r}, which is no metric, family or "
                               f"'{DEFAULT_SELECTION}'", entry, allowed, n=1,
                               otherwise=f"known: {', '.join(allowed)}")
    return frozenset(chosen)


def get_metric(name: str) -> MetricSpec:
    """The registered metric called `name`; a UserError naming close matches otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise unknown_name(f"unknown explanation metric {name!r}", name, METRICS,
                           otherwise=f"known: {', '.join(sorted(METRICS))}") from None


def check_eval_mode(model: torch.nn.Module) -> None:
    """Refuse a model in training mode: BatchNorm/Dropout would make scores depend on the batch."""
    require_eval(model, "explanation metrics")


def check_maps(maps: torch.Tensor, images: torch.Tensor | None = None, name: str = "maps") -> torch.Tensor:
    """Validate a [N,H,W] map batch (matching `images` [N,3,H,W] if given) and return it as float.

    float16 maps (as stored on disk) are promoted to float32 so that sorting and sums are exact
    enough; float64 stays float64.
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise UserError(f"{name} must be a tensor of shape [N,H,W], got {shape}")
    if images is not None:
        if images.ndim != 4:
            raise UserError(f"images must be a tensor of shape [N,C,H,W], got {tuple(images.shape)}")
        if images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]:
            raise UserError(
                f"{name} {tuple(maps.shape)} do not match images {tuple(images.shape)}: "
                "maps must be at image resolution, one per image"
            )
    return maps.to(torch.promote_types(maps.dtype, torch.float32))


def check_boxes(boxes: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Validate [N,4] boxes for [N,H,W] maps and return them as floats on the maps' device."""
    boxes = torch.as_tensor(boxes, device=maps.device).to(maps.dtype)
    if boxes.shape != (maps.shape[0], 4):
        raise UserError(f"boxes must have shape [N,4] = [{maps.shape[0]},4] (x0,y0,x1,y1), got {tuple(boxes.shape)}")
    return boxes


def pixel_centres(height: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y coordinates of pixel centres, [1,H,W] each: pixel (row i, col j) has centre (j+0.5, i+0.5)."""
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5
    return xs.view(1, 1, width).expand(1, height, width), ys.view(1, height, 1).expand(1, height, width)
