"""Step 1, the lottery-ticket round loop: train, prune, rewind, train again (algorithms.md section 1).

Round 0 trains the dense network. Round r >= 1 takes the masks of round r-1, prunes the
alive weights of round r-1's final weights, rewinds the survivors (or reinitialises them,
or keeps them for fine-tuning), and trains again with a fresh optimizer. Each round's
result depends only on files on disk and seeds derived from (seed, round), so a run killed
in the middle of a round and rerun gives the same checkpoints as an uninterrupted one.

Late rewinding (``pruning.rewind: epoch:K`` / ``iter:K``; Frankle, Dziugaite, Roy and Carbin 2020,
"Linear mode connectivity and the lottery ticket hypothesis"): round 0 trains the dense network
from 0 to T and saves its state at step K; every later round starts from that state (masked) and
trains from K to T, T - K iterations, its learning-rate schedule continuing at step K, with a
fresh optimizer (no momentum from round 0). That is what facebookresearch/open_lth does: its
``LotteryRunner._train_level`` loads the weights saved at ``train_start_step`` (the rewinding step)
and calls ``train.standard_train(..., start_step=train_start_step)``, whose ``train`` builds a new
optimizer, steps the learning-rate schedule ``start_step.iteration`` times before the first update,
skips the batches of the start epoch before the start iteration and stops at the end step. The
rewound state includes BatchNorm's running statistics at step K (open_lth loads the whole saved
model); with ``rewind: init`` they are the initial ones. Remaining differences: open_lth trains its
level 0 as 0..K then K..T with a fresh optimizer at K (ours trains round 0 in one piece), and each
of its rounds sees the dense run's data order from K on (ours draws a data order per round).
"""
from __future__ import annotations

import hashlib
import json
from typing import Callable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from .. import structured
from ..config import Config, to_dict
from ..data.loaders import HideLabels, WithOriginalView, make_loader
from ..errors import UserError
from ..models import architecture
from ..pruning import (Masks, apply_masks, full_masks, prune, random_matched, remaining_fractions,
                       reset_batchnorm_stats, target_fractions)
from ..rundir import RunDir
from ..safe_io import fingerprint, load_torch, save_csv, save_torch, upsert_table
from ..seeds import SeedPurpose, derived_seed
from ..steps import label, step
from ..training import Callback, at_epoch, at_iteration, get_loss, prepare_model, train_round
from ..training.distributed import Distributed, setup_distributed
from .loading import (check_state, foreign_checkpoint, full_structure, load_data, model_masks_template, new_model,
                      restructured)
from .maps import cam_layer, check_methods

SUMMARY_COLUMNS = ["round", "weights_remaining", "total_weights_remaining", "best_val_acc", "last_val_acc", "train_seconds"]
# the Lottery Ticket paper's Figure 3: the iteration of minimum validation loss, the loss and accuracy there
EARLY_STOP_COLUMNS = ["round", "weights_remaining", "early_stop_iteration", "early_stop_val_loss", "early_stop_val_acc",
                      "iterations"]
VALIDATION_COLUMNS = ["iteration", "epoch", "val_loss", "val_acc"]


def round_fractions(cfg: Config, round_index: int) -> dict[str, float]:
    """The fractions of their ORIGINAL size that round ``round_index`` keeps: of the linear (and BatchNorm)
    weights ``"linear"``, of the conv weights ``"conv"`` (``pruning.prune_conv_rate`` times the rate; the
    Lottery Ticket paper's Conv-2/4/6 prune conv layers at 10-15 %, fc layers at 20 %) and of the classifier
    ``"classifier"`` (``pruning.prune_fc_rate`` times the rate)."""
    p = cfg.pruning
    body, fc = target_fractions(round_index, p.schedule, cfg.prune_percent, p.prune_fc_rate, p.compression_rates)
    conv = body
    if p.schedule == "iterative" and p.prune_conv_rate != 1.0:
        conv, _ = target_fractions(round_index, p.schedule, cfg.prune_percent * p.prune_conv_rate, p.prune_fc_rate,
                                   p.compression_rates)
    return {"linear": body, "conv": conv, "classifier": fc}


