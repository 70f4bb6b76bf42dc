"""The launcher: the steps of one run, of sibling runs (sweeps, seeds, controls) and the ROAR grid, as
tasks run in this process (``launcher: local``) or as SLURM jobs through submitit (``launcher: slurm``).

    python -m lottery_xai.launch run  [CONFIG] [--set KEY=VALUE ...] [--launcher local|slurm] [--steps LIST]
                                      [--sweep KEY=V1,V2 ...] [--seeds 0,1,2] [--controls reinit,random|none]
                                      [--workers N] [--plan] [--throughput IMG/S] [--detach] [--folder DIR]
    python -m lottery_xai.launch plan ...           (the same options: print the plan, submit nothing)
    python -m lottery_xai.launch status FOLDER      (the state of a launch's tasks; non-zero when one failed)
    python -m lottery_xai.launch merge [CONFIG] [--set ...] [--steps LIST]   (fold a run's shards into its tables)

A **task** is (run, step, rounds), made from the step registry (:mod:`lottery_xai.steps`): a run's
steps are ordered by what they need and use; step 1 is one task (its rounds depend on each other;
under SLURM with ``slurm.gpus_per_task`` above 1 it runs torchrun inside its job, across
``slurm.nodes`` nodes); a step whose rounds are independent (``per_round``) becomes one task per round
(one job array; ``slurm.rounds_per_task`` contiguous rounds per task), after the tasks of the steps it
needs; a ``gather`` step then gets one call over all
rounds, and any other such step a merge task that folds its rounds' shards into its tables (see
:mod:`lottery_xai.safe_io`), after which the steps that read it run. ROAR (``roar``) is one task per
round (the images and ranks) and one per grid cell, method x percent x retraining seed (0 % once per
seed, for every method). Steps without rounds (step 8, the report) follow what they use.

**Runs**: the config with ``--set`` overrides; ``--sweep KEY=V1,V2`` (repeatable: the product) makes
sibling runs (seeds, CGC's lambda and tau, pruning rates ...); the reinit control of every run (steps
declared ``controls``, as ``run_all.sh``), and, with two seeds or more (``--seeds``, or a sweep of
``seed``), the random-pruning control of the first seed (steps 1, 2 and 6), then ``main_aggregate.py``
over the seeds and step 8 of every seed again (as ``run_seeds.sh``).

**Local** (the default) with one worker runs the tasks in this process in the order
``run_all.sh`` runs its steps: whole steps, every round, under the steps' locks: the outputs are those
of the scripts. With ``--workers N`` it runs the tasks on N worker processes that live as long as the
launch (Python and torch imported once per worker), each with the cores divided among them (sharded
like SLURM's), a per-round step as N tasks of contiguous rounds (rounds 0-4 on 2 workers: 0-2 and 3-4),
so that a step pays its setup (data, checkpoint) N times, not once per round. **SLURM** submits every task as a job (one array per group of tasks that share a step and their
dependencies, at most ``slurm.array_parallelism`` at once) with ``afterok`` dependencies and
``--kill-on-invalid-dep``; each task sets torch's threads to its ``SLURM_CPUS_PER_TASK``; a task that
is preempted or reaches its time limit is requeued by submitit's checkpoint hook and resumes from its
files (step 1's ``resume.pt``, the finished rounds and units).
Then it waits for the tasks (``--detach``: it does not; ``status FOLDER`` tells later) and reports
every failed task with its log; the exit status is non-zero when one failed.

**--plan** prints the tasks, their dependencies and resources and an estimate of the GPU hours
(:mod:`lottery_xai.costs`: image passes counted from the config, priced by ``--throughput`` or a
measured rate) before anything is submitted; it does not need the dataset when its split sizes are
known.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import costs, steps
from .cli import OneLineParser, execute, main_entry
from .config import load_config, parse_override
from .errors import UserError
from .rundir import RunDir, round_name
from .safe_io import sharded, write_text

ROOT = Path(__file__).resolve().parent.parent  # the repository: the steps' scripts (torchrun runs step 1's)
CPU_STEPS = {"cavs", "plots", "report", "aggregate", "compare_losses", "merge"}  # tasks that need no GPU
RANDOM_CONTROL_STEPS = ("pruning", "test", "heatmaps")  # run_seeds.sh's random-pruning control
THREADS_ENV = "LOTTERY_XAI_THREADS"


# ---------------------------------------------------------------- runs and tasks

@dataclass(frozen=True)
class RunSpec:
    """One run: a config with overrides; ``label`` names it in messages (its sweep values and control)."""

    label: str
    config: str | None
    overrides: tuple[str, ...]

    def cfg(self):
        return load_config(self.config, list(self.overrides))

    def dir(self) -> RunDir:
        return RunDir(self.cfg())


@dataclass
class Task:
    """One task: ``step`` of ``run`` on ``rounds`` (None: the step's own), with the step's own ``options``;
    ``shard``: it runs beside other tasks of its step and writes its own shard; ``merge``: the steps whose
    shards it folds in (a merge task, step ``merge``); ``after``: the tasks it waits for."""

    name: str
    run: RunSpec
    step: str
    rounds: tuple[int, ...] | None = None
    options: dict = field(default_factory=dict)
    shard: str | None = None
    merge: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    gpus: bool = True
    passes: float = 0.0            # image passes (the estimate)
    phase: str = ""                # "", "array", "gather", "merge": what the plan shows

    def __call__(self) -> str:
        """Run the task here (a SLURM job, a local worker or this process)."""
        run_task(self)
        return self.name

    def checkpoint(self):
        """submitit's hook on preemption or time-out: requeue the same task (it resumes from its files)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    def command(self) -> list[str]:
        """The task as a command line (``main_*.py ...``), for messages and torchrun."""
        declared = steps.get(self.step) if self.step != "merge" else None
        args = [declared.script if declared else "-m lottery_xai.launch merge"]
        if self.run.config:
            args += ["--config", self.run.config]
        for o in self.run.overrides:
            args += ["--set", o]
        if self.rounds is not None:
            args += ["--rounds", ",".join(map(str, self.rounds))]
        for key, value in self.options.items():
            args += [f"--{key}", ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
        if self.merge:
            args += ["--steps", ",".join(self.merge)]
        return args

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["run"] = dataclasses.asdict(self.run)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Task":
        data = dict(data)
        run = data.pop("run")
        data["run"] = RunSpec(run["label"], run["config"], tuple(run["overrides"]))
        for key in ("rounds", "merge", "after"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------- the plan

def split_values(text: str) -> list[str]:
    """``v1,v2,[a,b]``: comma-separated values, commas inside brackets kept."""
    values, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(ch, 0)
        current += ch
    values.append(current)
    return [v.strip() for v in values if v.strip()]


def parse_sweep(items: list[str]) -> list[tuple[str, list[str]]]:
    """``--sweep KEY=V1,V2`` items as (key, values); every key checked against the schema."""
    out = []
    for item in items:
        if "=" not in item:
            raise UserError(f"--sweep expects KEY=V1,V2,..., got '{item}'")
        key, text = item.split("=", 1)
        values = split_values(text)
        for v in values:
            parse_override(f"{key.strip()}={v}")  # an unknown key or a bad value is an error here
        if not values:
            raise UserError(f"--sweep {key} names no value")
        if key.strip() in [k for k, _ in out]:
            raise UserError(f"--sweep {key} is given twice; put every value in one --sweep {key}=V1,V2")
        out.append((key.strip(), values))
    return out


def select_steps(text: str | None) -> list[steps.Step]:
    """``--steps``: step keys, and ``pipeline`` for the steps of run_all.sh (the default)."""
    keys = []
    for item in split_values(text or "pipeline"):
        if item == "pipeline":
            keys += [s.key for s in steps.pipeline()]
        else:
            keys.append(steps.get(item).key)  # an unknown key is a UserError naming the nearest
    return step_order(set(keys))


def step_order(keys: set[str] | None = None) -> list[steps.Step]:
    """The steps ``keys`` (None: every step) ordered by what they need and use among them (a ``uses`` that
    would close a cycle is dropped; ties in the registry's order): the order the tasks of one run follow.
    The steps of run_all.sh come in its order."""
    registry = [s for s in steps.all_steps() if keys is None or s.key in keys]
    index = {s.key: i for i, s in enumerate(registry)}
    before = {s.key: set() for s in registry}

    def reaches(a: str, b: str) -> bool:  # does a (transitively) come after b?
        todo, seen = [a], set()
        while todo:
            k = todo.pop()
            if k == b:
                return True
            if k not in seen:
                seen.add(k)
                todo += list(before[k])
        return False

    for kind in ("needs", "uses"):
        for s in registry:
            for other in getattr(s, kind):
                if other in before and other != s.key and not reaches(other, s.key):
                    before[s.key].add(other)
    order, done = [], set()
    while len(order) < len(registry):
        ready = [s for s in registry if s.key not in done and before[s.key] <= done]
        first = min(ready, key=lambda s: index[s.key])
        order.append(first)
        done.add(first.key)
    return order


def dependencies(declared: steps.Step, chosen: list[steps.Step]) -> set[str]:
    """The steps among ``chosen`` (in :func:`step_order`'s order) that ``declared`` runs after: those it needs
    and uses that come before it."""
    order = [s.key for s in chosen]
    return {k for k in (*declared.needs, *declared.uses) if k in order and order.index(k) < order.index(declared.key)}


@dataclass
class Plan:
    launcher: str
    tasks: list[Task]
    runs: list[RunSpec]
    split: bool                      # per-round tasks (SLURM, local workers) or whole steps (local)
    workers: int = 0                 # local workers: each per-round step in as many chunks of rounds

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise UserError(f"no task '{name}' in this plan")


def make_runs(config: str | None, overrides: list[str], sweep: list[tuple[str, list[str]]]) -> list[RunSpec]:
    """The runs of the sweep (the product of its values; the config's own run without one)."""
    if not sweep:
        return [RunSpec("run", config, tuple(overrides))]
    keys = [k for k, _ in sweep]
    runs = []
    for values in itertools.product(*[v for _, v in sweep]):
        label = ",".join(f"{k}={v}" for k, v in zip(keys, values))
        runs.append(RunSpec(label, config, tuple([*overrides, *(f"{k}={v}" for k, v in zip(keys, values))])))
    return runs


def build_plan(config: str | None, overrides: list[str], *, launcher: str, step_list: str | None = None,
               sweep: list[tuple[str, list[str]]] = (), controls: str | None = None, split: bool | None = None,
               workers: int = 0) -> Plan:
    """The tasks of a launch (see the module docstring), in an order that respects their dependencies.
    ``workers`` (the local workers, with ``split``): each per-round step of a run becomes ``workers`` tasks of
    contiguous rounds (:func:`round_chunks`); otherwise ``slurm.rounds_per_task`` rounds make a task."""
    config = str(Path(config).resolve()) if config else None
    sweep = list(sweep)
    chosen = select_steps(step_list)
    split = launcher == "slurm" if split is None else split
    seed_values = next((v for k, v in sweep if k == "seed"), [])
    replicates = len(seed_values) >= 2
    wanted = set(split_values(controls)) if controls is not None else ({"reinit", "random"} if replicates else {"reinit"})
    wanted.discard("none")
    bad = wanted - {"reinit", "random"}
    if bad:
        raise UserError(f"--controls names {sorted(bad)}; allowed: reinit, random, none")
    if "random" in wanted and not replicates:
        wanted.discard("random")  # as run_seeds.sh: the random control goes with the replicates

    primary = make_runs(config, overrides, sweep)
    entries: list[tuple[RunSpec, list[steps.Step]]] = []
    groups: dict[tuple, list[RunSpec]] = {}
    for run in primary:
        entries.append((run, chosen))
        if "reinit" in wanted:
            entries.append((RunSpec(run.label + "+reinit", config, (*run.overrides, "pruning.rewind=reinit")),
                            [s for s in chosen if s.controls]))
        other = tuple(o for o in run.overrides if not o.startswith("seed="))
        groups.setdefault(other, []).append(run)
    if "random" in wanted:
        for runs in groups.values():
            first = runs[0]
            entries.append((RunSpec(first.label + "+random", config, (*first.overrides, "pruning.method=random")),
                            [s for s in chosen if s.key in RANDOM_CONTROL_STEPS]))
    entries = [(run, chosen_steps) for run, chosen_steps in entries if chosen_steps]

    tasks: list[Task] = []
    finals: dict[tuple[str, str], list[str]] = {}  # (run label, step) -> the tasks that complete it
    dirs = {run.label: run.dir() for run, _ in entries}
    by_name = {d.name: label for label, d in dirs.items()}
    order = {s.key: i for i, s in enumerate(chosen)}
    # the tasks of every run, step by step in order (run_all.sh's order: each step for every run)
    for key in order:
        for run, chosen_steps in entries:
            declared = next((s for s in chosen_steps if s.key == key), None)
            if declared is None:
                continue
            after = [t for k in sorted(dependencies(declared, chosen), key=order.get)
                     for t in finals.get((run.label, k), [])]
            if key == "pruning":  # a control's step 1 reads its source run's step 1 (masks, sparsity)
                from .pipeline.prune import source_runs

                for source in source_runs(dirs[run.label]):
                    after += finals.get((by_name.get(source.name, ""), "pruning"), [])
            finals[(run.label, key)] = _step_tasks(tasks, run, declared, dirs[run.label].cfg, tuple(after), split,
                                                   workers)
    # replicates: aggregate over the seeds, then step 8 and the report of every seed again (run_seeds.sh): both
    # ran before the aggregate existed, so the null bands and the report's seed-band column were missing
    if replicates and any(s.key == "test" for s in chosen):
        for runs in groups.values():
            first = runs[0]
            seeds = sorted(int(next(o for o in r.overrides if o.startswith("seed=")).split("=", 1)[1]) for r in runs)
            members = [r for r, _ in entries if r in runs or any(r.label.startswith(x.label + "+") for x in runs)]
            after = tuple(t for r in members for k in order for t in finals.get((r.label, k), []))
            name = f"{first.label}/aggregate"
            tasks.append(Task(name, first, "aggregate", options={"seeds": seeds}, after=after, gpus=False))
            again = [key for key in ("plots", "report") if any(s.key == key for s in chosen)]
            for r in runs:
                last = name
                for key in again:
                    tasks.append(Task(f"{r.label}/{key} (replicates)", r, key, after=(last,), gpus=False))
                    last = f"{r.label}/{key} (replicates)"
    _check_unique(tasks)
    return Plan(launcher, tasks, [run for run, _ in entries], split, workers if split else 0)


def _check_unique(tasks: list[Task]) -> None:
    seen = set()
    for t in tasks:
        if t.name in seen:
            raise UserError(f"two tasks are named '{t.name}': the sweep names a run twice")
        seen.add(t.name)


def round_chunks(rounds: list[int], *, workers: int = 0, per_task: int = 1) -> list[tuple[int, ...]]:
    """The rounds of a per-round step as the rounds of its tasks, contiguous and in order: ``workers`` chunks
    as even as possible, the longer first (rounds 0-4 on 2 workers: (0, 1, 2) and (3, 4)), or without
    workers chunks of ``per_task`` rounds (1: one task per round)."""
    rounds = list(rounds)
    if workers > 0:
        n = min(workers, len(rounds))
        size, extra = divmod(len(rounds), n)
        bounds = [0]
        for i in range(n):
            bounds.append(bounds[-1] + size + (1 if i < extra else 0))
        return [tuple(rounds[a:b]) for a, b in zip(bounds, bounds[1:])]
    per_task = max(1, per_task)
    return [tuple(rounds[i:i + per_task]) for i in range(0, len(rounds), per_task)]


def chunk_name(chunk: tuple[int, ...]) -> str:
    """A task's rounds as its name and shard: ``round_03``, or ``round_00-02`` for rounds 0 to 2 (zero-padded:
    the shards, merged in the order of their names, are merged in the order of their rounds)."""
    return round_name(chunk[0]) if len(chunk) == 1 else f"{round_name(chunk[0])}-{chunk[-1]:02d}"


def _step_tasks(tasks: list[Task], run: RunSpec, declared: steps.Step, cfg, after: tuple, split: bool,
                workers: int = 0) -> list[str]:
    """Add the tasks of one step of one run; returns the names of those that complete it."""
    key, base = declared.key, f"{run.label}/{declared.key}"
    gpus = key not in CPU_STEPS
    sizes = _sizes(cfg)
    rounds = declared.default_rounds(cfg)
    passes = costs.step_passes(cfg, key, sizes) if sizes else 0.0
    if not (split and declared.per_round and rounds):
        n = len(rounds) if rounds else 1
        extra = {}
        if key == "roar" and sizes:
            from .pipeline.roar import grid

            extra = {"passes": n * (passes + len(grid(cfg)) * costs.step_passes(cfg, key, sizes, cell=True))}
        tasks.append(Task(base, run, key, after=after, gpus=gpus, passes=extra.get("passes", n * passes)))
        return [base]
    array, task_of = [], {}
    # ROAR's rounds stay one task each: its cells' shards (round_00+gradcam+30+2) must sort after their round's
    for chunk in round_chunks(rounds, workers=workers, per_task=cfg.slurm.rounds_per_task) if key != "roar" \
            else [(r,) for r in rounds]:
        name = f"{base}/{chunk_name(chunk)}"
        options = {"cells": ""} if key == "roar" else {}
        tasks.append(Task(name, run, key, rounds=chunk, options=options, shard=chunk_name(chunk), after=after,
                          gpus=gpus, passes=passes * len(chunk), phase="array"))
        array.append(name)
        task_of.update({r: name for r in chunk})
    if key == "roar":  # the grid: one task per cell, after its round's ranks
        from .pipeline.roar import grid

        cell_passes = costs.step_passes(cfg, key, sizes, cell=True) if sizes else 0.0
        first_zero: dict[int, str] = {}
        for r in rounds:
            for cell in grid(cfg):
                method, percent, seed = cell.split(":")
                name = f"{base}/{round_name(r)}/{cell}"
                cell_after = [task_of[r]]
                if float(percent) == 0 and cfg.roar.retrain == "dense":  # trained once per seed, reused by every round
                    if int(seed) in first_zero:
                        cell_after.append(first_zero[int(seed)])
                    else:
                        first_zero[int(seed)] = name
                shard = f"{round_name(r)}+{method.replace('*', 'all')}+{percent}+{seed}"
                tasks.append(Task(name, run, key, rounds=(r,), options={"cells": cell}, shard=shard,
                                  after=tuple(cell_after), gpus=True, passes=cell_passes, phase="array"))
                array.append(name)
    if declared.gather:  # one call over every round: merges the shards (its lock), then rewrites the whole-run tables
        tasks.append(Task(base, run, key, after=tuple(array), gpus=gpus, passes=0.0, phase="gather"))
    else:
        tasks.append(Task(f"{base}/merge", run, "merge", merge=(key,), after=tuple(array), gpus=False, phase="merge"))
        return [f"{base}/merge"]
    return [base]


_SIZES: dict[tuple, dict | None] = {}


def _sizes(cfg) -> dict | None:
    """The dataset's split sizes for the estimate (None when unknown: the plan then shows no estimate)."""
    key = (cfg.dataset, cfg.json_root, cfg.data_root)
    if key not in _SIZES:
        try:
            _SIZES[key] = costs.split_sizes(cfg)
        except UserError:
            _SIZES[key] = None
    return _SIZES[key]


# ---------------------------------------------------------------- running a task

def allocation() -> int:
    """The cores this task may use: SLURM's ``SLURM_CPUS_PER_TASK``, the local launcher's share, or 0 (all)."""
    for name in ("SLURM_CPUS_PER_TASK", THREADS_ENV):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextlib.contextmanager
def task_threads(threads: int):
    """torch's threads and the thread variables its child processes read set to ``threads`` for the task,
    then put back as they were: the local launcher runs tasks inside the caller's process, whose later
    work (a test, a notebook) must not inherit one task's share of the cores."""
    if not threads:
        yield
        return
    import torch

    saved_env = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    saved_threads = torch.get_num_threads()
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_task(task: Task) -> None:
    """Run one task in this process: torch's threads set to the task's cores (restored afterwards), its
    shard named, the step called as its command line calls it (figures drawn by whole-step tasks and merges
    only)."""
    with task_threads(allocation()):
        _run_task(task)


def _run_task(task: Task) -> None:
    if task.step == "merge":
        merge_run(task.run, task.merge)
        return
    cfg = task.run.cfg()
    if task.step == "pruning" and cfg.launcher == "slurm" and (cfg.slurm.gpus_per_task > 1 or cfg.slurm.nodes > 1) \
            and "SLURM_JOB_ID" in os.environ:
        _torchrun(task, cfg)
        return
    with sharded(task.shard):
        execute(task.step, task.run.config, list(task.run.overrides), list(task.rounds) if task.rounds else None,
                draw=task.shard is None, **task.options)


def merge_run(run: RunSpec, step_keys: tuple[str, ...] | list[str], log=print) -> list[Path]:
    """Fold the shards of ``step_keys`` of ``run`` into their tables (under each step's lock), then draw the
    figures of those steps that have them."""
    rundir = run.dir()
    merged = []
    for key in step_keys:
        merged += rundir.shards(key)
        with rundir.lock(key):  # taking a step's lock merges its shards
            pass
        drawing = steps.drawing(key) if steps.get(key).figures else None
        if drawing is not None and rundir.root.is_dir():
            drawing.draw(rundir)
    log(f"merged the shards of {', '.join(step_keys)} in {rundir.root}")
    return merged


def _torchrun(task: Task, cfg) -> None:
    """Step 1 under torchrun inside its SLURM job: one process per GPU, across the job's nodes."""
    import submitit

    env = submitit.JobEnvironment()
    script = ROOT / steps.get("pruning").script
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={max(1, cfg.slurm.gpus_per_task)}"]
    if cfg.slurm.nodes > 1:
        command += [f"--nnodes={cfg.slurm.nodes}", f"--node_rank={env.node}", "--rdzv_backend=c10d",
                    f"--rdzv_endpoint={env.hostnames[0]}:29500", f"--rdzv_id={env.job_id}"]
    else:
        command += ["--standalone"]
    command += [str(script), *task.command()[1:]]
    process = subprocess.Popen(command)
    try:
        code = process.wait()
    finally:
        if process.poll() is None:  # preempted: stop the training processes too (they resume from resume.pt)
            process.terminate()
            process.wait(60)
    if code:
        raise RuntimeError(f"torchrun of step 1 exited with status {code}")


# ---------------------------------------------------------------- executors

def run_local(plan: Plan, log=print) -> int:
    """Every task in this process, in the plan's order (whole steps: the scripts' outputs)."""
    started = time.time()
    for task in plan.tasks:
        log(f"\n== {task.name}: {' '.join(task.command())}")
        run_task(task)
    log(f"\nlaunch finished in {time.time() - started:.0f} s ({len(plan.tasks)} tasks)")
    return 0


def worker_task(folder: str, name: str, logfile: str) -> int:
    """Run task ``name`` of the launch in ``folder`` inside a local worker, its output (Python's and the
    libraries' own, file descriptors 1 and 2) into ``logfile``; returns its exit status as ``python -m
    lottery_xai.launch task`` would give it: 0, 2 for a user error (one line), 1 for a crash (the traceback)."""
    import traceback

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(logfile, "w") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            try:
                main_entry(lambda: main(["task", folder, name]))()
                return 0
            except SystemExit as exc:
                return exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - a crash is the task's failure, reported with its log
                traceback.print_exc()
                return 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _worker_loop(parent: int, threads: int, tasks, results) -> None:
    """A local worker, dying with the launcher (`die_with_parent`) and owning ``threads`` cores: run the tasks
    the launcher queues (``(folder, name, logfile)``), reporting ``(pid, name, None)`` when one starts and
    ``(pid, name, exit status)`` when it ends, until it queues None; then leave with ``os._exit``: Python's
    own exit would wait for the helpers a library keeps alive (joblib's idle workers linger for 300 s), and
    the launch with it."""
    from .workers import die_with_parent

    die_with_parent(parent)
    os.environ[THREADS_ENV] = str(threads)
    while True:
        item = tasks.get()
        if item is None:
            break
        folder, name, logfile = item
        results.put((os.getpid(), name, None))
        results.put((os.getpid(), name, worker_task(folder, name, logfile)))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_workers(plan: Plan, folder: Path, workers: int, log=print) -> int:
    """The tasks on ``workers`` worker processes, each with its share of the cores, in dependency order; a
    failed task stops the ones after it. Returns the exit status.

    The workers live as long as the launch (started with ``spawn``), so Python, torch and the package are
    imported once per worker, not once per task (3.4-3.8 s of CPU each, measured): a task is a call in a
    warm worker, as ``--workers 1`` runs every task in the launcher's process. Each task's output goes to
    its own log under ``folder/logs``; a worker that dies (killed, out of memory) fails its task and is
    replaced."""
    import multiprocessing
    import queue

    save_manifest(plan, folder, {})
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    inbox, outbox = context.Queue(), context.Queue()

    def start_worker():
        process = context.Process(target=_worker_loop, args=(os.getpid(), threads, inbox, outbox))
        process.start()
        return process

    processes = [start_worker() for _ in range(workers)]
    done, failed, running, where = set(), {}, {}, {}  # running: task -> log; where: worker pid -> its task
    pending = list(plan.tasks)
    started = time.time()

    def finish(name: str, code) -> None:
        logfile = running.pop(name)
        if code == 0:
            done.add(name)
            log(f"done: {name}")
        else:
            failed[name] = logfile
            log(f"error: task {name} failed ({code if isinstance(code, str) else f'exit status {code}'}); "
                f"log: {logfile}")

    try:
        while pending or running:
            blocked = [t for t in pending if any(a in failed for a in t.after)]
            while blocked:  # a task after a failed one (or after one not run) is not run
                for t in blocked:
                    pending.remove(t)
                    failed[t.name] = None
                    log(f"not run: {t.name} (a task it waits for failed)")
                blocked = [t for t in pending if any(a in failed for a in t.after)]
            for t in [t for t in pending if all(a in done for a in t.after)][: max(0, workers - len(running))]:
                pending.remove(t)
                logfile = folder / "logs" / (t.name.replace("/", "__").replace(" ", "_").replace("*", "all") + ".log")
                logfile.parent.mkdir(parents=True, exist_ok=True)
                inbox.put((str(folder), t.name, str(logfile)))
                running[t.name] = logfile
                log(f"started: {t.name}")
            if not running:
                continue
            try:
                pid, name, code = outbox.get(timeout=1.0)
            except queue.Empty:
                for i, process in enumerate(processes):
                    if not process.is_alive():  # a worker died: its task failed; a new worker takes its place
                        name = where.pop(process.pid, None)
                        if name is not None:
                            finish(name, f"its worker died with exit code {process.exitcode}")
                        processes[i] = start_worker()
                continue
            if code is None:
                where[pid] = name
            else:
                where.pop(pid, None)
                finish(name, code)
    finally:
        for _ in processes:
            inbox.put(None)
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.terminate()
    log(f"launch finished in {time.time() - started:.0f} s: {len(done)} tasks done, "
        f"{sum(1 for v in failed.values() if v)} failed, {sum(1 for v in failed.values() if not v)} not run")
    return 1 if failed else 0


def _parameters(cfg, gpus: bool, light: bool) -> dict:
    """submitit's SLURM parameters of a task (``light``: a merge, a minute of one core)."""
    s = cfg.slurm
    params = {"time": min(s.time, 60) if light else s.time, "cpus_per_task": 1 if light else s.cpus_per_task,
              "array_parallelism": s.array_parallelism, "signal_delay_s": 120,
              "setup": [f"export OMP_NUM_THREADS={1 if light else s.cpus_per_task}", *s.setup]}
    partition = s.partition if gpus else (s.cpu_partition or s.partition)
    if partition:
        params["partition"] = partition
    if gpus and s.gpus_per_task:
        params["gpus_per_task"] = s.gpus_per_task
    if s.mem:
        params["mem"] = "2G" if light and s.mem else s.mem
    extra = {}
    for item in s.sbatch:
        k, _, v = str(item).lstrip("-").partition("=")
        extra[k.replace("-", "_")] = v if v else True
    params["additional_parameters"] = extra
    return params


def groups_of(plan: Plan) -> list[list[Task]]:
    """The tasks as submissions: consecutive tasks of one step and run with the same dependencies and
    resources form one job array."""
    out: list[list[Task]] = []
    for t in plan.tasks:
        last = out[-1][0] if out else None
        if last is not None and t.phase == "array" and last.phase == "array" and last.run == t.run \
                and last.step == t.step and last.after == t.after and last.gpus == t.gpus:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def submit_slurm(plan: Plan, folder: Path, log=print) -> dict[str, str]:
    """Submit every task (arrays grouped) with afterok dependencies; returns the job id of each task."""
    import submitit

    if shutil.which("sbatch") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        raise UserError("SLURM does not answer (sinfo failed); start it (bash bash_script/local_slurm.sh on one "
                        "machine) or use --launcher local")
    jobs: dict[str, str] = {}
    for group in groups_of(plan):
        first = group[0]
        cfg = first.run.cfg()
        executor = submitit.SlurmExecutor(folder=folder / "jobs", max_num_timeout=cfg.slurm.max_requeues)
        params = _parameters(cfg, first.gpus, light=first.step == "merge")
        if first.step == "pruning" and cfg.slurm.nodes > 1:
            params.update(nodes=cfg.slurm.nodes, ntasks_per_node=1)
        after = sorted({jobs[a] for t in group for a in t.after})
        if after:
            params["additional_parameters"] = {**params["additional_parameters"],
                                               "dependency": "afterok:" + ":".join(after), "kill_on_invalid_dep": "yes"}
        executor.update_parameters(job_name=f"lx-{first.step}", **params)
        if len(group) == 1:
            submitted = [executor.submit(first)]
        else:
            with executor.batch():
                submitted = [executor.submit(t) for t in group]
        for t, job in zip(group, submitted):
            jobs[t.name] = str(job.job_id)
        save_manifest(plan, folder, jobs)  # after every submission: a launch cut short still has its record
        log(f"submitted {len(group)} task{'s' if len(group) > 1 else ''} of {first.name if len(group) == 1 else first.name.rsplit('/', 1)[0]}"
            f" as job {submitted[0].job_id.split('_')[0]}" + (f" (after {len(after)} jobs)" if after else ""))
    return jobs


def save_manifest(plan: Plan, folder: Path, jobs: dict[str, str]) -> Path:
    """The launch's plan and job ids (``status`` and the local workers read it)."""
    path = folder / "launch.json"
    data = {"launcher": plan.launcher, "split": plan.split,
            "tasks": [{**t.to_json(), "job": jobs.get(t.name)} for t in plan.tasks]}
    write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def load_manifest(folder: Path) -> tuple[list[Task], dict[str, str], str]:
    path = Path(folder) / "launch.json"
    if not path.is_file():
        raise UserError(f"'{path}' not found: FOLDER must be the folder of a launch (it prints it)")
    data = json.loads(path.read_text())
    tasks = [Task.from_json(t) for t in data["tasks"]]
    return tasks, {t["name"]: t["job"] for t in data["tasks"] if t.get("job")}, data["launcher"]


# ---------------------------------------------------------------- watching SLURM jobs

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def _queue_states(ids: list[str]) -> dict[str, str]:
    """The state SLURM knows of each job id (array tasks as ``A_i``), finished ones while it keeps them."""
    arrays = sorted({i.split("_")[0] for i in ids})
    if not arrays:
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "-j", ",".join(arrays)],
                         capture_output=True, text=True)
    states = {}
    for line in out.stdout.splitlines():
        if "|" in line:
            job, state = line.split("|", 1)
            states[job.strip()] = state.strip()
    return states


def job_paths(folder: Path, job: str):
    from submitit.core.utils import JobPaths

    return JobPaths(folder / "jobs", job_id=job, task_id=0)


def task_states(folder: Path, jobs: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Each task's (state, detail): done, failed (the error's last line), cancelled, or SLURM's state."""
    import pickle

    queue = _queue_states(list(jobs.values()))
    out = {}
    for name, job in jobs.items():
        paths = job_paths(folder, job)
        state = queue.get(job, "")
        if state in ACTIVE:
            out[name] = (state.lower(), "")
        elif paths.result_pickle.is_file():
            try:
                with open(paths.result_pickle, "rb") as fh:
                    outcome, value = pickle.load(fh)
            except Exception:  # noqa: BLE001 - being written
                out[name] = ("running", "")
                continue
            if outcome == "success":
                out[name] = ("done", "")
            else:
                lines = [line for line in str(value).strip().splitlines() if line.strip()]
                out[name] = ("failed", lines[-1] if lines else "")
        elif state in ("CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "DEADLINE",
                       "BOOT_FAIL"):
            out[name] = ("cancelled" if state == "CANCELLED" else "failed", state)
        elif state == "COMPLETED":
            out[name] = ("running", "")  # the result file is on its way
        else:
            out[name] = ("gone", state)
    return out


def watch(folder: Path, jobs: dict[str, str], poll: float = 10.0, log=print) -> int:
    """Wait until every task has ended, logging each as it ends; report the failed ones with their logs.
    Returns the exit status (1 when a task failed or was cancelled)."""
    seen: dict[str, str] = {}
    gone: dict[str, int] = {}
    while True:
        states = task_states(folder, jobs)
        for name, (state, detail) in states.items():
            if state == "gone":  # neither queued nor ended with a result: wait a few polls before calling it lost
                gone[name] = gone.get(name, 0) + 1
                if gone[name] < 3:
                    states[name] = ("pending", "")
                    continue
            if state in ("done", "failed", "cancelled", "gone") and seen.get(name) != state:
                seen[name] = state
                paths = job_paths(folder, jobs[name])
                if state == "done":
                    log(f"done: {name} (job {jobs[name]})")
                elif state == "cancelled":
                    log(f"cancelled: {name} (job {jobs[name]}): a task it waits for failed")
                else:
                    log(f"error: task {name} failed (job {jobs[name]}): {detail or 'no result'}; log: {paths.stderr}")
        if all(s in ("done", "failed", "cancelled", "gone") for s, _ in states.values()):
            break
        time.sleep(poll)
    return report(folder, jobs, states, log)


def report(folder: Path, jobs: dict[str, str], states: dict, log=print) -> int:
    counts: dict[str, int] = {}
    for state, _ in states.values():
        counts[state] = counts.get(state, 0) + 1
    log("tasks: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    bad = [name for name, (s, _) in states.items() if s in ("failed", "gone")]
    for name in bad:
        paths = job_paths(folder, jobs[name])
        log(f"error: {name} failed: {states[name][1] or 'no result'}; log: {paths.stderr}")
    return 1 if bad or counts.get("cancelled") else 0


# ---------------------------------------------------------------- the plan, printed

def describe_plan(plan: Plan, throughput: float | None = None, log=print) -> float | None:
    """Print the plan: every submission (task or array), what it waits for, its resources and its estimated
    GPU hours; returns the total (None without an estimate)."""
    cfg = plan.runs[0].cfg() if plan.runs else None
    rate = costs.rate(cfg, throughput, "cpu" if cfg.device == "cpu" else "cuda") if cfg is not None else None
    groups = groups_of(plan) if plan.split else [[t] for t in plan.tasks]
    ids = {t.name: i + 1 for i, g in enumerate(groups) for t in g}
    n_jobs = sum(len(g) for g in groups)
    arrays = sum(1 for g in groups if len(g) > 1)
    kind = "SLURM" if plan.launcher == "slurm" else \
        (f"local, {plan.workers} workers, a step's rounds in chunks" if plan.split else "local, in this process")
    log(f"plan ({kind}): {len(plan.runs)} runs, {n_jobs} tasks in {len(groups)} submissions ({arrays} arrays)")
    for run in plan.runs:
        log(f"  run {run.label}: {run.dir().root}")
    log(f"{'#':>4}  {'tasks':>5}  {'after':<14} {'GPU':<3} {'est. GPU h':>10}  what")
    total, unknown = 0.0, False
    for i, group in enumerate(groups, 1):
        first = group[0]
        after = sorted({ids[a] for t in group for a in t.after})
        after_text = ",".join(map(str, after)) if len(after) <= 4 else f"{after[0]}..{after[-1]} ({len(after)})"
        gpu_seconds = sum(t.passes for t in group) * rate.seconds if rate else None
        if gpu_seconds is None and any(t.passes for t in group):
            unknown = True
        gpu_h = (gpu_seconds or 0.0) / 3600 if first.gpus else 0.0  # one GPU's hours (more GPUs: shorter, as many)
        total += gpu_h
        what = first.name if len(group) == 1 else f"{first.name.rsplit('/', 1)[0]} [{len(group)} tasks]"
        est = f"{gpu_h:10.2f}" if rate and first.gpus else f"{'-':>10}"
        log(f"{i:>4}  {len(group):>5}  {after_text or '-':<14} {'yes' if first.gpus else 'no':<3} {est}  {what}")
    if cfg is not None and _sizes(cfg) is None:
        log(f"no GPU-hour estimate: the split sizes of dataset '{cfg.dataset}' are unknown before it is prepared "
            f"('{Path(cfg.json_root) / 'splits.json'}' is missing)")
        return None
    if rate is None:
        log("no GPU-hour estimate: give --throughput (training images per second of one GPU) "
            f"or measure {cfg.model_arch if cfg else ''} (python -m lottery_xai.costs measure)")
        return None
    log(f"estimated GPU hours: {total:.1f} ({rate.source}; one pass {rate.seconds * 1e3:.3g} ms"
        + ("; some steps without split sizes are not counted" if unknown else "") + ")")
    return total


# ---------------------------------------------------------------- the command line

def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m lottery_xai.launch", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, text in (("run", "run the plan (locally, or submit it to SLURM and wait)"),
                       ("plan", "print the plan and its GPU-hour estimate; submit nothing")):
        s = sub.add_parser(name, help=text)
        s.add_argument("config", nargs="?", default=None, help="YAML config (default: the embedded default)")
        s.add_argument("--config", dest="config_option", default=None, help=argparse.SUPPRESS)
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key in every run (repeatable)")
        s.add_argument("--launcher", choices=["local", "slurm"], default=None, help="overrides the config's launcher")
        s.add_argument("--steps", default=None, help="step keys, comma-separated; 'pipeline' = run_all.sh's steps "
                       "(default), e.g. pipeline,sanity,roar")
        s.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                       help="sibling runs, one per value (repeatable: every combination)")
        s.add_argument("--seeds", default=None, help="replicates: the same as --sweep seed=0,1,2")
        s.add_argument("--controls", default=None, help="reinit, random or none (default: reinit; with seeds "
                       "reinit,random)")
        s.add_argument("--workers", type=int, default=1, help="local: tasks run at once, each step's rounds in N "
                       "chunks (default 1: whole steps in this process)")
        s.add_argument("--plan", action="store_true", help="print the plan and submit nothing")
        s.add_argument("--throughput", type=float, default=None, help="training images per second of one GPU, "
                       "for the estimate (default: the measured rate of the config's architecture)")
        s.add_argument("--detach", action="store_true", help="slurm: return after submitting (status FOLDER later)")
        s.add_argument("--folder", default=None, help="folder of the launch (default: slurm.folder, else "
                       "{logs}/launch/<date-time>)")
        s.add_argument("--poll", type=float, default=10.0, help=argparse.SUPPRESS)
    s = sub.add_parser("status", help="the state of the tasks of a launch")
    s.add_argument("folder")
    s = sub.add_parser("merge", help="fold the shards of a run's steps into its tables")
    s.add_argument("config", nargs="?", default=None)
    s.add_argument("--config", dest="config_option", default=None, help=argparse.SUPPRESS)
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--steps", default=None, help="step keys (default: every step with shards)")
    s = sub.add_parser("task", help=argparse.SUPPRESS)
    s.add_argument("folder")
    s.add_argument("name")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        tasks, jobs, launcher = load_manifest(Path(args.folder))
        if launcher != "slurm":
            raise UserError(f"'{args.folder}' is a local launch: its log says what ran")
        states = task_states(Path(args.folder), jobs)
        for t in tasks:
            state, detail = states.get(t.name, ("not submitted", ""))
            print(f"{state:<10} {jobs.get(t.name, '-'):<12} {t.name}" + (f": {detail}" if detail else ""))
        return report(Path(args.folder), jobs, states, log=lambda *_: None) if jobs else 0
    if args.command == "task":
        tasks, _, _ = load_manifest(Path(args.folder))
        task = next((t for t in tasks if t.name == args.name), None)
        if task is None:
            raise UserError(f"no task '{args.name}' in {args.folder}")
        task()
        return 0
    config = args.config or args.config_option
    if args.command == "merge":
        run = RunSpec("run", config, tuple(args.overrides))
        keys = [s.key for s in select_steps(args.steps)] if args.steps else \
            [s.key for s in steps.all_steps() if s.folder and run.dir().shards(s.key)]
        merge_run(run, keys)
        return 0
    sweep = list(args.sweep)
    if args.seeds:
        from .pipeline.aggregate import parse_seeds  # at least two seeds, as main_aggregate.py takes them

        sweep.append("seed=" + ",".join(map(str, parse_seeds(args.seeds))))
    sweep = parse_sweep(sweep)
    overrides = list(args.overrides) + ([f"launcher={args.launcher}"] if args.launcher else [])
    cfg = load_config(config, overrides)
    launcher = cfg.launcher
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    split = launcher == "slurm" or args.workers > 1
    plan = build_plan(config, overrides, launcher=launcher, step_list=args.steps, sweep=sweep,
                      controls=args.controls, split=split, workers=args.workers if launcher == "local" else 0)
    if args.plan or args.command == "plan":
        describe_plan(plan, args.throughput)
        return 0
    if launcher == "local" and args.workers == 1:
        return run_local(plan)
    folder = Path(args.folder or cfg.slurm.folder or Path(cfg.logs) / "launch" / time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"launch folder: {folder}")
    if launcher == "local":
        return run_workers(plan, folder, args.workers)
    jobs = submit_slurm(plan, folder)
    if args.detach:
        print(f"submitted {len(jobs)} tasks; follow them with: python -m lottery_xai.launch status {shlex.quote(str(folder))}")
        return 0
    try:
        return watch(folder, jobs, poll=args.poll)
    except KeyboardInterrupt:
        print(f"stopped watching; the jobs keep running: python -m lottery_xai.launch status {folder}", file=sys.stderr)
        return 130


def cli() -> None:
    """``python -m lottery_xai.launch``: a UserError is one line and exit status 2; a failed task status 1."""
    status = {"code": 0}

    def body():
        status["code"] = main()

    main_entry(body)()
    sys.exit(status["code"])


if __name__ == "__main__":
    from lottery_xai import launch as _launch  # the tasks pickle as lottery_xai.launch.Task, not __main__.Task

    _launch.cli()
