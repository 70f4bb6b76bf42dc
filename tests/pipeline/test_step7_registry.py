"""Step 7 computes the registered metrics: a new declaration is measured without other code changes,
metrics whose needs are missing are skipped, and ROAR's metric is left to its own step."""
import pandas as pd
import pytest
import torch

from lottery_xai.config import load_config
from lottery_xai.errors import UserError
from lottery_xai.metrics import (METRICS, MetricInputs, MetricSpec, compute_metrics, deletion_insertion,
                                 energy_in_box, energy_in_parts, map_agreement, pointing_game, region_perturbation,
                                 register, tcav_agreement, tcav_agreement_summary, transform_consistency, unregister)
from lottery_xai.pipeline import metrics as step7
from lottery_xai.pipeline.metrics import _attribution_fn, _rows, tcav_metrics

N, SIZE = 3, 32
NORMALISATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TIE_SEED, NOISE_SEED = 17, 23


def round_metrics(*args, **kwargs):
    """Step 7's call with the normalisation and seeds it passes (the training mean is not needed by default)."""
    kwargs = {"normalisation": NORMALISATION, "ties_seed": TIE_SEED, "region_noise_seed": NOISE_SEED, **kwargs}
    return step7.round_metrics(*args, **kwargs)
PER_MAP = ["deletion_auc", "insertion_auc", "morf_aopc", "lerf_aopc", "energy_in_box", "pointing_game",
           "energy_in_parts", "spearman", "top_iou", "ssim"]
TRANSFORM = ["transform_spearman", "transform_top_iou", "transform_ssim"]


@pytest.fixture
def cfg():
    return load_config(None, [f"img_size={SIZE}", "device=cpu", "metrics.n_steps=4", "metrics.n_transforms=1",
                              "metrics.batch_size=5"])


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval().requires_grad_(False)
    images = torch.randn(N, 3, SIZE, SIZE, generator=gen)
    maps = torch.rand(N, SIZE, SIZE, generator=gen)
    dense = torch.rand(N, SIZE, SIZE, generator=gen)
    boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [0.0, 0.0, 32.0, 32.0], [10.0, 5.0, 14.0, 30.0]])
    parts = torch.cat([torch.rand(N, 4, 2, generator=gen) * SIZE, torch.ones(N, 4, 1)], dim=2)
    return model, images, boxes, maps, dense, parts


@pytest.fixture
def fake():
    """A small fn registered under new names: two metrics of one call, a third with other options."""
    calls = []

    def map_stats(maps, boxes, scale, power=1):
        calls.append(power)
        return {"mean": maps.pow(power).mean(dim=(1, 2)) * scale, "box_x0": boxes[:, 0]}

    def arguments(x):
        return {"maps": x.maps, "boxes": x.boxes, "scale": x.scale}

    specs = [MetricSpec("fake_mean", "localisation", True, {"box"}, map_stats, "test", output="mean",
                        arguments=arguments),
             MetricSpec("fake_box_x0", "localisation", True, {"box"}, map_stats, "test", output="box_x0",
                        arguments=arguments),
             MetricSpec("fake_square_mean", "localisation", True, {"box"}, map_stats, "test", output="mean",
                        options={"power": 2}, arguments=arguments)]
    try:
        for spec in specs:
            register(spec)
        yield calls
    finally:
        for spec in specs:
            if spec.name in METRICS:
                unregister(spec.name)


def test_a_registered_metric_is_computed_without_other_changes(cfg, data, fake):
    model, images, boxes, maps, dense, parts = data
    values = round_metrics(model, images, boxes, maps, dense, cfg, parts)
    assert list(values) == PER_MAP + ["fake_mean", "fake_box_x0", "fake_square_mean"]
    assert torch.equal(values["fake_mean"], maps.mean(dim=(1, 2)) * (SIZE / 224))
    assert torch.equal(values["fake_square_mean"], maps.pow(2).mean(dim=(1, 2)) * (SIZE / 224))
    assert torch.equal(values["fake_box_x0"], boxes[:, 0])
    assert fake == [1, 2]  # one call per (fn, options): fake_mean and fake_box_x0 share theirs
    rows = _rows(1, 0.5, "saliency", values)
    assert [r["metric"] for r in rows][-3:] == ["fake_mean", "fake_box_x0", "fake_square_mean"]
    assert all(r["n_images"] == N for r in rows)