def keep_fractions(cfg: Config, names: list[str], round_index: int, model: torch.nn.Module | None = None) -> dict[str, float]:
    """The kept fraction of every prunable tensor in ``names`` at round ``round_index`` (``model``, any network
    of the architecture, tells conv weights apart; without it every tensor but the classifier's is linear)."""
    fractions = round_fractions(cfg, round_index)
    classifier = architecture(cfg.model_arch).classifier + ".weight"
    convs = set() if model is None else {
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.modules.conv._ConvNd)}
    return {n: fractions["classifier"] if n == classifier else fractions["conv" if n in convs else "linear"]
            for n in names}


def group_fractions(cfg: Config, structure: structured.Structure, round_index: int) -> dict[str, float]:
    """``pruning.structure: channels``: the kept fraction of every channel group's ORIGINAL channels (conv
    groups at the conv rate, linear ones at the rate; the classifier's outputs are never a group)."""
    fractions = round_fractions(cfg, round_index)
    return {root: fractions["conv" if g["kind"] == "conv" else "linear"] for root, g in structure["groups"].items()}


def structure_digest(structure: structured.Structure) -> str:
    """A short SHA-256 digest of a channel structure (equal structures, equal digests)."""
    return hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()[:16]


def mask_digest(masks: Masks) -> str:
    """A short SHA-256 digest of the masks' names, shapes and bits (equal masks, equal digests)."""
    h = hashlib.sha256()
    for name in sorted(masks):
        m = masks[name].detach().cpu().bool().contiguous()
        h.update(f"{name}:{tuple(m.shape)};".encode())
        h.update(m.numpy().tobytes())
    return h.hexdigest()[:16]


