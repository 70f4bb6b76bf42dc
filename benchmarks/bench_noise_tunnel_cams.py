"""Time the noise tunnel and the new CAMs against Captum / pytorch-grad-cam and their floors, on the same batch.

One process, the contenders interleaved (benchmarks/timing.py), medians and ratios printed, and the largest
difference of every pair of maps (they must agree):

    python benchmarks/bench_noise_tunnel_cams.py --repeats 3
    python benchmarks/bench_noise_tunnel_cams.py --part cams --arch resnet50 --size 224 --batch 8

Noise tunnel (SmoothGrad of the input gradient, `samples` copies per image): floor = the forward and
backward of every copy in batches of `--chunk` (what any implementation must compute); Captum's
NoiseTunnel(Saliency) with its default (all copies in one batch) and with nt_samples_batch_size = the
same chunk. CAMs: floor = one forward without a graph (the Grad-CAM floor of doc/performance); pytorch-grad-cam's
classes (a loss.backward() through every parameter, numpy on the CPU).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import add_timing_arguments, interleaved_times, print_ratios, resolve_device  # noqa: E402

from lottery_xai.attribution.cam_variants import eigencam, hirescam, layercam, xgradcam  # noqa: E402
from lottery_xai.attribution.noise_tunnel import noise_tunnel, standard_normal_rows  # noqa: E402


def build(arch: str, device: torch.device) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None).to(device).eval()


def noise_tunnel_part(model, images, targets, samples: int, chunk: int, repeats: int, device) -> None:
    from captum.attr import NoiseTunnel, Saliency

    stdev = 0.15 * float(images.max() - images.min())

    def floor():
        copies = images.repeat_interleave(samples, 0)
        rows = targets.repeat_interleave(samples)
        for start in range(0, len(copies), chunk):
            x = (copies[start:start + chunk] + stdev * torch.randn_like(copies[start:start + chunk])).requires_grad_()
            logits = model(x)
            torch.autograd.grad(logits.gather(1, rows[start:start + chunk, None]).sum(), x)

    def ours():
        return noise_tunnel(model, images, targets, samples=samples, noise_level=stdev, noise_range="absolute",
                            channels="none", seed=0, batch_size=chunk)

    def captum(batch=None):
        return NoiseTunnel(Saliency(model)).attribute(images, nt_type="smoothgrad", nt_samples=samples,
                                                      nt_samples_batch_size=batch, stdevs=stdev, target=targets,
                                                      abs=False)

    per_batch = max(1, chunk // len(images))  # Captum's nt_samples_batch_size counts samples per image
    contenders = {"floor (fwd+bwd of the copies)": floor, "ours (noise_tunnel)": ours,
                  "captum NoiseTunnel (default)": captum,
                  f"captum NoiseTunnel (batch {per_batch})": lambda: captum(per_batch)}
    # same noise for the agreement check: Captum's draws replaced by ours
    generator_rows = standard_normal_rows(len(images) * samples, images.shape[1:], torch.Generator().manual_seed(0),
                                          device)
    original = NoiseTunnel.__dict__["_add_noise_to_input"]  # the staticmethod object itself
    NoiseTunnel._add_noise_to_input = staticmethod(lambda x, s, k: x.repeat_interleave(k, 0) + s * generator_rows)
    try:
        gap = float((ours() - captum()).abs().max())
    finally:
        NoiseTunnel._add_noise_to_input = original
    for run in contenders.values():  # warm-up
        run()
    times = interleaved_times(contenders, repeats, device)
    print(f"SmoothGrad, {len(images)} images x {samples} samples, {tuple(images.shape[1:])}, chunk {chunk}")
    print_ratios(times, "floor (fwd+bwd of the copies)", width=36)
    print(f"  max |ours - captum| with the same noise = {gap:.2e}")


def cams_part(model, images, targets, layer: str, repeats: int, device) -> None:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = model.get_submodule(layer)
    target_list = [ClassifierOutputTarget(int(c)) for c in targets]

    def floor():
        with torch.no_grad():
            return model(images)

    ours = {"HiResCAM": hirescam, "LayerCAM": layercam, "XGradCAM": xgradcam, "EigenCAM": eigencam}
    def theirs(name):
        # built per call and released after: its hooks must not stay on the model while the others run
        cam = getattr(pgc, name)(model=model, target_layers=[module])
        try:
            return cam(input_tensor=images, targets=target_list)
        finally:
            cam.activations_and_grads.release()

    for name, fn in ours.items():
        contenders = {"floor (forward, no grad)": floor,
                      f"ours ({fn.__name__})": lambda fn=fn: fn(model, images, targets, layer=layer),
                      f"pytorch-grad-cam {name}": lambda name=name: theirs(name)}
        for run in contenders.values():
            run()
        times = interleaved_times(contenders, repeats, device)
        print(f"{name} at {layer}, {len(images)} images of {images.shape[-1]} px")
        print_ratios(times, "floor (forward, no grad)", width=36)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=3)
    parser.add_argument("--part", choices=["noise_tunnel", "cams", "both"], default="both")
    parser.add_argument("--arch", default="resnet18", help="torchvision architecture (random weights)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--samples", type=int, default=50, help="noise tunnel copies per image")
    parser.add_argument("--chunk", type=int, default=32, help="noisy copies per forward/backward (ours and the floor)")
    parser.add_argument("--layer", default="layer4")
    args = parser.parse_args()
    device = resolve_device(args.device)
    model = build(args.arch, device)
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    with torch.no_grad():
        targets = model(images).argmax(1)
    print(f"{args.arch}, {device}, {torch.get_num_threads()} threads, median of {args.repeats}")
    if args.part in ("noise_tunnel", "both"):
        noise_tunnel_part(model, images, targets, args.samples, args.chunk, args.repeats, device)
    if args.part in ("cams", "both"):
        cams_part(model, images, targets, args.layer, args.repeats, device)


if __name__ == "__main__":
    main()
