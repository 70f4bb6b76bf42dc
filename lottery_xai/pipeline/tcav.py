"""Step 5: TCAV scores with the random baseline and the two-sided t-test (Bonferroni over concepts)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset
from tqdm.auto import tqdm

from .. import rundir as rd
from ..config import Config
from ..errors import UserError
from ..loaders import make_loader
from .activations import warn_linear_tail
from .rounds import as_run, load_data, load_round_model, resolve_names, start_step

TCAV_COLUMNS = ["round", "weights_remaining", "layer", "class", "concept", "tcav_mean", "tcav_std", "random_mean",
                "p_value", "significant", "n_images"]


@rd.locked("tcav")
def tcav_step(run: rd.RunDir | Config, device: torch.device, rounds: list[int], force: bool = False, log=print) -> pd.DataFrame:
    """TCAV with significance for the classes in labels_for_tcav and the concepts in concepts_for_tcav."""
    from ..concepts.cav import load_cavs
    from ..concepts.tcav import gradients_by_class, run_tcav

    if as_run(run).cfg.cav_flattening_type == "max_pool":
        raise UserError("TCAV needs cav_flattening_type flatten or avg_pool: the gradient of a max-pooled "
                        "activation is not a directional derivative")
    run, cfg, rounds = start_step(run, "tcav", rounds, log)
    datasets, info = load_data(cfg, cfg.tcav.splits, augment=False)
    warn_linear_tail(cfg, info.num_classes, log)
    classes = resolve_names(cfg.labels_for_tcav, info.class_names, "class", "labels_for_tcav")
    # ACE hook: ace:<class>:<k> names are discovered concepts (main_ace.py), scored like the labelled ones
    from .ace import concepts_at, discovered_names, split_concept_names

    labelled, discovered = split_concept_names(cfg.concepts_for_tcav)
    concepts = (resolve_names(labelled, info.concept_names, "concept", "concepts_for_tcav") if labelled else []) \
        + discovered_names(run, discovered)
    class_index = {name: info.class_names.index(name) for name in classes}
    loader = make_loader(ConcatDataset([datasets[s] for s in cfg.tcav.splits]), cfg, device, train=False)
    table = rd.read_csv(run.tcav_scores(), TCAV_COLUMNS) if run.tcav_scores().is_file() and not force else \
        pd.DataFrame(columns=TCAV_COLUMNS)
    for r in tqdm(rounds, desc="TCAV rounds"):
        fp = run.round_fingerprint(r)
        todo = [layer for layer in cfg.bb_layers_for_concepts
                if force or table[(table["round"] == r) & (table["layer"] == layer)].empty
                or not set(concepts_at(cfg, layer, concepts))
                <= set(table.loc[(table["round"] == r) & (table["layer"] == layer), "concept"])
                or not run.up_to_date("tcav", f"{rd.round_name(r)}/{layer}", fp, log)]
        if not todo:
            continue
        model, ckpt = load_round_model(cfg, run, r, info.num_classes, device)
        model.requires_grad_(False)  # gradients reach the layer only, never the parameters
        for layer in todo:
            cav_path = run.require(run.cav_file(r, layer), "step 4 (main_lth_generate_cavs.py)")
            run.require_up_to_date("cavs", f"{rd.round_name(r)}/{layer}", fp, "step 4 (main_lth_generate_cavs.py)")
            cav_result = load_cavs(cav_path)
            grads = gradients_by_class(model, layer, loader, list(class_index.values()),
                                       flattening=cfg.cav_flattening_type, device=device,
                                       max_images=cfg.tcav.max_images_per_class or None)
            widths = {int(np.shape(g)[-1]) for g in grads.values() if len(g)}
            if widths and widths != {int(np.shape(cav_result["cavs"])[-1])}:
                raise rd.unreadable(cav_path, f"CAVs of {np.shape(cav_result['cavs'])[-1]} values, the layer {layer} "
                                              f"of this model gives {widths.pop()}", "step 4 (main_lth_generate_cavs.py)")
            scores = run_tcav({name: grads[k] for name, k in class_index.items()}, cav_result,
                              concepts_at(cfg, layer, concepts),
                              alpha=cfg.tcav.alpha)
            scores.insert(0, "layer", layer)
            scores.insert(0, "weights_remaining", ckpt["weights_remaining"])
            scores.insert(0, "round", r)
            table = rd.upsert_table(run.tcav_scores(), scores, keys=["round", "layer"],
                                    sort=["round", "layer", "class", "concept"], columns=TCAV_COLUMNS)
            run.record_fingerprint("tcav", f"{rd.round_name(r)}/{layer}", fp)
    log(f"step 5 done: {run.tcav_scores()}")
    return table
