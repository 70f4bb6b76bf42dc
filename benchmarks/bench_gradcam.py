"""Time our Grad-CAM against its floor (one forward without grad) and a naive `loss.backward()` version.

ResNet-50 with random weights, interleaved in one process, medians and ratios printed:
    python benchmarks/bench_gradcam.py --repeats 3
    python benchmarks/bench_gradcam.py --size 64 --batch 4 --repeats 3     # a quick small run
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as F
from torchvision.models import resnet50

from lottery_xai.attribution import gradcam


def floor(model, images, layer):
    """The pass Grad-CAM cannot avoid: one forward, no graph."""
    with torch.no_grad():
        return model(images)


def ours(model, images, layer):
    return gradcam(model, images, layer=layer)


def naive(model, images, layer):
    """The common recipe: hooks on the layer, then loss.backward() through every parameter."""
    store = {}
    module = model.get_submodule(layer)

    def keep(module, inputs, output):
        store["activation"] = output
        output.register_hook(lambda grad: store.__setitem__("grad", grad))

    handle = module.register_forward_hook(keep)
    try:
        model.zero_grad(set_to_none=True)
        logits = model(images)
        loss = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
        loss.backward()
    finally:
        handle.remove()
    activation, grad = store["activation"].detach(), store["grad"]
    cam = torch.relu((grad.mean(dim=(2, 3))[:, :, None, None] * activation).sum(dim=1))
    return F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def timed(fn, *args) -> tuple[float, object]:
    sync = torch.cuda.synchronize if args[1].is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    result = fn(*args)
    sync()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=16, help="images per call")
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds (6 = every order once)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (CPU kernels settle slowly)")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = resnet50(weights=None).to(device).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    contenders = {"floor (forward, no grad)": floor, "ours (autograd.grad to layer)": ours, "naive (loss.backward)": naive}

    for _ in range(max(1, args.warmup)):
        outputs = {name: fn(model, images, args.layer) for name, fn in contenders.items()}
    gap = (outputs["ours (autograd.grad to layer)"] - outputs["naive (loss.backward)"]).abs().max().item()
    times = {name: [] for name in contenders}
    # Interleaved, cycling through every order: a call right after the naive one pays for the
    # memory it freed, so each contender must follow each other one equally often.
    orders = list(itertools.permutations(contenders))
    for repeat in range(args.repeats):
        for name in orders[repeat % len(orders)]:
            seconds, _ = timed(contenders[name], model, images, args.layer)
            times[name].append(seconds)

    print(f"Grad-CAM at {args.layer}, ResNet-50 (random init), {args.batch} images of {args.size} px, "
          f"{device}, {torch.get_num_threads()} threads, median of {args.repeats}")
    floor_time = statistics.median(times["floor (forward, no grad)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:32s} {median:8.3f} s   {median / floor_time:5.2f}x floor")
    print(f"  max |ours - naive| = {gap:.2e}")


if __name__ == "__main__":
    main()
