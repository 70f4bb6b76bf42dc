"""Step 6: attribution maps of the same test images at every round, for every configured method.
It draws nothing: ``main_heatmap_save.py`` draws the round-by-round grids after it (and step 8 again)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data.transforms import denormalize
from ..errors import UserError
from ..rundir import RunDir, round_name
from ..safe_io import load_npz, save_npz, unreadable
from ..steps import label, step
from .loading import load_data, load_round_model, resolve_names, start_step
from .maps import configured_maps, explained_targets, map_seed, predicted_classes


def heatmap_selection(cfg: Config, test, class_names: list[str]) -> np.ndarray:
    """The test-split indices the config selects: the first ``heatmaps.images_per_class`` of each class of
    ``labels_for_tcav``, in that order."""
    classes = resolve_names(cfg.labels_for_tcav, class_names, "class", "labels_for_tcav")
    labels = np.asarray(test.labels) if hasattr(test, "labels") else np.array([int(test[i]["label"]) for i in range(len(test))])
    # one stable sort groups the split by class (each class's images in split order), instead of a scan of the
    # whole split per class (classes x images: quadratic at CUB's scale and beyond)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(class_names) + 1))
    position = {name: k for k, name in enumerate(class_names)}
    n = cfg.heatmaps.images_per_class
    return np.concatenate([order[bounds[k]:bounds[k + 1]][:n] for k in (position[c] for c in classes)]).astype(np.int64)


def heatmap_images(run: RunDir, device: torch.device, log=None):
    """The test images explained at every round (chosen once, stored with the maps), as tensors.

    The stored selection must be the one the config makes (``labels_for_tcav``, ``heatmaps.images_per_class``).
    When it is not, step 6 (``log`` given) stores the new selection and deletes every round's maps, which
    were of the old images, so that it makes them again; any other step says to run step 6."""
    cfg = run.cfg
    datasets, info = load_data(cfg, ("test",), augment=False)
    test = datasets["test"]
    indices = heatmap_selection(cfg, test, info.class_names)
    path = run.heatmap_images()
    if path.is_file():
        fix = f"{label('heatmaps')}, after deleting the file,"
        stored = load_npz(path, keys=("indices", "ids", "labels", "images", "class_names"), step=fix)
        kept = stored["indices"]
        if kept.ndim != 1 or not np.issubdtype(kept.dtype, np.integer) or len(stored["ids"]) != len(kept):
            raise unreadable(path, f"indices of shape {list(kept.shape)} for {len(stored['ids'])} ids", fix)
        ids = getattr(test, "ids", None)
        if len(kept) and (kept.min() < 0 or kept.max() >= len(test)
                          or (ids is not None and not np.array_equal(np.asarray(ids)[kept], stored["ids"]))):
            raise unreadable(path, "its images are not in this dataset's test split (written for another dataset)",
                             fix)
        if not np.array_equal(kept, indices):
            change = (f"'{path}' holds {len(kept)} images, but labels_for_tcav and heatmaps.images_per_class="
                      f"{cfg.heatmaps.images_per_class} select {len(indices)}" if len(kept) != len(indices) else
                      f"'{path}' holds other images than labels_for_tcav and heatmaps.images_per_class select")
            if log is None:
                raise UserError(f"{change}: run {label('heatmaps')} again to make the maps of the new images")
            stale = sorted(run.root.joinpath("heatmaps").glob("round_*/*.npz"))
            for old in stale:
                old.unlink()
            path.unlink()
            log(f"{change}: storing the new images and making every round's maps again ({len(stale)} map files deleted)")
    items = [test[int(i)] for i in indices]
    batch = {k: torch.stack([item[k] for item in items]) for k in ("image", "label", "bbox", "parts", "id")}
    if not path.is_file():
        shown = (denormalize(batch["image"], info).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        save_npz(path, indices=indices, ids=batch["id"].numpy(), labels=batch["label"].numpy(),
                 bbox=batch["bbox"].numpy(), images=shown, class_names=np.asarray(info.class_names, dtype=str))
    return batch, info


def ig_completeness(details: dict, cfg: Config, r: int, log) -> dict[str, np.ndarray]:
    """Integrated gradients' completeness per image, as stored beside its maps, with one log line per round.

    ``completeness``: |sum(attributions) - (F(x) - F(x'))| / |F(x) - F(x')| on the raw (unnormalised)
    attributions, F the explained output (``heatmaps.ig_output``) and x' the baseline; ``completeness_delta``
    the signed sum(attributions) - (F(x) - F(x')) (Captum's convergence delta); ``output_difference``
    F(x) - F(x'); ``ig_steps`` the integration points each image needed (``heatmaps.ig_steps``, doubled up
    to ``heatmaps.ig_max_steps`` while the gap exceeds ``heatmaps.ig_tolerance``)."""
    h = cfg.heatmaps
    gap = details["completeness"].cpu().numpy().astype(np.float32)
    steps = details["steps"].cpu().numpy().astype(np.int64)
    above = gap > h.ig_tolerance
    more = int((steps > h.ig_steps).sum())
    line = (f"round {r}: integrated gradients' completeness gap median {np.median(gap):.2%}, max {gap.max():.2%}"
            f"; {more} of {len(gap)} images integrated with more than {h.ig_steps} steps")
    if above.any():
        line += (f"; warning: {int(above.sum())} images stay above heatmaps.ig_tolerance={h.ig_tolerance:g} with "
                 f"{int(steps[above].max())} steps (raise heatmaps.ig_max_steps; their gaps are in 'completeness')")
    log(line)
    return {"completeness": gap, "completeness_delta": details["delta"].cpu().numpy().astype(np.float32),
            "output_difference": details["output_difference"].cpu().numpy().astype(np.float32), "ig_steps": steps}


@step("heatmaps", number=6, script="main_heatmap_save.py", title="attribution maps (Grad-CAM and the others) of the "
      "same test images at every round", folder="heatmaps", needs=("pruning",), per_round=True, pipeline=True,
      writes=("heatmaps/images.npz", "heatmaps/round_XX/{method}.npz", "heatmaps/fingerprints.json",
              "config.heatmaps.yaml"),
      figures=("plots/heatmaps_{method}.png",))
def heatmaps_step(run: RunDir, device: torch.device, rounds: list[int], force: bool = False, log=print) -> None:
    """Attribution maps of the same test images at every round, for every configured method."""
    rounds = start_step(run, "heatmaps", rounds, log)
    cfg = run.cfg
    batch, info = heatmap_images(run, device, log)
    images = batch["image"].to(device)
    for r in tqdm(rounds, desc="heatmap rounds"):
        fp = run.round_fingerprint(r)
        todo = [m for m in cfg.heatmaps.methods if force or not run.heatmap_file(r, m).is_file()
                or not run.up_to_date("heatmaps", f"{round_name(r)}/{m}", fp, log)]
        if not todo:
            continue
        model, ckpt = load_round_model(run, r, info.num_classes, device)
        model.requires_grad_(False)
        predicted = predicted_classes(cfg, model, images)
        targets = explained_targets(cfg, model, images, batch["label"].to(device), predicted)
        for method in todo:
            details: dict = {}
            maps = configured_maps(cfg, method, model, images, targets, map_seed(run, r), details=details)
            extra = ig_completeness(details, cfg, r, log) if details else {}  # only integrated gradients reports
            save_npz(run.heatmap_file(r, method), ids=batch["id"].numpy(), targets=targets.cpu().numpy(),
                     labels=batch["label"].numpy(), predicted=predicted.cpu().numpy(),
                     maps=maps.cpu().numpy().astype(np.float32), weights_remaining=ckpt["weights_remaining"],
                     **extra)
            run.record_fingerprint("heatmaps", f"{round_name(r)}/{method}", fp)
    log(f"step 6 done: maps in {run.root / 'heatmaps'}")