class LotteryRun:
    """Runs or resumes the rounds of one experiment (one run directory)."""

    def __init__(self, run: RunDir, device: torch.device, *, force: bool = False,
                 dist: Distributed | None = None, callbacks: Callable[[int], Sequence[Callback]] | None = None,
                 log: Callable[[str], None] = print):
        """``callbacks(r)``: extra training callbacks for round ``r`` (tests interrupt a round with them)."""
        self.run = run
        cfg = self.cfg = run.cfg
        check_methods(cfg)
        self.device, self.force = device, force
        self.dist = dist or Distributed()
        self.round_callbacks = callbacks
        self.log = log if self.dist.main else (lambda *_: None)
        if self.dist.main:
            run.check_settings()  # a folder that holds a run of other settings is refused before any work
        self.datasets, self.info = load_data(cfg, ("train", "val"))
        self.num_classes = self.info.num_classes
        self.template = new_model(cfg, self.num_classes, cfg.seed)
        self.names = model_masks_template(cfg, self.template)
        # pruning.structure: channels: whole channels go, every round's network is rebuilt smaller (structured.py)
        self.channels = cfg.pruning.structure == "channels"
        self.structure0 = full_structure(cfg, self.template) if self.channels else None
        self.mask_run = self._mask_source()
        self.ticket_run = self._ticket_source()

    # ---------------------------------------------------------------- masks and rewinding
    def _mask_source(self) -> RunDir | None:
        return mask_source(self.run)

    def _ticket_source(self) -> RunDir | None:
        return ticket_source(self.run)

    def _ticket_counts(self, r: int) -> dict[str, int]:
        """Per-tensor alive counts of the ticket's round ``r`` (the random control's sparsity)."""
        path = self.ticket_run.checkpoint(r)
        if not path.is_file():
            raise UserError(
                f"the random-pruning control matches round {r}'s per-layer sparsity of the ticket '{self.ticket_run.root}', "
                f"which has no round {r}; run main_lth_pruning.py with pruning.method=magnitude (same settings otherwise) "
                "first (or set pruning.random_sparsity=uniform)")
        masks = self._masks(load_torch(path, step=f"{label('pruning')} with pruning.method=magnitude", keys=("masks",))["masks"], path)
        return {n: int(m.sum()) for n, m in masks.items()}

    def _mask_run_checkpoint(self, r: int):
        """(path, step label) of round ``r`` of the run the reinit control takes its masks (or structure) from."""
        path = self.mask_run.checkpoint(r)
        if not path.is_file():
            raise UserError(
                f"the reinit control takes round {r}'s masks from '{self.mask_run.root}', which has no round {r}; "
                f"run main_lth_pruning.py with pruning.rewind={self.cfg.pruning.reinit_masks_from} first "
                "(or set pruning.reinit_masks_from=self)")
        return path, f"main_lth_pruning.py --set pruning.rewind={self.cfg.pruning.reinit_masks_from}"

    def masks_for_round(self, r: int) -> Masks:
        if r == 0:
            return full_masks(self.template, self.names)
        if self.mask_run is not None:
            path, step = self._mask_run_checkpoint(r)
            return self._masks(load_torch(path, step=step, keys=("masks",))["masks"], path)
        counts = self._ticket_counts(r) if self.ticket_run is not None else None
        path = self.run.checkpoint(r - 1)
        prev = load_torch(path, step=label("pruning"), keys=("state_dict", "masks"))
        generator = torch.Generator().manual_seed(derived_seed(self.cfg.seed, SeedPurpose.PRUNE, r))
        if counts is not None:  # the LTH random-pruning control: the ticket's count per tensor
            previous = self._masks(prev["masks"], path)
            if any(counts[n] > int(previous[n].sum()) for n in counts):
                raise UserError(f"the ticket '{self.ticket_run.root}' keeps more weights at round {r} than '{path}' has "
                                "alive; redo this control's step 1 with --force")
            return random_matched(previous, counts, generator)
        return prune(self._state(prev["state_dict"], path), self._masks(prev["masks"], path),
                     keep_fractions(self.cfg, self.names, r), self.cfg.pruning.scope, self.cfg.pruning.method, generator)

    def structure_for_round(self, r: int) -> structured.Structure:
        """``pruning.structure: channels``: the channels round ``r`` keeps. Round 0 keeps all; round r >= 1
        ranks the channels alive in round r-1's final network (``pruning.channel_norm``/``channel_score``, or
        random scores for ``pruning.method: random``) and keeps the schedule's share of each group's
        original channels; the reinit control takes the structure of its mask run's round r."""
        if r == 0:
            return self.structure0
        if self.mask_run is not None:
            path, step = self._mask_run_checkpoint(r)
            return self._structure(load_torch(path, step=step, keys=("structure",))["structure"], path)
        path = self.run.checkpoint(r - 1)
        prev = load_torch(path, step=label("pruning"), keys=("state_dict", "structure"))
        previous = self._structure(prev["structure"], path)
        p = self.cfg.pruning
        if p.method == "random":
            generator = torch.Generator().manual_seed(derived_seed(self.cfg.seed, SeedPurpose.PRUNE, r))
            scores = structured.random_scores(previous, generator)
        else:
            model = self._structured_model(previous, prev["state_dict"], path)
            scores = structured.channel_scores(model, previous, norm=p.channel_norm, score=p.channel_score)
        return structured.next_structure(previous, scores, group_fractions(self.cfg, previous, r))

    def _structure(self, structure, path) -> structured.Structure:
        """The channel structure of a checkpoint, checked against this model's channel groups."""
        expected = {root: (g["kind"], g["size"]) for root, g in self.structure0["groups"].items()}
        try:
            structured.check_structure(structure)
            found = {root: (g["kind"], g["size"]) for root, g in structure["groups"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise foreign_checkpoint(path, f"no channel structure of this version in it ({exc})") from None
        if found != expected:
            raise foreign_checkpoint(path, "its channel groups are not this model's (another architecture, "
                                           "pruning.layers or img_size)")
        return structure

    def _structured_model(self, structure: structured.Structure, state: dict | None = None, path=None) -> torch.nn.Module:
        """A fresh network of ``structure`` (the kept channels of the full network's fresh weights), with the
        smaller network's ``state`` loaded when given."""
        model = restructured(new_model(self.cfg, self.num_classes, self.cfg.seed, pretrained=False), structure, path)
        if state is not None:
            model.load_state_dict(check_state(model, state, path))
        return model

    def _masks(self, masks, path) -> Masks:
        """The masks of a checkpoint, checked against this model's prunable tensors."""
        params = dict(self.template.named_parameters())
        if not isinstance(masks, dict) or sorted(masks) != sorted(self.names) or any(
                tuple(getattr(m, "shape", ())) != tuple(params[n].shape) for n, m in masks.items()):
            raise foreign_checkpoint(path, "its masks do not match this model's prunable tensors")
        return {n: m.bool() for n, m in masks.items()}

    def _state(self, state, path) -> dict:
        return check_state(self.template, state, path)

    def _load_state(self, path) -> dict:
        return self._state(load_torch(path, step=label("pruning"), keys=("state_dict",))["state_dict"], path)

    def late_rewind(self) -> tuple[str, int] | None:
        """``("epoch", K)`` or ``("iter", K)`` for late rewinding with K > 0, else None."""
        kind, _, k = self.cfg.pruning.rewind.partition(":")
        return (kind, int(k)) if kind in ("epoch", "iter") and int(k) > 0 else None

    def start_iteration(self, r: int, steps_per_epoch: int) -> int:
        """The step round ``r`` trains from: K (in iterations) for a late-rewound round, else 0."""
        late = self.late_rewind()
        if late is None:
            return 0
        kind, k = late
        k_iterations = k * steps_per_epoch if kind == "epoch" else k
        total = self.cfg.train.epochs * steps_per_epoch
        if k_iterations >= total:
            raise UserError(f"pruning.rewind={self.cfg.pruning.rewind} is at or after the end of training "
                            f"({self.cfg.train.epochs} epochs of {steps_per_epoch} iterations); choose a smaller K")
        return k_iterations if r > 0 else 0

    def starting_state(self, r: int) -> dict:
        rewind = self.cfg.pruning.rewind
        if r == 0:
            return self._load_state(self.run.init_state())
        if rewind == "init" or rewind in ("epoch:0", "iter:0"):
            return self._load_state(self.run.init_state())
        if rewind.startswith(("epoch:", "iter:")):
            return self._load_state(self.run.require(self.run.rewind_state(), "round 0 of step 1"))
        if rewind == "finetune":
            return self._load_state(self.run.checkpoint(r - 1))
        # reinit: fresh random weights, a different draw every round, the same mask
        return new_model(self.cfg, self.num_classes, derived_seed(self.cfg.seed, SeedPurpose.REINIT, r)).state_dict()

    def _rewind_snapshot(self) -> list[Callback]:
        """The callback that saves the late-rewinding point during round 0 (none for other rewinds)."""
        rewind = self.cfg.pruning.rewind
        kind, _, k = rewind.partition(":")
        if kind not in ("epoch", "iter") or int(k) == 0:
            return []
        k = int(k)
        path = self.run.rewind_state()

        def save(_count, model):
            if self.dist.main:
                save_torch({"state_dict": {n: v.detach().cpu() for n, v in model.state_dict().items()}, "rewind": rewind}, path)

        if kind == "epoch":
            if k >= self.cfg.train.epochs:
                raise UserError(f"pruning.rewind={rewind} needs train.epochs > {k}")
            return [at_epoch(k, save)]
        return [at_iteration(k, save)]

    # ---------------------------------------------------------------- the loop
    def ensure_init(self) -> None:
        if self.force or not self.run.init_state().is_file():
            if self.dist.main:
                save_torch({"state_dict": self.template.state_dict(), "seed": self.cfg.seed}, self.run.init_state())
        self._barrier()

    def _barrier(self):
        if self.dist.world > 1:
            torch.distributed.barrier()

    def check_same_on_ranks(self, r: int, masks: Masks | None, structure: structured.Structure | None = None) -> None:
        """Under torchrun every process computes the masks (or the channel structure) itself: stop if any
        process got others."""
        if self.dist.world <= 1:
            return
        digest = mask_digest(masks) if structure is None else structure_digest(structure)
        gathered = [None] * self.dist.world
        torch.distributed.all_gather_object(gathered, digest)
        if len(set(gathered)) > 1:
            raise RuntimeError(f"round {r}: the processes computed different masks ({gathered}); "
                               "check that every process reads the same run directory")

    def initial_model(self, r: int, masks: Masks) -> torch.nn.Module:
        """The model round ``r`` starts training from: rewound (or reinitialised) survivors, pruned ones at 0."""
        model = new_model(self.cfg, self.num_classes, self.cfg.seed)
        model.load_state_dict(self.starting_state(r))
        if r > 0 and self.cfg.pruning.rewind != "finetune" and self.late_rewind() is None:
            reset_batchnorm_stats(model)  # a late rewind restores step K's statistics with the weights (open_lth)
        apply_masks(model, masks)
        return model

    def initial_structured(self, r: int, structure: structured.Structure) -> torch.nn.Module:
        """``pruning.structure: channels``: the smaller network round ``r`` starts from, rebuilt to
        ``structure`` from the full network's starting weights (the initial ones, step K's, or a reinit
        draw: the weights of the kept channels), or, for ``rewind: finetune``, round r-1's final network
        with the channels it loses removed."""
        rewind = self.cfg.pruning.rewind
        if r > 0 and rewind == "finetune":
            path = self.run.checkpoint(r - 1)
            prev = load_torch(path, step=label("pruning"), keys=("state_dict", "structure"))
            previous = self._structure(prev["structure"], path)
            return structured.restructure(self._structured_model(previous, prev["state_dict"], path), previous, structure)
        model = new_model(self.cfg, self.num_classes, self.cfg.seed)
        model.load_state_dict(self.starting_state(r))
        restructured(model, structure)
        if r > 0 and self.late_rewind() is None:
            reset_batchnorm_stats(model)  # as initial_model: a late rewind restores step K's statistics
        return model

    def train_one(self, r: int) -> dict:
        cfg = self.cfg
        structure = None
        if self.channels:
            structure = self.structure_for_round(r)
            self.check_same_on_ranks(r, None, structure)
            model = self.initial_structured(r, structure)
            masks = full_masks(model, self.names)  # all alive: the later steps read masks of the smaller network
            enforced: Masks = {}  # nothing to hold at 0
        else:
            masks = self.masks_for_round(r)
            self.check_same_on_ranks(r, masks)
            model = self.initial_model(r, masks)
            enforced = masks
        model = prepare_model(model, self.device, cfg.train.channels_last)

        torch.manual_seed(derived_seed(cfg.seed, SeedPurpose.AUGMENT, r))  # augmentation draws
        loss = get_loss(cfg.train.loss, cfg.train, layer=cam_layer(cfg))
        train_set = self.datasets["train"]
        if getattr(loss, "needs_original_view", False) and cfg.data.augment:  # CGC: the eval view beside the training view
            train_set = WithOriginalView(train_set, load_data(cfg, ("train",), augment=False)[0]["train"])
        if cfg.train.unlabeled_fraction > 0:  # the same images are unlabelled in every round
            train_set = HideLabels(train_set, cfg.train.unlabeled_fraction, derived_seed(cfg.seed, SeedPurpose.UNLABELED))
        sampler = None
        if self.dist.world > 1:
            sampler = DistributedSampler(train_set, self.dist.world, self.dist.rank, shuffle=True,
                                         seed=derived_seed(cfg.seed, SeedPurpose.DATA_ORDER, r))
        train_loader = make_loader(train_set, cfg, self.device, train=True,
                                   seed=derived_seed(cfg.seed, SeedPurpose.DATA_ORDER, r), sampler=sampler)
        val_loader = make_loader(self.datasets["val"], cfg, self.device, train=False)
        start_iteration = self.start_iteration(r, len(train_loader))
        ddp = None
        if self.dist.world > 1:
            ddp = DistributedDataParallel(model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None)
        callbacks = self._rewind_snapshot() if r == 0 else []
        if self.round_callbacks is not None:
            callbacks += list(self.round_callbacks(r))
        settings = self._resume_settings(r)
        resume = self._load_resume(r, settings)
        # one file, replaced atomically at every epoch end (rank 0 writes)
        save_resume = (lambda state: save_torch({"settings": settings, **state}, self.run.resume_state(r))) \
            if self.dist.main else None
        result = train_round(model, train_loader, val_loader, cfg.train, enforced, self.device, self.num_classes,
                             loss=loss, callbacks=callbacks, desc=f"round {r}",
                             train_sampler=sampler, start_iteration=start_iteration,
                             ddp_model=ddp, resume=resume, save_resume=save_resume,
                             keep_early_stop=cfg.test.checkpoint == "early_stop")
        if self.channels:  # the smaller network's share of the full one's prunable weights and parameters
            remaining, total_remaining = structured.remaining_fractions(self.template, model, self.names)
        else:
            remaining, total_remaining = remaining_fractions(model, masks)
        stop = result.early_stop
        meta = {
            "round": r,
            "masks": {n: m.cpu() for n, m in masks.items()},
            "weights_remaining": remaining,
            "total_weights_remaining": total_remaining,
            "best_val_acc": result.best_val_acc,
            "last_val_acc": result.last_val_acc,
            "best_epoch": result.best_epoch,
            "epochs": len(result.history),  # epochs trained: fewer than train.epochs when train.early_stopping ends the round
            "max_epochs": cfg.train.epochs,
            "start_iteration": start_iteration,  # K of a late-rewound round (it trained from K to the end), else 0
            "train_seconds": result.seconds,
            # the Lottery Ticket paper's early-stopping iteration: minimum validation loss (train.eval_every)
            "early_stop_iteration": stop["iteration"],
            "early_stop_val_loss": stop["val_loss"],
            "early_stop_val_acc": stop["val_acc"],
            "iterations": result.iterations,
        }
        if structure is not None:
            meta["structure"] = structure
        if cfg.pruning.method == "random":
            meta["random_sparsity"] = cfg.pruning.random_sparsity
        if cfg.train.loss == "gc_mse" and cfg.train.cgc_lambda > 0:
            meta["gc_mse_reduction"] = "mean"  # the reference's F.mse_loss (a sum over pixels before issue 19)
        if self.dist.main:
            save_csv(self.run.round_log(r), pd.DataFrame(result.history))
            save_csv(self.run.round_validation(r), pd.DataFrame(result.evals, columns=VALIDATION_COLUMNS))
            save_torch({**meta, "state_dict": result.best_state, "which": "best"}, self.run.checkpoint(r, "best"))
            if result.early_stop_state is not None:
                save_torch({**meta, "state_dict": result.early_stop_state, "which": "early_stop"},
                           self.run.checkpoint(r, "early_stop"))
            # written last: its presence marks the round complete
            save_torch({**meta, "state_dict": result.last_state, "which": "last"}, self.run.checkpoint(r, "last"))
            self.run.resume_state(r).unlink(missing_ok=True)
        self._barrier()
        return meta

    # ---------------------------------------------------------------- resuming inside a round
    def _resume_settings(self, r: int) -> str:
        """What a resumable state of round ``r`` must have been made with to be continued: the
        settings that change training, the device kind, the number of processes, and the files
        the round starts from."""
        cfg = to_dict(self.cfg)
        keep = {k: cfg[k] for k in ("dataset", "seed", "img_size", "model_arch", "pretrained", "prune_iterations",
                                     "prune_percent", "data", "train", "pruning")}
        keep["device"], keep["world"] = self.device.type, self.dist.world
        keep["early_stop_state"] = self.cfg.test.checkpoint == "early_stop"  # kept in the resumable state too
        sources = [self.run.init_state()] + ([self.run.checkpoint(r - 1)] if r > 0 else [])
        if self.mask_run is not None and r > 0:
            sources.append(self.mask_run.checkpoint(r))
        if self.ticket_run is not None and r > 0:
            sources.append(self.ticket_run.checkpoint(r))
        if self.late_rewind() is not None and r > 0:
            sources.append(self.run.rewind_state())
        keep["sources"] = [fingerprint(p) if p.is_file() else "" for p in sources]
        return json.dumps(keep, sort_keys=True, default=str)

    def _load_resume(self, r: int, settings: str) -> dict | None:
        """The state saved at the last finished epoch of an interrupted round ``r``, or None (also when
        it was made with other settings or cannot be read: it is then ignored and overwritten)."""
        path = self.run.resume_state(r)
        if self.force or not path.is_file():
            return None
        try:
            state = load_torch(path, map_location="cpu", keys=("settings", "epoch"))
        except UserError as exc:
            self.log(f"round {r}: {exc}; starting the round from its first epoch")
            return None
        if state["settings"] != settings:
            self.log(f"round {r}: '{path}' was saved with other settings; starting the round from its first epoch")
            return None
        self.log(f"round {r}: resuming after epoch {state['epoch']} of {self.cfg.train.epochs}")
        return state

    def _check_protocol(self, r: int) -> None:
        """A finished round made before issue 19 by a protocol that has changed since under the same run name
        (uniform random pruning for the matched control, a late-rewound round on a fresh schedule, gc_mse's
        sum over pixels) is not reused."""
        tc = self.cfg.train
        checks = {"late rewinding on a fresh schedule": r > 0 and self.late_rewind() is not None,
                  "uniform random pruning": r > 0 and self.ticket_run is not None,
                  "gc_mse summed over pixels": tc.loss == "gc_mse" and tc.cgc_lambda > 0}
        if not any(checks.values()):
            return
        ckpt = load_torch(self.run.checkpoint(r), step=label("pruning"))
        found = {"late rewinding on a fresh schedule": "start_iteration" in ckpt,
                 "uniform random pruning": ckpt.get("random_sparsity") == "matched",
                 "gc_mse summed over pixels": ckpt.get("gc_mse_reduction") == "mean"}
        stale = [what for what, applies in checks.items() if applies and not found[what]]
        if stale:
            raise UserError(f"round {r} of '{self.run.root}' was made by an earlier version ({stale[0]}); "
                            "redo step 1 with --force")

    def summary_rows(self) -> tuple[list[dict], list[dict]]:
        """The rows of ``summary.csv`` and of ``early_stopping.csv`` of every finished round, from its
        checkpoint (the tables are rebuilt from the checkpoints: a step killed after a round's checkpoint
        and before its rows still writes them on the rerun)."""
        rows, early = [], []
        for r in self.run.finished_rounds():
            ckpt = load_torch(self.run.checkpoint(r), step=label("pruning"), keys=tuple(SUMMARY_COLUMNS[1:]))
            rows.append({"round": r, **{k: ckpt[k] for k in SUMMARY_COLUMNS[1:-1]}, "train_seconds": ckpt["train_seconds"]})
            if all(k in ckpt for k in EARLY_STOP_COLUMNS[1:]):  # rounds trained before the column existed lack it
                early.append({"round": r, **{k: ckpt[k] for k in EARLY_STOP_COLUMNS[1:]}})
        return rows, early

    def write_summary(self, rows: list[dict]) -> None:
        """Read-modify-write: rows of rounds another process finished meanwhile are kept."""
        if self.dist.main:
            upsert_table(self.run.pruning_summary(), rows, keys=["round"], sort=["round"], columns=SUMMARY_COLUMNS)

    def run_rounds(self, rounds: list[int]) -> pd.DataFrame:
        if self.dist.main:
            self.run.check_settings(record=True)  # a new run records its settings; another run's folder is refused
            self.run.save_config("pruning")
        self.ensure_init()
        found, early = self.summary_rows()
        rows = {row["round"]: row for row in found}
        if self.dist.main and early:
            upsert_table(self.run.early_stopping(), early, keys=["round"], sort=["round"], columns=EARLY_STOP_COLUMNS)
        for r in tqdm(rounds, desc="rounds", disable=not self.dist.main):
            if r in rows and not self.force:
                self._check_protocol(r)
                self.log(f"round {r}: complete, skipped (use --force to redo)")
                continue
            if r > 0 and not self.run.checkpoint(r - 1).is_file() and self.mask_run is None:
                raise UserError(f"round {r} needs round {r - 1}; run without --rounds or include round {r - 1}")
            meta = self.train_one(r)
            rows[r] = {"round": r, **{k: meta[k] for k in SUMMARY_COLUMNS[1:]}}
            self.write_summary(list(rows.values()))
            if self.dist.main:
                upsert_table(self.run.early_stopping(), [{k: meta[k] for k in EARLY_STOP_COLUMNS}], keys=["round"],
                             sort=["round"], columns=EARLY_STOP_COLUMNS)
            self.log(f"round {r}: {100 * meta['weights_remaining']:.1f}% of prunable weights remain, "
                     f"best val acc {100 * meta['best_val_acc']:.2f}%, last {100 * meta['last_val_acc']:.2f}%, "
                     f"minimum val loss at iteration {meta['early_stop_iteration']} of {meta['iterations']}, "
                     f"{meta['train_seconds']:.0f}s")
        self.write_summary(list(rows.values()))
        return pd.DataFrame(sorted(rows.values(), key=lambda row: row["round"]), columns=SUMMARY_COLUMNS)


def mask_source(run: RunDir) -> RunDir | None:
    """The run whose masks the reinit control takes (``pruning.reinit_masks_from``), or None."""
    p = run.cfg.pruning
    if p.rewind == "reinit" and p.reinit_masks_from != "self":
        return run.sibling(**{"pruning.rewind": p.reinit_masks_from, "experiment_name": ""})
    return None


def ticket_source(run: RunDir) -> RunDir | None:
    """The random-pruning control's ticket (``pruning.method: random``, ``random_sparsity: matched``):
    the magnitude run with the same settings otherwise, whose per-tensor alive counts it matches."""
    p = run.cfg.pruning
    if p.method != "random" or p.random_sparsity != "matched" or mask_source(run) is not None:
        return None
    if p.structure == "channels":  # every group keeps the schedule's share of its channels: matched by construction
        return None
    return run.sibling(**{"pruning.method": "magnitude", "pruning.random_sparsity": "matched", "experiment_name": ""})


def source_runs(run: RunDir) -> list[RunDir]:
    """The runs whose step 1 this run's step 1 reads (the launcher runs it after theirs)."""
    return [r for r in (mask_source(run), ticket_source(run)) if r is not None]


@step("pruning", number=1, script="main_lth_pruning.py", title="train the dense network, then prune it round by round "
      "(IMP with rewinding)", folder="pruning", pipeline=True, controls=True,
      writes=("pruning/init.pt", "pruning/rewind.pt", "pruning/round_XX/checkpoint.pt", "pruning/round_XX/best.pt",
              "pruning/round_XX/early_stop.pt", "pruning/round_XX/epochs.csv", "pruning/round_XX/validation.csv",
              "pruning/summary.csv", "pruning/early_stopping.csv", "settings.json", "config.pruning.yaml"))
def prune_step(run: RunDir, device: torch.device, rounds: list[int], force: bool = False,
               log: Callable[[str], None] = print) -> pd.DataFrame:
    """Step 1: the requested rounds, in order (round r starts from round r - 1's masks), under torchrun with
    every process of the group (rank 0 writes and holds the step's lock)."""
    dist = setup_distributed(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    lottery = LotteryRun(run, device, force=force, dist=dist, log=log)
    summary = lottery.run_rounds(rounds)
    if dist.main:
        log(summary.to_string(index=False))
        log(f"step 1 done: checkpoints and summary in {lottery.run.pruning_dir}")
    return summary