def test_unregistered_metric_is_gone(cfg, data, fake):
    model, images, boxes, maps, dense, parts = data
    unregister("fake_mean")
    values = round_metrics(model, images, boxes, maps, dense, cfg, parts)
    assert "fake_mean" not in values and "fake_box_x0" in values


def test_specs_sharing_a_call_must_share_arguments():
    spec = METRICS["deletion_auc"]
    with pytest.raises(ValueError, match="same arguments"):
        register(MetricSpec("deletion_curve", "faithfulness", False, {"model"}, spec.fn, "test",
                            output="deletion_curve", arguments=lambda x: {}))
    assert "deletion_curve" not in METRICS
    with pytest.raises(ValueError, match="arguments"):
        MetricSpec("no_arguments", "localisation", True, {"box"}, energy_in_box, "test")


def test_registry_values_equal_the_hand_written_calls(cfg, data):
    """The calls step 7 made before it walked the registry, with the same arguments: equal bit for bit."""
    model, images, boxes, maps, dense, parts = data
    m, scale = cfg.metrics, images.shape[-1] / 224
    values = round_metrics(model, images, boxes, maps, dense, cfg, parts)
    # at 32 px: RISE's kernel 11 -> 3 (odd, >= 3), sigma 5 * 32/224; Samek's 9 px regions -> round(1.29) = 1
    curves = deletion_insertion(model, images, maps, n_steps=m.n_steps, batch_size=m.batch_size, substrate="zeros",
                                blur_kernel=3, blur_sigma=5 * scale, ties="random", seed=TIE_SEED)
    expected = {"deletion_auc": curves["deletion_auc"], "insertion_auc": curves["insertion_auc"]}
    mean, std = torch.tensor(NORMALISATION[0], dtype=torch.float64), torch.tensor(NORMALISATION[1], dtype=torch.float64)
    for order in ("morf", "lerf"):
        expected[f"{order}_aopc"] = region_perturbation(
            model, images, maps, order=order, region=1, n_steps=100, noise_low=(-mean / std).tolist(),
            noise_high=((1 - mean) / std).tolist(), batch_size=m.batch_size, ties="random", seed=TIE_SEED,
            noise_seed=NOISE_SEED)["aopc"]
    expected["energy_in_box"] = energy_in_box(maps, boxes)
    expected["pointing_game"] = pointing_game(maps, boxes, tolerance=m.pointing_tolerance * scale, ties="first")
    expected["energy_in_parts"] = energy_in_parts(maps, parts, radius=max(m.part_radius * scale, 0.5))
    expected.update(map_agreement(maps, dense, top_fraction=m.top_fraction))
    assert list(values) == list(expected)
    for name, v in expected.items():
        assert torch.equal(values[name], v), name


def test_transform_metrics_come_from_the_registry_for_transform_methods(cfg, data):
    model, images, boxes, maps, dense, parts = data
    m, seed = cfg.metrics, 12345
    assert "saliency" in m.transform_methods
    values = round_metrics(model, images, boxes, maps, dense, cfg, parts, method="saliency", seed=seed)
    assert list(values) == PER_MAP + TRANSFORM
    res = transform_consistency(model, images, _attribution_fn(cfg, "saliency", seed), transforms=m.transform,
                                n_transforms=m.n_transforms, seed=seed, targets=None, top_fraction=m.top_fraction)
    for k in ("spearman", "top_iou", "ssim"):
        assert torch.equal(values[f"transform_{k}"], res[k]), k
    cfg.metrics.transform_methods = []
    assert list(round_metrics(model, images, boxes, maps, dense, cfg, parts, method="saliency", seed=seed)) == PER_MAP


