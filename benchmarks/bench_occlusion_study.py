"""The occlusion-sensitivity study against the floor of its forwards.

The floor is the network work nobody can avoid: N * n_masks forwards of ready-made images (plus the N
clean ones) in batches of the same size, with the softmax. The study adds the making of each batch of
occluded copies (the squares' masks and the fill, on the fly, so memory holds one batch), the z-scores
and the heatmaps (a difference array, whatever the square size). Both run in one process,
interleaved, on the embedded default's architecture (small_resnet, random init); medians and the
ratio to the floor are printed.

    python benchmarks/bench_occlusion_study.py                      # 64 px, 8 images x 500 masks
    python benchmarks/bench_occlusion_study.py --size 224 --model resnet18 --images 2
"""
from __future__ import annotations

import argparse

import torch

from lottery_xai.attribution.occlusion_study import occlusion_study
from lottery_xai.models import build_model
from timing import add_timing_arguments, interleaved_times, print_ratios, resolve_device  # benchmarks/timing.py


def floor(model, images, n_masks, batch_size):
    """Forwards of N clean images and N * n_masks ready-made copies in batches of ``batch_size``."""
    n_copies = images.shape[0] * n_masks
    batch = images[:1].expand(batch_size, -1, -1, -1).contiguous()
    with torch.no_grad():
        model(images).softmax(1)
        for start in range(0, n_copies, batch_size):
            model(batch[: min(batch_size, n_copies - start)]).softmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (the default's 64)")
    parser.add_argument("--model", default="small_resnet", help="an architecture of lottery_xai.models")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--masks", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128, help="copies per forward for both")
    add_timing_arguments(parser)
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(args.model, 12, False, args.size).eval().to(device)
    images = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed))
    images = images.to(device)

    methods = {
        "occlusion study": lambda: occlusion_study(model, images, n_masks=args.masks, batch_size=args.batch_size,
                                                   seed=args.seed),
        "floor (plain forwards)": lambda: floor(model, images, args.masks, args.batch_size),
    }
    print(f"device {device}, {args.model}, {args.images} images of {args.size} px x {args.masks} masks, "
          f"batch {args.batch_size}, threads {torch.get_num_threads()}")
    methods["occlusion study"]()  # warm-up
    print_ratios(interleaved_times(methods, args.repeats, device), "floor (plain forwards)", width=24)


if __name__ == "__main__":
    main()
