"""The parts of the GPU check (issue 21, item 6); ``benchmarks/gpu_check.sh`` runs them, this file does the work.

    python benchmarks/gpu_check.py --mode gpu --out DIR env train steps gradcam cgc structured torchrun
    python benchmarks/gpu_check.py --mode cpu --out DIR ...       # the tiny CPU dry run of every part

Parts (each prints ``SUMMARY <part>: ...`` lines and writes ``<part>.json`` into ``--out``; a failing part is
recorded and the next one runs):
  env         torch, CUDA, cuDNN, NCCL and the GPU
  train       training throughput of ResNet-50 (random init, 200 classes as CUB) at 224 and 448 px: bf16
              autocast + channels_last (the package's training settings, train.amp / train.channels_last)
              against fp32 in the default memory format; forward, cross-entropy, backward, SGD step
  steps       step 6 (every method of heatmaps.methods, through pipeline.maps.configured_maps) and step 7 (every
              metric, through pipeline.metrics.round_metrics) on ResNet-50 at 224 px: images per second
  gradcam     our Grad-CAM beside Captum's LayerGradCam and pytorch-grad-cam's GradCAM and the floor (one
              forward without a graph), interleaved; the largest difference of the min-max scaled maps
  cgc         one CGC training step (three forwards, create_graph through the last block) under bf16 autocast
              and channels_last beside a cross-entropy step; the loss and every gradient must be finite
  structured  benchmarks/bench_structured_pruning.py: forward and training speed-up of the structured ticket
  torchrun    torchrun --nproc_per_node=1 with NCCL: the process group, all_reduce, CGC's differentiable
              all_gather (training.cgc._GatherRows) and DistributedDataParallel bf16 steps
``--mode cpu`` runs the same code on the CPU at toy sizes (seconds): the check of the check.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import runpy
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from timing import interleaved_times  # noqa: E402

PARTS = ("env", "train", "steps", "gradcam", "cgc", "structured", "torchrun")
CLASSES = 200  # CUB's

# What each mode runs: the GPU sizes fit the 8 minutes of gpu_check.sh on one GPU; the CPU ones are toys
# (ResNet-18 there: the code paths are the same, the dry run takes seconds).
SIZES = {
    "gpu": {"arch": "resnet50", "train": [(224, 128), (448, 32)], "train_steps": 20, "warmup": 5,
            "steps_images": 32, "steps_size": 224, "cam_images": 32, "cam_size": 224, "cgc_batch": 32,
            "cgc_size": 224, "repeats": 5, "ddp_arch": "resnet50", "ddp_batch": 64, "ddp_size": 224, "ddp_steps": 10,
            "structured": ["--device", "cuda", "--arch", "resnet50", "--size", "224", "--batch", "64",
                           "--rounds", "4", "--repeats", "3", "--iters", "3"]},
    "cpu": {"arch": "resnet18", "train": [(32, 2), (48, 2)], "train_steps": 1, "warmup": 1,
            "steps_images": 2, "steps_size": 32, "cam_images": 2, "cam_size": 64, "cgc_batch": 4,
            "cgc_size": 32, "repeats": 1, "ddp_arch": "small_resnet", "ddp_batch": 4, "ddp_size": 32, "ddp_steps": 1,
            "structured": ["--device", "cpu", "--arch", "small_resnet", "--size", "32", "--batch", "2",
                           "--rounds", "1", "--repeats", "1", "--iters", "1"]},
}
# step 6 and 7 settings in the CPU mode: fewer copies, so that the dry run takes seconds
CPU_STEP_SETTINGS = ["heatmaps.ig_steps=4", "heatmaps.ig_max_steps=4", "heatmaps.ig_tolerance=1000",
                     "heatmaps.occlusion_patch=16",
                     "metrics.n_steps=4", "metrics.samek_steps=4", "metrics.n_transforms=1"]


def device_of(mode: str) -> torch.device:
    if mode == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU")
        return torch.device("cuda")
    return torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def summary(part: str, text: str) -> None:
    print(f"SUMMARY {part}: {text}", flush=True)


def build(arch: str, size: int, device: torch.device) -> torch.nn.Module:
    from lottery_xai.models import build_model

    torch.manual_seed(0)
    return build_model(arch, CLASSES, False, size).to(device)


# --------------------------------------------------------------------------------------------------- parts

def part_env(mode: str, sizes: dict, device: torch.device, out: Path) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported(),
                    nccl=".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None)
    summary("env", ", ".join(f"{k} {v}" for k, v in info.items()))
    return info


def _train_rate(model, images, labels, steps: int, warmup: int, amp: bool, channels_last: bool, device) -> float:
    """Images per second of ``steps`` training steps (forward, cross-entropy, backward, SGD) after ``warmup``."""
    from lottery_xai.training.loop import autocast, prepare_model

    model = prepare_model(model.train(), device, channels_last)
    if channels_last and device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * len(images) / (time.perf_counter() - start)


def part_train(mode: str, sizes: dict, device: torch.device, out: Path) -> dict:
    torch.backends.cudnn.benchmark = True
    rows = []
    for size, batch in sizes["train"]:
        g = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, size, size, generator=g).to(device)
        labels = torch.randint(0, CLASSES, (batch,), generator=g).to(device)
        rates = {}
        for name, amp, channels_last in (("bf16+channels_last", True, True), ("fp32", False, False)):
            rates[name] = _train_rate(build(sizes["arch"], size, device), images, labels, sizes["train_steps"],
                                      sizes["warmup"], amp, channels_last, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append({"size": size, "batch": batch, **{f"{k} img/s": round(v, 1) for k, v in rates.items()},
                     "speed-up": round(rates["bf16+channels_last"] / rates["fp32"], 2)})
        summary("train", f"{sizes['arch']} {size} px batch {batch}: bf16+channels_last "
                         f"{rates['bf16+channels_last']:.0f} img/s, fp32 {rates['fp32']:.0f} img/s "
                         f"({rates['bf16+channels_last'] / rates['fp32']:.2f}x)")
    return {"arch": sizes["arch"], "rows": rows}


def _synthetic_annotations(n: int, size: int, g: torch.Generator):
    """Boxes [n, 4] inside the image and 15 visible parts [n, 15, 3] inside the boxes (CUB's layout)."""
    corner = torch.rand(n, 2, generator=g) * size / 2
    box = torch.cat([corner, corner + size / 2], dim=1)
    parts = torch.cat([corner[:, None] + torch.rand(n, 15, 2, generator=g) * size / 2, torch.ones(n, 15, 1)], dim=2)
    return box, parts


def part_steps(mode: str, sizes: dict, device: torch.device, out: Path) -> dict:
    from lottery_xai.config import load_config
    from lottery_xai.data import get_dataset
    from lottery_xai.pipeline.maps import configured_maps
    from lottery_xai.pipeline.metrics import round_metrics

    size, n = sizes["steps_size"], sizes["steps_images"]
    overrides = [f"model_arch={sizes['arch']}", f"img_size={size}", "heatmaps.occlusion_patch=0"]
    cfg = load_config(None, overrides + (CPU_STEP_SETTINGS if mode == "cpu" else []))
    spec = get_dataset(cfg.dataset)
    model = build(cfg.model_arch, size, device).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g).to(device)
    boxes, parts = (t.to(device) for t in _synthetic_annotations(n, size, g))
    with torch.no_grad():
        targets = model(images).argmax(1)
    heatmaps, metrics, maps = {}, {}, {}
    for method in cfg.heatmaps.methods:
        configured_maps(cfg, method, model, images[:1], targets[:1], seed=0)  # warm-up
        sync(device)
        start = time.perf_counter()
        maps[method] = configured_maps(cfg, method, model, images, targets, seed=0)
        sync(device)
        heatmaps[method] = n / (time.perf_counter() - start)
    for method in cfg.heatmaps.methods:
        sync(device)
        start = time.perf_counter()
        values = round_metrics(model, images, boxes, maps[method], maps[method], cfg, parts, method=method, seed=0,
                               true_class_maps=maps[method], normalisation=(spec.mean, spec.std), ties_seed=0,
                               region_noise_seed=0)
        sync(device)
        metrics[method] = n / (time.perf_counter() - start)
        bad = [k for k, v in values.items() if not torch.isfinite(torch.as_tensor(v, dtype=torch.float64)).any()]
        if bad and mode == "gpu":
            summary("steps", f"warning: {method}: metrics without a finite value: {', '.join(bad)}")
    total6 = n * len(heatmaps) / sum(n / r for r in heatmaps.values())
    total7 = n * len(metrics) / sum(n / r for r in metrics.values())
    summary("steps", f"step 6 on {cfg.model_arch} {size} px, {n} images: " +
            ", ".join(f"{m} {r:.1f}" for m, r in heatmaps.items()) + f" img/s; all methods {total6 / len(heatmaps):.2f} img/s")
    summary("steps", "step 7: " + ", ".join(f"{m} {r:.1f}" for m, r in metrics.items())
            + f" img/s; all methods {total7 / len(metrics):.2f} img/s")
    return {"arch": cfg.model_arch, "size": size, "images": n, "step6_img_per_s": heatmaps,
            "step7_img_per_s": metrics, "settings": overrides}


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    return (maps - low) / (high - low).clamp_min(1e-12)


