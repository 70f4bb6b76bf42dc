"""Time the robustness metrics against their floor and Quantus 0.6, and check the new metrics equal Quantus's values.

One process, interleaved (benchmarks/timing.py), medians and ratios printed:

    python benchmarks/bench_robustness.py --repeats 3
    python benchmarks/bench_robustness.py --arch resnet50 --size 224 --batch 8 --samples 10

The explanation is saliency (one forward and one backward per copy). Floor = the saliency of every perturbed
copy in batches of `--chunk` plus that of the clean images: the passes max-sensitivity and the local Lipschitz
estimate cannot avoid. Quantus explains one perturbed copy of the whole batch per sample (numpy in between).
Then, with the same perturbations fed to Quantus, the largest difference of MaxSensitivity,
LocalLipschitzEstimate, Sparseness, Complexity and RandomLogit from ours.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import add_timing_arguments, interleaved_times, print_ratios, resolve_device  # noqa: E402

from lottery_xai.attribution import saliency  # noqa: E402
from lottery_xai.metrics.complexity import complexity, sparseness  # noqa: E402
from lottery_xai.metrics.randomisation import random_logit  # noqa: E402
from lottery_xai.metrics.robustness import local_lipschitz_estimate, max_sensitivity  # noqa: E402


def explain(model, images, targets):
    return saliency(model, images, targets)


class Feed:
    """A Quantus perturb_func adding fixed rows: at step s, image n gets row n * samples + s."""

    def __init__(self, rows, n, samples):
        self.rows, self.samples, self.step = rows.reshape(n, samples, -1), samples, 0

    def __call__(self, arr, indices, **kwargs):
        out = arr + self.rows[:, self.step % self.samples]
        self.step += 1
        return out


def documented_rows(draw, seed, count, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([draw(shape, g) for _ in range(count)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=3)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20, help="perturbed copies per image (Quantus: 200)")
    parser.add_argument("--chunk", type=int, default=32, help="copies per forward/backward (ours and the floor)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import quantus
    import torchvision

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(weights=None).to(device).eval()
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    with torch.no_grad():
        targets = model(images).argmax(1)
    maps = saliency(model, images, targets)
    n, samples, chunk = args.batch, args.samples, args.chunk
    x_np, y_np, a_np = images.cpu().numpy(), targets.cpu().numpy(), maps.cpu().numpy()

    def quantus_explain(model, inputs, targets, **kwargs):
        inputs, targets = torch.as_tensor(inputs, device=device), torch.as_tensor(targets, device=device)
        return saliency(model, inputs, targets).cpu().numpy()

    def floor():
        copies = images.repeat_interleave(samples, 0)
        rows = targets.repeat_interleave(samples)
        explain(model, images, targets)
        for start in range(0, len(copies), chunk):
            part = copies[start:start + chunk]
            explain(model, part + 0.1 * torch.randn_like(part), rows[start:start + chunk])

    contenders = {
        "floor (saliency of the copies)": floor,
        "ours max_sensitivity": lambda: max_sensitivity(model, images, explain, None, targets, samples=samples,
                                                        batch_size=chunk),
        "ours local_lipschitz_estimate": lambda: local_lipschitz_estimate(model, images, explain, None, targets,
                                                                          samples=samples, batch_size=chunk),
        "quantus MaxSensitivity": lambda: quantus.MaxSensitivity(nr_samples=samples, disable_warnings=True)(
            model=model, x_batch=x_np, y_batch=y_np, a_batch=None, explain_func=quantus_explain, device=str(device)),
        "quantus LocalLipschitzEstimate": lambda: quantus.LocalLipschitzEstimate(
            nr_samples=samples, disable_warnings=True)(model=model, x_batch=x_np, y_batch=y_np, a_batch=None,
                                                       explain_func=quantus_explain, device=str(device)),
    }
    for run in contenders.values():
        run()
    times = interleaved_times(contenders, args.repeats, device)
    print(f"{args.arch}, {n} images of {args.size} px x {samples} copies, chunk {chunk}, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print_ratios(times, "floor (saliency of the copies)", width=34)

    shape = tuple(images.shape[1:])
    per_map = {"normalise_axes": [1, 2, 3]}
    uniform = documented_rows(lambda s, g: (2 * torch.rand(s, generator=g) - 1) * 0.2, 7, n * samples, shape)
    gaussian = documented_rows(lambda s, g: 0.1 * torch.randn(s, generator=g), 9, n * samples, shape)
    gaps = {
        "MaxSensitivity": (quantus.MaxSensitivity(nr_samples=samples, perturb_func=Feed(uniform, n, samples),
                                                  disable_warnings=True)(
            model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, explain_func=quantus_explain, device=str(device)),
            max_sensitivity(model, images, explain, maps, targets, samples=samples, seed=7)["value"]),
        "LocalLipschitzEstimate": (quantus.LocalLipschitzEstimate(
            nr_samples=samples, perturb_func=Feed(gaussian, n, samples), normalise_func_kwargs=per_map,
            disable_warnings=True)(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np,
                                   explain_func=quantus_explain, device=str(device)),
            local_lipschitz_estimate(model, images, explain, maps, targets, samples=samples, seed=9)["value"]),
        "Sparseness": (quantus.Sparseness(normalise_func_kwargs=per_map, disable_warnings=True)(
            model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, device=str(device)), sparseness(maps)),
        "Complexity": (quantus.Complexity(normalise_func_kwargs=per_map, disable_warnings=True)(
            model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, device=str(device)), complexity(maps)),
    }
    num_classes = int(model(images[:1]).shape[1])
    np.random.seed(42)
    j = torch.as_tensor(np.random.randint(0, num_classes - 1, n), device=device)
    others = j + (j >= targets).long()
    gaps["RandomLogit"] = (
        quantus.RandomLogit(num_classes=num_classes, seed=42, normalise_func_kwargs=per_map, disable_warnings=True)(
            model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, explain_func=quantus_explain, device=str(device)),
        random_logit(model, images, explain, maps, targets, other_targets=others)["value"])
    for name, (theirs, ours) in gaps.items():
        theirs = np.asarray(theirs, dtype=np.float64)
        ours = ours.detach().cpu().double().numpy()
        print(f"  {name:24s} max |ours - quantus| = {np.abs(ours - theirs).max():.2e}  "
              f"(relative {np.abs(ours - theirs).max() / np.abs(theirs).max():.1e})")


if __name__ == "__main__":
    main()
