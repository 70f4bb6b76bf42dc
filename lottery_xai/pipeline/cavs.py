"""Step 4: CAVs of every concept and random-vs-random CAVs, per round and layer.

The CAV settings in force (``config.cav_protocol``: the protocol with the keys set on top, and the other ``cav.*``
keys that change a fit) are recorded beside each round and layer's checkpoint fingerprint, as the unit
``round_XX/<layer>#settings`` of ``cavs/fingerprints.json`` with the value ``<fingerprint>|<settings JSON>``; a rerun
with other settings recomputes. (The unit ``round_XX/<layer>`` itself keeps the bare checkpoint fingerprint, which
ACE, step 7 and the tests compare with ``run.round_fingerprint``.) CAV files written before the settings were
recorded are recomputed once.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import Config, cav_protocol
from ..rundir import RunDir, round_name
from ..safe_io import load_npy, read_csv, unreadable, upsert_table
from ..seeds import SeedPurpose, derived_seed
from ..steps import label, step
from .concept_sources import select_concepts, with_sources_cavs
from .loading import load_data, resolve_names, start_step

CAV_ACCURACY_COLUMNS = ["round", "layer", "concept", "run", "accuracy", "kind"]


def _stacked(run: RunDir, r: int, layer: str, info=None) -> tuple[np.ndarray, np.ndarray]:
    """The activations and concept labels of the CAV splits, checked against each other (and, given the
    dataset's ``info``, against its splits and concepts)."""
    cfg, step3 = run.cfg, label("activations")
    acts, concepts = [], []
    for split in cfg.cav.splits:
        path = run.require(run.activation_file(r, split, layer), step3)
        run.require_up_to_date("activations", f"{round_name(r)}/{split}", run.round_fingerprint(r), step3)
        expected = len(info.split_ids[split]) if info is not None else None
        ids = load_npy(run.activation_meta(r, split, "ids"), step3, ndim=1, rows=expected)
        act = load_npy(path, step3, mmap=True, ndim=2, rows=len(ids))
        concepts_path = run.activation_meta(r, split, "concepts")
        labels = load_npy(concepts_path, step3, ndim=2, rows=len(ids))
        if info is not None and labels.shape[1] != info.n_concepts:
            raise unreadable(concepts_path, f"{labels.shape[1]} concepts, the dataset has {info.n_concepts}", step3)
        if acts and act.shape[1] != acts[0].shape[1]:
            raise unreadable(path, f"{act.shape[1]} values per image, {acts[0].shape[1]} in the "
                                   f"{cfg.cav.splits[0]} split", step3)
        acts.append(act)
        concepts.append(labels)
    return np.concatenate(acts).astype(np.float32), np.concatenate(concepts)


def cav_settings(cfg: Config, concepts: list[str]) -> dict:
    """Everything besides the checkpoint that changes step 4's CAVs (the labelled ``concepts`` fitted included)."""
    p = cav_protocol(cfg)
    return {"negatives": p.negatives, "features": p.features,
            "classifier": p.classifier, "C": cfg.cav.C, "linear_alpha": cfg.cav.linear_alpha,
            "n_random": cfg.cav.n_random, "max_per_set": cfg.cav.max_per_set, "test_fraction": cfg.cav.test_fraction,
            "splits": list(cfg.cav.splits), "flattening": cfg.cav_flattening_type, "concepts": list(concepts)}


def settings_value(fingerprint: str, settings: dict) -> str:
    """The value recorded for a unit's settings: the checkpoint fingerprint and the settings as JSON."""
    return f"{fingerprint}|{json.dumps(settings, sort_keys=True)}"


def settings_current(run: RunDir, step: str, unit: str, fingerprint: str, settings: dict, log=None) -> bool:
    """Whether ``step``'s outputs of ``unit`` were made with ``settings`` (their checkpoint is checked by
    ``run.up_to_date``); logs which settings changed when not."""
    recorded = run.fingerprints(step).get(f"{unit}#settings")
    if recorded == settings_value(fingerprint, settings):
        return True
    if log is not None and recorded is not None and recorded.split("|", 1)[0] == fingerprint:
        try:
            old = json.loads(recorded.split("|", 1)[1])
        except (IndexError, ValueError):
            old = {}
        changed = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
        log(f"round {int(unit.split('/')[0].rsplit('_', 1)[1])}: {step}/{unit} was made with other settings "
            f"({changed or 'unreadable record'}), recomputing")
    elif log is not None and recorded is None:
        log(f"round {int(unit.split('/')[0].rsplit('_', 1)[1])}: {step}/{unit} has no recorded settings (made before "
            "the TCAV protocols), recomputing")
    return False


def _activation_width(run: RunDir, r: int, layer: str) -> int | None:
    """Values per image of round ``r``'s stored activations of ``layer`` (None when step 3 left none)."""
    path = run.activation_file(r, run.cfg.cav.splits[0], layer)
    return load_npy(path, label("activations"), mmap=True, ndim=2).shape[1] if path.is_file() else None


def _lacks_concepts(path, concepts: list[str]) -> bool:
    """Whether the CAV file ``path`` misses one of ``concepts`` (another source's concepts, asked for since it was
    made; the attributes fitted are part of the recorded settings)."""
    from ..concepts.cav import load_cavs  # lazy: scikit-learn (1 s), only the steps that use CAVs

    return bool(concepts) and not set(concepts) <= set(load_cavs(path, label("cavs"))["concepts"])


@step("cavs", number=4, script="main_lth_generate_cavs.py", title="concept and random CAVs of every round and layer",
      folder="cavs", needs=("pruning", "activations"), uses=("ace",), per_round=True, pipeline=True,
      writes=("cavs/round_XX/{layer}.npz", "cavs/cav_accuracy.csv", "cavs/fingerprints.json", "config.cavs.yaml"))
def cavs_step(run: RunDir, rounds: list[int], force: bool = False, log=print) -> pd.DataFrame:
    """Concept and random CAVs for every round and layer, and the held-out accuracy of each (with the names of
    another concept source in concepts_for_tcav, e.g. ``ace:``, the CAVs of its concepts too: ``uses`` ace)."""
    from ..concepts.cav import fit_all_cavs, load_cavs, save_cavs  # lazy: scikit-learn (1 s), only the steps that fit

    rounds = start_step(run, "cavs", rounds, log)
    cfg = run.cfg
    _, info = load_data(cfg, ())
    selection = select_concepts(run, info, "cavs")  # the dataset's attributes and the other sources' concepts
    concepts = selection.attributes
    columns = [info.concept_names.index(c) for c in concepts]
    table = read_csv(run.cav_accuracy(), CAV_ACCURACY_COLUMNS, missing_ok=True)
    protocol, settings = cav_protocol(cfg), cav_settings(cfg, concepts)
    for r in tqdm(rounds, desc="CAV rounds"):
        fp, rows = run.round_fingerprint(r), []
        for layer in cfg.bb_layers_for_concepts:
            path = run.cav_file(r, layer)
            unit = f"{round_name(r)}/{layer}"
            if force or not path.is_file() or not run.up_to_date("cavs", unit, fp, log) \
                    or not settings_current(run, "cavs", unit, fp, settings, log) \
                    or _lacks_concepts(path, [n for _, names in selection.fitted_apart(cfg, layer) for n in names]):
                acts, labels = _stacked(run, r, layer, info)
                result = fit_all_cavs(acts, labels[:, columns], concepts, n_random=cfg.cav.n_random,
                                      negatives=protocol.negatives, classifier=protocol.classifier,
                                      standardize=protocol.standardize, linear_alpha=cfg.cav.linear_alpha,
                                      seed=derived_seed(cfg.seed, SeedPurpose.CAV, r), n_jobs=cfg.cav.n_jobs,
                                      test_fraction=cfg.cav.test_fraction, C=cfg.cav.C,
                                      max_per_set=cfg.cav.max_per_set or None)
                result = with_sources_cavs(run, r, layer, selection, result, derived_seed(cfg.seed, SeedPurpose.CAV, r, 1))
                result["settings"] = json.dumps(settings, sort_keys=True)
                save_cavs(path, result)
                run.record_fingerprint("cavs", unit, fp)
                run.record_fingerprint("cavs", f"{unit}#settings", settings_value(fp, settings))
            result = load_cavs(path, label("cavs"))
            width = _activation_width(run, r, layer)
            if width is not None and result["cavs"].shape[-1] != width:
                raise unreadable(path, f"CAVs of {result['cavs'].shape[-1]} values, the activations of {layer} "
                                       f"have {width}", label("cavs"))
            for c, name in enumerate(result["concepts"]):
                rows += [{"round": r, "layer": layer, "concept": name, "run": k, "accuracy": a, "kind": "concept"}
                         for k, a in enumerate(result["accuracy"][c])]
            rows += [{"round": r, "layer": layer, "concept": "random", "run": k, "accuracy": a, "kind": "random"}
                     for k, a in enumerate(result["random_accuracy"])]
        # read-modify-write after each round: rounds and layers not processed here are kept
        table = upsert_table(run.cav_accuracy(), rows, keys=["round", "layer"],
                             sort=["round", "layer", "kind", "concept", "run"], columns=CAV_ACCURACY_COLUMNS)
    log(f"step 4 done: CAVs in {run.root / 'cavs'}, accuracies in {run.cav_accuracy()}")
    return table