def part_gradcam(mode: str, sizes: dict, device: torch.device, out: Path) -> dict:
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from lottery_xai.attribution import gradcam

    size, n = sizes["cam_size"], sizes["cam_images"]
    model = build(sizes["arch"], size, device).eval()
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        targets = model(images).argmax(1)
    layer = model.get_submodule("layer4")
    pgc = GradCAM(model=model, target_layers=[layer])
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]

    def floor():
        with torch.no_grad():
            return model(images)

    def ours():
        return gradcam(model, images, targets, layer="layer4")

    def captum():
        low = LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)
        return LayerAttribution.interpolate(low, (size, size), interpolate_mode="bilinear")[:, 0].detach()

    def pytorch_grad_cam():
        return pgc(input_tensor=images, targets=pgc_targets)

    contenders = {"floor (forward, no grad)": floor, "ours": ours, "captum LayerGradCam": captum,
                  "pytorch-grad-cam GradCAM": pytorch_grad_cam}
    for run in contenders.values():  # warm-up (cuDNN, allocator)
        run()
    times = interleaved_times(contenders, sizes["repeats"], device)
    median = {k: statistics.median(v) for k, v in times.items()}
    ours_maps = _min_max(ours().float())
    gap_captum = float((ours_maps - _min_max(captum().float())).abs().max())
    gap_pgc = float((ours_maps.cpu() - torch.from_numpy(pytorch_grad_cam())).abs().max())
    floor_time = median["floor (forward, no grad)"]
    summary("gradcam", f"{sizes['arch']} {size} px, {n} images: " + ", ".join(
        f"{k} {1e3 * v:.1f} ms ({v / floor_time:.2f}x floor)" for k, v in median.items()))
    summary("gradcam", f"max |ours - captum| {gap_captum:.1e}, max |ours - pytorch-grad-cam| {gap_pgc:.1e} "
                       "(min-max scaled maps)")
    return {"median_s": median, "ratio_to_floor": {k: v / floor_time for k, v in median.items()},
            "gap_captum": gap_captum, "gap_pytorch_grad_cam": gap_pgc}