def test_metrics_with_missing_needs_are_skipped(cfg, data):
    model, images, boxes, maps, dense, parts = data
    no_parts = parts[:, :0]
    values = round_metrics(model, images, boxes, maps, None, cfg, no_parts)
    assert list(values) == ["deletion_auc", "insertion_auc", "morf_aopc", "lerf_aopc", "energy_in_box",
                            "pointing_game"]
    values = round_metrics(model, images, None, maps, dense, cfg, None)
    assert list(values) == ["deletion_auc", "insertion_auc", "morf_aopc", "lerf_aopc", "spearman", "top_iou", "ssim"]
    only_maps = compute_metrics(MetricInputs(settings=cfg.metrics, maps=maps, boxes=boxes))
    assert list(only_maps) == ["energy_in_box", "pointing_game"]  # no model: no faithfulness, no transform
    assert MetricInputs(settings=cfg.metrics, maps=maps, parts=no_parts).provided == frozenset()


def test_tcav_metrics_are_computed_from_the_two_tables_only(cfg, data):
    dense = pd.DataFrame({"class": ["a", "a", "b"], "concept": ["red", "wing", "red"],
                          "tcav_mean": [0.9, 0.5, 0.2], "significant": [True, False, False]})
    pruned = dense.assign(tcav_mean=[0.8, 0.5, 0.6], significant=[True, True, False])
    values = tcav_metrics(pruned, dense, cfg)
    assert list(values) == ["tcav_abs_diff", "tcav_flip"]
    summary = tcav_agreement_summary(tcav_agreement(pruned, dense))
    rows = _rows(2, 0.25, "tcav", values)
    assert [(r["value"], r["n_images"]) for r in rows] == [(summary["mean_abs_diff"], summary["n_pairs"]),
                                                           (summary["flip_rate"], summary["n_pairs"])]
    empty = _rows(2, 0.25, "tcav", tcav_metrics(pruned.iloc[:0], dense, cfg))
    assert all(r["n_images"] == 0 and r["value"] != r["value"] for r in empty)  # NaN, as the summary's
    model, images, boxes, maps, dense_maps, parts = data
    assert not {"tcav_abs_diff", "tcav_flip"} & set(round_metrics(model, images, boxes, maps, dense_maps, cfg, parts))


def test_roar_metric_is_never_computed_by_step7(cfg, data):
    model, images, boxes, maps, dense, parts = data
    assert METRICS["roar_test_acc"].step is not None
    everything = MetricInputs(settings=cfg.metrics, maps=maps, model=model, images=images, boxes=boxes, parts=parts,
                              second_map=dense, attribution_fn=_attribution_fn(cfg, "saliency", 0), seed=0,
                              normalisation=NORMALISATION)
    assert "retraining" not in everything.provided
    assert "roar_test_acc" not in compute_metrics(everything)
    assert "roar_test_acc" not in round_metrics(model, images, boxes, maps, dense, cfg, parts, method="saliency", seed=0)

    def refuse(**_):
        raise AssertionError("step 7 called a metric of another step")

    spec = MetricSpec("fake_retrained", "faithfulness", True, {"model"}, refuse, "test", step="main_roar.py")
    try:
        register(spec)
        assert "fake_retrained" not in round_metrics(model, images, boxes, maps, dense, cfg, parts)
    finally:
        unregister("fake_retrained")


def test_train_channel_mean_is_the_eval_transformed_training_split_mean(tiny_data, tmp_path):
    """The fill called train_mean: every training image through the eval transform (no augmentation), averaged
    over images and pixels per channel; stored once and read back."""
    from conftest import tiny_overrides
    from lottery_xai import rundir as rd
    from lottery_xai.data import build_datasets
    from lottery_xai.safe_io import load_npz

    cfg = load_config(None, tiny_overrides(tiny_data, tmp_path))
    run = rd.RunDir(cfg)
    mean = step7.train_channel_mean(run, log=lambda *_: None)
    datasets, info = build_datasets(cfg.dataset, cfg.data_root, cfg.json_root, cfg.img_size, splits=("train",),
                                    augment_train=False, seed=cfg.seed)
    train = datasets["train"]
    expected = torch.stack([train[i]["image"].double() for i in range(len(train))]).mean(dim=(0, 2, 3))
    assert torch.allclose(mean.double(), expected, atol=1e-6)
    # the normalisation's mean is 0 after normalisation; the synthetic images' own mean is not
    assert float(expected.abs().max()) > 0.05
    stored = step7.train_mean_file(run)
    assert stored.is_file()
    assert load_npz(stored)["n_images"] == len(train)

    def refuse(*_):
        raise AssertionError("the stored mean was computed again")

    assert torch.equal(step7.train_channel_mean(run, log=refuse), mean)  # read back, not recomputed


