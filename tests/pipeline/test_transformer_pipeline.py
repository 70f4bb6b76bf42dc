"""A tiny ViT and a tiny Swin (timm:<name> with model_args) through steps 1-8 on the embedded default's synthetic
birds at 32 px (issue 23): one pruning round, one epoch, AdamW; the run-directory contract, the transformer's
attention and MLP linears pruned with the head at its own rate, activations of the token features, maps on the
token grid upsampled to the image."""
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DEVICE, run_steps, tiny_overrides

pytest.importorskip("timm")

from lottery_xai.pipeline.loading import load_round_model  # noqa: E402
from lottery_xai.pipeline.prune import LotteryRun  # noqa: E402
from lottery_xai.report import make_all_plots  # noqa: E402
from lottery_xai.rundir import open_run  # noqa: E402

quiet = lambda *_: None  # noqa: E731
COMMON = ["train.epochs=1", "prune_iterations=1", "train.optimizer=adamw", "train.lr=0.001", "train.weight_decay=0.05",
          "cav.n_random=2", "cav.n_jobs=1", "heatmaps.images_per_class=1", "heatmaps.grid_images=2",
          "heatmaps.methods=[gradcam,grad_x_activation,saliency,random]", "metrics.transform_methods=[gradcam]",
          "metrics.n_steps=4", "metrics.n_transforms=1", "metrics.fractions=[0.1]", "metrics.samek_steps=4",
          "stats.n_bootstrap=100"]
# (model_arch, model_args, concept layer, width of its token features, CAM grid side)
FAMILIES = {
    "vit": ("timm:vit_small_patch16_224", '[depth=2,embed_dim=16,num_heads=2,patch_size=8,mlp_ratio=2]',
            "blocks.-1", 16, 4),
    "swin": ("timm:swin_tiny_patch4_window7_224", '["depths=[1, 1]","num_heads=[1, 2]",embed_dim=16,window_size=4,mlp_ratio=2]',
             "layers.-1", 32, 4),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def transformer_run(request, tiny_data, tmp_path_factory):
    arch, args, layer, width, side = FAMILIES[request.param]
    rollout = ["heatmaps.methods=[gradcam,grad_x_activation,saliency,random,attention_rollout]"] \
        if request.param == "vit" else []  # the transformer-only method (a class token's attention: ViT, DeiT)
    overrides = tiny_overrides(tiny_data, tmp_path_factory.mktemp(f"{request.param}_logs"), *COMMON, *rollout,
                               f"model_arch={arch}", f"model_args={args}", f"bb_layers_for_concepts=[{layer}]")
    run, rounds = open_run(None, overrides), [0, 1]
    LotteryRun(run, DEVICE, log=quiet).run_rounds(rounds)
    run_steps(run, rounds)
    make_all_plots(run, log=quiet)
    return request.param, run, layer, width, side


def test_steps_1_to_8_write_the_run_directory(transformer_run):
    family, run, layer, width, _ = transformer_run
    assert ":" not in run.root.name and "timm-" in run.root.name and "args-" in run.root.name
    summary = pd.read_csv(run.pruning_summary())
    assert list(summary["round"]) == [0, 1] and summary["weights_remaining"].iloc[1] < 1
    assert len(pd.read_csv(run.test_metrics())) == 2
    for r in (0, 1):
        acts = np.load(run.activation_file(r, "train", layer))
        assert acts.shape[1] == width and np.isfinite(acts).all()  # the class token (ViT) or the token mean (Swin)
        for method in run.cfg.heatmaps.methods:
            maps = np.load(run.heatmap_file(r, method))["maps"]
            assert maps.shape[1:] == (32, 32) and np.isfinite(maps).all()
    tcav = pd.read_csv(run.tcav_scores())
    assert set(tcav["round"]) == {0, 1} and set(tcav["layer"]) == {layer}
    metrics = pd.read_csv(run.explanation_metrics())
    assert {"gradcam", "saliency"} <= set(metrics["method"])
    assert ("attention_rollout" in set(metrics["method"])) == (family == "vit") and {"deletion_auc", "energy_in_box"} <= set(metrics["metric"])
    plots = {p.name for p in (run.root / "plots").glob("*.png")}
    assert {"accuracy_vs_weights.png", "heatmaps_gradcam.png"} <= plots


def test_attention_and_mlp_linears_are_pruned_with_the_head_at_its_own_rate(transformer_run):
    family, run, *_ = transformer_run
    ckpt = torch.load(run.checkpoint(1), map_location="cpu", weights_only=True)
    masks = ckpt["masks"]
    head = "head.weight" if family == "vit" else "head.fc.weight"
    linears = [n for n in masks if n.endswith(("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"))]
    assert len(linears) == 8
    body = [n for n in masks if n != head]
    kept = sum(int(masks[n].sum()) for n in body) / sum(masks[n].numel() for n in body)
    assert kept == pytest.approx(0.5, abs=1e-3)  # the tiny runs prune 50 % per round, globally
    assert float(masks[head].float().mean()) == pytest.approx(1 - 0.5 * 0.5, abs=0.01)  # prune_fc_rate 0.5
    for n, mask in masks.items():
        assert (ckpt["state_dict"][n][~mask] == 0).all(), n  # held through AdamW's decayed steps


def test_round_models_load_and_explain_on_the_token_grid(transformer_run):
    from lottery_xai.attribution import gradcam
    from lottery_xai.pipeline.maps import cam_layer

    family, run, _, _, side = transformer_run
    model, _ = load_round_model(run, 1, None, DEVICE)  # the class count read from the checkpoint's head
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = gradcam(model, images, None, layer=cam_layer(run.cfg), upsample=False)
    assert maps.shape == (2, side, side)


@pytest.mark.parametrize("transformer_run", ["vit"], indirect=True)  # one family is enough for ACE
def test_ace_on_patch_grid_superpixels(transformer_run):
    """ACE on the ViT's token features, its superpixels snapped to the 8-pixel patches: every patch of the
    index is a union of whole tokens."""
    from lottery_xai.config import replace
    from lottery_xai.pipeline.ace import ace_step
    from lottery_xai.rundir import RunDir

    family, run, *_ = transformer_run
    ace = RunDir(replace(run.cfg, **{"ace.superpixels": "patch_grid", "ace.images_per_class": 3,
                                     "ace.n_segments": [4, 8], "ace.n_clusters": 2, "ace.min_patches": 0,
                                     "ace.max_patches": 4, "ace.n_random": 2}))
    table = ace_step(ace, DEVICE, [0], log=quiet)
    index = np.load(ace.ace_patches())
    cells = index["label_maps"].reshape(*index["label_maps"].shape[:2], 4, 8, 4, 8)
    assert (cells == cells[..., :1, :, :1]).all()  # constant on every 8 x 8 token
    acts = np.load(ace.ace_patch_activations(0))
    assert acts.shape == (len(index["patch_image"]), 16) and np.isfinite(acts).all()
    assert set(table["round"]) == {0}
