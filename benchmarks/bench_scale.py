"""The cost of steps 2-7 at CUB's scale: time and peak memory per step at 12, 50 and 200 classes, and
how each grows against its work (issue 21, item 5).

For every class count the synthetic birds are generated at CUB's scale (``make_synthetic_cub.py
--cub-scale``: 60 images per class, half of them for training, CUB's 312 attributes of which the majority
filter keeps the concepts; ``--n-classes`` 12 / 50 / 200, 200 being CUB's 12,000 images), step 1 trains a
small model for one dense and one pruned round (``--epochs`` each; not timed: it is the input), then
steps 2-7 run on the pruned round (round 1; step 6 makes round 0's maps first, untimed, because step 7
compares every round with the dense one). Each step runs in a fresh process with one torch thread and
one CAV worker (``cav.n_jobs: 1``), so that its CPU time (user + system, ``getrusage``) is the work it
did, whatever else the machine runs; wall time is printed beside it. Peak memory is the process's peak
resident set during the step (``VmHWM``, reset before the step through ``/proc/self/clear_refs``) minus its
resident set when the step starts (after the imports).

The work of each step, the quantity its cost must stay proportional to (or below):
  test          test images (one forward each)
  activations   images of every split x concept layers (one forward each, to the layer)
  cavs          CAV fits x examples per fit: (concepts x cav.n_random + cav.n_random (cav.n_random - 1)
                random CAVs) x the random-set size (the median count of a concept's positives among
                the CAV split's images, at most cav.max_per_set)
  tcav          scored images (tcav.splits) x (concepts + 1): a gradient per image, and each image's
                sign against every concept's CAVs
  heatmaps      explained images (heatmaps.images_per_class x classes) x methods
  metrics       explained images x methods
``growth`` is the exponent e of cost = c * work**e between two scales, log(cost ratio) / log(work ratio):
at most about 1 when a step grows no faster than its work (fixed costs, loading the dataset and the
model, make it less at small scales); a quadratic step shows e near 2.

    python benchmarks/bench_scale.py                                   # 12, 50, 200 classes at 32 px
    python benchmarks/bench_scale.py --classes 12,50 --image-size 32 --work /tmp/scale
    python benchmarks/bench_scale.py --set heatmaps.methods=[gradcam,saliency]   # any config key
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = ("test", "activations", "cavs", "tcav", "heatmaps", "metrics")
PRUNED_ROUND = 1
RESULT_TAG = "BENCH_SCALE_RESULT "
# the settings of the benchmark's runs; --set overrides any of them (the work units follow)
BENCH_SETTINGS = {
    "device": "cpu",
    "model_arch": "small_resnet",
    "pretrained": False,
    "prune_iterations": 1,
    "prune_percent": 50,
    "labels_for_tcav": ["all"],
    "concepts_for_tcav": ["all"],
    "bb_layers_for_concepts": ["layer3"],
    "cav_flattening_type": "avg_pool",
    "data": {"batch_size": 64, "eval_batch_size": 256, "num_workers": 0, "augment": True},
    "train": {"epochs": 1, "lr": 0.1, "lr_schedule": "cosine"},
    "cav": {"n_random": 5, "n_jobs": 1},
    "heatmaps": {"images_per_class": 2,
                 "methods": ["gradcam", "gradcampp", "grad_x_activation", "saliency", "integrated_gradients",
                             "occlusion", "random"],
                 "ig_max_steps": 32, "occlusion_patch": 8},
    "metrics": {"samek_steps": 20},
}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ------------------------------------------------------------------------------------------- child process

def _status_mb(field: str) -> float | None:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in MB; None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Make the peak resident set the current one (Linux: 5 > /proc/self/clear_refs); False where it cannot.
    (ru_maxrss cannot be used: a child starts with its parent's peak, which Linux carries across fork and exec.)"""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(key: str, config: str, rounds: list[int], overrides: list[str], force: bool) -> dict:
    """One step in this process (a fresh one, started by `measure`): seconds, CPU seconds and peak memory."""
    import gc

    import torch

    from lottery_xai import steps
    from lottery_xai.config import load_config
    from lottery_xai.rundir import RunDir

    torch.set_num_threads(1)
    declared = steps.get(key)  # imports every step's module before the baseline
    cfg = load_config(config, overrides)
    run = RunDir(cfg)
    gc.collect()
    exact = _reset_peak()
    base = _status_mb("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu, start = _cpu_seconds(), time.perf_counter()
    steps.call(declared, run, device=torch.device("cpu"), rounds=rounds, force=force, log=lambda *a, **k: None)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    peak = _status_mb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step": key, "seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak - base, "base_mb": base,
            "peak_exact": exact}


