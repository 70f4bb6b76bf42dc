"""The ROAR step: remove and retrain (Hooker et al. 2019), for the model of any pruning round.

For a round's model and an attribution method, every train/val/test image gets a map once; the
map is stored as pixel ranks (0 = most important; ties as ``metrics.ties``, the one policy of every
ranking: by default a random permutation per image seeded from (seed, round, split, method, image),
so a flat region is removed in random order rather than row by row, whatever the batch an image is
ranked in; ``raster``: row-major order, as the reference code's ``tf.nn.top_k``). For each percentage p, the
top-p % pixels of every image are replaced by the per-channel mean of the training images, the
same architecture is retrained from scratch on the modified training split (fixed seed per point,
the same seeds at every p and for every method), and its test accuracy on the modified test split
is recorded. The random-attribution baseline is always included; p = 0 does not depend on the
method (nor, for a dense retrain, on the round), so it is trained once per seed and reported for
every method and round. The faster accuracy falls with p compared with random, the more the
map ranks the pixels the task actually needs.

Images are the eval-transformed tensors (no random crops: a crop would move pixels away from
their ranks); training adds horizontal flips when ``data.augment`` is on (not for MNIST).
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations import StreamWriter
from ..attribution import attribute
from ..config import Config, replace, roar_epochs
from ..data import get_dataset
from ..errors import UserError
from ..metrics.faithfulness import pixel_rank
from ..models import architecture
from ..pruning import apply_masks, reset_batchnorm_stats
from ..rundir import RunDir, round_name
from ..safe_io import load_npy, load_torch, read_csv, save_npy, shard_files, unreadable, upsert_table
from ..seeds import SeedPurpose, derived_seed
from ..steps import label, step
from ..training.roar import RemovedBatches, rank_dtype, retrain
from .loading import SPLITS, check_state, load_data, load_round_model, new_model, restructured, start_step
from .maps import explained_targets, layer_for, method_options
from .metrics import method_code

COLUMNS = ["round", "weights_remaining", "retrain", "epochs", "method", "percent_removed", "seed", "test_acc",
           "best_val_acc", "n_test", "train_seconds"]
KEYS = ["round", "method", "percent_removed", "seed", "retrain", "epochs"]  # one ROAR point
SORT = ["round", "retrain", "epochs", "method", "percent_removed", "seed"]


# ---------------------------------------------------------------- the step

def _check(cfg: Config) -> list[str]:
    rc = cfg.roar
    bad = [p for p in rc.percents if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 100]
    if bad or not rc.percents:
        raise UserError(f"roar.percents must be numbers in [0, 100), got {rc.percents!r}")
    if not rc.methods:
        raise UserError("roar.methods is empty; name at least one attribution method, e.g. [gradcam]")
    return list(dict.fromkeys([*rc.methods, "random"]))


def prepare_images(run: RunDir, device, log=print) -> dict:
    """Eval-transformed images and labels of every split as .npy memory maps (written once), and the fill."""
    cfg = run.cfg
    missing = [s for s in SPLITS if not (run.roar_data(s, "images").is_file() and run.roar_data(s, "labels").is_file())]
    if missing:
        datasets, _ = load_data(cfg, missing, augment=False)
        for split in missing:
            loader = torch.utils.data.DataLoader(datasets[split], batch_size=cfg.data.eval_batch_size,
                                                 num_workers=cfg.data.num_workers)
            n = len(datasets[split])
            writer, labels, start = None, np.empty(n, dtype=np.int64), 0
            try:
                for batch in tqdm(loader, desc=f"roar images {split}", leave=False):
                    images = batch["image"].numpy().astype(np.float16)
                    if writer is None:
                        writer = StreamWriter(run.roar_data(split, "images"), n, images.shape[1:], np.float16)
                    writer.write(start, images)
                    labels[start:start + len(images)] = batch["label"].numpy()
                    start += len(images)
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
            save_npy(run.roar_data(split, "labels"), labels)
            writer.commit()
    data = {}
    for s in SPLITS:  # no --force rewrites these caches: an unreadable one is deleted and made again
        images = load_npy(run.roar_data(s, "images"), mmap=True, ndim=4)
        data[s] = {"images": images, "labels": load_npy(run.roar_data(s, "labels"), ndim=1, rows=len(images))}
    if not run.roar_data("train", "fill").is_file():
        images = data["train"]["images"]
        total = np.zeros(images.shape[1], dtype=np.float64)
        for start in range(0, len(images), 256):  # streamed: the train split never sits in memory at once
            total += images[start:start + 256].astype(np.float64).sum(axis=(0, 2, 3))
        fill = (total / (len(images) * images.shape[2] * images.shape[3])).astype(np.float32)
        save_npy(run.roar_data("train", "fill"), fill)
    channels = data["train"]["images"].shape[1]
    fill = load_npy(run.roar_data("train", "fill"), ndim=1, rows=channels)
    data["fill"] = torch.from_numpy(np.asarray(fill, dtype=np.float32))
    log("ROAR images: " + ", ".join(f"{s} {len(data[s]['labels'])}" for s in SPLITS))
    return data


def rank_stamp(run: RunDir, r: int) -> str:
    """What round ``r``'s ranks (and the points retrained on them) are made from: its checkpoint and the tie policy."""
    return f"{run.round_fingerprint(r)}+ties:{run.cfg.metrics.ties}-per-image"


