"""The steps of a run, as values: one declaration per step, made where the step is defined.

A :class:`Step` says what a step is (its key, its number in the pipeline, its script, its folder in
the run directory, its label in messages), what it reads (the steps it needs, and those whose outputs
it uses when they exist), which rounds it works on when none are given and whether they can run
apart, and what it writes. Folders, lock names, labels, prerequisite messages ("run step 6
(main_heatmap_save.py) first"), ``bash_script/run_all.sh``'s order, the report's parts, the import
contract's list of compute steps and a cluster launcher all read these declarations, so a step is
spelled once.

A step is registered where it is defined, as timm registers a model beside its builder: the step's
entry function carries the :func:`step` decorator, which declares it and runs every call under the
step's lock (``RunDir.lock(key)``)::

    @step("sanity", script="main_sanity_checks.py", title="sanity checks: ...", folder="sanity",
          needs=("pruning", "heatmaps"), rounds="config:sanity.rounds", per_round=True,
          writes=("sanity/round_XX/{method}.npz", "sanity/verdicts.csv", ...), figures=("sanity/sanity_checks.png", ...))
    def sanity_step(run, device, rounds=None, force=False, log=print): ...

The entry takes the run (``rundir.RunDir``) first, then any of ``device``, ``rounds``, ``force`` and
``log`` and the step's own options (``arguments``): the command line (:func:`lottery_xai.cli.run_step`)
accepts ``--config``, ``--set``, ``--rounds``, ``--device`` and ``--force`` for every step and passes on
what the entry takes (the rounds: ``--rounds``, else the step's default), plus the step's own options. A
step that computes never draws; the figures drawn after it (``figures``) come from a drawing registered
for its key in the report layer (:func:`draws`), which the command line runs after the step and step 8
runs again.

The declarations live in the pipeline and report layers, above this one: :func:`get` and
:func:`all_steps` import the modules of those packages by name the first time a declaration is asked
for (plugin discovery, as timm's ``create_model`` finds a model), so this module has no static import
of a layer above it and is complete whoever asks. ``python -m lottery_xai.steps`` prints the pipeline
(``bash_script/run_all.sh`` reads it); ``python -m lottery_xai.doc_reference steps`` the table of every
declaration.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import sys
from dataclasses import dataclass, field
from typing import Callable

from .config import configured_rounds, n_rounds
from .errors import UserError
from .names import unknown_name

# The packages whose modules declare steps and drawings, imported by name when a declaration is asked for.
DECLARING_PACKAGES = ("lottery_xai.pipeline", "lottery_xai.report")

# The rounds a step works on without --rounds: every round of the schedule, the rounds a config list
# names (config:<dotted key>, -1 = the sparsest), the ones the step chooses itself, or none (no rounds).
ROUND_POLICIES = ("all", "chosen", "none")
# The arguments every entry may take besides its own options (the command line fills them in).
COMMON_ARGUMENTS = ("device", "rounds", "force")


@dataclass(frozen=True)
class Step:
    """One step of a run (see the module docstring). Paths in ``writes`` and ``figures`` are relative to
    the run folder; ``round_XX`` stands for every round, ``{name}`` for a name from the config (a method,
    layer or split), ``*`` for several files; ``{logs}`` is the folder of every run."""

    key: str                      # lock, fingerprint and config-copy name, e.g. "heatmaps"
    title: str                    # what it does, one line
    script: str                   # the command users run, e.g. "main_heatmap_save.py"
    number: int | None = None     # its place in the numbered pipeline (None: an optional study or tool)
    folder: str = ""              # its folder under the run root ("": it writes none of its own)
    needs: tuple[str, ...] = ()   # steps whose outputs it reads (it stops, naming them, when they are missing)
    uses: tuple[str, ...] = ()    # steps whose outputs it reads when they exist (run it after them)
    rounds: str = "all"           # its rounds without --rounds: one of ROUND_POLICIES, or config:<key>
    per_round: bool = False       # its rounds are independent: one task per round (after its needs' rounds)
    needs_round_0: bool = False   # a round's task also reads round 0 (the dense round) of the steps it needs
    gather: bool = False          # each call rewrites whole-run tables from every round on disk: after the
    #                               per-round tasks, one call over all rounds (each then skipped) completes them
    across: str = ""              # "" = its own run; "seeds" / "losses": the sibling runs its options name
    writes: tuple[str, ...] = ()  # what it writes
    figures: tuple[str, ...] = ()  # what the drawing registered for it draws after it (step 8 draws them again)
    pipeline: bool = False        # run by bash_script/run_all.sh (in number order)
    controls: bool = False        # run_all.sh runs it for the reinit control too (--set pruning.rewind=reinit)
    draws: bool = False           # the step itself draws (its module may import the report layer)
    arguments: Callable | None = field(default=None, compare=False, repr=False)  # adds its own options
    entry: Callable | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """How messages name the step: ``step 6 (main_heatmap_save.py)``, or the script of a study."""
        return f"step {self.number} ({self.script})" if self.number is not None else self.script

    @property
    def module(self) -> str:
        """The module that defines the step (the import contract lists the compute ones)."""
        return self.entry.__module__ if self.entry is not None else ""

    @property
    def parameters(self) -> list[str]:
        """The entry's parameters after the run."""
        return list(inspect.signature(self.entry).parameters)[1:] if self.entry is not None else []

    def default_rounds(self, cfg) -> list[int] | None:
        """The rounds the step works on when the command line names none (None: the step chooses)."""
        if self.rounds == "all":
            return list(range(n_rounds(cfg)))
        if self.rounds.startswith("config:"):
            return configured_rounds(cfg, self.rounds.split(":", 1)[1])
        return None


