"""timm backbones (model_arch timm:<name>) and pretrained weights from a local file (issue 23, item 1)."""
import pytest
import torch

from lottery_xai.errors import UserError

timm = pytest.importorskip("timm")

from lottery_xai.timm_backbones import (  # noqa: E402
    FAMILIES, build_timm, family_layers, family_of, parse_model_args, resolve_layer_name)
from lottery_xai.tokens import to_grid, token_layout  # noqa: E402
from lottery_xai.weights import load_local_weights, read_state_dict  # noqa: E402

TINY_VIT = ["depth=1", "embed_dim=32", "num_heads=2", "patch_size=8"]

# the four backbones the issue names, cut to one block per stage so that the test stays fast: the names, the
# families, the heads and the layer names are the real models'; (model_args, img_size, CAM grid side)
NAMED = {
    "vit_small_patch16_224": (["depth=1"], 64, 4),
    "deit_small_patch16_224": (["depth=1"], 64, 4),
    "swin_tiny_patch4_window7_224": (["depths=[1, 1, 1, 1]", "embed_dim=24", "num_heads=[1, 1, 1, 1]"], 64, 2),
    "convnext_tiny": (["depths=[1, 1, 1, 1]", "dims=[8, 8, 8, 8]"], 64, 2),
}


def test_model_args_are_read_as_yaml():
    assert parse_model_args(["depth=1", "embed_dim=32", "depths=[1, 1]", "qkv_bias=false", "act_layer=gelu"]) == {
        "depth": 1, "embed_dim": 32, "depths": (1, 1), "qkv_bias": False, "act_layer": "gelu"}
    for bad in (["depth"], ["depth=1", "depth=2"], ["num_classes=3"], ["img_size=32"], ["1x=2"]):
        with pytest.raises(UserError):
            parse_model_args(bad)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_backbones_build_offline_with_the_dataset_head(name):
    args, size, side = NAMED[name]
    torch.manual_seed(0)
    model = build_timm(f"timm:{name}", 3, False, size, args).eval()
    cam, concept, classifier = family_layers(f"timm:{name}")
    head = model.get_submodule(classifier)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 3
    x = torch.randn(2, 3, size, size)
    outputs = {}
    hooks = [model.get_submodule(resolve_layer_name(model, n)).register_forward_hook(
        lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in (cam, concept)]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    assert logits.shape == (2, 3)
    grid = to_grid(outputs[cam], token_layout(model))
    assert grid.shape[0] == 2 and grid.shape[-2:] == (side, side)
    if family_of(name) == "vit":
        assert model.patch_embed.grid_size == (size // 16, size // 16)  # img_size reached the position embedding


def test_families_of_the_named_models():
    assert [family_of(n) for n in sorted(NAMED)] == ["convnext", "vit", "swin", "vit"]
    assert FAMILIES["vit"].cam_layer == "blocks.-1.norm1"  # pytorch-grad-cam's vit_example.py target layer


def test_unknown_timm_name_and_pretrained_true_are_one_line_errors():
    with pytest.raises(UserError, match="did you mean 'vit_small_patch16_224'"):
        build_timm("timm:vit_smal_patch16_224", 3, False, 32)
    with pytest.raises(UserError, match="nothing is fetched at run time"):
        build_timm("timm:vit_small_patch16_224", 3, True, 32, TINY_VIT)


def test_negative_layer_indices_resolve_to_the_models_names():
    model = build_timm("timm:vit_small_patch16_224", 3, False, 32, ["depth=3", "embed_dim=16", "num_heads=2",
                                                                      "patch_size=8"])
    assert resolve_layer_name(model, "blocks.-1.norm1") == "blocks.2.norm1"
    assert resolve_layer_name(model, "blocks.-3") == "blocks.0"
    assert resolve_layer_name(model, "blocks.1.mlp") == "blocks.1.mlp"
    with pytest.raises(UserError, match="out of range"):
        resolve_layer_name(model, "blocks.-4")


# ---------------------------------------------------------------- pretrained: <path>

def _tiny_vit(classes=3, size=32, args=TINY_VIT, seed=0):
    torch.manual_seed(seed)
    return build_timm("timm:vit_small_patch16_224", classes, False, size, args)


def test_timm_weights_from_a_local_file_keep_the_head_when_it_fits(tmp_path):
    source = _tiny_vit(seed=1)
    path = tmp_path / "vit.pth"
    torch.save({"model": source.state_dict()}, path)  # timm's own checkpoint layout
    torch.manual_seed(0)
    loaded = build_timm("timm:vit_small_patch16_224", 3, str(path), 32, TINY_VIT)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_timm_weights_at_another_size_and_class_count(tmp_path):
    """ImageNet-style: another head (dropped, fresh for the run's classes) and another image size (timm's
    filter resamples the position embedding to the run's grid)."""
    source = _tiny_vit(classes=10, size=32, seed=1)
    path = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(5)
    fresh = _tiny_vit(classes=3, size=64, seed=5)
    torch.manual_seed(5)
    loaded = build_timm("timm:vit_small_patch16_224", 3, str(path), 64, TINY_VIT)
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(loaded.cls_token, source.cls_token)
    assert loaded.pos_embed.shape == (1, 1 + 8 * 8, 32)  # 64 px / patch 8 = 8 x 8 tokens
    assert loaded.head.out_features == 3
    assert torch.equal(loaded.head.weight, fresh.head.weight)  # the fresh head of the seeded build


def test_a_file_that_does_not_fit_names_keys_and_shapes(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(_tiny_vit().state_dict(), path)
    with pytest.raises(UserError) as wider:
        build_timm("timm:vit_small_patch16_224", 3, str(path), 32, ["depth=1", "embed_dim=48", "num_heads=2",
                                                                     "patch_size=8"])
    message = str(wider.value)
    assert "\n" not in message and "shape(s) differ" in message and "cls_token file (1, 1, 32) vs model (1, 1, 48)" in message
    with pytest.raises(UserError) as deeper:
        build_timm("timm:vit_small_patch16_224", 3, str(path), 32, ["depth=2", "embed_dim=32", "num_heads=2",
                                                                     "patch_size=8"])
    assert "key(s) of the model missing from the file: blocks.1.norm1.weight" in str(deeper.value)
    with pytest.raises(UserError, match="does not exist"):
        build_timm("timm:vit_small_patch16_224", 3, str(tmp_path / "none.pth"), 32, TINY_VIT)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable weights file"):
        read_state_dict(tmp_path / "junk.pth")


def test_torchvision_weights_from_a_local_file(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=1000)  # an ImageNet-shaped file
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=4)
    head = model.fc.weight.clone()
    load_local_weights(model, path, "fc", "resnet18")
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(model.bn1.running_mean, source.bn1.running_mean)
    assert torch.equal(model.fc.weight, head)  # 1000 classes in the file, 4 here: the fresh head stays
    state = source.state_dict()
    del state["layer4.1.conv2.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)  # DDP keys in a wrapper
    with pytest.raises(UserError) as error:
        load_local_weights(model, path, "fc", "resnet18")
    message = str(error.value)
    assert "missing from the file: layer4.1.conv2.weight" in message
    assert "does not have: extra.weight" in message
    assert "conv1.weight file (64, 3, 3, 3) vs model (64, 3, 7, 7)" in message


def test_our_round_checkpoint_is_a_weights_file(tmp_path):
    from lottery_xai.models import build_model

    torch.manual_seed(0)
    source = build_model("small_resnet", 4, False, 32)
    path = tmp_path / "round.pt"
    torch.save({"state_dict": source.state_dict(), "which": "best"}, path)
    torch.manual_seed(1)
    model = load_local_weights(build_model("small_resnet", 4, False, 32), path, "fc", "small_resnet")
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ---------------------------------------------------------------- the config keys: model_arch, model_args, pretrained

def test_config_builds_timm_backbones_and_loads_weights_files(tmp_path):
    """``model_arch: timm:<name>``, ``model_args`` and ``pretrained: <path>`` reach the model a step builds
    (pipeline.loading.new_model); a round checkpoint's model is built without reading the file."""
    from lottery_xai.config import load_config
    from lottery_xai.models import architecture, build_model
    from lottery_xai.pipeline.loading import new_model

    source = _tiny_vit(classes=10, seed=1)
    path = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), path)
    args = "model_args=[" + ",".join(TINY_VIT) + "]"
    cfg = load_config(None, ["model_arch=timm:vit_small_patch16_224", args, f"pretrained={path}", "img_size=32"])
    assert cfg.pretrained == str(path)
    model = new_model(cfg, 3, seed=4)
    assert torch.equal(model.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)
    assert model.head.out_features == 3  # the file's 10-class head is not the run's: a fresh one
    plain = new_model(cfg, 3, seed=4, pretrained=False)
    assert torch.equal(plain.head.weight, model.head.weight)  # the same seeded head, with or without the file
    assert not torch.equal(plain.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)
    assert architecture(cfg.model_arch).classifier == "head" and architecture(cfg.model_arch).cam_layer == "blocks.-1.norm1"
    # our own backbones read a weights file too (here a round checkpoint)
    torch.manual_seed(0)
    resnet = build_model("small_resnet", 4, False, 32)
    torch.save({"state_dict": resnet.state_dict()}, tmp_path / "round.pt")
    loaded = build_model("small_resnet", 4, str(tmp_path / "round.pt"), 32)
    assert torch.equal(loaded.layer4.conv2.weight, resnet.layer4.conv2.weight)


def test_config_errors_of_the_model_keys():
    from lottery_xai.config import load_config

    with pytest.raises(UserError, match="timm:<name> backbones only"):
        load_config(None, ["model_args=[depth=1]"])
    with pytest.raises(UserError, match="cannot set 'num_classes'"):
        load_config(None, ["model_arch=timm:vit_small_patch16_224", "model_args=[num_classes=3]"])
    assert load_config(None, ["pretrained=false"]).pretrained is False
    assert load_config(None, ["pretrained=true"]).pretrained is True
