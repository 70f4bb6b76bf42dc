"""Occlusion-study step (main_occlusion_study.py): where each class lives, by hiding random squares,
at every round (see :mod:`lottery_xai.attribution.occlusion_study` for the method).

The images are the first ``occlusion_study.images_per_class`` of ACE's discovery images of each class
(train split; the same images whether or not ACE has run), chosen once (``occlusion/images.npz``). The
squares are the same at every round (seeded by the run's seed only), so rounds differ by their model
alone. Per image and round, ``occlusion/occlusion.csv`` holds the mask's area, the share of the mask and
of the heatmap inside the box against a random mask of the same area (whose expected share is the
box's share of the image, ``random_in_box``) and against the same number of squares picked at random
among the image's copies instead of by their z-score (expected share: that of all the copies'
squares together, ``random_squares_in_box``), the share of the visible part locations the mask covers (expected for a
random mask: its area share), and, where ACE's outputs of that round are current, the share of the mask
on the patches of the round's discovered (and significant) concepts of that image.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data.transforms import denormalize
from ..rundir import RunDir, round_name
from ..safe_io import load_npz, read_csv, save_npz, upsert_table
from ..seeds import SeedPurpose, derived_seed
from ..steps import label, step
from .ace import CONCEPT_COLUMNS, patch_settings, round_settings
from .loading import load_data, load_round_model, resolve_names, start_step

COLUMNS = ["round", "weights_remaining", "class", "image_id", "target_prob", "n_selected", "mask_area",
           "mask_in_box", "heat_in_box", "random_in_box", "random_squares_in_box", "parts_in_mask", "mask_on_concepts", "mask_on_significant"]


def study_settings(cfg: Config) -> str:
    o = cfg.occlusion_study
    values = {"n": o.n_masks, "size": o.size, "p": o.p, "images": [o.images_per_class, cfg.ace.images_per_class],
              "classes": list(cfg.labels_for_tcav), "seed": cfg.seed, "img": cfg.img_size,
              "table": COLUMNS}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def study_images(run: RunDir, train, info, classes: list[str], log=print) -> dict:
    """The study's images (fixed once): normalised tensors, labels, boxes, parts, ids."""
    from ..concepts.ace import discovery_indices  # lazy: scikit-learn (1 s)

    cfg = run.cfg
    class_ids = [info.class_names.index(c) for c in classes]
    chosen = discovery_indices(np.asarray(train.labels), class_ids, cfg.ace.images_per_class,
                               derived_seed(cfg.seed, SeedPurpose.ACE_DISCOVERY))
    if cfg.occlusion_study.images_per_class > cfg.ace.images_per_class:
        log(f"occlusion_study.images_per_class is {cfg.occlusion_study.images_per_class}, more than "
            f"ace.images_per_class ({cfg.ace.images_per_class}): the study uses ACE's {cfg.ace.images_per_class}")
    positions = np.concatenate([chosen[c][:cfg.occlusion_study.images_per_class] for c in class_ids])
    items = [train[int(i)] for i in positions]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "label", "bbox", "parts", "id")}
    if not run.occlusion_images().is_file() or \
            not np.array_equal(load_npz(run.occlusion_images(), keys=("ids",), step=label("occlusion_study"))["ids"], batch["id"].numpy()):
        shown = (denormalize(batch["image"], info) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        save_npz(run.occlusion_images(), positions=positions, ids=batch["id"].numpy(), labels=batch["label"].numpy(),
                 bbox=batch["bbox"].numpy(), parts=batch["parts"].numpy(), images=shown,
                 class_names=np.asarray(info.class_names, dtype=str))
    return batch


def _concept_pixels(run: RunDir, r: int, ids: np.ndarray, class_names: list[str]):
    """Per study image, the pixels [N, H, W] of round ``r``'s discovered concepts' patches and of its
    significant ones, or None when ACE's outputs of that round are absent or stale."""
    cfg = run.cfg
    value = f"{run.round_fingerprint(r)}:{round_settings(cfg)}"
    if not (run.ace_clusters(r).is_file() and run.ace_patches().is_file() and run.ace_concepts().is_file()) \
            or run.fingerprints("ace").get(round_name(r)) != value:
        return None
    index = load_npz(run.ace_patches(), keys=("settings", "image_ids", "label_maps", "patch_image", "patch_res",
                                              "patch_label", "patch_class"), step=label("ace"))
    if str(index["settings"]) != patch_settings(cfg):
        return None
    concept = load_npz(run.ace_clusters(r), keys=("concept",), step=label("ace"))["concept"]
    table = read_csv(run.ace_concepts(), CONCEPT_COLUMNS, step=label("ace"))
    table = table[(table["round"] == r) & table["significant"].astype(bool)]
    significant = {(class_names.index(str(c)), int(k)) for c, k in table[["class", "concept"]].itertuples(index=False)}
    is_sig = np.array([(int(c), int(k)) in significant for c, k in zip(index["patch_class"], concept)], dtype=bool)
    position = {int(i): n for n, i in enumerate(index["image_ids"])}
    h, w = index["label_maps"].shape[-2:]
    on, on_sig = np.zeros((len(ids), h, w), bool), np.zeros((len(ids), h, w), bool)
    for n, image_id in enumerate(ids):
        rows = np.flatnonzero((index["patch_image"] == position.get(int(image_id), -1)) & (concept >= 0))
        if not len(rows):
            continue
        masks = index["label_maps"][index["patch_image"][rows], index["patch_res"][rows]] == \
            index["patch_label"][rows][:, None, None]
        on[n] = masks.any(0)
        on_sig[n] = masks[is_sig[rows]].any(0) if is_sig[rows].any() else False
    return on, on_sig


def _share(mask: torch.Tensor, region: np.ndarray) -> np.ndarray:
    """Share [N] of each mask's pixels inside ``region`` [N, H, W]; NaN for an empty mask."""
    region = torch.from_numpy(region).to(mask.device)
    area = mask.sum((1, 2)).double()
    inside = (mask & region).sum((1, 2)).double()
    return torch.where(area > 0, inside / area.clamp(min=1), torch.nan).cpu().numpy()


def _parts_covered(mask: torch.Tensor, parts: torch.Tensor) -> np.ndarray:
    """Share [N] of each image's visible part locations that fall inside its mask (NaN without parts)."""
    n, h, w = mask.shape
    if parts.shape[1] == 0:
        return np.full(n, np.nan)
    x = parts[..., 0].long().clamp(0, w - 1)
    y = parts[..., 1].long().clamp(0, h - 1)
    hit = mask[torch.arange(n)[:, None], y, x] & (parts[..., 2] > 0)
    visible = (parts[..., 2] > 0).sum(1).double()
    return torch.where(visible > 0, hit.sum(1).double() / visible.clamp(min=1), torch.nan).numpy()


@step("occlusion_study", script="main_occlusion_study.py", title="the occlusion-sensitivity study: random squares "
      "filled with the image's mean colour, the z-scored drop of the class probability, and the squares that matter, "
      "at every round", folder="occlusion", needs=("pruning",), uses=("ace",), per_round=True,
      writes=("occlusion/images.npz", "occlusion/round_XX/study.npz", "occlusion/occlusion.csv",
              "occlusion/fingerprints.json", "config.occlusion_study.yaml"),
      figures=("plots/occlusion_masks.png",))
def occlusion_step(run: RunDir, device: torch.device, rounds: list[int], force: bool = False,
                   log=print) -> pd.DataFrame:
    """The occlusion study of every requested round; returns ``occlusion/occlusion.csv``."""
    from ..attribution.occlusion_study import energy_in_box, occlusion_study, square_counts  # lazy: scipy.stats (1 s)

    rounds = start_step(run, "occlusion_study", rounds, log)
    cfg = run.cfg
    datasets, info = load_data(cfg, ("train",), augment=False)
    classes = resolve_names(cfg.labels_for_tcav, info.class_names, "class", "labels_for_tcav")
    batch = study_images(run, datasets["train"], info, classes, log)
    images, labels = batch["image"].to(device), batch["label"].to(device)
    ids = batch["id"].numpy()
    settings = study_settings(cfg)
    box_share = energy_in_box(torch.ones(images.shape[0], *images.shape[-2:]), batch["bbox"]).numpy()
    for r in tqdm(rounds, desc="occlusion rounds"):
        value = f"{run.round_fingerprint(r)}:{settings}"
        if not force and run.occlusion_file(r).is_file() and run.occlusion_table().is_file() \
                and run.up_to_date("occlusion_study", round_name(r), value, log):
            continue
        model, ckpt = load_round_model(run, r, info.num_classes, device)
        model.requires_grad_(False)
        generator = torch.Generator().manual_seed(derived_seed(cfg.seed, SeedPurpose.OCCLUSION_SQUARES))  # the same squares every round
        out = occlusion_study(model, images, labels, n_masks=cfg.occlusion_study.n_masks,
                              size=cfg.occlusion_study.size or None, p=cfg.occlusion_study.p,
                              batch_size=cfg.occlusion_study.batch_size, generator=generator, progress=True)
        mask, heat = out["mask"].cpu(), out["heatmap"].cpu()
        every = square_counts(out["tops"].cpu(), out["lefts"].cpu(), torch.ones(out["tops"].shape), out["size"],
                              *images.shape[-2:])  # all squares: the mean of a random choice of them
        concepts = _concept_pixels(run, r, ids, info.class_names)
        nan = np.full(len(ids), np.nan)
        frame = pd.DataFrame({
            "round": r, "weights_remaining": float(ckpt["weights_remaining"]),
            "class": [info.class_names[int(k)] for k in batch["label"]], "image_id": ids,
            "target_prob": out["clean_prob"].cpu().numpy(), "n_selected": out["selected"].sum(1).cpu().numpy(),
            "mask_area": mask.double().mean((1, 2)).numpy(),
            "mask_in_box": np.where(mask.any(dim=2).any(dim=1).numpy(), energy_in_box(mask.double(), batch["bbox"]).numpy(), np.nan),
            "heat_in_box": np.where(mask.any(dim=2).any(dim=1).numpy(), energy_in_box(heat.double(), batch["bbox"]).numpy(), np.nan),
            "random_in_box": box_share,
            "random_squares_in_box": energy_in_box(every, batch["bbox"]).numpy(), "parts_in_mask": _parts_covered(mask, batch["parts"]),
            "mask_on_concepts": _share(mask, concepts[0]) if concepts is not None else nan,
            "mask_on_significant": _share(mask, concepts[1]) if concepts is not None else nan}, columns=COLUMNS)
        save_npz(run.occlusion_file(r), ids=ids, targets=out["targets"].cpu().numpy(),
                 tops=out["tops"].cpu().numpy().astype(np.int16), lefts=out["lefts"].cpu().numpy().astype(np.int16),
                 delta=out["delta"].cpu().numpy().astype(np.float32), z=out["z"].cpu().numpy().astype(np.float32),
                 selected=out["selected"].cpu().numpy(), heatmap=heat.numpy().astype(np.uint16),
                 clean_prob=out["clean_prob"].cpu().numpy(), z_threshold=np.asarray(out["z_threshold"]),
                 size=np.asarray(out["size"]), weights_remaining=np.asarray(float(ckpt["weights_remaining"])))
        upsert_table(run.occlusion_table(), frame, keys=["round", "image_id"], sort=["round", "class", "image_id"],
                     columns=COLUMNS, replace={"round": r})
        run.record_fingerprint("occlusion_study", round_name(r), value)
    table = read_csv(run.occlusion_table(), COLUMNS, step=label("occlusion_study")) if run.occlusion_table().is_file() \
        else pd.DataFrame(columns=COLUMNS)
    if len(table):
        log(occlusion_summary(table).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    log(f"occlusion study done: {run.occlusion_table()}")
    return table


def occlusion_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Means over the study's images per round (an empty mask counts as NaN for the shares)."""
    cols = ["mask_area", "mask_in_box", "heat_in_box", "random_in_box", "random_squares_in_box", "parts_in_mask", "mask_on_concepts",
            "mask_on_significant", "n_selected"]
    out = table.groupby(["round", "weights_remaining"])[cols].mean().reset_index()
    out["empty_masks"] = table.groupby("round")["mask_area"].apply(lambda a: int((a == 0).sum())).to_numpy()
    return out