@dataclass(frozen=True)
class Drawing:
    """The figures of a step, drawn from its files after it (report layer): ``draw(run, **options)``."""

    key: str
    draw: Callable
    plots: bool = True            # step 8 (main_plots.py) draws them too


_STEPS: dict[str, Step] = {}
_DRAWINGS: dict[str, Drawing] = {}


def register(declaration: Step) -> Step:
    """Add a declaration; a key, number or script declared twice, or an entry whose parameters do not
    match its round policy, is a programming error."""
    old = _STEPS.get(declaration.key)
    if old is not None and old.module != declaration.module:
        raise ValueError(f"step '{declaration.key}' is declared twice ({old.module} and {declaration.module})")
    for other in _STEPS.values():
        if other.key == declaration.key:
            continue
        if declaration.number is not None and other.number == declaration.number:
            raise ValueError(f"steps '{other.key}' and '{declaration.key}' both have number {declaration.number}")
        if other.script == declaration.script:
            raise ValueError(f"steps '{other.key}' and '{declaration.key}' both run {declaration.script}")
    if not (declaration.rounds in ROUND_POLICIES or declaration.rounds.startswith("config:")):
        raise ValueError(f"step '{declaration.key}': rounds must be one of {ROUND_POLICIES} or config:<key>, "
                         f"got {declaration.rounds!r}")
    if ("rounds" in declaration.parameters) != (declaration.rounds != "none"):
        raise ValueError(f"step '{declaration.key}': its entry takes rounds exactly when its round policy is not none")
    _STEPS[declaration.key] = declaration
    return declaration


def step(key: str, *, lock: bool = True, **fields) -> Callable[[Callable], Callable]:
    """Decorator of a step's entry function ``fn(run, ...)``: declares the step (``Step(key, entry=fn,
    **fields)``) and, with ``lock``, runs every call under the run directory's lock for ``key``."""

    def declare(fn: Callable) -> Callable:
        if lock:
            @functools.wraps(fn)
            def entry(run, *args, **kwargs):
                with run.lock(key):
                    return fn(run, *args, **kwargs)
        else:
            entry = fn
        entry.step = register(Step(key, entry=entry, **fields))
        return entry

    return declare