def measure(key: str, config: Path, rounds: list[int], overrides: list[str], force: bool = True) -> dict:
    """Run step ``key`` on ``rounds`` in a fresh process (one thread) and return what it measured."""
    command = [sys.executable, __file__, "--child", key, "--config", str(config),
               "--rounds", ",".join(map(str, rounds))] + [f"--set={o}" for o in overrides]
    if force:
        command.append("--force")
    env = {**os.environ, "TQDM_DISABLE": "1", **dict.fromkeys(THREAD_VARIABLES, "1"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"step {key} failed (exit status {done.returncode}): {' '.join(command)}")
    return json.loads(lines[-1][len(RESULT_TAG):])


# ------------------------------------------------------------------------------------------------- parent

def prepare_data(folder: Path, n_classes: int, args) -> dict:
    """The CUB-scale synthetic dataset with ``n_classes`` classes (generated once, then reused)."""
    from lottery_xai.data.synthetic import CUB_SCALE, prepare_synthetic_cub

    sizes = {**CUB_SCALE, "n_classes": n_classes, "images_per_class": args.images_per_class}
    start = time.perf_counter()
    prepare_synthetic_cub(folder, folder / "prepared", seed=args.seed, **sizes, image_size=args.image_size)
    return {"seconds": time.perf_counter() - start}


def write_config(path: Path, data: Path, logs: Path, n_classes: int, args) -> Path:
    import yaml

    settings = {"logs": str(logs), "experiment_name": f"classes_{n_classes}", "dataset": "synthetic_cub",
                "data_root": str(data), "json_root": str(data / "prepared"), "seed": args.seed,
                "img_size": args.image_size, **BENCH_SETTINGS}
    settings["train"] = {**settings["train"], "epochs": args.epochs}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def work_units(config: Path, overrides: list[str]) -> dict:
    """The work of every step (see the module docstring) from the prepared dataset and the config."""
    import numpy as np

    from lottery_xai.config import cav_protocol, load_config
    from lottery_xai.data import build_datasets

    cfg = load_config(config, overrides)
    _, info = build_datasets(cfg.dataset, cfg.data_root, cfg.json_root, cfg.img_size, splits=())
    splits = json.loads((Path(cfg.json_root) / "splits.json").read_text())
    labels = {}
    for line in (Path(cfg.data_root) / "image_class_labels.txt").read_text().split("\n"):
        if line.strip():
            image, label = map(int, line.split())
            labels[image] = label - 1
    n = {split: len(ids) for split, ids in splits.items()}
    n_concepts, layers = info.n_concepts, len(cfg.bb_layers_for_concepts)
    # a concept's positives among the CAV images: the images of the classes that have it
    cav_labels = np.array([labels[i] for split in cfg.cav.splits for i in splits[split]])
    positives = info.class_concepts[cav_labels].sum(axis=0)
    if cfg.cav.max_per_set:
        positives = np.minimum(positives, cfg.cav.max_per_set)
    set_size = int(np.median(positives[positives > 0])) if (positives > 0).any() else 0
    k = cfg.cav.n_random
    fits = n_concepts * k + (k * (k - 1) if cav_protocol(cfg).negatives == "random" else k)
    classes = info.num_classes if list(cfg.labels_for_tcav) == ["all"] else len(cfg.labels_for_tcav)
    explained = classes * cfg.heatmaps.images_per_class
    methods = len(cfg.heatmaps.methods)
    scored = sum(n[s] for s in cfg.tcav.splits)
    return {
        "classes": info.num_classes, "images": sum(n.values()), "concepts": n_concepts, "cav_fits": fits,
        "cav_set_size": set_size, "explained": explained, "methods": methods,
        "work": {"test": n["test"], "activations": sum(n[s] for s in cfg.activations.splits) * layers,
                 "cavs": fits * set_size * layers, "tcav": scored * (n_concepts + 1) * layers,
                 "heatmaps": explained * methods, "metrics": explained * methods},
    }


def growth(cost_a: float, cost_b: float, work_a: float, work_b: float) -> float:
    """The exponent e of cost = c * work**e through two points (NaN when the work did not change)."""
    if work_a <= 0 or work_b <= 0 or cost_a <= 0 or cost_b <= 0 or work_a == work_b:
        return math.nan
    return math.log(cost_b / cost_a) / math.log(work_b / work_a)


def table(results: list[dict]) -> str:
    """The markdown table: per step and scale, the work, wall and CPU seconds and peak memory; then the CPU time
    per unit of work at each scale relative to the first scale, and the growth exponents of CPU time and of
    peak memory between consecutive scales."""
    scales = [r["classes"] for r in results]
    lines = ["| step | work (unit) | " + " | ".join(f"{c} classes: work, wall s, CPU s, peak MB" for c in scales)
             + " | CPU per unit of work | CPU growth | memory growth |",
             "| --- | --- | " + " | ".join("---" for _ in scales) + " | --- | --- | --- |"]
    units = {"test": "test images", "activations": "images x layers", "cavs": "fits x set size",
             "tcav": "scored images x (concepts + 1)", "heatmaps": "images x methods", "metrics": "images x methods"}
    for key in STEPS:
        cells, per_unit, cpu_growth, mem_growth = [], [], [], []
        first = results[0]["steps"][key]["cpu_seconds"] / results[0]["units"]["work"][key]
        for i, r in enumerate(results):
            m, w = r["steps"][key], r["units"]["work"][key]
            cells.append(f"{w:,}, {m['seconds']:.1f}, {m['cpu_seconds']:.1f}, {m['peak_mb']:.0f}")
            per_unit.append(f"{m['cpu_seconds'] / w / first:.2f}")
            if i:
                p, pw = results[i - 1]["steps"][key], results[i - 1]["units"]["work"][key]
                cpu_growth.append(f"{growth(p['cpu_seconds'], m['cpu_seconds'], pw, w):.2f}")
                mem_growth.append(f"{growth(max(p['peak_mb'], 1), max(m['peak_mb'], 1), pw, w):.2f}")
        lines.append(f"| {key} | {units[key]} | " + " | ".join(cells) + f" | {', '.join(per_unit)} | "
                     f"{', '.join(cpu_growth)} | {', '.join(mem_growth)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="12,50,200", help="class counts, comma-separated (200 = CUB's)")
    parser.add_argument("--images-per-class", type=int, default=60, help="60 as CUB (--cub-scale)")
    parser.add_argument("--image-size", type=int, default=32, help="image side of the data and the model")
    parser.add_argument("--epochs", type=int, default=1, help="step 1's epochs per round (its checkpoints are the input)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lottery_xai_bench_scale"),
                        help="folder for the datasets, runs and results (kept: a rerun reuses data and step 1)")
    parser.add_argument("--steps", default=",".join(STEPS), help="steps timed, comma-separated")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of the runs (repeatable)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = run_child(args.child, args.config, [int(r) for r in args.rounds.split(",")], args.overrides,
                           args.force)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    timed = [s for s in args.steps.split(",") if s]
    unknown = [s for s in timed if s not in STEPS]
    if unknown:
        parser.error(f"unknown step {unknown[0]!r}; choose among {', '.join(STEPS)}")
    work = Path(args.work)
    started = time.perf_counter()
    results = []
    for n_classes in [int(c) for c in args.classes.split(",")]:
        data = work / "data" / f"classes_{n_classes}_{args.image_size}px"
        prepared = prepare_data(data, n_classes, args)
        config = write_config(work / "configs" / f"classes_{n_classes}.yaml", data, work / "runs", n_classes, args)
        units = work_units(config, args.overrides)
        print(f"{n_classes} classes: {units['images']} images at {args.image_size} px, {units['concepts']} concepts, "
              f"{units['cav_fits']} CAV fits of {units['cav_set_size']} + {units['cav_set_size']} examples, "
              f"{units['explained']} explained images x {units['methods']} methods "
              f"(data {prepared['seconds']:.0f} s)", flush=True)
        setup = measure("pruning", config, [0, PRUNED_ROUND], args.overrides, force=False)
        print(f"  step 1 (not timed as part of the table): {setup['seconds']:.0f} s", flush=True)
        if "metrics" in timed:  # step 7 compares round 1's maps with the dense round's
            measure("heatmaps", config, [0], args.overrides, force=False)
        measured = {}
        for key in STEPS:
            if key not in timed:
                continue
            measured[key] = measure(key, config, [PRUNED_ROUND], args.overrides)
            m = measured[key]
            print(f"  {key:12s} work {units['work'][key]:>12,}  wall {m['seconds']:7.1f} s  CPU {m['cpu_seconds']:7.1f} s"
                  f"  ({1e6 * m['cpu_seconds'] / max(units['work'][key], 1):9.1f} us per unit)  "
                  f"peak +{m['peak_mb']:.0f} MB", flush=True)
        results.append({"classes": n_classes, "units": units, "steps": measured, "step1": setup})
    if all(set(r["steps"]) == set(STEPS) for r in results):
        print()
        print(table(results))
    out = work / "results.json"
    out.write_text(json.dumps({"argv": sys.argv[1:], "image_size": args.image_size, "overrides": args.overrides,
                               "results": results}, indent=1))
    print(f"\n(total {time.perf_counter() - started:.0f} s; results in {out})")


if __name__ == "__main__":
    main()
