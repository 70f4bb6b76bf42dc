"""The human study of explanations (``main_human_study.py``): the stimuli and Mechanical Turk files
(``export``) and simulated answers in Mechanical Turk's result format (``simulate``).

Export. The rounds shown are the ones whose prunable weights remaining are closest to
``human_study.weights_remaining`` (default: dense, rate 2, rate 32), or the ones named by
``--rounds``. The images are test images that *every* chosen round classifies correctly,
``images_per_class`` per class, chosen with a seeded generator. For each image and round the maps
(``human_study.method``, Grad-CAM by default, of the true class) become two PNG files at
``display_size``: (a) the image with only the top ``top_fraction`` of the map's pixels kept, the
rest black (ties at the threshold broken by a seeded permutation), and (b) the jet colouring of the
squared map laid over the image with weight ``overlay_alpha``.

- Experiment 1 ("which explanation is more reasonable?"): one task per image and pair of chosen
  rounds, the two overlays side by side. For each pair, exactly half of the tasks (one more when
  the count is odd) show the denser round on the left, which half is a seeded draw.
- Experiment 2 ("which class is this?"): one task per image and round, the top-pixels image alone;
  the answer is one of the classes or "don't know".

Files (``RunDir.human_study_*``): the stimuli (names that do not reveal the round), a batch file per
experiment in Mechanical Turk's input format (one row per task, tasks in a seeded order, image URLs
built from ``url_prefix``), a separate answer key, and ``export.json``. The HTML pages (the Mechanical
Turk layouts and a preview of the tasks) are written by :mod:`lottery_xai.report.human_study`.
This module writes images with OpenCV and draws nothing else.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import steps
from ..attribution import get_method
from ..config import Config
from ..data import build_datasets, denormalize
from ..data.loaders import make_loader
from ..errors import UserError
from ..metrics import pixel_rank
from ..rundir import RunDir, round_name
from ..safe_io import read_csv, read_json, save_csv, write_bytes, write_text
from ..seeds import SeedPurpose, derived_seed
from ..stats.human import preference_probabilities, simulate_answers
from .loading import load_data, load_round_model
from .maps import configured_maps

STEP = "human_study"  # the step's key (declared with its commands in lottery_xai.report.human_study)


def export_label() -> str:
    """How messages name the export: ``main_human_study.py export``."""
    return f"{steps.label(STEP)} export"
# The study's draws are seeded derived_seed(seed, SeedPurpose.HUMAN_STUDY, draw).
IMAGE_CHOICE, SIDE_ORDER, TOP_TIES, TASK_ORDER, SIMULATION = 1, 2, 3, 4, 5

# The answers the layouts offer (the `choice` field) and the columns of the files.
SIDES = ("left", "right", "equal")
DONT_KNOW = "dont_know"
ANSWER_FIELD = "choice"
BATCH_COLUMNS = {1: ["item_id", "class_name", "left_url", "right_url"], 2: ["item_id", "image_url"]}
KEY_COLUMNS = {
    1: ["item_id", "image_id", "label", "class", "round_a", "round_b", "weights_a", "weights_b", "left_round",
        "right_round", "left_file", "right_file"],
    2: ["item_id", "image_id", "label", "class", "round", "weights_remaining", "file"],
}
STIMULI_COLUMNS = ["file", "kind", "image_id", "label", "class", "round", "weights_remaining"]


def _seed(cfg: Config, draw: int) -> int:
    return derived_seed(cfg.seed, SeedPurpose.HUMAN_STUDY, draw)


# ---------------------------------------------------------------- which rounds

def round_weights(run: RunDir) -> dict[int, float]:
    """Prunable weights remaining of every finished round (step 1's summary)."""
    step1 = steps.label("pruning")
    summary = read_csv(run.require(run.pruning_summary(), step1), ["round", "weights_remaining"], step=step1)
    done = set(run.finished_rounds())
    return {int(r): float(w) for r, w in zip(summary["round"], summary["weights_remaining"]) if int(r) in done}


def choose_rounds(run: RunDir, rounds: list[int] | None = None, log=print) -> list[int]:
    """The rounds shown: ``rounds`` when given, else the finished round closest (in weights remaining)
    to each value of ``human_study.weights_remaining``; sorted, at least two."""
    weights = round_weights(run)
    if rounds:
        missing = [r for r in rounds if r not in weights]
        if missing:
            raise UserError(f"rounds {missing} have no checkpoint in '{run.root}'; run {steps.label('pruning')} for them first")
        chosen = sorted(set(rounds))
    else:
        if not weights:
            raise UserError(f"no finished round in '{run.root}'; run {steps.label('pruning')} first")
        picks = [min(weights, key=lambda r: (abs(weights[r] - target), r)) for target in run.cfg.human_study.weights_remaining]
        chosen = sorted(set(picks))
        if len(chosen) < len(picks):
            log(f"human study: the targets {run.cfg.human_study.weights_remaining} pick rounds {picks}; "
                f"showing the distinct ones {chosen}")
    if len(chosen) < 2:
        raise UserError(f"the human study compares at least two rounds, and only round(s) {chosen} were chosen; "
                        "train more rounds, change human_study.weights_remaining or pass --rounds")
    return chosen


# ---------------------------------------------------------------- which images

def correct_everywhere(run: RunDir, rounds: list[int], device, log=print):
    """Indices of the test images that every round in ``rounds`` classifies correctly, the labels, the info."""
    cfg = run.cfg
    datasets, info = load_data(cfg, ("test",), augment=False)
    loader = make_loader(datasets["test"], cfg, device, train=False)
    labels = torch.cat([batch["label"] for batch in loader])
    correct = torch.ones(len(labels), dtype=torch.bool)
    for r in tqdm(rounds, desc="human study: classify test images"):
        model, _ = load_round_model(run, r, info.num_classes, device)
        with torch.no_grad():
            predicted = torch.cat([model(batch["image"].to(device)).argmax(1).cpu() for batch in loader])
        correct &= predicted == labels
        log(f"round {r}: {int((predicted == labels).sum())} of {len(labels)} test images correct")
    return torch.nonzero(correct).flatten().numpy(), labels.numpy(), datasets["test"], info


def choose_images(correct: np.ndarray, labels: np.ndarray, n_classes: int, per_class: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, dict[int, int]]:
    """``per_class`` of the ``correct`` indices of each class, a seeded choice (sorted); and the classes
    that had fewer (class -> count available)."""
    chosen, short = [], {}
    for c in range(n_classes):
        pool = correct[labels[correct] == c]
        if len(pool) < per_class:
            short[c] = len(pool)
        chosen.append(np.sort(rng.choice(pool, size=min(per_class, len(pool)), replace=False)))
    return np.concatenate(chosen).astype(np.int64), short


# ---------------------------------------------------------------- the stimulus images

def top_pixels_image(images: torch.Tensor, maps: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] with only the ``fraction`` highest-ranked pixels of each map kept,
    every other pixel black; exactly ``round(fraction * H * W)`` pixels kept (ties broken at random)."""
    n, _, h, w = images.shape
    keep = max(1, int(round(fraction * h * w)))
    ranks = pixel_rank(maps, generator=generator).reshape(n, 1, h, w)
    return images * (ranks < keep)


def jet_overlay(images: np.ndarray, maps: np.ndarray, alpha: float) -> np.ndarray:
    """uint8 RGB images [N, H, W, 3]: ``alpha`` * jet(map^2) + (1 - alpha) * image, maps in [0, 1]."""
    squared = np.clip(maps, 0.0, 1.0) ** 2
    levels = np.round(squared * 255).astype(np.uint8)
    jet = cv2.applyColorMap(levels.reshape(-1, levels.shape[-1]), cv2.COLORMAP_JET)  # BGR, one call for all maps
    jet = jet.reshape(*levels.shape, 3)[..., ::-1].astype(np.float32)
    blended = alpha * jet + (1.0 - alpha) * images.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _unit_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its maximum (an all-zero map stays 0)."""
    peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps.clamp(min=0) / peak).clamp(0, 1)