def test_rows_of_the_content_heatmap_and_its_zero_map_count():
    """The content heatmap skips all-zero maps (NaN): its row is the mean over the others (CGC's number) and its
    n_images counts those others (the n of the mean); the zero-map row's value is their share, value x n_images
    their count."""
    values = {"content_heatmap": torch.tensor([100.0, float("nan"), 50.0, float("nan")]),
              "content_heatmap_zero_maps": torch.tensor([0.0, 1.0, 0.0, 1.0])}
    rows = {r["metric"]: r for r in _rows(0, 1.0, "gradcam", values)}
    assert (rows["content_heatmap"]["value"], rows["content_heatmap"]["n_images"]) == (75.0, 2)
    zero = rows["content_heatmap_zero_maps"]
    assert (zero["value"], zero["n_images"], zero["value"] * zero["n_images"]) == (0.5, 4, 2.0)  # share and count


def test_content_heatmap_rows_come_with_the_zero_map_count(cfg, data):
    model, images, boxes, maps, dense, parts = data
    true_maps = maps.clone()
    true_maps[1] = 0.0
    values = round_metrics(model, images, boxes, maps, dense, cfg, parts, true_class_maps=true_maps)
    assert values["content_heatmap_zero_maps"].tolist() == [0.0, 1.0, 0.0]
    assert bool(values["content_heatmap"][1].isnan()) and not bool(values["content_heatmap"][[0, 2]].isnan().any())
    cfg.metrics.zero_maps = "zero"
    assert round_metrics(model, images, boxes, maps, dense, cfg, parts, true_class_maps=true_maps)[
        "content_heatmap"][1].item() == 0.0


def test_zero_map_count_is_not_among_the_paired_tests(tmp_path):
    """The count of skipped all-zero maps is a diagnostic row: it has per-image values but no Wilcoxon test."""
    from lottery_xai import rundir as rd
    from lottery_xai.pipeline.metrics import PER_IMAGE_COLUMNS, write_tests
    from lottery_xai.safe_io import save_csv

    cfg = load_config(None, [f"logs={tmp_path}"])
    run = rd.RunDir(cfg)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for metric in ("energy_in_box", "content_heatmap_zero_maps"):
        for method in ("gradcam", "random"):
            values = torch.rand(12, generator=gen) + (1.0 if method == "gradcam" else 0.0)
            if metric == "content_heatmap_zero_maps":
                values = (values > 0.9).float()
            rows += [{"round": 0, "method": method, "metric": metric, "image_id": i, "value": float(v)}
                     for i, v in enumerate(values)]
    run.explanation_per_image().parent.mkdir(parents=True, exist_ok=True)
    save_csv(run.explanation_per_image(), pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS))
    tests = write_tests(run, pd.DataFrame({"round": [0], "weights_remaining": [1.0]}))
    assert set(tests["metric"]) == {"energy_in_box"} and len(tests) == 1
    assert not METRICS["content_heatmap_zero_maps"].tested and METRICS["content_heatmap"].tested


# ---------------------------------------------------------------- the opt-in families (metrics.names)

OPT_IN = ["road_morf", "road_lerf", "max_sensitivity", "local_lipschitz", "sparseness", "complexity", "random_logit",
          "randomisation_score", "infidelity"]


def test_the_opt_in_metrics_are_declared_with_family_direction_and_needs():
    from lottery_xai.metrics import select_metrics

    families = {name: METRICS[name].family for name in OPT_IN}
    assert families == {"road_morf": "faithfulness", "road_lerf": "faithfulness", "max_sensitivity": "robustness",
                        "local_lipschitz": "robustness", "sparseness": "complexity", "complexity": "complexity",
                        "random_logit": "randomisation", "randomisation_score": "randomisation",
                        "infidelity": "faithfulness"}
    assert [name for name in OPT_IN if METRICS[name].higher_is_better] == ["road_lerf", "sparseness"]
    assert not any(METRICS[name].default for name in OPT_IN)
    assert select_metrics(["default"]) == {name for name, spec in METRICS.items() if name not in OPT_IN}
    assert select_metrics(["robustness", "sparseness"]) == {"max_sensitivity", "local_lipschitz", "sparseness"}
    with pytest.raises(UserError, match="did you mean 'sparseness'"):
        select_metrics(["sparsenes"])


