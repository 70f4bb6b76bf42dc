"""The timing loop the benchmarks share: methods run interleaved in one process (so drift in the
machine's speed hits all alike), CUDA synchronised around each run, medians and ratios to a floor."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def add_timing_arguments(parser, repeats: int = 3) -> None:
    """The options every timing benchmark takes: --repeats, --device, --seed."""
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def interleaved_times(methods: dict[str, Callable[[], object]], repeats: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` runs of every method, the methods taking turns."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def print_ratios(times: dict[str, list[float]], floor: str, width: int = 28) -> None:
    """Each method's median, its ratio to the median of ``floor`` and every run."""
    floor_time = statistics.median(times[floor])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:{width}s} median {median:8.3f} s   {median / floor_time:5.2f}x floor   (runs: "
              + ", ".join(f"{v:.3f}" for v in values) + ")")
