"""ACE step (main_ace.py, after step 4): concepts discovered from superpixels at every round.

Once per run (round-independent, ``ace/patches.npz``): ``ace.images_per_class`` train images of every
class in labels_for_tcav (seeded; never an image TCAV scores), their SLIC label maps, and the patch
index (one row per kept segment: image, resolution, label, share inside the box, nearest part).
Per round: the patches' spatially averaged activations at the layer, streamed batch by batch into a
``.npy`` memory map (memory does not grow with the number of patches); per class, k-means, ACE's
cluster rules, the concepts' CAVs against random sets, TCAV of the class's val+test images and the
significance of each concept, by ``ace.protocol`` (:func:`lottery_xai.config.ace_protocol`):

- ``reference`` (amiratag/ACE, ``ConceptDiscovery.cavs``, ``tcavs`` and ``test_and_remove_concepts``, run
  by ``ace_run.py``): ``ace.n_random`` random sets of ``ace.max_patches`` train images (ACE's folders
  ``random500_i``, of which it loads ``max_imgs`` images; here of any class but the class's discovery
  images, from step 3's activations), concept CAV i against random set i, and the random concept
  (ACE's ``random_discovery``: one more random image set) against every random set i; concept run i is
  paired with random run i by ``scipy.stats.ttest_rel`` (two-sided), kept when p <= 0.01, no correction.
  The CAVs are tensorflow/tcav's defaults as ACE calls ``cav.get_or_train_cav``: the linear SGD classifier
  on raw activations, both sides cut to the smaller one.
- ``strict`` (ours): random patches of other classes' discovery images, random CAV k between random sets k
  and k + 1, standardized logistic fits, Welch's t-test and Bonferroni over the class's concepts.

The protocol's label is the ``protocol`` column of ``ace/concepts.csv``. Then every round's concepts are matched to the dense round's
(``ace/survival.csv``: survived, vanished, appeared), and, at the end of every run of the step (cheap,
stored CAVs only), to the closest labelled attribute (cosine with step 4's CAVs where they are current). A round is complete when its files exist and its
fingerprint (checkpoint + ACE settings) is recorded; a rerun skips it.

Discovered concepts for steps 4 and 5: ``concepts_for_tcav: [..., ace:<class>:<k>]`` names concept k of
the class as discovered at the dense round 0 (``ace:all``: every significant one); step 4 refits its
CAVs at every round from that round's activations of the same patches (:func:`discovered_concept_cavs`).
This module declares them as the concept source ``ace`` (:mod:`lottery_xai.pipeline.concept_sources`):
steps 4 and 5 find it there and do not import this module.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import ConcatDataset
from tqdm.auto import tqdm

from ..activations import StreamWriter, layer_activations
from ..config import Config, ace_protocol
from ..data.loaders import make_loader
from ..data.transforms import denormalize
from ..errors import UserError
from ..models import get_layer
from ..names import unknown_name
from ..rundir import RunDir, round_name
from ..safe_io import load_npy, load_npz, read_csv, save_csv, save_npz, upsert_table
from ..seeds import SeedPurpose, derived_seed
from ..steps import label, step
from ..tokens import token_features as token_features_of, token_layout
from .concept_sources import ConceptSource, register_source
from .loading import load_data, load_round_model, new_model, resolve_names, start_step

PREFIX = "ace:"
CONCEPT_COLUMNS = ["round", "class", "concept", "n_patches", "n_images", "cav_acc_mean", "tcav_mean", "tcav_std",
                   "p_value", "significant", "matched_dense_concept", "match_cosine",
                   "weights_remaining", "layer", "name", "random_mean", "match_overlap", "box_fraction", "top_part",
                   "top_part_share", "best_attribute", "attribute_cosine", "attribute_defining", "protocol"]
SURVIVAL_COLUMNS = ["round", "class", "dense_concept", "concept", "status", "overlap", "cosine", "dense_significant",
                    "significant"]


def ace_layer(cfg: Config) -> str:
    return cfg.ace.layer or cfg.bb_layers_for_concepts[0]


def concept_name(class_name: str, k: int) -> str:
    return f"{PREFIX}{class_name}:{k}"


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def patch_settings(cfg: Config) -> str:
    """What the patch index depends on (not the model's weights; its patch size under patch_grid)."""
    a = cfg.ace
    values = {"images": a.images_per_class, "segments": list(a.n_segments), "compactness": a.compactness,
              "sigma": a.sigma, "min": a.min_segment_fraction, "jaccard": a.max_jaccard,
              "classes": list(cfg.labels_for_tcav), "size": cfg.img_size, "seed": cfg.seed,
              "data": [cfg.dataset, cfg.data_root, cfg.json_root]}
    if a.superpixels != "slic":  # absent at the default, so the digests of existing runs are unchanged
        values["superpixels"] = [a.superpixels, cfg.model_arch, list(cfg.model_args)]
    return _digest(values)


def activation_settings(cfg: Config) -> str:
    """What a round's patch activations depend on besides its checkpoint (not the clustering or the test:
    a change of ace.protocol reuses them)."""
    values = {"patches": patch_settings(cfg), "fill": cfg.ace.fill, "layer": ace_layer(cfg)}
    if cfg.token_features != "auto":  # absent at its default, so the digests of existing runs are unchanged
        values["token_features"] = cfg.token_features
    return _digest(values)


def round_settings(cfg: Config) -> str:
    """What a round's discovery depends on besides its checkpoint."""
    a, p = cfg.ace, ace_protocol(cfg)
    values = {"patches": patch_settings(cfg), "fill": a.fill, "layer": ace_layer(cfg), "k": a.n_clusters,
              "min": a.min_patches, "max": a.max_patches, "rules": list(a.cluster_rules),
              "n_random": a.n_random, "protocol": dataclasses.asdict(p),
              "cav": [cfg.cav.C, cfg.cav.linear_alpha, cfg.cav.test_fraction],
              "tcav": [list(cfg.tcav.splits), cfg.tcav.max_images_per_class]}
    if cfg.token_features != "auto":  # as in activation_settings
        values["token_features"] = cfg.token_features
    return _digest(values)


def _check_setup(cfg: Config) -> None:
    if cfg.cav_flattening_type != "avg_pool":
        raise UserError(f"ACE clusters and fits CAVs on spatially averaged activations (as ACE does); "
                        f"cav_flattening_type is {cfg.cav_flattening_type}: set it to avg_pool")
    if "train" in cfg.tcav.splits:
        raise UserError("ACE discovers concepts on train images, which tcav.splits must not score; "
                        "use tcav.splits [val, test]")


# ---------------------------------------------------------------- the patch index (once per run)

def build_patch_index(run: RunDir, train, info, classes: list[str], log=print, patch: int = 0) -> dict:
    """The discovery images and their patches (``ace/patches.npz``), made once and reused while the
    settings they depend on are unchanged. ``patch`` > 0: SLIC maps snapped to the p x p token grid
    (``ace.superpixels: patch_grid``)."""
    # lazy: lottery_xai.concepts imports scikit-learn (1 s)
    from ..concepts.ace import discovery_indices, patch_locations, segment_image, segment_masks

    cfg, path = run.cfg, run.ace_patches()
    settings = patch_settings(cfg)
    if path.is_file():
        stored = load_npz(path, keys=("settings", "images", "label_maps", "patch_image"), step=label("ace"))
        if str(stored["settings"]) == settings:
            return stored
        log(f"ACE settings changed since {path} was written: making the patch index again")
    class_ids = [info.class_names.index(c) for c in classes]
    chosen = discovery_indices(np.asarray(train.labels), class_ids, cfg.ace.images_per_class,
                               derived_seed(cfg.seed, SeedPurpose.ACE_DISCOVERY))
    positions = np.concatenate([chosen[c] for c in class_ids]).astype(np.int64)
    items = [train[int(i)] for i in positions]
    images = denormalize(torch.stack([it["image"] for it in items]), info)  # [n, 3, H, W] in [0, 1]
    boxes = torch.stack([it["bbox"] for it in items])
    parts = torch.stack([it["parts"] for it in items])
    maps, rows = [], []
    for i in tqdm(range(len(items)), desc="ACE superpixels", unit="image"):
        label_maps, kept = segment_image(images[i].permute(1, 2, 0).numpy(), cfg.ace.n_segments,
                                         compactness=cfg.ace.compactness, sigma=cfg.ace.sigma,
                                         min_fraction=cfg.ace.min_segment_fraction, max_jaccard=cfg.ace.max_jaccard,
                                         patch=patch)
        masks = torch.from_numpy(segment_masks(label_maps, kept))
        in_box, part = patch_locations(masks, boxes[i].expand(len(kept), 4), parts[i].expand(len(kept), *parts.shape[1:]))
        maps.append(label_maps)
        rows.append(pd.DataFrame({"image": i, "res": kept[:, 0], "label": kept[:, 1], "in_box": in_box, "part": part,
                                  "area": masks.sum((1, 2)).numpy()}))
    table = pd.concat(rows, ignore_index=True)
    labels = np.asarray(train.labels)[positions]
    index = dict(settings=np.asarray(settings), positions=positions, image_ids=np.asarray(train.ids)[positions],
                 image_class=labels.astype(np.int64),
                 images=(images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
                 boxes=boxes.numpy(), parts=parts.numpy(), label_maps=np.stack(maps),
                 patch_image=table["image"].to_numpy(np.int64), patch_res=table["res"].to_numpy(np.int64),
                 patch_label=table["label"].to_numpy(np.int64), patch_class=labels[table["image"]].astype(np.int64),
                 patch_in_box=table["in_box"].to_numpy(np.float32), patch_part=table["part"].to_numpy(np.int64),
                 patch_area=table["area"].to_numpy(np.int64), class_names=np.asarray(info.class_names, dtype=str),
                 part_names=np.asarray(info.part_names or [""], dtype=str))
    save_npz(path, **index)
    log(f"ACE patch index: {len(table)} patches of {len(positions)} images in {path}")
    return index


def patches_of(index: dict, rows: np.ndarray, fill: float) -> torch.Tensor:
    """The patches [len(rows), 3, H, W] (values in [0, 1]) of patch-index rows, one batched operator."""
    from ..concepts.ace import make_patches  # lazy: scikit-learn (1 s)

    rows = np.asarray(rows, dtype=np.int64)
    owners = index["patch_image"][rows]
    used, local = np.unique(owners, return_inverse=True)
    images = torch.from_numpy(index["images"][used]).permute(0, 3, 1, 2).float() / 255
    maps = index["label_maps"][owners, index["patch_res"][rows]]  # [S, H, W]
    masks = torch.from_numpy(maps == index["patch_label"][rows][:, None, None])
    return make_patches(images, masks, torch.from_numpy(local), fill)


def _normalise(images: torch.Tensor, info) -> torch.Tensor:
    mean = torch.as_tensor(info.mean, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(info.std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def stream_patch_activations(model, layer: str, index: dict, info, path, *, fill: float, batch_size: int,
                             device: torch.device, token_features: str = "auto") -> tuple:
    """Spatially averaged activations [n_patches, D] of every patch at ``layer``, written batch by batch
    into a pre-sized ``.npy`` memory map (renamed into place when complete). Patches are made per batch,
    so memory holds one batch, whatever the number of patches. A transformer's tokens are first reduced by
    ``token_features`` (:func:`lottery_xai.tokens.token_features`), as step 3 reduces them."""
    layout = token_layout(model)
    n = len(index["patch_image"])
    writer = None
    try:
        for start in tqdm(range(0, n, batch_size), desc="ACE patch activations", unit="batch", leave=False):
            rows = np.arange(start, min(start + batch_size, n))
            patches = _normalise(patches_of(index, rows, fill), info).to(device)
            acts = token_features_of(layer_activations(model, layer, patches), layout, token_features, layer)
            pooled = (acts.mean(dim=tuple(range(2, acts.dim()))) if acts.dim() > 2 else acts).float().cpu().numpy()
            if writer is None:
                writer = StreamWriter(path, n, (pooled.shape[1],), np.float32)
            writer.write(start, pooled)
        return writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


# ---------------------------------------------------------------- one round

def _fit_runs(positives: np.ndarray, negative_sets: list[np.ndarray], cfg: Config, seeds) -> tuple[np.ndarray, np.ndarray]:
    """One CAV per negative set: (unit vectors [n_runs, D], held-out accuracies [n_runs]); NaN where a
    set is too small. The classifier and features are the ACE protocol's; under ``reference`` both sides
    are cut to the smaller one, as tensorflow/tcav's ``_create_cav_training_set`` does (the positives keep
    their first rows, closest to the cluster centre first; the negatives, a random set, a seeded subset)."""
    from ..concepts.cav import NotEnoughExamples, fit_cav  # lazy: scikit-learn (1 s)

    p = ace_protocol(cfg)
    d = positives.shape[1]
    vectors, accuracy = np.full((len(negative_sets), d), np.nan), np.full(len(negative_sets), np.nan)
    for k, (neg, seed) in enumerate(zip(negative_sets, seeds)):
        pos = positives
        if p.name == "reference":
            n = min(len(pos), len(neg))
            pos = pos[:n]
            if len(neg) > n:
                neg = neg[np.sort(np.random.default_rng(int(seed)).choice(len(neg), n, replace=False))]
        try:
            cav = fit_cav(pos, neg, classifier=p.classifier, test_fraction=cfg.cav.test_fraction, seed=int(seed),
                          C=cfg.cav.C, standardize=p.standardize, linear_alpha=cfg.cav.linear_alpha)
        except NotEnoughExamples:
            continue
        vectors[k], accuracy[k] = cav.vector, cav.accuracy
    return vectors, accuracy


def _random_pool(run: RunDir, r: int, index: dict, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, activations source) for class ``c``'s random sets: ``patches``: other classes' patches (rows of
    the patch index); ``images``: step 3's train activations of every train image but the class's discovery
    images (ACE's random folders hold random images of the dataset, apart from the discovery images)."""
    cfg = run.cfg
    if ace_protocol(cfg).negatives == "patches":
        return np.flatnonzero(index["patch_class"] != c), None
    layer = ace_layer(cfg)
    path = run.require(run.activation_file(r, "train", layer), label("activations"))
    run.require_up_to_date("activations", f"{round_name(r)}/train", run.round_fingerprint(r), label("activations"))
    ids = load_npy(run.activation_meta(r, "train", "ids"), label("activations"), ndim=1)
    acts = load_npy(path, label("activations"), mmap=True, ndim=2, rows=len(ids))
    discovery = np.asarray(index["image_ids"])[np.asarray(index["image_class"]) == c]
    return np.flatnonzero(~np.isin(ids.astype(str), discovery.astype(str))), acts


def random_sets_for(cfg: Config, index: dict, c: int, pool: np.ndarray) -> np.ndarray:
    """The class's random sets [n, ace.max_patches] (the same every round: seeded by the class only):
    ``ace.n_random`` sets, and under the reference protocol one more, the last (ACE's random concept
    ``random_discovery``), whose CAVs against the others are the random CAVs."""
    from ..concepts.ace import draw_random_sets  # lazy: scikit-learn (1 s)

    rng = np.random.default_rng(derived_seed(cfg.seed, SeedPurpose.ACE_RANDOM_SETS, c))
    extra = 1 if ace_protocol(cfg).random_cavs == "counterpart" else 0
    return draw_random_sets(pool, cfg.ace.n_random + extra, cfg.ace.max_patches, rng)


def _discover_class(cfg: Config, acts_c: np.ndarray, rows: np.ndarray, index: dict, c: int, n_discovery: int):
    """k-means of one class's patches and ACE's rules: (assignment, distance, [(cluster, top rows, members)])."""
    from ..concepts.ace import closest_members, cluster_patches, kept_clusters  # lazy: scikit-learn (1 s)

    assignment, distance = cluster_patches(acts_c, cfg.ace.n_clusters, derived_seed(cfg.seed, SeedPurpose.ACE_KMEANS, c))
    kept = kept_clusters(assignment, index["patch_image"][rows], n_discovery, cfg.ace.cluster_rules,
                         cfg.ace.min_patches)
    concepts = [(k, rows[closest_members(assignment, distance, k, cfg.ace.max_patches)], rows[assignment == k])
                for k in kept]
    return assignment, distance, concepts


def _labelled_directions(run: RunDir, r: int, layer: str):
    """(names, unit mean CAV per labelled concept) of step 4 at round ``r``, or None when absent/stale."""
    from ..concepts.ace import unit_mean  # lazy: scikit-learn (1 s)
    from ..concepts.cav import load_cavs  # lazy: scikit-learn (1 s)

    path = run.cav_file(r, layer)
    if not path.is_file() or run.fingerprints("cavs").get(f"{round_name(r)}/{layer}") != run.round_fingerprint(r):
        return None
    result = load_cavs(path, label("cavs"))
    names = [n for n in result["concepts"] if not n.startswith(PREFIX)]
    picks = [result["concepts"].index(n) for n in names]
    return names, unit_mean(np.asarray(result["cavs"])[picks])


def discover_round(run: RunDir, r: int, index: dict, info, classes: list[str], loader, device, log=print) -> None:
    """Round ``r``'s activations, clusters, concepts, CAVs, TCAV and table rows."""
    from ..concepts.ace import concept_significance  # lazy: scikit-learn (1 s)
    from ..concepts.tcav import gradients_by_class, tcav_scores  # lazy: scikit-learn (1 s)

    cfg = run.cfg
    protocol = ace_protocol(cfg)
    layer = ace_layer(cfg)
    fp = run.round_fingerprint(r)
    value = f"{fp}:{round_settings(cfg)}"
    model, ckpt = load_round_model(run, r, info.num_classes, device)
    model.requires_grad_(False)
    acts_path = run.ace_patch_activations(r)
    unit, acts_value = f"{round_name(r)}/activations", f"{fp}:{activation_settings(cfg)}"
    if not (acts_path.is_file() and run.fingerprints("ace").get(unit) == acts_value):
        stream_patch_activations(model, layer, index, info, acts_path, fill=cfg.ace.fill,
                                 batch_size=cfg.data.eval_batch_size, device=device,
                                 token_features=cfg.token_features)
        run.record_fingerprint("ace", unit, acts_value)
    acts = load_npy(acts_path, label("ace"), mmap=True, ndim=2, rows=len(index["patch_image"]))
    class_ids = [info.class_names.index(c) for c in classes]
    n_discovery = {c: int((index["image_class"] == c).sum()) for c in class_ids}
    grads = gradients_by_class(model, layer, loader, class_ids, flattening="avg_pool", device=device,
                               max_images=cfg.tcav.max_images_per_class or None, gradient=protocol.gradient,
                               token_features=cfg.token_features)
    n_patches = len(index["patch_image"])
    assignment = np.full(n_patches, -1, dtype=np.int64)
    distance = np.full(n_patches, np.nan, dtype=np.float32)
    concept_of = np.full(n_patches, -1, dtype=np.int64)
    table, concept_rows = [], {"class": [], "id": [], "cluster": [], "top": [], "cavs": [], "acc": [], "scores": []}
    randoms = {"cavs": [], "acc": [], "sets": [], "counterpart": [], "scores": []}
    rng = np.random.default_rng(derived_seed(cfg.seed, SeedPurpose.ACE_CAV_FITS, r))
    for c in tqdm(class_ids, desc=f"ACE round {r} classes", leave=False):
        rows = np.flatnonzero(index["patch_class"] == c)
        acts_c = np.asarray(acts[rows], dtype=np.float64)
        assign_c, dist_c, concepts = _discover_class(cfg, acts_c, rows, index, c, n_discovery[c])
        assignment[rows], distance[rows] = assign_c, dist_c
        pool, pool_acts = _random_pool(run, r, index, c)
        drawn = random_sets_for(cfg, index, c, pool)
        sets = drawn[:cfg.ace.n_random]
        source = acts if pool_acts is None else pool_acts
        negatives = [np.asarray(source[s], dtype=np.float64) for s in sets]
        with threadpool_limits(limits=1, user_api="blas"):  # tiny problems: threads only add contention
            seeds = rng.integers(0, 2**31 - 1, len(sets))
            if protocol.random_cavs == "counterpart":
                # ACE's random concept (random_discovery) against every random set i: run i of the null
                counterpart = drawn[-1]
                r_cavs, r_acc = _fit_runs(np.asarray(source[counterpart], dtype=np.float64), negatives, cfg, seeds)
            else:  # random CAV k: random set k against set k + 1
                counterpart = np.full(sets.shape[1], -1, dtype=sets.dtype)
                pairs = [_fit_runs(negatives[k], [negatives[(k + 1) % len(sets)]], cfg, [seed])
                         for k, seed in enumerate(seeds)]
                r_cavs, r_acc = np.concatenate([v for v, _ in pairs]), np.concatenate([a for _, a in pairs])
            fitted = [_fit_runs(np.asarray(acts[top], dtype=np.float64), negatives, cfg,
                                rng.integers(0, 2**31 - 1, len(sets))) for _, top, _ in concepts]
        r_scores = tcav_scores(grads[c], r_cavs)
        randoms["cavs"].append(r_cavs), randoms["acc"].append(r_acc), randoms["sets"].append(sets)
        randoms["counterpart"].append(counterpart)
        randoms["scores"].append(r_scores)
        if not concepts:
            continue
        cavs_c = np.stack([v for v, _ in fitted])
        acc_c = np.stack([a for _, a in fitted])
        scores = tcav_scores(grads[c], cavs_c)
        sig = concept_significance(scores, r_scores, alpha=protocol.alpha, test=protocol.test, sided=protocol.sided,
                                   correction=protocol.correction)
        cls = info.class_names[c]
        for k, ((cluster, top, members), s) in enumerate(zip(concepts, sig.itertuples(index=False))):
            concept_of[members] = k
            parts = index["patch_part"][members]
            on_part = parts[parts >= 0]
            top_part = int(np.bincount(on_part).argmax()) if len(on_part) else -1
            table.append({"round": r, "class": cls, "concept": k, "n_patches": len(members),
                          "n_images": len(np.unique(index["patch_image"][members])),
                          "cav_acc_mean": float(np.nanmean(acc_c[k])) if np.isfinite(acc_c[k]).any() else np.nan,
                          "tcav_mean": s.tcav_mean, "tcav_std": s.tcav_std, "p_value": s.p_value,
                          "significant": bool(s.significant), "matched_dense_concept": -1, "match_cosine": np.nan,
                          "weights_remaining": float(ckpt["weights_remaining"]), "layer": layer,
                          "name": concept_name(cls, k), "random_mean": s.random_mean, "match_overlap": np.nan,
                          "box_fraction": float(index["patch_in_box"][members].mean()),
                          "top_part": str(index["part_names"][top_part]) if top_part >= 0 else "background",
                          "top_part_share": float((parts == top_part).mean()) if top_part >= 0 else float((parts < 0).mean()),
                          "best_attribute": "", "attribute_cosine": np.nan, "attribute_defining": False,
                          "protocol": protocol.label})
            concept_rows["class"].append(c), concept_rows["id"].append(k), concept_rows["cluster"].append(cluster)
            concept_rows["top"].append(np.pad(top, (0, cfg.ace.max_patches - len(top)), constant_values=-1))
        concept_rows["cavs"].append(cavs_c), concept_rows["acc"].append(acc_c), concept_rows["scores"].append(scores)
    d = acts.shape[1]
    stack = lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape)  # noqa: E731
    save_npz(run.ace_clusters(r), assignment=assignment, distance=distance, concept=concept_of,
             patch_class=index["patch_class"], concept_class=np.asarray(concept_rows["class"], dtype=np.int64),
             concept_id=np.asarray(concept_rows["id"], dtype=np.int64),
             concept_cluster=np.asarray(concept_rows["cluster"], dtype=np.int64),
             concept_top=np.asarray(concept_rows["top"], dtype=np.int64).reshape(-1, cfg.ace.max_patches))
    save_npz(run.ace_cavs(r), concept_class=np.asarray(concept_rows["class"], dtype=np.int64),
             concept_id=np.asarray(concept_rows["id"], dtype=np.int64),
             cavs=stack(concept_rows["cavs"], (0, cfg.ace.n_random, d)),
             accuracy=stack(concept_rows["acc"], (0, cfg.ace.n_random)),
             tcav=stack(concept_rows["scores"], (0, cfg.ace.n_random)),
             class_index=np.asarray(class_ids, dtype=np.int64), random_cavs=np.stack(randoms["cavs"]),
             random_accuracy=np.stack(randoms["acc"]), random_sets=np.stack(randoms["sets"]),
             random_tcav=np.stack(randoms["scores"]), random_source=np.asarray(protocol.negatives),
             random_counterpart=np.stack(randoms["counterpart"]), protocol=np.asarray(protocol.label),
             layer=np.asarray(layer), weights_remaining=np.asarray(float(ckpt["weights_remaining"])))
    upsert_table(run.ace_concepts(), pd.DataFrame(table, columns=CONCEPT_COLUMNS), keys=["round"],
                 sort=["round", "class", "concept"], columns=CONCEPT_COLUMNS, replace={"round": r})
    run.record_fingerprint("ace", round_name(r), value)


# ---------------------------------------------------------------- concepts across rounds

def load_round_concepts(run: RunDir, r: int) -> dict:
    """Round ``r``'s concepts: {class index: {"ids", "members" (patch rows), "directions" (unit mean CAVs)}}."""
    from ..concepts.ace import unit_mean  # lazy: scikit-learn (1 s)

    clusters = load_npz(run.ace_clusters(r), keys=("concept", "patch_class", "concept_class", "concept_id"), step=label("ace"))
    cavs = load_npz(run.ace_cavs(r), keys=("concept_class", "concept_id", "cavs"), step=label("ace"))
    out = {}
    for c in np.unique(clusters["patch_class"]):
        pick = np.flatnonzero(cavs["concept_class"] == c)
        ids = cavs["concept_id"][pick]
        in_class = clusters["patch_class"] == c
        members = [np.flatnonzero(in_class & (clusters["concept"] == k)) for k in ids]
        out[int(c)] = {"ids": ids, "members": members, "directions": unit_mean(cavs["cavs"][pick])}
    return out


def match_to_dense(run: RunDir, rounds: list[int], class_names: list[str], log=print) -> pd.DataFrame:
    """Match every round's concepts to the dense round's (``ace.match_by``, one to one); fills the match
    columns of ``ace/concepts.csv`` and writes ``ace/survival.csv``. Returns the survival table."""
    from ..concepts.ace import cosine_matrix, jaccard_matrix, match_concepts  # lazy: scikit-learn (1 s)

    cfg = run.cfg
    table = read_csv(run.ace_concepts(), CONCEPT_COLUMNS, step=label("ace"))
    if not run.ace_clusters(0).is_file() or table.empty:
        log("ACE: the dense round 0 has no concepts on disk, so nothing is matched across rounds")
        return pd.DataFrame(columns=SURVIVAL_COLUMNS)
    dense = load_round_concepts(run, 0)
    n_patches = len(load_npz(run.ace_clusters(0), keys=("concept",), step=label("ace"))["concept"])
    sig = {(int(r), str(c), int(k)): bool(s) for r, c, k, s in
           table[["round", "class", "concept", "significant"]].itertuples(index=False)}
    survival = []
    for r in sorted(set(rounds) | set(int(x) for x in table["round"].unique())):
        if not run.ace_clusters(r).is_file() or not run.ace_cavs(r).is_file():
            continue
        current = load_round_concepts(run, r)
        for c, now in current.items():
            name = class_names[c]
            base = dense.get(c, {"ids": np.zeros(0, int), "members": [], "directions": np.zeros((0, 1))})
            overlap = jaccard_matrix(now["members"], base["members"], n_patches)
            cosine = cosine_matrix(now["directions"], base["directions"]) if len(now["ids"]) and len(base["ids"]) \
                else np.zeros((len(now["ids"]), len(base["ids"])))
            matches = match_concepts(overlap if cfg.ace.match_by == "overlap" else cosine, cfg.ace.match_threshold)
            matched_now = {i: j for i, j, _ in matches}
            matched_dense = {j for _, j, _ in matches}
            for i, k in enumerate(now["ids"]):
                rows = (table["round"] == r) & (table["class"] == name) & (table["concept"] == k)
                j = matched_now.get(i)
                table.loc[rows, "matched_dense_concept"] = int(base["ids"][j]) if j is not None else -1
                table.loc[rows, "match_cosine"] = float(cosine[i, j]) if j is not None else np.nan
                table.loc[rows, "match_overlap"] = float(overlap[i, j]) if j is not None else np.nan
                status = "survived" if j is not None else "appeared"
                dk = int(base["ids"][j]) if j is not None else -1
                survival.append({"round": r, "class": name, "dense_concept": dk, "concept": int(k), "status": status,
                                 "overlap": float(overlap[i, j]) if j is not None else np.nan,
                                 "cosine": float(cosine[i, j]) if j is not None else np.nan,
                                 "dense_significant": sig.get((0, name, dk), False) if dk >= 0 else False,
                                 "significant": sig.get((r, name, int(k)), False)})
            for j, dk in enumerate(base["ids"]):
                if j not in matched_dense:
                    survival.append({"round": r, "class": name, "dense_concept": int(dk), "concept": -1,
                                     "status": "vanished", "overlap": np.nan, "cosine": np.nan,
                                     "dense_significant": sig.get((0, name, int(dk)), False), "significant": False})
    save_csv(run.ace_concepts(), table[CONCEPT_COLUMNS])
    frame = pd.DataFrame(survival, columns=SURVIVAL_COLUMNS).sort_values(["round", "class", "dense_concept", "concept"])
    save_csv(run.ace_survival(), frame)
    return frame


def match_attributes(run: RunDir, info, log=print) -> pd.DataFrame:
    """Fill ``best_attribute``, ``attribute_cosine`` and ``attribute_defining`` of ``ace/concepts.csv``: for
    every round whose step-4 CAVs of the ACE layer are current, the labelled concept whose unit mean CAV
    has the largest cosine with the discovered concept's, and whether it is one of the class's defining
    attributes. Cheap (stored CAVs only), so it runs at the end of every ACE step and a rerun after step
    4 fills in rounds discovered before it."""
    from ..concepts.ace import cosine_matrix, unit_mean  # lazy: scikit-learn (1 s)

    table = read_csv(run.ace_concepts(), CONCEPT_COLUMNS, step=label("ace"))
    if table.empty:
        return table
    layer = ace_layer(run.cfg)
    defining = info.defining_attributes or {}
    table["best_attribute"] = table["best_attribute"].astype(object).where(table["best_attribute"].notna(), "")
    missing = []
    for r in sorted(int(x) for x in table["round"].unique()):
        labelled = _labelled_directions(run, r, layer)
        if labelled is None or not run.ace_cavs(r).is_file() or not len(labelled[0]):
            missing.append(r)
            continue
        cavs = load_npz(run.ace_cavs(r), keys=("concept_class", "concept_id", "cavs"), step=label("ace"))
        best = cosine_matrix(unit_mean(cavs["cavs"]), labelled[1]) if len(cavs["cavs"]) else np.zeros((0, 1))
        for i, (c, k) in enumerate(zip(cavs["concept_class"], cavs["concept_id"])):
            rows = (table["round"] == r) & (table["class"] == info.class_names[int(c)]) & (table["concept"] == int(k))
            finite = np.isfinite(best[i])
            j = int(np.nanargmax(np.where(finite, best[i], -np.inf))) if finite.any() else -1
            name = labelled[0][j] if j >= 0 else ""
            table.loc[rows, "best_attribute"] = name
            table.loc[rows, "attribute_cosine"] = float(best[i, j]) if j >= 0 else np.nan
            table.loc[rows, "attribute_defining"] = bool(name in defining.get(info.class_names[int(c)], []))
    if missing:
        log(f"ACE: rounds {missing} have no current step-4 CAVs of {layer}, so their concepts are not matched to "
            f"labelled attributes (run step 4, main_lth_generate_cavs.py, then main_ace.py again: it only matches)")
    save_csv(run.ace_concepts(), table[CONCEPT_COLUMNS])
    return table


def survival_summary(survival: pd.DataFrame) -> pd.DataFrame:
    """Per round: dense concepts (and significant ones) that survive, vanish; concepts that appear."""
    rows = []
    for r, g in survival.groupby("round"):
        dense = g[g["dense_concept"] >= 0]
        rows.append({"round": int(r), "dense_concepts": int(len(dense[["class", "dense_concept"]].drop_duplicates())),
                     "survived": int((g["status"] == "survived").sum()),
                     "vanished": int((g["status"] == "vanished").sum()),
                     "appeared": int((g["status"] == "appeared").sum()),
                     "dense_significant": int(dense.loc[dense["dense_significant"], "dense_concept"].shape[0]),
                     "significant_survived": int(((g["status"] == "survived") & g["dense_significant"]).sum()),
                     "significant_survived_significant": int(((g["status"] == "survived") & g["dense_significant"]
                                                              & g["significant"]).sum())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the step

def _drop_older_table(run: RunDir, log) -> None:
    """An ``ace/concepts.csv`` written before a column was added (its rounds' settings are stale anyway) is
    removed, so that the rounds asked for are discovered again and written to a table of today's columns."""
    path = run.ace_concepts()
    if not path.is_file():
        return
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except Exception:  # unreadable: left for read_csv to report
        return
    lacking = [c for c in CONCEPT_COLUMNS if c not in header]
    if lacking:
        log(f"ACE: {path} lacks the column(s) {', '.join(lacking)} (an older version wrote it); discovering again")
        path.unlink()


@step("ace", script="main_ace.py", title="ACE concept discovery: superpixels of each class's train images clustered "
      "into concepts at the concept layer, every round, with CAVs, TCAV and the match to the dense round's concepts",
      folder="ace", needs=("pruning", "activations"), uses=("cavs",), per_round=True, gather=True,
      writes=("ace/patches.npz", "ace/round_XX/patch_activations.npy", "ace/round_XX/clusters.npz",
              "ace/round_XX/cavs.npz", "ace/concepts.csv", "ace/survival.csv", "ace/fingerprints.json",
              "config.ace.yaml"),
      figures=("plots/ace_*.png",))
def ace_step(run: RunDir, device: torch.device, rounds: list[int], force: bool = False, log=print) -> pd.DataFrame:
    """Discover concepts at every requested round; returns the concept table (``ace/concepts.csv``)."""
    from ..concepts.patch_grid import model_patch_size  # lazy: lottery_xai.concepts imports scikit-learn (1 s)

    _check_setup(run.cfg)
    rounds = start_step(run, "ace", rounds, log)
    cfg = run.cfg
    datasets, info = load_data(cfg, ("train", *cfg.tcav.splits), augment=False)
    classes = resolve_names(cfg.labels_for_tcav, info.class_names, "class", "labels_for_tcav")
    layer = ace_layer(cfg)
    shape = new_model(cfg, info.num_classes, cfg.seed, pretrained=False)
    get_layer(shape, layer)  # a typo in ace.layer fails before any work
    patch = model_patch_size(shape) if cfg.ace.superpixels == "patch_grid" else 0
    index = build_patch_index(run, datasets["train"], info, classes, log, patch=patch)
    loader = make_loader(ConcatDataset([datasets[s] for s in cfg.tcav.splits]), cfg, device, train=False)
    settings = round_settings(cfg)
    _drop_older_table(run, log)
    for r in tqdm(rounds, desc="ACE rounds"):
        value = f"{run.round_fingerprint(r)}:{settings}"
        done = run.ace_clusters(r).is_file() and run.ace_cavs(r).is_file() and run.ace_concepts().is_file()
        if not force and done and run.up_to_date("ace", round_name(r), value, log):
            continue
        if force:  # the activations too
            run.record_fingerprint("ace", f"{round_name(r)}/activations", "")
        discover_round(run, r, index, info, classes, loader, device, log)
    survival = match_to_dense(run, rounds, info.class_names, log)
    table = match_attributes(run, info, log)
    summary = survival_summary(survival)
    if len(summary):
        log(summary.to_string(index=False))
    log(f"ACE done: {len(table)} concepts ({int(table['significant'].sum())} significant) in {run.ace_concepts()}")
    return table


# ---------------------------------------------------------------- discovered concepts in steps 4 and 5

def resolve_discovered(run: RunDir, names: list[str]) -> list[tuple[str, int, int]]:
    """(name, class index, dense concept id) of each ``ace:<class>:<k>`` (``ace:all``: every significant
    concept of the dense round), checked against ``ace/concepts.csv``."""
    path = run.require(run.ace_concepts(), f"{label('ace')} (ACE, round 0)")
    table = read_csv(path, CONCEPT_COLUMNS, step=label("ace"))
    dense = table[table["round"] == 0]
    known = {str(n): (str(c), int(k)) for n, c, k in dense[["name", "class", "concept"]].itertuples(index=False)}
    class_names = [str(s) for s in load_npz(run.ace_patches(), keys=("class_names",), step=label("ace"))["class_names"]]
    wanted = []
    for name in names:
        if name == f"{PREFIX}all":
            wanted += [str(n) for n in dense.loc[dense["significant"].astype(bool), "name"]]
            continue
        if name not in known:
            raise unknown_name(f"discovered concept '{name}' in concepts_for_tcav is not among round 0's ACE concepts",
                               name, list(known), cutoff=0.6, otherwise=f"{len(known)} exist (ace/concepts.csv), "
                               f"as ace:<class>:<k>, or ace:all")
        wanted.append(name)
    wanted = list(dict.fromkeys(wanted))
    return [(n, class_names.index(known[n][0]), known[n][1]) for n in wanted]


def discovered_concept_cavs(run: RunDir, r: int, layer: str, names: list[str], n_runs: int, seed: int) -> dict:
    """CAVs at round ``r`` of dense-round ACE concepts, for step 4: each concept's patches (as the dense
    round found them) against the class's random sets, from round ``r``'s activations. Returns
    dict(concepts, cavs [n, n_runs, D], accuracy [n, n_runs]); run j uses random set j mod ace.n_random."""
    cfg = run.cfg
    if layer != ace_layer(cfg):
        return {"concepts": [], "cavs": None, "accuracy": None}
    wanted = resolve_discovered(run, names)
    for rr in sorted({0, r}):  # the dense concepts and this round's activations, both current
        run.require(run.ace_clusters(rr), f"{label('ace')} (rounds 0 and {r})")
        run.require_up_to_date("ace", round_name(rr), f"{run.round_fingerprint(rr)}:{round_settings(cfg)}",
                               f"{label('ace')} (rounds 0 and {r})")
    dense = load_npz(run.ace_clusters(0), keys=("concept_class", "concept_id", "concept_top"), step=label("ace"))
    stored = load_npz(run.ace_cavs(r), keys=("class_index", "random_sets"), step=label("ace"))
    index = load_npz(run.ace_patches(), keys=("patch_class",), step=label("ace"))
    acts = load_npy(run.ace_patch_activations(r), label("ace"), mmap=True, ndim=2, rows=len(index["patch_class"]))
    rng = np.random.default_rng(seed)
    cavs, accuracy = [], []
    for name, c, k in wanted:
        row = np.flatnonzero((dense["concept_class"] == c) & (dense["concept_id"] == k))[0]
        top = dense["concept_top"][row]
        top = top[top >= 0]
        sets = stored["random_sets"][list(stored["class_index"]).index(c)]
        _, pool_acts = _random_pool(run, r, index, c)
        source = acts if pool_acts is None else pool_acts
        negatives = [np.asarray(source[sets[j % len(sets)]], dtype=np.float64) for j in range(n_runs)]
        with threadpool_limits(limits=1, user_api="blas"):
            v, a = _fit_runs(np.asarray(acts[top], dtype=np.float64), negatives, cfg,
                             rng.integers(0, 2**31 - 1, n_runs))
        cavs.append(v), accuracy.append(a)
    return {"concepts": [n for n, _, _ in wanted], "cavs": np.stack(cavs) if cavs else None,
            "accuracy": np.stack(accuracy) if accuracy else None}


def _discovered_names(run: RunDir, info, names: list[str], asking: str) -> list[str]:
    """The concept source's ``resolve``: the ``ace:`` names of concepts_for_tcav as concept names (``ace:all``
    expanded), checked against round 0's concepts."""
    if names and run.cfg.cav_flattening_type != "avg_pool":
        raise UserError("discovered (ace:) concepts in concepts_for_tcav need cav_flattening_type avg_pool, the "
                        "activations ACE clusters")
    return [n for n, _, _ in resolve_discovered(run, names)] if names else []


register_source(ConceptSource("ace", "concepts ACE discovered at the dense round (ace:<class>:<k>, ace:all), at "
                              "ACE's layer; their CAVs refitted every round from the round's activations of the "
                              "same patches", prefix=PREFIX, made_by="ace", resolve=_discovered_names,
                              layers=lambda cfg: [ace_layer(cfg)], fit=discovered_concept_cavs))