def test_opt_in_metrics_equal_their_functions_with_the_documented_seeds(cfg, data):
    from lottery_xai.metrics import (complexity, infidelity, local_lipschitz_estimate, max_sensitivity, random_logit,
                                     road, sparseness)
    from lottery_xai.pipeline.metrics import _attribution_fn
    from lottery_xai.seeds import derived_seed

    model, images, boxes, maps, dense, parts = data
    cfg.metrics.names = ["default", "robustness", "complexity", "random_logit", "road_morf", "road_lerf", "infidelity"]
    cfg.metrics.robustness_samples, cfg.metrics.road_percentages, cfg.metrics.infidelity_samples = 2, [0.5], 2
    targets = torch.tensor([0, 2, 1])
    values = round_metrics(model, images, boxes, maps, dense, cfg, parts, method="saliency", maps_seed=9,
                           targets=targets)
    assert list(values) == PER_MAP + [n for n in OPT_IN if n != "randomisation_score"]
    m = cfg.metrics
    explain = _attribution_fn(cfg, "saliency", 9)
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in NORMALISATION)
    curves = road(model, images, maps, percentages=[0.5], noise=(0.01 / std).tolist(), selection="rank",
                  ties="random", seed=TIE_SEED, noise_seed=derived_seed(NOISE_SEED, 1), batch_size=m.batch_size)
    expected = {
        "road_morf": curves["morf"], "road_lerf": curves["lerf"],
        "max_sensitivity": max_sensitivity(model, images, explain, maps=maps, targets=targets, radius=0.2, samples=2,
                                           seed=derived_seed(NOISE_SEED, 2), batch_size=m.batch_size)["value"],
        "local_lipschitz": local_lipschitz_estimate(model, images, explain, maps=maps, targets=targets, noise_std=0.1,
                                                    samples=2, seed=derived_seed(NOISE_SEED, 3),
                                                    batch_size=m.batch_size)["value"],
        "sparseness": sparseness(maps), "complexity": complexity(maps),
        "random_logit": random_logit(model, images, explain, maps=maps, targets=targets,
                                     seed=derived_seed(NOISE_SEED, 4), batch_size=m.batch_size)["value"],
        "infidelity": infidelity(model, images, maps, targets=targets, noise_std=(0.2 / std).tolist(),
                                 valid_low=(-mean / std).tolist(), valid_high=((1 - mean) / std).tolist(), samples=2,
                                 seed=derived_seed(NOISE_SEED, 5), batch_size=m.batch_size)["value"],
    }
    for name, v in expected.items():
        assert torch.equal(values[name], v), name
    # without a method to recompute, the robustness and random-logit metrics are skipped, the others stay
    assert set(round_metrics(model, images, boxes, maps, dense, cfg, parts)) == \
        set(PER_MAP) | {"road_morf", "road_lerf", "sparseness", "complexity", "infidelity"}


def test_the_randomisation_score_reads_the_sanity_table_per_image(cfg, data):
    model, images, boxes, maps, dense, parts = data
    cfg.metrics.names = ["randomisation_score"]
    table = pd.DataFrame({"round": 2, "method": "saliency", "randomization": "cascading", "stage": [1, 2, 1, 2],
                          "measure": "spearman_abs", "image_id": [11, 11, 13, 13], "value": [0.9, 0.4, 0.8, 0.1]})
    ids = [11, 12, 13]
    values = round_metrics(model, images, boxes, maps, dense, cfg, parts, method="saliency", r=2, image_ids=ids,
                           sanity_table=table)
    assert list(values) == ["randomisation_score"]
    torch.testing.assert_close(values["randomisation_score"],
                               torch.tensor([0.4, float("nan"), 0.1], dtype=torch.float64), equal_nan=True)
    # a round the sanity step did not test: NaN for every image
    other = round_metrics(model, images, boxes, maps, dense, cfg, parts, method="saliency", r=3, image_ids=ids,
                          sanity_table=table)["randomisation_score"]
    assert torch.isnan(other).all()
    assert round_metrics(model, images, boxes, maps, dense, cfg, parts, method="saliency") == {}