def stimulus_name(cfg: Config, image_id: int, r: int, kind: str) -> str:
    """A file name that does not tell a worker which round made the map."""
    token = hashlib.sha256(f"{cfg.seed}/{image_id}/{r}/{kind}/{cfg.human_study.method}".encode()).hexdigest()[:16]
    return f"{token}.png"


def _write_png(path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path}")
    write_bytes(path, data.tobytes())


def display_images(cfg: Config, indices: np.ndarray, size: int) -> torch.Tensor:
    """The chosen test images at the display size, [N, 3, S, S] in [0, 1] (decoded at that size when it
    is not the model's: sharper than an upscaled model input)."""
    datasets, info = build_datasets(cfg.dataset, cfg.data_root, cfg.json_root, size, splits=("test",),
                                    augment_train=False, seed=cfg.seed, cache=False)
    test = datasets["test"]
    return denormalize(torch.stack([test[int(i)]["image"] for i in indices]), info)


# ---------------------------------------------------------------- the tasks

def side_order(n_items: int, rng: np.random.Generator) -> np.ndarray:
    """For each of ``n_items`` tasks, whether the denser round is on the left: exactly ceil(n/2) True,
    in a seeded random order."""
    left = np.zeros(n_items, dtype=bool)
    left[: (n_items + 1) // 2] = True
    return rng.permutation(left)


def display_name(class_name: str) -> str:
    """A class name as a worker reads it (CUB's underscores as spaces)."""
    return str(class_name).replace("_", " ")


def _url(prefix: str, file_name: str) -> str:
    return (prefix + file_name) if prefix else f"stimuli/{file_name}"


def build_tasks(cfg: Config, chosen: pd.DataFrame, rounds: list[int], weights: dict[int, float],
                class_names: list[str]) -> dict[int, tuple[pd.DataFrame, pd.DataFrame]]:
    """(batch, key) of each experiment from the chosen images (``image_id``, ``label`` columns)."""
    h = cfg.human_study
    sides = np.random.default_rng(_seed(cfg, SIDE_ORDER))
    order = np.random.default_rng(_seed(cfg, TASK_ORDER))
    rows1 = []
    for a, b in itertools.combinations(rounds, 2):
        denser_left = side_order(len(chosen), sides)
        for (image_id, label), left_is_a in zip(chosen[["image_id", "label"]].itertuples(index=False), denser_left):
            left, right = (a, b) if left_is_a else (b, a)
            rows1.append({"image_id": int(image_id), "label": int(label), "class": class_names[int(label)],
                          "round_a": a, "round_b": b, "weights_a": weights[a], "weights_b": weights[b],
                          "left_round": left, "right_round": right,
                          "left_file": stimulus_name(cfg, int(image_id), left, "overlay"),
                          "right_file": stimulus_name(cfg, int(image_id), right, "overlay")})
    rows2 = [{"image_id": int(image_id), "label": int(label), "class": class_names[int(label)], "round": r,
              "weights_remaining": weights[r], "file": stimulus_name(cfg, int(image_id), r, "top")}
             for r in rounds for image_id, label in chosen[["image_id", "label"]].itertuples(index=False)]
    out = {}
    for experiment, rows in ((1, rows1), (2, rows2)):
        key = pd.DataFrame(rows).iloc[order.permutation(len(rows))].reset_index(drop=True)  # no round-by-round runs
        key.insert(0, "item_id", [f"e{experiment}-{i + 1:05d}" for i in range(len(key))])
        if experiment == 1:
            batch = pd.DataFrame({"item_id": key["item_id"], "class_name": key["class"].map(display_name), "left_url": [_url(h.url_prefix, f) for f in key["left_file"]],
                                  "right_url": [_url(h.url_prefix, f) for f in key["right_file"]]})
        else:
            batch = pd.DataFrame({"item_id": key["item_id"], "image_url": [_url(h.url_prefix, f) for f in key["file"]]})
        out[experiment] = (batch[BATCH_COLUMNS[experiment]], key[KEY_COLUMNS[experiment]])
    return out


# ---------------------------------------------------------------- the export step

def _settings(cfg: Config, rounds: list[int]) -> dict:
    return {"rounds": rounds, "human_study": asdict(cfg.human_study), "seed": cfg.seed,
            "heatmaps.layer": cfg.heatmaps.layer, "img_size": cfg.img_size, "dataset": cfg.dataset,
            "data_root": str(cfg.data_root)}


def export_complete(run: RunDir, rounds: list[int], log=print) -> bool:
    """Whether an export with these rounds and settings, from the current checkpoints, is on disk."""
    record = run.human_study_export_record()
    if not record.is_file():
        return False
    if read_json(record, step=export_label()).get("settings") != json.loads(json.dumps(_settings(run.cfg, rounds))):
        log("human study: settings changed since the last export; exporting again")
        return False
    if any(run.fingerprints(STEP).get(round_name(r)) != run.round_fingerprint(r) for r in rounds):
        log("human study: step 1 was redone since the last export; exporting again")
        return False
    files = [run.human_study_stimuli_index()] + [p(e) for e in (1, 2) for p in (run.human_study_batch, run.human_study_key)]
    if not all(p.is_file() for p in files):
        return False
    index = read_csv(run.human_study_stimuli_index(), STIMULI_COLUMNS, step=export_label())
    return all(run.human_study_stimulus(f).is_file() for f in index["file"])


def export_stimuli(run: RunDir, device: torch.device, rounds: list[int] | None = None,
                   force: bool = False, log=print) -> dict:
    """Write the stimuli, the batch files and the answer keys; returns {"rounds", "images", "tasks"}.
    A rerun with the same rounds, settings and checkpoints skips (``force`` redoes it)."""
    cfg, h = run.cfg, run.cfg.human_study
    get_method(h.method)
    rounds = choose_rounds(run, rounds, log)
    weights = round_weights(run)
    if not force and export_complete(run, rounds, log):
        log(f"human study: export of rounds {rounds} is complete in {run.human_study_dir}; nothing to do (--force redoes it)")
        key = read_csv(run.human_study_key(2), KEY_COLUMNS[2], step=export_label())
        return {"rounds": rounds, "images": key["image_id"].nunique(), "tasks": {e: len(read_csv(run.human_study_key(e)))
                                                                                 for e in (1, 2)}}
    run.save_config(STEP)
    correct, labels, test, info = correct_everywhere(run, rounds, device, log)
    indices, short = choose_images(correct, labels, info.num_classes, h.images_per_class,
                                   np.random.default_rng(_seed(cfg, IMAGE_CHOICE)))
    for c, n in short.items():
        log(f"human study: class '{info.class_names[c]}' has only {n} test images that every chosen round "
            f"classifies correctly (images_per_class {h.images_per_class})")
    if len(indices) == 0:
        raise UserError(f"no test image is classified correctly by every one of rounds {rounds}; "
                        "choose other rounds (--rounds or human_study.weights_remaining)")
    ids = np.asarray(test.ids)[indices] if hasattr(test, "ids") else np.array([int(test[int(i)]["id"]) for i in indices])
    chosen = pd.DataFrame({"image_id": ids.astype(np.int64), "label": labels[indices].astype(np.int64)})
    model_images = torch.stack([test[int(i)]["image"] for i in indices])
    size = h.display_size or cfg.img_size
    shown = display_images(cfg, indices, size)
    shown_uint8 = (shown * 255).round().byte().permute(0, 2, 3, 1).numpy()
    targets = torch.tensor(chosen["label"].to_numpy(), dtype=torch.int64)
    stimuli = []
    ties = torch.Generator().manual_seed(_seed(cfg, TOP_TIES))
    for r in tqdm(rounds, desc="human study: maps"):
        model, _ = load_round_model(run, r, info.num_classes, device)
        model.requires_grad_(False)
        maps = configured_maps(cfg, h.method, model, model_images.to(device), targets.to(device),
                               derived_seed(_seed(cfg, r), 0), normalize="none").float().cpu()
        maps = _unit_maps(F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0])
        top = (top_pixels_image(shown, maps, h.top_fraction, ties) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        overlay = jet_overlay(shown_uint8, maps.numpy(), h.overlay_alpha)
        for kind, pictures in (("overlay", overlay), ("top", top)):
            for (image_id, label), picture in zip(chosen.itertuples(index=False), pictures):
                name = stimulus_name(cfg, int(image_id), r, kind)
                _write_png(run.human_study_stimulus(name), picture)
                stimuli.append({"file": name, "kind": kind, "image_id": int(image_id), "label": int(label),
                                "class": info.class_names[int(label)], "round": r, "weights_remaining": weights[r]})
    tasks = build_tasks(cfg, chosen, rounds, weights, info.class_names)
    save_csv(run.human_study_stimuli_index(), pd.DataFrame(stimuli, columns=STIMULI_COLUMNS))
    for experiment, (batch, key) in tasks.items():
        save_csv(run.human_study_key(experiment), key)
        save_csv(run.human_study_batch(experiment), batch)
    for r in rounds:
        run.record_fingerprint(STEP, round_name(r), run.round_fingerprint(r))
    write_text(run.human_study_export_record(), json.dumps(
        {"settings": _settings(cfg, rounds), "weights_remaining": {str(r): weights[r] for r in rounds},
         "class_names": list(info.class_names), "images": len(chosen)}, indent=1) + "\n")
    n_tasks = {e: len(tasks[e][0]) for e in tasks}
    log(f"human study: {len(chosen)} images x rounds {rounds} -> {len(stimuli)} stimuli, "
        f"{n_tasks[1]} experiment-1 and {n_tasks[2]} experiment-2 tasks in {run.human_study_dir}")
    if not h.url_prefix:
        log("human study: image URLs are relative (stimuli/...); set human_study.url_prefix to where you upload "
            f"{run.human_study_dir / 'stimuli'} before uploading the batch files")
    return {"rounds": rounds, "images": len(chosen), "tasks": n_tasks}


def class_names(run: RunDir) -> list[str]:
    """The class names of the last export (the answers experiment 2 offers)."""
    return list(read_json(run.require(run.human_study_export_record(), export_label()), step=export_label())["class_names"])


def read_export(run: RunDir, experiment: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(batch, key) of an experiment of the last export."""
    batch = read_csv(run.require(run.human_study_batch(experiment), export_label()), BATCH_COLUMNS[experiment], step=export_label())
    key = read_csv(run.require(run.human_study_key(experiment), export_label()), KEY_COLUMNS[experiment], step=export_label())
    return batch, key


# ---------------------------------------------------------------- simulated answers

def _results_frame(batch: pd.DataFrame, workers: np.ndarray, answers: np.ndarray, experiment: int) -> pd.DataFrame:
    """Mechanical Turk's result format: one row per assignment (task x worker)."""
    n_items, per_item = answers.shape
    rows = batch.loc[np.repeat(np.arange(n_items), per_item)].reset_index(drop=True)
    frame = pd.DataFrame({
        "HITId": [f"SIMHIT{experiment}{i:07d}" for i in np.repeat(np.arange(n_items), per_item)],
        "HITTypeId": f"SIMTYPE{experiment}",
        "AssignmentId": [f"SIMASG{experiment}{i:09d}" for i in range(n_items * per_item)],
        "WorkerId": [f"SIMW{w:05d}" for w in workers.ravel()],
        "AssignmentStatus": "Submitted",
    })
    for column in batch.columns:
        frame[f"Input.{column}"] = rows[column]
    frame[f"Answer.{ANSWER_FIELD}"] = answers.ravel()
    return frame


def _worker_ids(n_items: int, per_item: int, pool: int, rng: np.random.Generator) -> np.ndarray:
    """``per_item`` distinct workers of a pool of ``pool`` for each task (as Mechanical Turk assigns)."""
    return np.argsort(rng.random((n_items, pool)), axis=1)[:, :per_item]


def simulate_results(run: RunDir, *, preference: float = 0.6, equal_share: float = 0.2,
                     accuracy: dict[int, float] | float = 0.85, dont_know: float = 0.05, agreement: float = 0.3,
                     workers: int | None = None, pool: int = 0, seed: int | None = None, log=print) -> dict[int, str]:
    """Simulated result files of both experiments of the last export (``RunDir.human_study_simulated``).

    Experiment 1: ``equal_share`` of the answers are "equal" and ``preference`` of the decisive ones go
    to the sparser round of each pair. Experiment 2: a round's answers are correct with probability
    ``accuracy`` (one value, or one per round), "don't know" with ``dont_know``, else a wrong class at
    random. ``agreement``: Krippendorff's alpha the answers have in expectation. ``workers`` per task
    (default ``human_study.workers_per_item``) drawn from a pool of ``pool`` workers (default 4x)."""
    cfg = run.cfg
    workers = workers or cfg.human_study.workers_per_item
    pool = max(pool or 4 * workers, workers)
    for name, value in (("preference", preference), ("equal_share", equal_share), ("dont_know", dont_know),
                        ("agreement", agreement)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"simulate: {name} is {value:g}; it must be in [0, 1]")
    rng = np.random.default_rng(derived_seed(cfg.seed if seed is None else int(seed), SeedPurpose.HUMAN_STUDY, SIMULATION))
    written = {}
    batch, key = read_export(run, 1)
    p = preference_probabilities(len(key), preference, equal_share)  # (denser, sparser, equal)
    codes = simulate_answers(p, workers, agreement, rng)
    denser_left = (key["left_round"] == key["round_a"]).to_numpy()[:, None]
    sides = np.where(codes == 2, "equal", np.where((codes == 0) == denser_left, "left", "right"))
    frame = _results_frame(batch, _worker_ids(len(key), workers, pool, rng), sides, 1)
    save_csv(run.human_study_simulated(1), frame)
    written[1] = str(run.human_study_simulated(1))

    batch, key = read_export(run, 2)
    names = class_names(run)
    rates = {int(r): float(accuracy if not isinstance(accuracy, dict) else accuracy[int(r)]) for r in key["round"].unique()}
    for r, rate in rates.items():
        if not 0.0 <= rate <= 1.0 - dont_know + 1e-12:
            raise UserError(f"simulate: accuracy {rate:g} of round {r} plus dont_know {dont_know:g} exceeds 1")
    n_classes = len(names)
    probabilities = np.zeros((len(key), n_classes + 1))
    rate = key["round"].map(rates).to_numpy()
    wrong = (1.0 - rate - dont_know) / max(n_classes - 1, 1)
    probabilities[:, :n_classes] = wrong[:, None]
    probabilities[np.arange(len(key)), key["label"].to_numpy()] = rate
    probabilities[:, n_classes] = dont_know
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    codes = simulate_answers(probabilities, workers, agreement, rng)
    answers = np.asarray(list(names) + [DONT_KNOW], dtype=object)[codes]
    frame = _results_frame(batch, _worker_ids(len(key), workers, pool, rng), answers, 2)
    save_csv(run.human_study_simulated(2), frame)
    written[2] = str(run.human_study_simulated(2))
    log(f"human study: simulated {workers} answers per task (preference {preference:g}, agreement {agreement:g}) "
        f"-> {written[1]}, {written[2]}")
    return written