def rank_seeds(cfg: Config, r: int, split_index: int, method: str, start: int, n: int) -> list[int] | None:
    """The tie-breaking seeds of images ``start..start+n-1`` of a split (None: ``metrics.ties`` raster)."""
    if cfg.metrics.ties == "raster":
        return None
    return [derived_seed(cfg.seed, SeedPurpose.ROAR_RANK_TIES, r, split_index, method_code(method), start + i)
            for i in range(n)]


def compute_ranks(run: RunDir, r: int, model, methods: list[str], data: dict, device, log=None) -> None:
    """Maps of every image of every split by the round's model, stored as ranks (once per round, method,
    checkpoint and tie policy: ranks made from another checkpoint of the round are recomputed)."""
    cfg = run.cfg
    fp = rank_stamp(run, r)
    for method in methods:
        for split_index, split in enumerate(SPLITS):
            path = run.roar_ranks(r, method, split)
            unit = f"{round_name(r)}/ranks_{method}_{split}"
            if path.is_file() and run.up_to_date("roar", unit, fp, log):
                continue
            images, labels = data[split]["images"], data[split]["labels"]
            n, _, h, w = images.shape
            writer = StreamWriter(path, n, (h * w,), rank_dtype(h * w))
            try:
                step = cfg.heatmaps.batch_size
                for start in tqdm(range(0, n, step), desc=f"roar ranks {method} {split}", leave=False):
                    chunk = torch.from_numpy(np.asarray(images[start:start + step], dtype=np.float32)).to(device)
                    targets = explained_targets(cfg, model, chunk, torch.from_numpy(labels[start:start + step]).to(device))
                    options = method_options(cfg, method, derived_seed(cfg.seed, SeedPurpose.ROAR_MAPS, r, split_index, start))
                    maps = attribute(method, model, chunk, targets, layer=layer_for(cfg, method), normalize="none", **options)
                    seeds = rank_seeds(cfg, r, split_index, method, start, len(chunk))
                    writer.write(start, pixel_rank(maps, seeds=seeds).cpu().numpy().astype(writer.mm.dtype))
            except BaseException:
                writer.abort()
                raise
            writer.commit()
            run.record_fingerprint("roar", unit, fp)


def _ranks(run: RunDir, r: int, method: str, split: str, images) -> np.ndarray:
    """The stored pixel ranks of a split, one row of H*W per image."""
    n, _, h, w = images.shape
    ranks = load_npy(run.roar_ranks(r, method, split), label("roar"), mmap=True, ndim=2, rows=n)
    if ranks.shape[1] != h * w:
        raise unreadable(run.roar_ranks(r, method, split), f"{ranks.shape[1]} ranks per image, expected {h * w}",
                         label("roar"))
    return ranks