def part_cgc(mode: str, sizes: dict, device: torch.device, out: Path) -> dict:
    from lottery_xai.config import TrainConfig
    from lottery_xai.models import architecture
    from lottery_xai.training import get_loss
    from lottery_xai.training.loop import autocast, prepare_model

    size, batch = sizes["cgc_size"], sizes["cgc_batch"]
    model = prepare_model(build(sizes["arch"], size, device).train(), device, channels_last=True)
    g = torch.Generator().manual_seed(0)
    images, originals = (torch.rand(batch, 3, size, size, generator=g).to(device) for _ in range(2))
    if device.type == "cuda":
        images, originals = (x.contiguous(memory_format=torch.channels_last) for x in (images, originals))
    labels = torch.randint(0, CLASSES, (batch,), generator=g).to(device)
    tc = TrainConfig()  # amp and channels_last on, as training runs them
    layer = architecture(sizes["arch"]).cam_layer
    losses = {"cross_entropy": get_loss("cross_entropy", tc, layer=layer), "cgc": get_loss("cgc", tc, layer=layer)}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    finite = {}

    def step(name):
        fn = losses[name]
        optimizer.zero_grad(set_to_none=True)
        if getattr(fn, "own_forward", False):
            loss = fn.forward_pass(model, model, images, labels, autocast(device, tc.amp), originals=originals)
        else:
            with autocast(device, tc.amp):
                logits = model(images)
            loss = fn(logits, labels)
        loss.backward()
        finite[name] = bool(torch.isfinite(loss.detach()).item()) and all(
            bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
        optimizer.step()

    runs = {name: (lambda name=name: step(name)) for name in losses}
    for run in runs.values():
        run()
    times = interleaved_times(runs, sizes["repeats"], device)
    ce, cgc = (statistics.median(times[k]) for k in ("cross_entropy", "cgc"))
    summary("cgc", f"{sizes['arch']} {size} px batch {batch}, bf16 autocast + channels_last: cross-entropy step "
                   f"{1e3 * ce:.1f} ms, CGC step {1e3 * cgc:.1f} ms ({cgc / ce:.2f}x); loss and gradients finite: "
                   f"{'yes' if all(finite.values()) else 'NO ' + str(finite)}")
    if not all(finite.values()):
        raise RuntimeError(f"non-finite loss or gradient under autocast: {finite}")
    return {"ce_ms": 1e3 * ce, "cgc_ms": 1e3 * cgc, "ratio": cgc / ce, "finite": finite}


def part_structured(mode: str, sizes: dict, device: torch.device, out: Path) -> dict:
    script = HERE / "bench_structured_pruning.py"
    argv = sys.argv
    buffer = io.StringIO()
    try:
        sys.argv = [str(script), *sizes["structured"]]
        with contextlib.redirect_stdout(buffer):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    text = buffer.getvalue()
    print(text, end="")
    rows = [line for line in text.splitlines() if line.strip()[:1].isdigit()]
    if not rows:
        raise RuntimeError("bench_structured_pruning.py printed no round")
    header = "round weights MACs | fwd dense ms struct masked | train dense ms struct masked"
    summary("structured", f"{' '.join(sizes['structured'])}; last round: {rows[-1].strip()} ({header})")
    return {"argv": sizes["structured"], "rows": rows, "output": text}


def part_torchrun(mode: str, sizes: dict, device: torch.device, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               str(Path(__file__).resolve()), "--mode", mode, "--out", str(out), "ddp-worker"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    print(done.stdout[-4000:], end="")
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        raise RuntimeError(f"torchrun exited with status {done.returncode}")
    result = json.loads((out / "torchrun_worker.json").read_text())
    result["seconds_with_start"] = time.perf_counter() - start
    return result


def ddp_worker(mode: str, sizes: dict, out: Path) -> None:
    """Inside torchrun: NCCL (gloo on the CPU), all_reduce, CGC's differentiable all_gather, DDP bf16 steps."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lottery_xai.training.cgc import _GatherRows
    from lottery_xai.training.loop import autocast, prepare_model

    device = device_of(mode)
    backend = "nccl" if device.type == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group(backend)
    try:
        world, rank = dist.get_world_size(), dist.get_rank()
        x = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(x)
        reduce_ok = bool(torch.allclose(x, torch.full_like(x, world * (world + 1) / 2)))
        u = torch.randn(3, 5, device=device, requires_grad=True)
        gathered = _GatherRows.apply(u)
        gathered.sum().backward()
        gather_ok = gathered.shape == (3 * world, 5) and bool(torch.allclose(u.grad, torch.full_like(u, world)))
        size, batch = sizes["ddp_size"], sizes["ddp_batch"]
        model = prepare_model(build(sizes["ddp_arch"], size, device).train(), device, channels_last=True)
        ddp = DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3, momentum=0.9)
        g = torch.Generator().manual_seed(rank)
        images = torch.randn(batch, 3, size, size, generator=g).to(device)
        labels = torch.randint(0, CLASSES, (batch,), generator=g).to(device)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, True):
                loss = F.cross_entropy(ddp(images), labels)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        step()
        sync(device)
        start = time.perf_counter()
        losses = [step() for _ in range(sizes["ddp_steps"])]
        sync(device)
        rate = sizes["ddp_steps"] * batch * world / (time.perf_counter() - start)
        result = {"backend": dist.get_backend(), "world": world, "all_reduce_ok": reduce_ok, "gather_ok": gather_ok,
                  "ddp_img_per_s": rate, "losses_finite": all(math.isfinite(v) for v in losses)}
        if rank == 0:
            (out / "torchrun_worker.json").write_text(json.dumps(result))
            summary("torchrun", f"backend {result['backend']}, world {world}: all_reduce "
                                f"{'ok' if reduce_ok else 'WRONG'}, CGC all_gather {'ok' if gather_ok else 'WRONG'}, "
                                f"DDP {sizes['ddp_arch']} {size} px bf16 {rate:.0f} img/s")
        if not (reduce_ok and gather_ok and result["losses_finite"]):
            raise SystemExit(f"torchrun check failed: {result}")
    finally:
        dist.destroy_process_group()


PART_FUNCTIONS = {"env": part_env, "train": part_train, "steps": part_steps, "gradcam": part_gradcam,
                  "cgc": part_cgc, "structured": part_structured, "torchrun": part_torchrun}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("gpu", "cpu"), default="gpu", help="gpu, or cpu: the tiny dry run")
    parser.add_argument("--out", required=True, help="folder for <part>.json")
    parser.add_argument("parts", nargs="+", choices=(*PARTS, "ddp-worker"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = SIZES[args.mode]
    if args.parts == ["ddp-worker"]:
        ddp_worker(args.mode, sizes, out)
        return 0
    device = device_of(args.mode)
    if args.mode == "cpu":
        torch.set_num_threads(1)
    failed = []
    for part in args.parts:
        start = time.perf_counter()
        try:
            result = PART_FUNCTIONS[part](args.mode, sizes, device, out)
            status = "ok"
        except Exception as error:  # noqa: BLE001 - a failing part is reported, the next one runs
            traceback.print_exc()
            result, status = {"error": f"{type(error).__name__}: {error}"}, "failed"
            summary(part, f"FAILED: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            failed.append(part)
        seconds = time.perf_counter() - start
        (out / f"{part}.json").write_text(json.dumps({"part": part, "mode": args.mode, "status": status,
                                                      "seconds": seconds, "result": result}, indent=1, default=str))
        print(f"[{part}: {status} in {seconds:.1f} s]", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
