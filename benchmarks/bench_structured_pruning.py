"""Measured speed-up of structured (channel) pruning per round, next to the unstructured ticket's.

Each round r keeps (1 - p)^r of every channel group (L1 filter ranking through torch-pruning's
DependencyGraph, lottery_xai.structured); the smaller network is rebuilt from the initial weights of
the kept channels, as step 1 does with ``pruning.structure: channels``. The unstructured ticket of the
same round keeps the SAME share of the prunable weights (global magnitude masks, lottery_xai.pruning)
in the dense shapes, its masks held through a training step by MaskEnforcer. Forward passes (eval, no
grad) and training steps (forward, backward, SGD with momentum) of the dense network, the smaller
network and the masked one take turns in one process (timing.interleaved_times); medians, and the
speed-up = dense median / median. MACs are torch-pruning's count_ops_and_params.

    python benchmarks/bench_structured_pruning.py                        # CPU: resnet18, 32 px, batch 64
    python benchmarks/bench_structured_pruning.py --device cuda --size 64 --batch 256   # a GPU (< 60 s)
    python benchmarks/bench_structured_pruning.py --arch conv6 --size 32               # the LTH Conv-6
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import add_timing_arguments, interleaved_times, resolve_device  # noqa: E402

from lottery_xai import structured as st  # noqa: E402
from lottery_xai.lth_models import LTH_ARCHITECTURES  # noqa: E402
from lottery_xai.models import ARCHITECTURES  # noqa: E402
from lottery_xai.pruning import MaskEnforcer, apply_masks, full_masks, prunable_names, prune  # noqa: E402


def builder(arch: str, classes: int, size: int):
    """(make_full, classifier name) for a registered or LTH architecture."""
    if arch in ARCHITECTURES:
        spec = ARCHITECTURES[arch]
        return (lambda: spec.build(classes, False, size)), spec.classifier
    build, _, _, classifier = LTH_ARCHITECTURES[arch]
    return (lambda: build(classes, False, size)), classifier


def forward(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def train_step(model, x, y, masks=None):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    enforcer = MaskEnforcer(model, masks, opt).__enter__() if masks else None  # held for the whole benchmark

    def run():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    run.enforcer = enforcer
    return run


def network(make, structure, init, device):
    """The full network with the initial weights, or the smaller one of ``structure`` built from them."""
    if structure is None:
        model = make()
        model.load_state_dict(init)
        return model.to(device)
    return st.build_structured(make, structure, full_state=init).to(device)


def repeated(fn, n):
    def run():
        for _ in range(n):
            fn()
    return run


def macs(model, shape, device) -> float:
    import torch_pruning as tp

    was = model.training
    model.eval()
    ops, _ = tp.utils.count_ops_and_params(model, torch.zeros(*shape, device=device))
    model.train(was)
    return float(ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", help="a model_arch name (small_resnet, resnet18, conv6, lenet_300_100, ...)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6, help="pruning rounds after the dense round 0")
    parser.add_argument("--percent", type=float, default=20.0, help="channels removed per round (of the alive ones)")
    parser.add_argument("--iters", type=int, default=3, help="calls per timed run")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    add_timing_arguments(parser, repeats=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    start = time.perf_counter()

    make, classifier = builder(args.arch, args.classes, args.size)
    torch.manual_seed(args.seed)
    dense = make().to(device)
    init = {k: v.detach().clone() for k, v in dense.state_dict().items()}
    shape = (1, 3, args.size, args.size)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    names = prunable_names(dense)
    structure = st.full_structure(dense, shape, classifier=classifier)
    previous = dense
    dense_macs = macs(dense, shape, device)
    print(f"{args.arch} at {args.size} px, batch {args.batch}, {device}: {len(structure['groups'])} channel groups, "
          f"{args.percent:g} % of the channels per round; speed-up = dense median time / median time "
          f"({args.repeats} interleaved runs of {args.iters} calls)")
    header = (f"{'round':>5} {'weights':>8} {'MACs':>6} | {'fwd dense ms':>12} {'struct':>7} {'masked':>7} | "
              f"{'train dense ms':>14} {'struct':>7} {'masked':>7}")
    print(header)
    print("-" * len(header))
    for r in range(args.rounds + 1):
        if r > 0:
            keep = (1 - args.percent / 100) ** r
            scores = st.channel_scores(previous, structure)
            structure = st.next_structure(structure, scores, {root: keep for root in structure["groups"]})
        small, struct_train = (network(make, structure if r > 0 else None, init, device) for _ in range(2))
        weights, _ = st.remaining_fractions(dense, small, names)
        # the unstructured ticket at the same share of the prunable weights, dense shapes
        masked, masked_train, dense_train = (network(make, None, init, device) for _ in range(3))
        masks = prune(dict(masked.named_parameters()), full_masks(masked, names), {n: weights for n in names}, "global")
        apply_masks(masked, masks)
        apply_masks(masked_train, masks)
        runs = {"fwd dense": forward(dense.eval(), x), "fwd struct": forward(small.eval(), x),
                "fwd masked": forward(masked.eval(), x)}
        steps = {"train dense": train_step(dense_train.train(), x, y),
                 "train struct": train_step(struct_train.train(), x, y),
                 "train masked": train_step(masked_train.train(), x, y, masks)}
        methods = {k: repeated(v, args.iters) for k, v in {**runs, **steps}.items()}
        for fn in methods.values():  # warm-up: kernels, allocator, autotuning
            fn()
        times = interleaved_times(methods, args.repeats, device)
        med = {k: statistics.median(v) / args.iters for k, v in times.items()}
        for fn in steps.values():
            if fn.enforcer is not None:
                fn.enforcer.__exit__(None, None, None)
        print(f"{r:>5} {100 * weights:7.1f}% {100 * macs(small, shape, device) / dense_macs:5.1f}% | "
              f"{1e3 * med['fwd dense']:12.2f} {med['fwd dense'] / med['fwd struct']:6.2f}x {med['fwd dense'] / med['fwd masked']:6.2f}x | "
              f"{1e3 * med['train dense']:14.2f} {med['train dense'] / med['train struct']:6.2f}x "
              f"{med['train dense'] / med['train masked']:6.2f}x")
        previous = small
    print(f"(weights: share of the prunable weights left, the same for the smaller and the masked network; "
          f"MACs of the smaller network; total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