def draws(key: str, *, plots: bool = True) -> Callable[[Callable], Callable]:
    """Decorator of a report-layer function ``fn(run, ...)`` that draws step ``key``'s figures from its
    files: the command line runs it after the step, and step 8 again unless ``plots`` is False."""

    def register_drawing(fn: Callable) -> Callable:
        if key in _DRAWINGS and _DRAWINGS[key].draw.__module__ != fn.__module__:
            raise ValueError(f"step '{key}' has two drawings ({_DRAWINGS[key].draw.__module__} and {fn.__module__})")
        _DRAWINGS[key] = Drawing(key, fn, plots)
        return fn

    return register_drawing


def _discover(key: str | None = None) -> None:
    """Import every module of the declaring packages (stopping after the package that declares ``key``)."""
    for name in DECLARING_PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{name}.{module.name}")
        if key is not None and key in _STEPS:
            return


def get(key: str) -> Step:
    """The step declared as ``key`` (the declaring modules are imported on first use)."""
    if key not in _STEPS:
        _discover(key)
    try:
        return _STEPS[key]
    except KeyError:
        raise unknown_name(f"unknown step '{key}'", key, list(_STEPS), otherwise="see python -m lottery_xai.steps all") \
            from None


def all_steps() -> list[Step]:
    """Every declared step: the numbered pipeline in order, then the studies and tools by script name."""
    _discover()
    return sorted(_STEPS.values(), key=lambda s: (s.number is None, s.number or 0, s.script))


def label(key: str) -> str:
    """``step 6 (main_heatmap_save.py)``: how messages name a step."""
    return get(key).label


def pipeline() -> list[Step]:
    """The steps ``bash_script/run_all.sh`` runs, in order."""
    return [s for s in all_steps() if s.pipeline]


def drawing(key: str) -> Drawing | None:
    """The drawing registered for step ``key``, or None."""
    if key not in _DRAWINGS:
        _discover()
    return _DRAWINGS.get(key)


def drawings() -> list[Drawing]:
    """Every registered drawing, in the order of the steps."""
    order = {s.key: i for i, s in enumerate(all_steps())}
    return sorted(_DRAWINGS.values(), key=lambda d: order.get(d.key, len(order)))


def accepted(fn: Callable, arguments: dict) -> dict:
    """The ``arguments`` that ``fn``'s signature takes (by name)."""
    parameters = inspect.signature(fn).parameters
    return {k: v for k, v in arguments.items() if k in parameters}


def call(declaration: Step, run, **arguments):
    """Call a step's entry with the arguments its signature takes (``device``, ``rounds``, ``force`` and its
    own options); the others are dropped, a missing required one is a UserError."""
    given = accepted(declaration.entry, arguments)
    parameters = inspect.signature(declaration.entry).parameters
    missing = [name for name, p in list(parameters.items())[1:]
               if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
               and name not in given]
    if missing:
        raise UserError(f"{declaration.label} needs {', '.join(missing)}")
    return declaration.entry(run, **given)


def _main(argv: list[str]) -> int:
    """``pipeline``: the scripts run_all.sh runs, in order, each followed by ``control`` when it is run for the
    reinit control too; ``all``: every step's script (``python -m lottery_xai.doc_reference steps``: the table)."""
    wanted = argv[0] if argv else "pipeline"
    if wanted == "pipeline":
        print("\n".join(s.script + (" control" if s.controls else "") for s in pipeline()))
    elif wanted == "all":
        print("\n".join(s.script for s in all_steps()))
    else:
        print("usage: python -m lottery_xai.steps [pipeline|all]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # run as a script, this file is __main__: the declarations register in lottery_xai.steps
    from lottery_xai import steps as _registry

    sys.exit(_registry._main(sys.argv[1:]))
