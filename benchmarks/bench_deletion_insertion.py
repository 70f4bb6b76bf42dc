"""Deletion + insertion AUC: our batched copies vs the floor vs a per-step RISE-style loop.

The floor is the network work nobody can avoid: the forwards of all n_steps+1 copies of every
image for both curves, as plain batched forwards of ready-made inputs. The RISE-style loop
(Petsiuk et al.'s CausalMetric) forwards the whole image batch once per step and edits the
images in place between steps. All three run in one process, interleaved, on a random-init
torchvision ResNet-18; medians and ratios to the floor are printed.

    python benchmarks/bench_deletion_insertion.py --size 64       # quick
    python benchmarks/bench_deletion_insertion.py                 # 224 px, slow on 2 CPU cores
"""
from __future__ import annotations

import argparse
import math

import torch
import torchvision
from torchvision.transforms.functional import gaussian_blur

from lottery_xai.metrics import deletion_insertion, pixel_rank, trapezoid_auc
from timing import add_timing_arguments, interleaved_times, print_ratios, resolve_device  # benchmarks/timing.py


def floor(model, images, n_steps, batch_size):
    """Forwards of 2 * N * (n_steps+1) ready-made images in batches of `batch_size`."""
    n_copies = 2 * images.shape[0] * (n_steps + 1)
    batch = images[:1].expand(batch_size, -1, -1, -1).contiguous()
    with torch.no_grad():
        for start in range(0, n_copies, batch_size):
            model(batch[: min(batch_size, n_copies - start)]).softmax(1)


def rise_loop(model, images, maps, n_steps, batch_size):
    """Per-step loop as in RISE's batched CausalMetric: forward all images, then edit the next step."""
    n_images, channels, height, width = images.shape
    n_pixels = height * width
    step = math.ceil(n_pixels / n_steps)
    order = torch.argsort(pixel_rank(maps), dim=1)  # pixel indices, most important first
    blurred = gaussian_blur(images, [11, 11], [5.0, 5.0])
    curves = {}
    with torch.no_grad():
        targets = model(images).argmax(1)
        for name, start, finish in (("deletion", images, torch.zeros_like(images)), ("insertion", blurred, images)):
            current = start.clone().view(n_images, channels, n_pixels)
            finish = finish.reshape(n_images, channels, n_pixels)
            scores = torch.empty(n_images, n_steps + 1, device=images.device)
            for k in range(n_steps + 1):
                for chunk in range(0, n_images, batch_size):
                    batch = current[chunk : chunk + batch_size].view(-1, channels, height, width)
                    probs = model(batch).softmax(1)
                    scores[chunk : chunk + batch_size, k] = probs.gather(1, targets[chunk : chunk + batch_size, None])[:, 0]
                if k < n_steps:
                    index = order[:, k * step : (k + 1) * step][:, None].expand(-1, channels, -1)
                    current.scatter_(2, index, finish.gather(2, index))
            curves[name] = scores
    return trapezoid_auc(curves["deletion"]), trapezoid_auc(curves["insertion"]), curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (64 for a quick run)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=64, help="copies per forward for ours and the floor")
    add_timing_arguments(parser)
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.images, 3, args.size, args.size, generator=gen).to(device)
    maps = torch.rand(args.images, args.size, args.size, generator=gen).to(device)

    methods = {
        "ours (batched copies)": lambda: deletion_insertion(model, images, maps, n_steps=args.steps, batch_size=args.batch_size),
        "floor (plain forwards)": lambda: floor(model, images, args.steps, args.batch_size),
        "RISE-style per-step loop": lambda: rise_loop(model, images, maps, args.steps, args.batch_size),
    }

    # Same answers, checked on two images: our curves equal the per-step loop's (up to float
    # noise from batch composition).
    ours = deletion_insertion(model, images[:2], maps[:2], n_steps=args.steps, batch_size=args.batch_size)
    _, _, loop_curves = rise_loop(model, images[:2], maps[:2], args.steps, args.batch_size)
    gap = max((ours["deletion_curve"] - loop_curves["deletion"]).abs().max().item(),
              (ours["insertion_curve"] - loop_curves["insertion"]).abs().max().item())
    print(f"device {device}, {args.images} images of {args.size} px, {args.steps} steps, "
          f"batch {args.batch_size}, threads {torch.get_num_threads()}; max curve gap ours vs loop {gap:.2e}")

    print_ratios(interleaved_times(methods, args.repeats, device), "floor (plain forwards)", width=28)


if __name__ == "__main__":
    main()
