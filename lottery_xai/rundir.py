"""The run directory: the only module that knows where a step's files live.

Every step writes under ``{logs}/{experiment_name}/``; a later step finds everything through
:class:`RunDir` (opened from a config by :func:`open_run`), the one handle every step, report and
analysis function takes. Files are read and written through :mod:`lottery_xai.safe_io` (atomic
writes, checked reads, tables under a lock of their own); a step's folder, lock name and label come
from its declaration (:mod:`lottery_xai.steps`).

Safety of a run directory shared by several processes and reruns:

- Step lock: every step holds ``{root}/.locks/{step}.lock`` (``RunDir.lock``, an exclusive
  ``flock``) for its whole run; a second process on the same run and step stops with one line
  naming the holder. The kernel releases the lock when its holder dies, so a killed step never
  leaves a stale lock. Under torchrun only rank 0 takes it. On taking it, the step removes the
  temporaries (``.*.tmp``) a killed run of the same step left in its own folders
  (``RunDir.temporaries``): with the lock held nothing else writes there.
- Tables: every results table is updated read-modify-write under a short lock of its own
  (``safe_io.upsert_table``), so two runs that split the rounds never lose each other's rows.
- Settings: a run folder holds the run of one set of the settings that determine its checkpoints
  (``config.run_settings``). Step 1 records them, with their hash, in ``{root}/settings.json`` when it
  starts the run; every step compares them with its own before it writes (``RunDir.check_settings``,
  called by ``save_config``), and refuses other ones in one line naming the keys that differ, so a
  reused ``experiment_name`` never mixes two runs. (A run made before the record is compared with the
  ``config.pruning.yaml`` step 1 last ran with.)
- Fingerprints: a round's fingerprint is the start of the SHA-256 of the checkpoint file the
  later steps load (``test.checkpoint``). Every step records, in ``{its folder}/fingerprints.json``,
  the fingerprint of the checkpoint each unit of output (a round, a round's split, layer or
  method) was made from; a unit counts as complete only when its files exist and its recorded
  fingerprint is the current one, so outputs made before step 1 was redone are recomputed, and a
  step refuses inputs (activations, CAVs, maps) made from another checkpoint.
- Shards (the tasks of a cluster, :mod:`lottery_xai.launch`; see :mod:`lottery_xai.safe_io`): a task
  that runs beside others of its step names a shard (``safe_io.sharded``); it then takes the lock
  ``{step}.{shard}`` instead of the step's (and leaves the temporaries alone: other tasks write there),
  and records its fingerprints, like its tables, in its own file ``.shards/fingerprints.json/<shard>.json``.
  Reading the fingerprints sees every shard's; ``RunDir.merge_shards(step)`` folds them in.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import yaml

from . import steps
from .config import Config, defaults, dump_yaml, load_config, n_rounds, replace, run_settings
from .errors import UserError
from .safe_io import current_shard, file_lock, fingerprint, merge_shards, own_shard, read_json, shard_files, write_text

SHOWN_SETTINGS = 4  # differing settings named in the message; the rest are counted


def _name_part(text: str, limit: int = 60) -> str:
    """``text`` as part of a folder name: no spaces, brackets, quotes or '=' (``depths=[1, 1]`` -> ``depths1,1``);
    longer than ``limit``: its start and a short hash of the whole."""
    clean = re.sub(r"[^\w.,+-]", "", text.replace("=", ""))
    if len(clean) <= limit:
        return clean
    return clean[:limit - 9] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def experiment_name(cfg: Config) -> str:
    """The folder name of a run: built from the settings that change its results."""
    if cfg.experiment_name:
        return cfg.experiment_name
    p = cfg.pruning
    schedule = (
        "cr" + "-".join(str(r) for r in p.compression_rates)
        if p.schedule == "compression_rates"
        else f"p{cfg.prune_percent:g}"
    )
    rewind = p.rewind.replace(":", "")
    if p.rewind == "reinit" and p.reinit_masks_from != "init":
        rewind += "-masks-" + p.reinit_masks_from.replace(":", "")
    method = p.method
    if p.method == "random" and p.random_sparsity != "matched":  # issue 19: matched is the control's default
        method += "-" + p.random_sparsity
    parts = [cfg.dataset, cfg.model_arch.replace(":", "-"), method, p.scope, schedule, rewind, f"seed{cfg.seed}"]
    if cfg.model_args:  # timm:<name> with other arguments (depth, width, ...) is another network
        parts.insert(2, _name_part("args-" + "-".join(cfg.model_args)))
    if isinstance(cfg.pretrained, str):  # weights from a file: named by the file
        parts.insert(2, _name_part("pretrained-" + Path(cfg.pretrained).stem))
    if cfg.train.loss != "cross_entropy":  # a network trained for consistent explanations is another run
        t = cfg.train
        loss = f"{t.loss}{t.cgc_lambda:g}"
        if t.cgc_lambda > 0:  # the CGC settings that differ from the paper's
            loss += (f"-tau{t.cgc_temperature:g}" if t.cgc_temperature != 0.5 else "") + \
                ("-gradcam" if t.cgc_map != "grad_x_activation" else "") + (f"-{t.cgc_layer}" if t.cgc_layer else "")
        parts.insert(-1, loss)
    if cfg.train.unlabeled_fraction > 0:
        parts.insert(-1, f"unlabeled{cfg.train.unlabeled_fraction:g}")
    # issue 12: conv-only pruning and early stopping change results (absent at their defaults)
    if p.layers != "all":
        parts.insert(-1, f"{p.layers}only")
    if cfg.train.early_stopping:
        parts.insert(-1, f"es{cfg.train.early_stopping_gain:g}-{cfg.train.early_stopping_patience}")
    # issue 23: channel pruning and a conv rate of its own change results (absent at their defaults)
    if p.structure != "unstructured":
        parts.insert(-1, p.structure + ("-l2" if p.channel_norm != "l1" else "") +
                     ("-group" if p.channel_score != "filters" else ""))
    if p.prune_conv_rate != 1.0 and p.schedule == "iterative":
        parts.insert(-1, f"conv{p.prune_conv_rate:g}")
    return "_".join(parts)


_ABSENT = object()


def round_name(r: int) -> str:
    return f"round_{r:02d}"


def _temporary_glob(figure: str) -> str:
    """The temporaries of a figure ``plots/<name>.png`` (``{x}`` and ``round_XX`` in names: any text)."""
    name = re.sub(r"\{[^}]*\}", "*", figure.split("/", 1)[1].replace("round_XX", "*"))
    return f".{name}.*.tmp"


_HELD: set[tuple[str, int]] = set()  # (lock file, pid) of the step locks this process holds


def _lock_holder(fd: int) -> str:
    try:
        pid, host = os.pread(fd, 256, 0).decode().split()[:2]
    except (OSError, UnicodeDecodeError, ValueError):
        return "another process"
    return f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on {host}"


def is_main_process() -> bool:
    """Rank 0 under torchrun, or a plain process (the one that writes)."""
    return int(os.environ.get("RANK", "0")) == 0


def open_run(config: str | Path | None = None, overrides: list[str] | str | None = None) -> "RunDir":
    """The run of a config file with ``overrides`` (``--set`` strings, or one space-separated string), as a
    notebook opens it (None: the embedded default)."""
    if isinstance(overrides, str):
        overrides = overrides.split()
    return RunDir(load_config(config, overrides or []))


class RunDir:
    """Paths of one run. ``RunDir(cfg).checkpoint(3)`` and friends; nothing else builds paths."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.name = experiment_name(cfg)
        self.root = Path(cfg.logs) / self.name

    # -- whole run
    def config_file(self, step: str) -> Path:
        return self.root / f"config.{step}.yaml"

    def save_config(self, step: str) -> None:
        """Keep the config ``step`` runs with as ``config.<step>.yaml``, once the run's settings are checked."""
        self.check_settings()
        write_text(self.config_file(step), dump_yaml(self.cfg))

    # -- the settings that determine the run's checkpoints
    def settings_file(self) -> Path:
        return self.root / "settings.json"

    def _recorded_settings(self) -> dict | None:
        """The run settings the folder holds: its record, else those of the config step 1 last ran with (a run
        made before the record), else None (a new run)."""
        path = self.settings_file()
        if path.is_file():
            return read_json(path).get("settings", {})
        legacy = self.config_file("pruning")
        if not legacy.is_file():
            return None
        try:
            tree = yaml.safe_load(legacy.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        flat: dict = {}
        for key in run_settings(self.cfg):
            node = tree
            for part in key.split("."):
                node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
            if node is not _ABSENT:
                flat[key] = node
        return flat

    def check_settings(self, record: bool = False) -> None:
        """Refuse to write into a run folder that holds a run of other settings (``config.run_settings``): one
        line naming the keys that differ. ``record`` (step 1): write the record of a new run. A key the record
        lacks (added to the schema since) counts as its default; one only the record has is not compared."""
        current = json.loads(json.dumps(run_settings(self.cfg), sort_keys=True, default=str))
        recorded = self._recorded_settings()
        if recorded is not None:
            default = json.loads(json.dumps(defaults(), default=str))
            differ = [(k, recorded.get(k, default.get(k)), v) for k, v in current.items()
                      if recorded.get(k, default.get(k)) != v]
            if differ:
                shown = "; ".join(f"{k} {old!r} there, {new!r} now" for k, old, new in differ[:SHOWN_SETTINGS])
                more = f" and {len(differ) - SHOWN_SETTINGS} more" if len(differ) > SHOWN_SETTINGS else ""
                raise UserError(f"run folder '{self.root}' holds a run made with other settings ({shown}{more}); "
                                "give this one its own experiment_name (or logs), use the settings of that run, "
                                "or delete the folder to start it again")
        if record and not self.settings_file().is_file():
            text = json.dumps(current, sort_keys=True)
            write_text(self.settings_file(), json.dumps({"hash": hashlib.sha256(text.encode()).hexdigest()[:16],
                                                         "settings": current}, indent=1, sort_keys=True) + "\n")

    def rounds(self) -> list[int]:
        return list(range(n_rounds(self.cfg)))

    def sibling(self, **changes) -> "RunDir":
        """The run with some settings changed, e.g. the reinit control beside a rewound run."""
        return RunDir(replace(self.cfg, **changes))

    # -- step 1: pruning
    @property
    def pruning_dir(self) -> Path:
        return self.root / "pruning"

    def init_state(self) -> Path:
        return self.pruning_dir / "init.pt"

    def rewind_state(self) -> Path:
        """Weights after K epochs/iterations of round 0 (late rewinding)."""
        return self.pruning_dir / "rewind.pt"

    def round_dir(self, r: int) -> Path:
        return self.pruning_dir / round_name(r)

    def checkpoint(self, r: int, which: str = "last") -> Path:
        """Round ``r``'s final weights (``last``), its best-validation ones (``best``) or those at the minimum
        validation loss (``early_stop``, written when ``test.checkpoint`` is early_stop)."""
        return self.round_dir(r) / {"last": "checkpoint.pt", "early_stop": "early_stop.pt"}.get(which, "best.pt")

    def resume_state(self, r: int) -> Path:
        """Everything needed to continue round ``r`` after its last finished epoch (deleted once the round is complete)."""
        return self.round_dir(r) / "resume.pt"

    def round_log(self, r: int) -> Path:
        return self.round_dir(r) / "epochs.csv"

    def round_validation(self, r: int) -> Path:
        """Every validation point of round ``r`` (epoch ends and every ``train.eval_every`` iterations)."""
        return self.round_dir(r) / "validation.csv"

    def pruning_summary(self) -> Path:
        return self.pruning_dir / "summary.csv"

    def early_stopping(self) -> Path:
        """Per round: the iteration of minimum validation loss, its loss and accuracy (the LTH paper's Figure 3)."""
        return self.pruning_dir / "early_stopping.csv"

    def finished_rounds(self) -> list[int]:
        return [r for r in self.rounds() if self.checkpoint(r).is_file()]

    # -- step 2: test
    def test_metrics(self) -> Path:
        return self.root / "test" / "metrics.csv"

    def test_per_class(self) -> Path:
        return self.root / "test" / "per_class.csv"

    # -- step 3: activations
    def activations_dir(self, r: int) -> Path:
        return self.root / "activations" / round_name(r)

    def activation_file(self, r: int, split: str, layer: str) -> Path:
        return self.activations_dir(r) / f"{split}_{layer}.npy"

    def activation_meta(self, r: int, split: str, what: str) -> Path:
        """``what`` in labels, concepts, ids."""
        return self.activations_dir(r) / f"{split}_{what}.npy"

    # -- step 4: CAVs
    def cav_file(self, r: int, layer: str) -> Path:
        return self.root / "cavs" / round_name(r) / f"{layer}.npz"

    def cav_accuracy(self) -> Path:
        return self.root / "cavs" / "cav_accuracy.csv"

    # -- step 5: TCAV
    def tcav_scores(self) -> Path:
        return self.root / "tcav" / "tcav_scores.csv"

    # -- step 6: heatmaps
    def heatmap_file(self, r: int, method: str) -> Path:
        return self.root / "heatmaps" / round_name(r) / f"{method}.npz"

    def heatmap_images(self) -> Path:
        """The ids of the images explained at every round (fixed once, reused)."""
        return self.root / "heatmaps" / "images.npz"

    # -- step 7: metrics
    def explanation_metrics(self) -> Path:
        return self.root / "metrics" / "explanations.csv"

    # -- ROAR (main_roar.py)
    def roar_data(self, split: str, what: str) -> Path:
        """Eval-transformed ``images``, ``labels`` of a split, and the train ``fill`` (per-channel mean); shared by rounds."""
        return self.root / "roar" / "data" / f"{split}_{what}.npy"

    def roar_ranks(self, r: int, method: str, split: str) -> Path:
        """Pixel ranks of every image of a split (0 = most important), from round ``r``'s maps."""
        return self.root / "roar" / round_name(r) / f"ranks_{method}_{split}.npy"

    def roar_results(self) -> Path:
        return self.root / "roar" / "roar.csv"

    # -- human study (main_human_study.py): everything under human_study/
    @property
    def human_study_dir(self) -> Path:
        return self.root / "human_study"

    def human_study_stimulus(self, file_name: str) -> Path:
        """One stimulus image; its name does not reveal the round (the URL is what a worker sees)."""
        return self.human_study_dir / "stimuli" / file_name

    def human_study_stimuli_index(self) -> Path:
        """Every stimulus file with its image, class, round and kind (for the experimenter, not for upload)."""
        return self.human_study_dir / "stimuli.csv"

    def human_study_batch(self, experiment: int) -> Path:
        """The Mechanical Turk batch (input) file of an experiment: one row per task."""
        return self.human_study_dir / f"experiment{experiment}_batch.csv"

    def human_study_key(self, experiment: int) -> Path:
        """The answer key of an experiment: which round each task shows where, the true class."""
        return self.human_study_dir / f"experiment{experiment}_key.csv"

    def human_study_layout(self, experiment: int) -> Path:
        """The Mechanical Turk layout (HTML with ${...} placeholders) of an experiment."""
        return self.human_study_dir / f"experiment{experiment}_layout.html"

    def human_study_preview(self) -> Path:
        """The tasks as a worker sees them, with the local stimulus files."""
        return self.human_study_dir / "preview.html"

    def human_study_export_record(self) -> Path:
        """The settings and rounds an export was made with (a rerun with the same ones skips)."""
        return self.human_study_dir / "export.json"

    def human_study_simulated(self, experiment: int) -> Path:
        """Simulated Mechanical Turk results of an experiment (main_human_study.py simulate)."""
        return self.human_study_dir / "simulated" / f"experiment{experiment}_results.csv"

    def human_study_table(self, name: str) -> Path:
        """An analysis table (main_human_study.py analyse)."""
        return self.human_study_dir / "analysis" / f"{name}.csv"

    def human_study_figure(self, name: str) -> Path:
        return self.human_study_dir / "analysis" / f"{name}.png"

    # -- ACE (main_ace.py): concept discovery
    @property
    def ace_dir(self) -> Path:
        return self.root / "ace"

    def ace_patches(self) -> Path:
        """The patch index (round-independent): discovery images, their SLIC label maps, one row per patch."""
        return self.ace_dir / "patches.npz"

    def ace_patch_activations(self, r: int) -> Path:
        """Spatially averaged activations of every patch at round ``r`` (a streamed [n_patches, D] .npy)."""
        return self.ace_dir / round_name(r) / "patch_activations.npy"

    def ace_clusters(self, r: int) -> Path:
        """Round ``r``'s cluster assignments of every patch and its discovered concepts."""
        return self.ace_dir / round_name(r) / "clusters.npz"

    def ace_cavs(self, r: int) -> Path:
        """Round ``r``'s CAVs of the discovered concepts, random CAVs and random sets, per class."""
        return self.ace_dir / round_name(r) / "cavs.npz"

    def ace_concepts(self) -> Path:
        return self.ace_dir / "concepts.csv"

    def ace_survival(self) -> Path:
        """Which dense concepts survive, vanish, or which concepts appear, at every round."""
        return self.ace_dir / "survival.csv"

    # -- occlusion study (main_occlusion_study.py)
    @property
    def occlusion_dir(self) -> Path:
        return self.root / "occlusion"

    def occlusion_images(self) -> Path:
        """The images of the study (fixed once, every round uses them)."""
        return self.occlusion_dir / "images.npz"

    def occlusion_file(self, r: int) -> Path:
        """Round ``r``'s squares, probability changes, z-scores, heatmaps (counts) and masks."""
        return self.occlusion_dir / round_name(r) / "study.npz"

    def occlusion_table(self) -> Path:
        return self.occlusion_dir / "occlusion.csv"

    # -- sanity checks (main_sanity_checks.py): the model-parameter randomisation test
    @property
    def sanity_dir(self) -> Path:
        return self.root / "sanity"

    def sanity_maps(self, r: int, method: str) -> Path:
        """Round ``r``'s maps of ``method``: the original model's and each cascading-randomisation stage's."""
        return self.sanity_dir / round_name(r) / f"{method}.npz"

    def sanity_per_image(self) -> Path:
        """``round, weights_remaining, method, stage, block, measure, image_id, value``."""
        return self.sanity_dir / "per_image.csv"

    def sanity_summary(self) -> Path:
        """The mean (and std) over the images of each stage's similarity with the original maps."""
        return self.sanity_dir / "summary.csv"

    def sanity_verdicts(self) -> Path:
        """Per round and method: the similarity of the fully randomised model's maps, and 'changes' or not."""
        return self.sanity_dir / "verdicts.csv"

    def sanity_figure(self, name: str) -> Path:
        return self.sanity_dir / f"{name}.png"

    # -- report (main_report.py): one self-contained HTML file per run
    def report_file(self) -> Path:
        return self.root / "report" / "report.html"

    # -- step 7's statistics and the replicates over seeds (main_aggregate.py)
    def explanation_per_image(self) -> Path:
        """Step 7: every metric's value per image, ``round, method, metric, image_id, value``."""
        return self.root / "metrics" / "per_image.csv"

    def explanation_tests(self) -> Path:
        """Step 7: Wilcoxon signed-rank tests against the dense round and the random baseline, corrected."""
        return self.root / "metrics" / "tests.csv"

    def aggregate_name(self, seeds: list[int]) -> str:
        """The run name with its ``seed<k>`` replaced by ``seeds<a>-<b>-...`` (appended when it has none)."""
        tag = "seeds" + "-".join(str(s) for s in seeds)
        own = f"seed{self.cfg.seed}"
        return self.name[: -len(own)] + tag if self.name.endswith(own) else f"{self.name}_{tag}"

    def aggregate_dir(self, seeds: list[int]) -> Path:
        """The replicates' folder beside the seed runs: ``{logs}/{name with seedS -> seedsA-B-C}/``."""
        return Path(self.cfg.logs) / self.aggregate_name(seeds)

    def aggregate_file(self, seeds: list[int], name: str) -> Path:
        """``accuracy``, ``tcav``, ``metrics`` or ``null_bands`` (``.csv``) of the replicates."""
        return self.aggregate_dir(seeds) / f"{name}.csv"

    def aggregate_plot(self, seeds: list[int], name: str) -> Path:
        return self.aggregate_dir(seeds) / "plots" / f"{name}.png"

    def aggregate_record(self, seeds: list[int]) -> Path:
        """The fingerprints of the inputs the replicates' tables were made from (a rerun with the same skips)."""
        return self.aggregate_dir(seeds) / "inputs.json"

    def aggregates(self) -> list[Path]:
        """Existing replicate folders that include this run's seed (most seeds first, then newest)."""
        own = f"seed{self.cfg.seed}"
        stem = self.name[: -len(own)] if self.name.endswith(own) else self.name + "_"
        found = []
        for folder in Path(self.cfg.logs).glob(f"{stem}seeds*"):
            seeds = folder.name[len(stem) + len("seeds"):].split("-")
            if folder.is_dir() and all(s.isdigit() for s in seeds) and str(self.cfg.seed) in seeds \
                    and (folder / "null_bands.csv").is_file():
                found.append((len(seeds), (folder / "null_bands.csv").stat().st_mtime_ns, folder))
        return [folder for *_, folder in sorted(found, reverse=True)]
    # -- end of step 7's statistics and the replicates

    # -- step 8: plots
    def plot(self, name: str) -> Path:
        return self.root / "plots" / f"{name}.png"

    def require(self, path: Path, step: str) -> Path:
        """Fail with a clear message when a step runs before the step that writes ``path``."""
        if not path.exists():
            raise UserError(f"'{path}' is missing; run {step} first")
        return path

    # -- one process per run directory and step
    def lock_file(self, step: str) -> Path:
        return self.root / ".locks" / f"{step}.lock"

    @contextmanager
    def lock(self, step: str) -> Iterator[None]:
        """Hold ``step``'s lock for the block; a second process on this run and step gets a UserError.

        An exclusive non-blocking ``flock`` (released by the kernel when the holder dies: no stale lock);
        the file holds the holder's pid and host for the message. Re-entrant within a process; under
        torchrun only rank 0 takes it. Once held, the step's leftover temporaries are removed and its
        shards merged. A shard's task (``safe_io.sharded``) takes the lock of its shard, and does neither."""
        shard = current_shard()
        path = self.lock_file(step if shard is None else f"{step}.{shard}")
        key = (str(path), os.getpid())
        if not is_main_process() or key in _HELD or (step != "pruning" and not self.root.is_dir()):
            yield  # (a run that step 1 has not started has nothing to protect: the step stops on its inputs)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # close-on-exec: exec'd children do not inherit it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise UserError(f"run directory '{self.root}' is in use by step {step} ({holder}); "
                            "wait for it or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            _HELD.add(key)
            if shard is None:  # a shard's task runs beside others of the step: their temporaries and shards stay
                self.remove_temporaries(step)
                self.merge_shards(step)
            yield
        finally:
            _HELD.discard(key)
            os.close(fd)  # releases the lock

    def temporaries(self, step: str) -> list[Path]:
        """Temporary files (``.*.tmp``: atomic writes, activation and rank memory maps, CAV files) that
        only ``step`` makes: leftovers of a killed run of it, safe to remove while its lock is held. They
        lie in the step's folder, beside its config copy, and (for the figures other steps draw into
        ``plots/``) beside those figures; the folder ``plots/`` of step 8 holds the rest."""
        declared = steps.get(step)
        found = list(self.root.joinpath(declared.folder).rglob(".*.tmp")) if declared.folder else []
        found += list(self.root.glob(f".{self.config_file(step).name}.*.tmp"))
        if declared.folder == "plots":  # every temporary in plots/ but those of the figures other steps draw there
            theirs = {p for other in steps.all_steps() if other.key != step for p in self._figure_temporaries(other)}
            found = [p for p in found if p not in theirs]
        else:
            found += self._figure_temporaries(declared)
        return sorted(p for p in found if p.is_file())

    def _figure_temporaries(self, declared: steps.Step) -> list[Path]:
        plots = self.root / "plots"
        return [p for f in declared.figures if f.startswith("plots/") for p in plots.glob(_temporary_glob(f))]

    def remove_temporaries(self, step: str) -> list[Path]:
        found = self.temporaries(step)
        for p in found:
            p.unlink(missing_ok=True)
        return found

    # -- fingerprints: which checkpoint each output was made from
    def round_fingerprint(self, r: int) -> str:
        """The fingerprint of the checkpoint of round ``r`` that later steps load (``test.checkpoint``)."""
        return fingerprint(self.loaded_checkpoint(r))

    def loaded_checkpoint(self, r: int, which: str | None = None) -> Path:
        """The checkpoint of round ``r`` that later steps load (``which``, default ``test.checkpoint``); a
        UserError when step 1 has not written it."""
        which = which or self.cfg.test.checkpoint
        path = self.checkpoint(r, which)
        if which == "early_stop" and not path.is_file() and self.checkpoint(r).is_file():
            raise UserError(f"round {r} of '{self.root}' has no {path.name}: step 1 trained it while test.checkpoint "
                            "was not early_stop; redo step 1 with --force, or set test.checkpoint to best or last")
        return self.require(path, steps.label("pruning"))

    def fingerprints_file(self, step: str) -> Path:
        return self.root / steps.get(step).folder / "fingerprints.json"

    def fingerprints(self, step: str) -> dict:
        """``{unit: fingerprint}`` recorded by ``step`` (a unit: ``round_XX`` or ``round_XX/<split|layer|method>``)."""
        path = self.fingerprints_file(step)
        data = read_json(path) if path.is_file() else {}
        for shard in shard_files(path):  # the records of a cluster's tasks not merged yet
            data.update(read_json(shard))
        return data

    def shards(self, step: str) -> list[Path]:
        """The files of ``step`` that have shards (tables and its fingerprint record)."""
        folder = self.root / steps.get(step).folder if steps.get(step).folder else None
        if folder is None or not (folder / ".shards").is_dir():
            return []
        return sorted(folder / d.name for d in (folder / ".shards").iterdir() if d.is_dir())

    def merge_shards(self, step: str) -> list[Path]:
        """Fold the shards of ``step``'s tables and fingerprints into them (``safe_io.merge_shards``); returns
        the files merged. Run when no task of the step writes any more (under its lock, or after its tasks)."""
        return [path for path in self.shards(step) if merge_shards(path)]

    def record_fingerprint(self, step: str, unit: str, value: str) -> None:
        """Record that ``unit``'s outputs of ``step`` are now complete and made from ``value``'s checkpoint(s)
        (in a shard's task: in the shard's own record)."""
        path = self.fingerprints_file(step)
        if current_shard() is not None:
            own = own_shard(path)
            data = read_json(own) if own.is_file() else {}
            data[unit] = value
            write_text(own, json.dumps(dict(sorted(data.items())), indent=1) + "\n")
            return
        with file_lock(path):
            data = self.fingerprints(step)
            data[unit] = value
            write_text(path, json.dumps(dict(sorted(data.items())), indent=1) + "\n")

    def up_to_date(self, step: str, unit: str, value: str, log: Callable | None = None) -> bool:
        """Whether the existing outputs of ``unit`` were made from the current checkpoint(s) ``value``
        (call it only when their files exist); logs why they will be recomputed when not."""
        recorded = self.fingerprints(step).get(unit)
        if recorded == value:
            return True
        if log is not None:
            why = "step 1 was redone" if recorded else "no checkpoint fingerprint recorded with them"
            r = int(unit.split("/")[0].rsplit("_", 1)[1])
            log(f"round {r}: outputs stale ({why}), recomputing {step}/{unit}")
        return False

    def require_up_to_date(self, step: str, unit: str, value: str, rerun: str) -> None:
        """Refuse an input (``step``'s ``unit``) made from another checkpoint than the current one."""
        recorded = self.fingerprints(step).get(unit)
        if recorded != value:
            why = ("step 1 was redone after it was written" if recorded
                   else "no checkpoint fingerprint is recorded with it")
            raise UserError(f"{step} output {unit} in '{self.root}' is stale ({why}); rerun {rerun} first")
