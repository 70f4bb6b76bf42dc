"""Metric declarations: what each explanation metric is, which way is better, and what it needs.

Reports and plots read `family`, `higher_is_better` and `needs` from here instead of
hard-coding them (the Quantus idea). The concrete metrics are declared in
`lottery_xai.metrics.__init__`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from lottery_xai.errors import UserError
from lottery_xai.models import require_eval
from lottery_xai.names import unknown_name

FAMILIES = frozenset({"faithfulness", "localisation", "consistency"})
# "tcav_scores" is not a per-image input: it marks the metrics computed from two TCAV tables.
NEEDS = frozenset({"model", "box", "parts", "second_map", "transform", "retraining", "tcav_scores"})


@dataclass(frozen=True)
class MetricSpec:
    """Declaration of one metric.

    `fn` is the public function that computes it; `output` names the entry of the dict
    (or the column of the DataFrame) `fn` returns that holds this metric, None when `fn`
    returns the values directly; `options` are keyword arguments fixed for this metric
    (e.g. ``order="morf"``). Several specs may share one `fn` call: group them by
    ``(fn, options)`` to compute, say, deletion and insertion AUC in one pass.
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

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"metric {self.name!r}: family {self.family!r} not in {sorted(FAMILIES)}")
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown needs {sorted(unknown)}; allowed {sorted(NEEDS)}")
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "options", dict(self.options))

    def compute(self, **kwargs: Any) -> Any:
        """Call `fn` with this metric's fixed options plus `kwargs` and return this metric's values."""
        if self.fn is None:
            raise UserError(f"metric {self.name!r} is computed by {self.step}, not by step 7")
        clash = set(kwargs) & set(self.options)
        if clash:
            raise UserError(f"metric {self.name!r} fixes {sorted(clash)}; do not pass them")
        result = self.fn(**self.options, **kwargs)
        return result if self.output is None else result[self.output]


METRICS: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    """Add `spec` to `METRICS` (a name may be registered once)."""
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} is already registered")
    METRICS[spec.name] = spec
    return spec


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
