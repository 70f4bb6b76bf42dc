"""Step 2: test accuracy and loss of every round (and per-class accuracy)."""
from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.loaders import make_loader
from ..rundir import RunDir, round_name
from ..safe_io import read_csv, upsert_table
from ..steps import step
from ..training import evaluate
from .loading import load_data, load_round_model, start_step

METRIC_COLUMNS = ["round", "weights_remaining", "test_acc", "test_loss", "n_images"]
PER_CLASS_COLUMNS = ["round", "weights_remaining", "class", "accuracy", "n_images"]


@step("test", number=2, script="main_lth_test.py", title="test accuracy and loss of every pruning round",
      folder="test", needs=("pruning",), per_round=True, pipeline=True, controls=True,
      writes=("test/metrics.csv", "test/per_class.csv", "test/fingerprints.json", "config.test.yaml"))
def evaluate_rounds(run: RunDir, device: torch.device, rounds: list[int], force: bool = False,
                    log=print) -> pd.DataFrame:
    """Evaluate each finished round's checkpoint on the test split; resumable, one row per round
    (a round whose row was made from another checkpoint than the current one is evaluated again)."""
    rounds = start_step(run, "test", rounds, log)
    cfg = run.cfg
    datasets, info = load_data(cfg, ("test",), augment=False)
    loader = make_loader(datasets["test"], cfg, device, train=False)
    metrics = read_csv(run.test_metrics(), METRIC_COLUMNS, missing_ok=True)
    for r in tqdm(rounds, desc="test rounds"):
        fp = run.round_fingerprint(r)
        if not force and r in set(metrics["round"]) and run.up_to_date("test", round_name(r), fp, log):
            continue
        model, ckpt = load_round_model(run, r, info.num_classes, device)
        result = evaluate(model, loader, device, info.num_classes, cfg.train.amp, progress=True)
        row = {"round": r, "weights_remaining": ckpt["weights_remaining"], "test_acc": result["acc"],
               "test_loss": result["loss"], "n_images": result["n"]}
        counts = result["per_class_count"].clamp(min=1).double()
        acc = (result["per_class_correct"].double() / counts).tolist()
        rows = [{"round": r, "weights_remaining": ckpt["weights_remaining"], "class": name, "accuracy": a,
                 "n_images": int(n)} for name, a, n in zip(info.class_names, acc, result["per_class_count"].tolist())]
        # read-modify-write: rows another process wrote meanwhile are kept
        metrics = upsert_table(run.test_metrics(), [row], keys=["round"], sort=["round"], columns=METRIC_COLUMNS)
        upsert_table(run.test_per_class(), rows, keys=["round"], sort=["round", "class"], columns=PER_CLASS_COLUMNS)
        run.record_fingerprint("test", round_name(r), fp)
        log(f"round {r}: {100 * ckpt['weights_remaining']:.1f}% weights remain, test acc {100 * result['acc']:.2f}% "
            f"on {result['n']} images")
    log(metrics.to_string(index=False))
    log(f"step 2 done: {run.test_metrics()}")
    return metrics
