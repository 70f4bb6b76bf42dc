"""Step 5: TCAV scores with the random baseline and the protocol's two-sided t-test and threshold.

``tcav_scores.csv`` holds one protocol per (round, layer): its ``protocol`` column is ``config.cav_protocol``'s
label (``reference``, ``strict``, or the name with the keys that depart from it, e.g. ``reference (tcav.test=welch)``).
A table written before that column existed is read as the ``strict`` protocol, the only one the code had then
(exact for its default ``cav.negatives: rest``); its rows are recomputed when their round is run again, because no
settings were recorded with them. The settings of step 5 (protocol, test, threshold, gradient, splits and the CAVs'
own settings) are recorded like step 4's (``tcav/fingerprints.json``, unit ``round_XX/<layer>#settings``): a rerun
with other settings, or after step 4 changed its settings, recomputes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset
from tqdm.auto import tqdm

from ..config import Config, cav_protocol
from ..data.loaders import make_loader
from ..errors import UserError
from ..rundir import RunDir, round_name
from ..safe_io import read_csv, save_csv, unreadable, upsert_table
from ..steps import label, step
from .activations import warn_linear_tail
from .cavs import cav_settings, settings_current, settings_value
from .concept_sources import select_concepts
from .loading import load_data, load_round_model, resolve_names, start_step

# the columns every tcav_scores.csv has (readers require these, so that older tables stay readable) ...
TCAV_COLUMNS = ["round", "weights_remaining", "layer", "class", "concept", "tcav_mean", "tcav_std", "random_mean",
                "p_value", "significant", "n_images"]
# ... and the columns step 5 writes: the protocol of each row last
TCAV_TABLE_COLUMNS = TCAV_COLUMNS + ["protocol"]
# the type of each column, as readers take them back (safe_io.read_csv: a value of another type is one error line)
TCAV_TYPES = {"round": "int", "weights_remaining": "float", "layer": "str", "class": "str", "concept": "str",
              "tcav_mean": "float", "tcav_std": "float", "random_mean": "float", "p_value": "float",
              "significant": "bool", "n_images": "int", "protocol": "str"}
LEGACY_PROTOCOL = "strict"  # the protocol of the rows of a table written before the protocol column


def tcav_settings(cfg: Config, cav_record: str | None) -> dict:
    """Everything besides the checkpoint that changes step 5's rows of a layer (``cav_record``: step 4's
    recorded settings of the CAVs scored)."""
    p = cav_protocol(cfg)
    return {"protocol": p.label, "test": p.test, "correction": p.correction, "gradient": p.gradient,
            "alpha": cfg.tcav.alpha, "splits": list(cfg.tcav.splits), "max_images": cfg.tcav.max_images_per_class,
            "cavs": cav_record}


@step("tcav", number=5, script="main_lth_tcav.py", title="TCAV scores with significance tests for every round",
      folder="tcav", needs=("pruning", "cavs"), uses=("ace",), per_round=True, pipeline=True,
      writes=("tcav/tcav_scores.csv", "tcav/fingerprints.json", "config.tcav.yaml"))
def tcav_step(run: RunDir, device: torch.device, rounds: list[int], force: bool = False, log=print) -> pd.DataFrame:
    """TCAV with significance for the classes in labels_for_tcav and the concepts in concepts_for_tcav."""
    # lazy: lottery_xai.concepts imports scikit-learn (1 s), which only the steps that use CAVs need
    from ..concepts.cav import load_cavs
    from ..concepts.tcav import gradients_by_class, run_tcav

    if run.cfg.cav_flattening_type == "max_pool":
        raise UserError("TCAV needs cav_flattening_type flatten or avg_pool: the gradient of a max-pooled "
                        "activation is not a directional derivative")
    rounds = start_step(run, "tcav", rounds, log)
    cfg, step4 = run.cfg, label("cavs")
    datasets, info = load_data(cfg, cfg.tcav.splits, augment=False)
    warn_linear_tail(cfg, info.num_classes, log)
    classes = resolve_names(cfg.labels_for_tcav, info.class_names, "class", "labels_for_tcav")
    selection = select_concepts(run, info, "tcav")  # every source's concepts are scored alike
    class_index = {name: info.class_names.index(name) for name in classes}
    loader = make_loader(ConcatDataset([datasets[s] for s in cfg.tcav.splits]), cfg, device, train=False)
    protocol = cav_protocol(cfg)
    table = pd.DataFrame(columns=TCAV_TABLE_COLUMNS)
    if run.tcav_scores().is_file():
        stored = read_csv(run.tcav_scores(), TCAV_COLUMNS, step=label("tcav"), types=TCAV_TYPES)
        if "protocol" not in stored.columns:  # a table from before the protocols: its rows were the strict protocol's
            stored["protocol"] = LEGACY_PROTOCOL
            save_csv(run.tcav_scores(), stored[TCAV_TABLE_COLUMNS])  # so that the upserts below can read it
        if not force:
            table = stored[TCAV_TABLE_COLUMNS]

    def settings(r: int, layer: str) -> dict:
        return tcav_settings(cfg, run.fingerprints("cavs").get(f"{round_name(r)}/{layer}#settings"))

    for r in tqdm(rounds, desc="TCAV rounds"):
        fp = run.round_fingerprint(r)
        todo = [layer for layer in cfg.bb_layers_for_concepts
                if force or table[(table["round"] == r) & (table["layer"] == layer)].empty
                or not set(selection.at(cfg, layer))
                <= set(table.loc[(table["round"] == r) & (table["layer"] == layer), "concept"])
                or not run.up_to_date("tcav", f"{round_name(r)}/{layer}", fp, log)
                or not settings_current(run, "tcav", f"{round_name(r)}/{layer}", fp, settings(r, layer), log)]
        if not todo:
            continue
        model, ckpt = load_round_model(run, r, info.num_classes, device)
        model.requires_grad_(False)  # gradients reach the layer only, never the parameters
        for layer in todo:
            cav_path = run.require(run.cav_file(r, layer), step4)
            run.require_up_to_date("cavs", f"{round_name(r)}/{layer}", fp, step4)
            if not settings_current(run, "cavs", f"{round_name(r)}/{layer}", fp, cav_settings(cfg, selection.attributes)):
                raise UserError(f"the CAVs of round {r} at {layer} in '{run.root}' were made with other CAV settings "
                                f"(tcav.protocol, cav.*) or before the protocols; rerun {step4} with this config first")
            cav_result = load_cavs(cav_path, step4)
            grads = gradients_by_class(model, layer, loader, list(class_index.values()),
                                       flattening=cfg.cav_flattening_type, device=device,
                                       max_images=cfg.tcav.max_images_per_class or None, gradient=protocol.gradient,
                                       token_features=cfg.token_features)
            widths = {int(np.shape(g)[-1]) for g in grads.values() if len(g)}
            if widths and widths != {int(np.shape(cav_result["cavs"])[-1])}:
                raise unreadable(cav_path, f"CAVs of {np.shape(cav_result['cavs'])[-1]} values, the layer {layer} "
                                           f"of this model gives {widths.pop()}", step4)
            scores = run_tcav({name: grads[k] for name, k in class_index.items()}, cav_result,
                              selection.at(cfg, layer),
                              alpha=cfg.tcav.alpha, test=protocol.test, correction=protocol.correction)
            scores["protocol"] = protocol.label
            scores.insert(0, "layer", layer)
            scores.insert(0, "weights_remaining", ckpt["weights_remaining"])
            scores.insert(0, "round", r)
            table = upsert_table(run.tcav_scores(), scores, keys=["round", "layer"],
                                 sort=["round", "layer", "class", "concept"], columns=TCAV_TABLE_COLUMNS, types=TCAV_TYPES)
            run.record_fingerprint("tcav", f"{round_name(r)}/{layer}", fp)
            run.record_fingerprint("tcav", f"{round_name(r)}/{layer}#settings", settings_value(fp, settings(r, layer)))
    log(f"step 5 done: {run.tcav_scores()}")
    return table
