"""What a task costs before it runs: image passes counted from the config, priced by a measured rate.

A task's work is counted in *image passes*: one forward pass of the network on one image at the config's
``img_size`` (a training step on an image counts 3: forward and backward; a gradient map 3; a
perturbation 1). The counts follow what each step does (:func:`step_passes`, per round, or per ROAR
cell); they are estimates, made without the dataset when its split sizes are known (``splits.json`` of
``json_root`` when it exists, else :data:`KNOWN_SPLITS`). The seconds of one pass come from a measured
rate: ``--throughput`` (training images per second of one GPU, e.g. from ``benchmarks/gpu_check.sh``;
a pass then takes 1 / (3 x throughput) s), or the table :data:`MEASURED` of this project's machines,
scaled by pixels from the nearest measured image size of the same architecture.

``python -m lottery_xai.costs measure ARCH SIZE [--device cpu]`` measures a row of the table (a few
batches of random images, forward and training step, after a warm-up).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config, roar_epochs
from .errors import UserError

# Split sizes of the datasets whose sizes are fixed (the preparation scripts' defaults), for planning
# before the data is there. CUB-200-2011: 5994 training images (10 % of each class kept for validation by
# scripts_data/download_cub.py) and 5794 test images, 200 classes.
KNOWN_SPLITS = {"cub": {"train": 5395, "val": 599, "test": 5794, "classes": 200}}

# Seconds per image of a forward pass (inference, no grad) and of a training step (forward + backward +
# SGD), measured with `python -m lottery_xai.costs measure ARCH SIZE` (batch 8, float32, 2 threads, the
# fastest of 10 batches) on this project's CI machine kind: 2 x86 cores without a GPU, shared with other
# jobs at a load of about 13 when these were taken, so they are slow and noisy (a small_resnet at 32 px
# measured slower than at 64 px; that row is left out: 32 px scales from 64 px). Other sizes scale by pixels.
MEASURED = {
    # (device, arch, img_size): (forward s/image, training s/image)
    ("cpu", "small_resnet", 64): (0.0025, 0.045),
    ("cpu", "resnet18", 224): (0.26, 0.38),
    ("cpu", "resnet50", 224): (0.48, 1.5),
}

GRADIENT = 3  # passes of a gradient map (forward and backward)
METHOD_PASSES = {"random": 0, "integrated_gradients": None, "occlusion": None, "smoothgrad": 25 * GRADIENT,
                 "smoothgrad_sq": 25 * GRADIENT, "vargrad": 25 * GRADIENT, "rise": 4000, "scorecam": None,
                 "eigencam": 1}


@dataclass(frozen=True)
class Rate:
    """Seconds of one image pass, and where the figure comes from."""

    seconds: float
    source: str


def rate(cfg: Config, throughput: float | None = None, device: str = "cuda") -> Rate | None:
    """The seconds of one pass: from ``throughput`` (training images/s), else :data:`MEASURED` for the config's
    architecture on ``device`` (scaled by pixels from the nearest size), else None."""
    if throughput:
        return Rate(1.0 / (3 * throughput), f"--throughput {throughput:g} training images/s")
    rows = [(size, v) for (dev, arch, size), v in MEASURED.items() if dev == device and arch == cfg.model_arch]
    if not rows and device != "cpu":  # no GPU measured: this machine's CPU rate, said so
        found = rate(cfg, None, "cpu")
        return Rate(found.seconds, found.source + " (no GPU rate measured: give --throughput)") if found else None
    if not rows:
        return None
    size, (forward, train) = min(rows, key=lambda row: abs(math.log(row[0] / cfg.img_size)))
    scale = (cfg.img_size / size) ** 2
    note = "" if size == cfg.img_size else f", scaled from {size} px"
    return Rate(train / 3 * scale, f"measured {cfg.model_arch} on {device}{note}")


def split_sizes(cfg: Config) -> dict[str, int]:
    """Images per split (and ``classes``) from the prepared ``splits.json``, else the known sizes of the dataset."""
    path = Path(cfg.json_root) / "splits.json"
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
            sizes = {k: len(v) for k, v in splits.items() if isinstance(v, list)}
            names = Path(cfg.data_root) / "classes.txt"
            classes = sum(1 for line in names.read_text().splitlines() if line.strip()) if names.is_file() else 0
            return {**sizes, "classes": classes or KNOWN_SPLITS.get(cfg.dataset, {}).get("classes", 1)}
        except (OSError, ValueError):
            pass
    if cfg.dataset in KNOWN_SPLITS:
        return dict(KNOWN_SPLITS[cfg.dataset])
    raise UserError(f"planning needs the split sizes of dataset '{cfg.dataset}': prepare it first "
                    f"('{path}' is missing)")


def _method_passes(cfg: Config, method: str) -> float:
    if method == "integrated_gradients":
        return GRADIENT * cfg.heatmaps.ig_steps
    if method == "occlusion":
        patch = cfg.heatmaps.occlusion_patch or max(2, round(16 * cfg.img_size / 224))
        side = (cfg.img_size - patch) // max(1, patch // 2) + 2
        return side * side
    if method == "scorecam":
        return 512  # one forward per channel of the CAM layer (ResNet-50's layer4 has 2048; small nets fewer)
    value = METHOD_PASSES.get(method, GRADIENT)
    return GRADIENT if value is None else value


def _classes_studied(cfg: Config, sizes: dict) -> int:
    return sizes["classes"] if list(cfg.labels_for_tcav) == ["all"] else len(cfg.labels_for_tcav)


def step_passes(cfg: Config, step: str, sizes: dict, cell: bool = False) -> float:
    """Image passes of one round of ``step`` (of one ROAR cell with ``cell``; of the whole step when it has
    no rounds). Steps that use no network (CAV fits, figures, tables) count 0."""
    train, val, test = sizes.get("train", 0), sizes.get("val", 0), sizes.get("test", 0)
    share = _classes_studied(cfg, sizes) / max(1, sizes["classes"])
    explained = cfg.heatmaps.images_per_class * _classes_studied(cfg, sizes)
    methods = list(cfg.heatmaps.methods)
    if step == "pruning":
        return cfg.train.epochs * (3 * train + val)
    if step == "test":
        return test
    if step == "activations":
        return sum(sizes.get(s, 0) for s in cfg.activations.splits)
    if step == "tcav":
        scored = sum(sizes.get(s, 0) for s in cfg.tcav.splits) * share
        if cfg.tcav.max_images_per_class:
            scored = min(scored, cfg.tcav.max_images_per_class * _classes_studied(cfg, sizes))
        return GRADIENT * scored * len(cfg.bb_layers_for_concepts)
    if step == "heatmaps":
        return explained * sum(_method_passes(cfg, m) for m in methods)
    if step == "metrics":
        m = cfg.metrics
        per_map = 2 * m.n_steps + 2 * (m.samek_steps if m.perturbation == "samek" else len(m.fractions)) + 2
        transforms = m.n_transforms * sum(_method_passes(cfg, t) for t in m.transform_methods)
        return explained * (len(methods) * per_map + transforms + 2)
    if step == "sanity":
        images = min(cfg.sanity.n_images or explained, explained)
        chosen = list(dict.fromkeys([*(cfg.sanity.methods or methods), *cfg.sanity.controls]))
        stages = 8 * (2 if cfg.sanity.randomization == "both" else 1)  # about one stage per block of a ResNet
        return images * stages * sum(_method_passes(cfg, m) for m in chosen)
    if step == "occlusion_study":
        return cfg.occlusion_study.images_per_class * _classes_studied(cfg, sizes) * (cfg.occlusion_study.n_masks + 1)
    if step == "ace":
        return cfg.occlusion_study.images_per_class * _classes_studied(cfg, sizes) * 50 + 2 * val
    if step == "roar":
        if cell:
            return roar_epochs(cfg) * (3 * train + val) + test
        roar_methods = list(dict.fromkeys([*cfg.roar.methods, "random"]))
        return (train + val + test) * (1 + sum(_method_passes(cfg, m) for m in roar_methods))
    return 0.0


def measure(arch: str, img_size: int, device: str = "cpu", batch: int = 8, repeats: int = 10) -> tuple[float, float]:
    """Seconds per image of a forward pass and of a training step of ``arch`` at ``img_size`` on ``device``: the
    fastest of ``repeats`` timed batches after a warm-up (the least disturbed by other load on the machine)."""
    import torch

    from .models import build_model

    dev = torch.device(device)
    model = build_model(arch, 200, pretrained=False, img_size=img_size).to(dev)
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    y = torch.randint(0, 200, (batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def forward():
        with torch.no_grad():
            model.eval()
            model(x)

    def step():
        model.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    out = []
    for fn in (forward, step):
        for _ in range(3):  # warm-up (the first calls choose kernels and allocate)
            fn()
        times = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out.append(min(times) / batch)
    return out[0], out[1]


def _main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "measure":
        device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
        forward, train = measure(argv[1], int(argv[2]), device)
        print(f'    ("{device}", "{argv[1]}", {int(argv[2])}): ({forward:.2g}, {train:.2g}),')
        return 0
    print("usage: python -m lottery_xai.costs measure ARCH IMG_SIZE [--device cpu|cuda]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
