"""Activations of N images at a layer: ours (`save_activations`: forward stopped at the layer, streamed to
a `.npy` memory map) against the floor (the stopped forward alone) and against a full forward with a
hook (the same writing, but the network runs to the end).

    python benchmarks/bench_activations.py [--n-images 1024] [--repeats 3]

Timings are interleaved in one process; medians and ratios to the floor are printed.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from numpy.lib.format import open_memmap

from lottery_xai.activations import flatten_activations, layer_activations, save_activations


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=1024)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--layer", default="layer3")
    p.add_argument("--flattening", default="avg_pool", choices=["flatten", "avg_pool", "max_pool"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default); use 1 on a "
                   "machine shared with other jobs, where OpenMP threads wait on each other")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval().to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.n_images, 3, args.img_size, args.img_size, generator=g)
    loader = [dict(image=b, label=torch.zeros(len(b), dtype=torch.long)) for b in images.split(args.batch_size)]
    tmp_dir = tempfile.TemporaryDirectory()
    tmp = Path(tmp_dir.name)
    layer_module = model.get_submodule(args.layer)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def floor():
        with torch.no_grad():
            for batch in loader:
                layer_activations(model, args.layer, batch["image"].to(device))
        sync()

    def ours():
        save_activations(model, [args.layer], loader, {args.layer: tmp / "ours.npy"}, flattening=args.flattening,
                         n_images=args.n_images, device=device, progress=False)

    def full_forward_hook():
        store = {}
        handle = layer_module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
        out, row = None, 0
        try:
            with torch.no_grad():
                for batch in loader:
                    model(batch["image"].to(device))  # the rest of the network runs for nothing
                    block = flatten_activations(store["a"], args.flattening).cpu().numpy()
                    if out is None:
                        out = open_memmap(tmp / "hook.npy", mode="w+", dtype=np.float32,
                                          shape=(args.n_images, block.shape[1]))
                    out[row:row + len(block)] = block
                    row += len(block)
            out.flush()
        finally:
            handle.remove()

    runs = {"floor (forward stopped at the layer)": floor, "ours (save_activations)": ours,
            "full forward with a hook": full_forward_hook}
    ours()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(f"activations of {args.n_images} images at {args.layer} ({args.flattening}), resnet18 at {args.img_size} px, "
          f"batch {args.batch_size}, device {device}, torch threads {torch.get_num_threads()}")
    base = statistics.median(times[next(iter(runs))])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:40s} {med:7.3f} s   {med / base:5.2f}x floor")
    tmp_dir.cleanup()


if __name__ == "__main__":
    main()
