"""Methods described like metrics: every registered method is a `MethodSpec` whose declaration the steps
read (layer, options from the config, seed and targets); a new declaration is usable without other code."""
import pytest
import torch
from torch import nn

from lottery_xai.attribution import (FAMILIES, METHODS, MethodSettings, MethodSpec, attribute, get_method,
                                     layer_methods, register, unregister)
from lottery_xai.attribution.noise_tunnel import noise_tunnel
from lottery_xai.config import load_config
from lottery_xai.errors import UserError
from lottery_xai.pipeline.maps import (configured_maps, explained_targets, layer_for, map_seed, method_options,
                                       predicted_classes)
from lottery_xai.seeds import SeedPurpose, derived_seed

DEFAULT_METHODS = ["gradcam", "gradcampp", "grad_x_activation", "scorecam", "saliency", "integrated_gradients",
                   "occlusion", "random"]
NEW_METHODS = ["smoothgrad", "smoothgrad_sq", "vargrad", "guided_backprop", "guided_gradcam", "lrp", "lrp_epsilon",
               "lrp_alpha_beta", "hirescam", "layercam", "xgradcam", "eigencam"]


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()


@pytest.fixture
def cfg():
    return load_config(None, ["img_size=16", "device=cpu", "heatmaps.layer=2", "heatmaps.noise_samples=2",
                              "heatmaps.ig_steps=4", "heatmaps.occlusion_patch=4"])


def test_the_registry_holds_the_default_and_the_new_methods_in_order():
    assert list(METHODS)[:len(DEFAULT_METHODS)] == DEFAULT_METHODS
    assert set(NEW_METHODS) <= set(METHODS)
    assert all(spec.family in FAMILIES and spec.name == name for name, spec in METHODS.items())
    assert layer_methods() == {"gradcam", "gradcampp", "grad_x_activation", "scorecam", "guided_gradcam", "hirescam",
                               "layercam", "xgradcam", "eigencam"}
    # the sanity check's positive controls, and what Adebayo et al. found to pass
    assert {n for n, s in METHODS.items() if s.sanity == "fails"} == {"guided_backprop", "guided_gradcam"}
    assert {"smoothgrad", "gradcam", "saliency"} <= {n for n, s in METHODS.items() if s.sanity == "passes"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_takes_the_options_the_config_gives_it(cfg, name):
    options = method_options(cfg, name, seed=5)
    get_method(name).check_options(options)  # no unknown option, none that the registration fixes
    assert set(options) <= set(get_method(name).options)


def test_the_configured_options_are_todays_and_the_new_keys():
    cfg = load_config(None, ["heatmaps.noise_samples=7", "heatmaps.noise_level=0.2", "heatmaps.lrp_composite=epsilon"])
    assert method_options(cfg, "random", 5) == {"seed": 5}
    assert method_options(cfg, "scorecam", 5) == {"batch_size": 64}
    assert method_options(cfg, "occlusion", 5) == {"patch": 8, "batch_size": 64}
    assert method_options(cfg, "gradcam", 5) == {}
    ig = method_options(cfg, "integrated_gradients", 5)
    assert ig["seed"] == derived_seed(5, SeedPurpose.IG_NOISE) and ig["max_steps"] == 256
    assert method_options(cfg, "integrated_gradients", 5, adaptive=False)["max_steps"] == cfg.heatmaps.ig_steps
    tunnel = method_options(cfg, "smoothgrad_sq", 5)
    assert (tunnel["samples"], tunnel["noise_level"], tunnel["base"]) == (7, 0.2, "gradient")
    assert tunnel["seed"] == derived_seed(5, SeedPurpose.NOISE_TUNNEL)
    assert method_options(cfg, "lrp", 5)["composite"] == "epsilon"
    assert "composite" not in method_options(cfg, "lrp_alpha_beta", 5)
    assert get_method("lrp_alpha_beta").fixed == {"composite": "epsilon_alpha_beta_flat"}


def test_fixed_and_unknown_options_are_one_line_errors():
    model, images = tiny(), torch.randn(2, 3, 16, 16)
    with pytest.raises(UserError, match="fixes kind='vargrad'"):
        attribute("vargrad", model, images, kind="smoothgrad")
    with pytest.raises(UserError, match="did you mean 'samples'"):
        attribute("vargrad", model, images, sampels=3)
    with pytest.raises(UserError, match="unknown attribution method 'smothgrad'"):
        get_method("smothgrad")


def test_a_registration_with_fixed_options_is_the_function_with_them():
    model, images = tiny(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = get_method("smoothgrad_sq")(model, images, None, samples=3, seed=4, batch_size=4)
    torch.testing.assert_close(ours, noise_tunnel(model, images, kind="smoothgrad_sq", samples=3, seed=4, batch_size=4))


def test_layer_seed_and_targets_are_decided_once(cfg):
    assert layer_for(cfg, "hirescam") == "2" and layer_for(cfg, "guided_gradcam") == "2"
    assert layer_for(cfg, "smoothgrad") is None and layer_for(cfg, "lrp") is None
    assert map_seed(cfg, 3) == derived_seed(cfg.seed, SeedPurpose.HEATMAPS, 3)
    model, images = tiny(), torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        predicted = model(images).argmax(1)
    assert torch.equal(predicted_classes(cfg, model, images), predicted)
    assert torch.equal(explained_targets(cfg, model, images, labels), predicted)
    true = load_config(None, ["heatmaps.target='true'"])
    assert explained_targets(true, model, images, labels) is labels


@pytest.mark.parametrize("name", NEW_METHODS)
def test_every_new_method_runs_through_the_configured_maps(cfg, name):
    model, images = tiny(), torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 1, 2])
    maps = configured_maps(cfg, name, model, images, targets, seed=7)
    assert maps.shape == (3, 16, 16) and torch.isfinite(maps).all() and maps.amax() <= 1 + 1e-6
    torch.testing.assert_close(maps, configured_maps(cfg, name, model, images, targets, seed=7))


def test_a_new_declaration_is_usable_by_the_steps_and_a_transformer_method_refuses_a_cnn(cfg):
    def half_saliency(model, images, targets=None, *, layer=None, factor=0.5):
        return factor * images.abs().sum(dim=1)

    spec = MethodSpec("half", half_saliency, "gradient", "test", configured=lambda s: {"factor": s.settings.noise_level})
    tokens = MethodSpec("tokens_only", half_saliency, "gradient", "test", transformer_only=True)
    model, images = tiny(), torch.rand(2, 3, 16, 16)
    try:
        register(spec)
        register(tokens)
        with pytest.raises(ValueError, match="already registered"):
            register(spec)
        assert method_options(cfg, "half", 0) == {"factor": 0.15}
        torch.testing.assert_close(configured_maps(cfg, "half", model, images, torch.zeros(2, dtype=torch.long), 0,
                                                   normalize="none"), 0.15 * images.sum(dim=1))
        with pytest.raises(UserError, match="explains vision transformers"):
            configured_maps(cfg, "tokens_only", model, images, torch.zeros(2, dtype=torch.long), 0)
    finally:
        unregister("half")
        unregister("tokens_only")
    with pytest.raises(ValueError, match="has no option 'kind' to fix"):
        MethodSpec("bad", half_saliency, "gradient", "test", fixed={"kind": "x"})
    with pytest.raises(ValueError, match="family"):
        MethodSpec("bad", half_saliency, "gradients", "test")
    assert MethodSettings(cfg.heatmaps, 1).adaptive
