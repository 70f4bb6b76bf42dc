"""TCAV end to end: ours (activations by a stopped forward, CAV fits, class gradients once, one matrix
product) against the floor (the forward of every concept and random image to the layer) and against
a naive implementation that recomputes the class gradients for every CAV (what Captum's TCAV does).

    python benchmarks/bench_tcav.py [--repeats 3] [--skip-naive]

Timings are interleaved in one process; medians and ratios to the floor are printed.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
import torchvision

from lottery_xai.activations import flatten_activations, layer_activations
from lottery_xai.concepts import class_gradients, fit_all_cavs, layer_gradients, run_tcav, tcav_scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concepts", type=int, default=5)
    p.add_argument("--n-random", type=int, default=10)
    p.add_argument("--set-size", type=int, default=50, help="images per concept set and per random set")
    p.add_argument("--class-images", type=int, default=40)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--layer", default="layer3")
    p.add_argument("--flattening", default="avg_pool", choices=["flatten", "avg_pool"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-jobs", type=int, default=-1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-naive", action="store_true")
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
    n_pool = (args.concepts + args.n_random) * args.set_size  # 750 by default, as in performance.md
    pool = torch.randn(n_pool, 3, args.img_size, args.img_size, generator=g).to(device)
    class_images = torch.randn(args.class_images, 3, args.img_size, args.img_size, generator=g).to(device)
    concepts = np.zeros((n_pool, args.concepts), dtype=np.uint8)
    for c in range(args.concepts):
        concepts[c * args.set_size:(c + 1) * args.set_size, c] = 1
    names = [f"concept_{c}" for c in range(args.concepts)]
    target = 3

    def activations() -> np.ndarray:
        with torch.no_grad():
            parts = [flatten_activations(layer_activations(model, args.layer, b), args.flattening)
                     for b in pool.split(args.batch_size)]
        return torch.cat(parts).cpu().numpy()

    def fit(acts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit_all_cavs(acts, concepts, names, n_random=args.n_random, negatives="random",
                                n_jobs=args.n_jobs, seed=0, random_set_size=args.set_size)

    parts: dict[str, list[float]] = {"activations": [], "CAV fits": [], "class gradients": [], "scoring": []}

    def ours():
        t0 = time.perf_counter()
        acts = activations()
        t1 = time.perf_counter()
        res = fit(acts)
        t2 = time.perf_counter()
        grads = class_gradients(model, args.layer, class_images, target, flattening=args.flattening,
                                batch_size=args.batch_size, device=device)
        t3 = time.perf_counter()
        table = run_tcav({"class": grads}, res)
        t4 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key].append(dt)
        return table

    def naive():
        res = fit(activations())
        all_cavs = np.concatenate([res["cavs"].reshape(-1, res["cavs"].shape[-1]), res["random_cavs"]])
        scores = []
        for cav in all_cavs:  # gradients recomputed for every CAV
            grads = torch.cat([layer_gradients(model, args.layer, b, target, args.flattening)
                               for b in class_images.split(args.batch_size)])
            scores.append(tcav_scores(grads, cav[None])[0])
        return scores

    def floor():
        with torch.no_grad():
            for b in pool.split(args.batch_size):
                layer_activations(model, args.layer, b)
        if device.type == "cuda":
            torch.cuda.synchronize()

    runs = {"floor (forward of the concept+random images to the layer)": floor, "ours": ours}
    if not args.skip_naive:
        runs["naive (gradients recomputed per CAV)"] = naive
    ours()  # warm-up: joblib workers, allocator, kernels
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    n_cavs = args.concepts * args.n_random + args.n_random
    print(f"TCAV: {args.concepts} concepts x {args.n_random} runs + {args.n_random} random CAVs ({n_cavs} CAVs), "
          f"{args.class_images} class images, resnet18 at {args.img_size} px, {args.layer}, {args.flattening}, "
          f"{n_pool} concept/random images, device {device}, torch threads {torch.get_num_threads()}")
    base = statistics.median(times[next(iter(runs))])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:60s} {med:7.3f} s   {med / base:5.2f}x floor")
    print("  ours, by part (medians): " + ", ".join(f"{k} {statistics.median(v[1:] or v):.3f} s" for k, v in parts.items()))


if __name__ == "__main__":
    main()