def fresh_model(run: RunDir, ckpt: dict, num_classes: int, seed_index: int):
    """The model a ROAR point retrains: a dense fresh init per seed, or the round's ticket (mask, rewound init).
    A channel-pruned round (``pruning.structure: channels``) retrains its smaller network: the kept channels of
    the fresh init, or of the run's initial weights (the ticket)."""
    cfg = run.cfg
    structure = ckpt.get("structure")
    if cfg.roar.retrain == "dense":
        return restructured(new_model(cfg, num_classes, derived_seed(cfg.seed, SeedPurpose.ROAR_INIT, seed_index)),
                            structure), None
    model = new_model(cfg, num_classes, cfg.seed)
    path = run.require(run.init_state(), label("pruning"))
    model.load_state_dict(check_state(model, load_torch(path, step=label("pruning"), keys=("state_dict",))["state_dict"],
                                      path))
    restructured(model, structure, path)
    masks = {n: m.bool() for n, m in ckpt["masks"].items()}
    if ckpt.get("round", 0):
        reset_batchnorm_stats(model)
    apply_masks(model, masks)
    return model, masks


def cell_name(method: str, percent: float, seed: int) -> str:
    """One point of the ROAR grid as ``--cells`` names it: ``method:percent:seed`` (method ``*`` at 0 %: every method)."""
    return f"{method}:{float(percent):g}:{seed}"


def grid(cfg: Config) -> list[str]:
    """Every cell of the ROAR grid of a round (the random baseline included; 0 % once per seed, for every method)."""
    methods = _check(cfg)
    percents = sorted({float(p) for p in cfg.roar.percents})
    return [cell_name("*" if p == 0 else m, p, s) for s in range(cfg.roar.seeds) for p in percents
            for m in (["*"] if p == 0 else methods)]


def _cells_option(p) -> None:
    p.add_argument("--cells", default=None, help="retrain only these points of the grid, comma-separated "
                   "method:percent:seed (method * at 0 %%: every method); empty: only the images and ranks. The "
                   "launcher gives every cell its own task (python -m lottery_xai.launch)")


def _parse_cells(text: str | None) -> set[str] | None:
    if text is None:
        return None
    cells = set()
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            cells.add(cell_name(parts[0], float(parts[1]), int(parts[2])))
        except ValueError:
            raise UserError(f"--cells expects method:percent:seed items, got '{item}'") from None
    return cells


@step("roar", script="main_roar.py", title="ROAR (remove and retrain): the pixels a round's maps rank highest are "
      "replaced by the training mean and the architecture is retrained", folder="roar", needs=("pruning",),
      rounds="config:roar.rounds", per_round=True, arguments=_cells_option,
      writes=("roar/data/{split}_{images,labels,fill}.npy", "roar/round_XX/ranks_{method}_{split}.npy", "roar/roar.csv",
              "roar/fingerprints.json", "config.roar.yaml"),
      figures=("plots/roar.png",))
