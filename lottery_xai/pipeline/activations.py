"""Step 3: bottleneck activations of every split and round, streamed to .npy memory maps."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..activations import save_activations
from ..config import Config
from ..data.loaders import make_loader
from ..models import linear_after
from ..rundir import RunDir, round_name
from ..steps import step
from .loading import load_data, load_round_model, new_model, start_step


def warn_linear_tail(cfg: Config, num_classes: int, log=print) -> list[str]:
    """Warn about every configured concept layer after which only pooling and linear layers run."""
    model = new_model(cfg, num_classes, cfg.seed, pretrained=False)  # its layers only
    tails = [layer for layer in cfg.bb_layers_for_concepts if linear_after(model, layer, cfg.img_size)]
    for layer in tails:
        log(f"warning: only pooling and linear layers follow '{layer}', so the class-logit gradient there is the "
            "same for every image and each CAV's TCAV score is 0 or 1; put an earlier layer in bb_layers_for_concepts")
    return tails


@step("activations", number=3, script="main_lth_save_activations.py", title="bottleneck activations of every "
      "round and split", folder="activations", needs=("pruning",), per_round=True, pipeline=True,
      writes=("activations/round_XX/{split}_{layer}.npy", "activations/round_XX/{split}_{labels,concepts,ids}.npy",
              "activations/fingerprints.json", "config.activations.yaml"))
def activations_step(run: RunDir, device: torch.device, rounds: list[int], force: bool = False, log=print) -> None:
    """Bottleneck activations of every split and round, streamed to .npy memory maps."""
    rounds = start_step(run, "activations", rounds, log)
    cfg = run.cfg
    datasets, info = load_data(cfg, cfg.activations.splits, augment=False)
    warn_linear_tail(cfg, info.num_classes, log)
    layers = list(cfg.bb_layers_for_concepts)
    for r in tqdm(rounds, desc="activation rounds"):
        fp = run.round_fingerprint(r)
        for split, dataset in datasets.items():
            outs = {layer: run.activation_file(r, split, layer) for layer in layers}
            extra = {what: run.activation_meta(r, split, what) for what in ("labels", "concepts", "ids")}
            unit = f"{round_name(r)}/{split}"
            if not force and all(p.is_file() for p in [*outs.values(), *extra.values()]) \
                    and run.up_to_date("activations", unit, fp, log):
                continue
            model, _ = load_round_model(run, r, info.num_classes, device)
            loader = make_loader(dataset, cfg, device, train=False)
            save_activations(model, layers, loader, outs, flattening=cfg.cav_flattening_type, n_images=len(dataset),
                             dtype=cfg.activations.dtype, device=device, extra_paths=extra,
                             token_features=cfg.token_features)
            run.record_fingerprint("activations", unit, fp)
    log(f"step 3 done: activations of {len(rounds)} rounds in {run.root / 'activations'}")
