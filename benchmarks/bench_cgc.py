"""One training step with the CGC loss against one cross-entropy step on the same batch (forward,
loss, backward, optimizer step), interleaved in one process; medians and the ratio printed.

The floor of a CGC step is three forwards (the training view, the original view x and its crop
T(x)), the maps' gradients, and a backward through the second-order graph of the last block:
about 3-4 plain steps.
    python benchmarks/bench_cgc.py                                  # small ResNet, 64 px, batch 32
    python benchmarks/bench_cgc.py --arch resnet18 --size 224 --batch 16 --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lottery_xai.config import TrainConfig
from lottery_xai.models import architecture, build_model
from lottery_xai.training import get_loss
from lottery_xai.training.loop import autocast


def step(model, optimizer, loss_fn, images, labels, amp, originals):
    optimizer.zero_grad(set_to_none=True)
    if getattr(loss_fn, "own_forward", False):  # CGC: the training view, the original view and its crop
        loss = loss_fn.forward_pass(model, model, images, labels, autocast(images.device, amp), originals=originals)
    else:
        with autocast(images.device, amp):
            logits = model(images)
        loss = loss_fn(logits, labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="small_resnet")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.arch, 10, False, args.size).to(device).train()
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    originals = torch.rand(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    tc = TrainConfig()
    layer = architecture(args.arch).cam_layer
    losses = {"cross_entropy": get_loss("cross_entropy", tc, layer=layer), "cgc": get_loss("cgc", tc, layer=layer)}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in losses}
    for name, fn in losses.items():  # warm-up
        step(model, optimizer, fn, images, labels, tc.amp, originals)
    for _ in range(args.repeats):
        for name, fn in losses.items():
            sync()
            start = time.perf_counter()
            step(model, optimizer, fn, images, labels, tc.amp, originals)
            sync()
            times[name].append(time.perf_counter() - start)
    ce, cgc = (statistics.median(times[n]) for n in ("cross_entropy", "cgc"))
    print(f"{args.arch} {args.size}px batch {args.batch} on {device}: cross-entropy step {1000 * ce:.1f} ms, "
          f"CGC step {1000 * cgc:.1f} ms, ratio {cgc / ce:.2f}")


if __name__ == "__main__":
    main()