def roar_step(run: RunDir, device: torch.device, rounds: list[int], force: bool = False, log=print,
              cells: str | None = None) -> pd.DataFrame:
    """ROAR for every (round, method, percent, seed); resumes point by point from ``roar/roar.csv``. With
    ``cells`` (``method:percent:seed``, comma-separated; see :func:`grid`) only those points are retrained."""
    methods = _check(run.cfg)
    chosen = _parse_cells(cells)
    rounds = start_step(run, "roar", rounds, log)
    cfg = run.cfg
    data = prepare_images(run, device, log)
    table = read_csv(run.roar_results(), COLUMNS, missing_ok=True) if not force else pd.DataFrame(columns=COLUMNS)
    tc = replace(cfg, **{"train.epochs": roar_epochs(cfg)}).train
    flip = cfg.data.augment and get_dataset(cfg.dataset).flips_allowed
    percents = sorted({float(p) for p in cfg.roar.percents})
    started = time.perf_counter()
    for r in rounds:
        model, ckpt = load_round_model(run, r, None, device)
        num_classes = model.get_submodule(architecture(cfg.model_arch).classifier).out_features
        model.requires_grad_(False)
        if force:
            for method in methods:
                for split in SPLITS:
                    run.roar_ranks(r, method, split).unlink(missing_ok=True)
        fp = rank_stamp(run, r)
        if not run.up_to_date("roar", f"{round_name(r)}/results", fp):
            # the round's points were retrained from another checkpoint's ranks or masks: drop them first,
            # then record the checkpoint, so that every row of the round left in the table is current
            if run.roar_results().is_file() or shard_files(run.roar_results()):
                if (table["round"] == r).any():
                    log(f"round {r}: outputs stale (step 1 was redone), recomputing its ROAR points")
                table = upsert_table(run.roar_results(), [], keys=KEYS, sort=SORT, columns=COLUMNS, replace={"round": r})
            run.record_fingerprint("roar", f"{round_name(r)}/results", fp)
        compute_ranks(run, r, model, methods, data, device, log)
        del model
        ranks = {m: {s: _ranks(run, r, m, s, data[s]["images"]) for s in SPLITS} for m in methods}
        for seed_index in range(cfg.roar.seeds):
            for percent in percents:
                point = dict(r=r, percent=percent, seed=seed_index, retrain=cfg.roar.retrain, epochs=tc.epochs)
                todo = [m for m in methods if (chosen is None or cell_name("*" if percent == 0 else m, percent, seed_index)
                                               in chosen) and (force or not _matches(table, methods=[m], **point).any())]
                if not todo:
                    continue
                # p = 0 removes nothing, whatever the method: train once and report it for each method
                groups = [todo] if percent == 0 else [[m] for m in todo]
                for group in groups:
                    source = ranks[group[0]]
                    batches = {s: RemovedBatches(data[s]["images"], source[s], data[s]["labels"], percent, data["fill"],
                                                 cfg.data.batch_size if s == "train" else cfg.data.eval_batch_size,
                                                 shuffle=s == "train", flip=flip and s == "train",
                                                 seed=derived_seed(cfg.seed, SeedPurpose.ROAR_ORDER, seed_index)) for s in SPLITS}
                    scores = None if force else _dense_baseline(table, point)
                    if scores is None:
                        fresh, masks = fresh_model(run, ckpt, num_classes, seed_index)
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(derived_seed(cfg.seed, SeedPurpose.ROAR_TRAIN, seed_index))
                            scores = retrain(fresh, batches["train"], batches["val"], batches["test"], tc, device,
                                             num_classes, masks,
                                             desc=f"roar r{r} {'/'.join(group)} {percent:g}% seed {seed_index}")
                    rows = [{"round": r, "weights_remaining": ckpt["weights_remaining"], "retrain": cfg.roar.retrain,
                             "epochs": tc.epochs, "method": m, "percent_removed": percent, "seed": seed_index, **scores}
                            for m in group]
                    table = upsert_table(run.roar_results(), rows, keys=KEYS, sort=SORT, columns=COLUMNS)
                    log(f"ROAR round {r} {'/'.join(group)} {percent:g}% seed {seed_index}: test acc {scores['test_acc']:.4f}")
    log(roar_summary(table).to_string())
    log(f"ROAR done in {time.perf_counter() - started:.0f} s: {run.roar_results()}")
    return table


def _dense_baseline(table: pd.DataFrame, point: dict) -> dict | None:
    """The 0 % point of a dense retrain depends on no map and no round: reuse it from another round."""
    if point["percent"] != 0 or point["retrain"] != "dense" or table.empty:
        return None
    same = table[(table["percent_removed"].astype(float) == 0) & (table["seed"] == point["seed"])
                 & (table["retrain"] == "dense") & (table["epochs"] == point["epochs"])]
    if same.empty:
        return None
    row = same.iloc[0]
    return {k: row[k].item() if hasattr(row[k], "item") else row[k] for k in ("test_acc", "best_val_acc", "n_test", "train_seconds")}


def _matches(table: pd.DataFrame, *, r: int, methods: list[str], percent: float, seed: int, retrain: str,
             epochs: int) -> pd.Series:
    """Rows of one ROAR point (a rerun with other epochs or another retrain mode adds rows, it does not reuse these)."""
    if table.empty:
        return pd.Series(False, index=table.index)
    return (table["round"] == r) & table["method"].isin(methods) & (table["percent_removed"].astype(float) == percent) \
        & (table["seed"] == seed) & (table["retrain"] == retrain) & (table["epochs"] == epochs)



def roar_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean test accuracy (%) over seeds: rows (round, method), columns percent removed."""
    if table.empty:
        return table
    return (100 * table.pivot_table(index=["round", "retrain", "epochs", "method"], columns="percent_removed", values="test_acc",
                                    aggfunc="mean")).round(2)
