"""The experiment schema: every key, its default, its help and its validation, in one place.

A config is a tree of dataclasses. The YAML file and ``--set a.b=value`` overrides are
merged into the defaults, type-checked, and validated; unknown keys are rejected with the
nearest valid key suggested. The original study's key names (``logs``, ``data_root``,
``prune_iterations``, ``labels_for_tcav``, ...) stay top-level so its users recognise them;
the newer settings are grouped by concern.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .names import unknown_name

PATH_KEYS = ("logs", "data_root", "json_root")  # folders: "~" is expanded when the config is loaded

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "BB_synthetic.yaml"


def opt(default, help: str, choices=None, minimum=None, maximum=None, pattern=None):
    """Declare a config field: default, one-line help, and what values are allowed."""
    meta = {"help": help, "choices": choices, "min": minimum, "max": maximum, "pattern": pattern}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: list(d) if isinstance(d, list) else dict(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    batch_size: int = opt(64, "training batch size (per process under torchrun)", minimum=1)
    eval_batch_size: int = opt(128, "batch size for evaluation and explanation passes", minimum=1)
    num_workers: int = opt(0, "data-loader worker processes (0 = load in the main process)", minimum=0)
    augment: bool = opt(True, "random resized crop + horizontal flip on the training split")


@dataclass
class TrainConfig:
    epochs: int = opt(10, "epochs of training in every round (epochs_per_round)", minimum=1)
    optimizer: str = opt("sgd", "optimizer: sgd (momentum, weight decay added to the gradient), adam (torch.optim.Adam, the same L2 term) or adamw (torch.optim.AdamW: decoupled weight decay, Loshchilov & Hutter 2019, as vision transformers are trained); masks hold under each", choices=["sgd", "adam", "adamw"])
    lr: float = opt(0.05, "learning rate at the start of every round", minimum=0.0)
    momentum: float = opt(0.9, "SGD momentum", minimum=0.0, maximum=1.0)
    weight_decay: float = opt(5e-4, "weight decay (L2 for sgd and adam, decoupled for adamw: each step multiplies the weights by 1 - lr * weight_decay)", minimum=0.0)
    lr_schedule: str = opt("cosine", "learning-rate schedule within a round", choices=["none", "step", "cosine"])
    lr_step_epochs: int = opt(30, "step schedule: epochs between decays", minimum=1)
    lr_gamma: float = opt(0.1, "step schedule: decay factor", minimum=0.0, maximum=1.0)
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss", minimum=0.0, maximum=1.0)
    loss: str = opt("cross_entropy", "training loss (lottery_xai.training.losses): cross_entropy (or its short name ce), cgc (contrastive Grad-CAM consistency) or gc_mse (its ablation without negatives)", choices=["cross_entropy", "ce", "cgc", "gc_mse"])
    cgc_lambda: float = opt(0.5, "weight of the CGC term (0 = the cross-entropy run, bit for bit)", minimum=0.0)
    cgc_temperature: float = opt(0.5, "temperature tau of the CGC contrastive term", minimum=1e-6)
    cgc_map: str = opt("grad_x_activation", "map the CGC loss makes consistent", choices=["grad_x_activation", "gradcam"])
    cgc_layer: str = opt("", "layer of the CGC maps (empty = the architecture's CAM layer)")
    unlabeled_fraction: float = opt(0.0, "share of the training split used without labels (only label-free loss terms, e.g. CGC, see them)", minimum=0.0, maximum=0.99)
    amp: bool = opt(True, "bfloat16 automatic mixed precision (CUDA only; ignored on the CPU)")
    channels_last: bool = opt(True, "channels_last memory format (CUDA only; ignored on the CPU)")
    # early stopping (issue 12, the thesis's rule): off by default, so existing runs are unchanged
    early_stopping: bool = opt(False, "stop a round's training when the validation accuracy has not gained early_stopping_gain (relative) over the best counted epoch for early_stopping_patience epochs; train.epochs is then the most; the best weights are kept")
    early_stopping_gain: float = opt(0.01, "early stopping: relative gain over the best counted validation accuracy that counts as an improvement (0.01 = 1 %)", minimum=0.0)
    early_stopping_patience: int = opt(10, "early stopping: epochs in a row without an improvement that end the round", minimum=1)
    eval_every: int = opt(0, "also validate every this many iterations inside an epoch (0 = at epoch ends only); the early-stopping iteration each round records (minimum validation loss, as the Lottery Ticket paper plots it; its configs here validate every 100 iterations) is read from these points and the epoch ends; training is unchanged", minimum=0)


@dataclass
class PruningConfig:
    scope: str = opt("global", "one magnitude threshold over all prunable tensors, or the same fraction per tensor", choices=["global", "layerwise"])
    method: str = opt("magnitude", "which alive weights go: smallest |w|, or a random subset (control; see random_sparsity)", choices=["magnitude", "random"])
    random_sparsity: str = opt("matched", "method random: each tensor keeps as many weights as the ticket (the magnitude run, same settings otherwise) keeps in it at the same round, a random subset of this run's alive ones (matched, the LTH control), or uniform random pruning at the schedule's fractions with pruning.scope (uniform)", choices=["matched", "uniform"])
    rewind: str = opt("init", "what survivors restart from: init | epoch:K | iter:K (late rewinding: the round trains from step K to the end, its learning-rate schedule continuing at K) | finetune | reinit", pattern=r"^(init|finetune|reinit|epoch:\d+|iter:\d+)$")
    schedule: str = opt("iterative", "prune prune_percent of alive weights per round, or follow compression_rates", choices=["iterative", "compression_rates"])
    compression_rates: list = opt([2, 4, 8, 16, 32, 64], "compression_rates schedule: round r keeps 1/rate of the prunable weights")
    prune_fc_rate: float = opt(0.5, "the final classifier is pruned at this multiple of the rate (LTH convention)", minimum=0.0, maximum=1.0)
    prune_bn: bool = opt(False, "also prune BatchNorm weights (gamma), as the CUB study did")
    layers: str = opt("all", "prunable weights: conv and linear layers (all), or conv layers only (conv: every linear layer, VGG's three included, is kept whole, as the thesis did)", choices=["all", "conv"])
    reinit_masks_from: str = opt("init", "reinit control: take masks from the run with this rewind value (same settings otherwise), or 'self'", pattern=r"^(self|init|finetune|epoch:\d+|iter:\d+)$")
    structure: str = opt("unstructured", "what a round removes: single weights held at 0 by masks in the dense shapes (unstructured, the LTH's), or whole channels (conv filters, hidden units of linear layers) through torch-pruning's dependency graph, the network rebuilt smaller from the initial weights of the kept channels, which every later step loads (channels: a real speed-up; each channel group keeps the round's fraction of its original channels, pruning.scope and prune_fc_rate do not apply: the classifier's outputs are the classes)", choices=["unstructured", "channels"])
    channel_norm: str = opt("l1", "structure channels: a filter's importance is its L1 norm (Li et al. 2017, 'Pruning filters for efficient ConvNets') or its L2 norm", choices=["l1", "l2"])
    channel_score: str = opt("filters", "structure channels: rank a channel by the norm of the filters that write it (filters, Li et al. 2017; the mean over the layers a residual addition joins) or by torch-pruning's GroupMagnitudeImportance over every coupled parameter (group, DepGraph)", choices=["filters", "group"])
    prune_conv_rate: float = opt(1.0, "conv layers are pruned at this multiple of prune_percent (the Lottery Ticket paper's Conv-6: 0.75, conv 15 % when fc layers lose 20 %); iterative schedule only", minimum=0.0)


@dataclass
class TestConfig:
    checkpoint: str = opt("best", "which checkpoint of a round later steps use: best validation accuracy, last epoch, or early_stop: the weights at the iteration of minimum validation loss (the Lottery Ticket paper's test accuracy 'at early stopping'; step 1 then also writes round_XX/early_stop.pt, validating every train.eval_every iterations)", choices=["best", "last", "early_stop"])


@dataclass
class ActivationsConfig:
    dtype: str = opt("float32", "storage type of the activation .npy files", choices=["float32", "float16"])
    splits: list = opt(["train", "val", "test"], "splits whose activations are saved")


@dataclass
class CAVConfig:
    classifier: str = opt("", "linear classifier whose normal is the CAV: linear (tensorflow/tcav's model_type 'linear': SGDClassifier, hinge loss, alpha cav.linear_alpha, max_iter 1000, tol 1e-3), logistic (class-balanced, C), svm (LinearSVC, C) or sgd (averaged SGD, alpha 1/(C n)); empty = the protocol's: linear for tcav.protocol reference, logistic for strict", choices=["", "linear", "logistic", "svm", "sgd"])
    negatives: str = opt("", "negatives of a concept's CAVs: random = the reference's random sets of images (run i of every concept against the same random set i, the null from random set j against random set i), rest = images without the concept (the null from disjoint random pairs); empty = the protocol's: random for reference, rest for strict", choices=["", "random", "rest"])
    features: str = opt("", "what the classifier is fitted on: raw activations (the reference) or standardized ones (normal mapped back to raw space); empty = the protocol's: raw for reference, standardized for strict", choices=["", "raw", "standardized"])
    n_random: int = opt(20, "CAV runs per concept, and random sets (negatives: random: n_random*(n_random-1) random-vs-random CAVs; rest: n_random random CAVs) for the null distribution; 20 gives the reference protocol its power (embedded default: 86 % of the defining (class, attribute) pairs significant at round 0 with 20, 81 % with 10, 86 % with 30 at more absent pairs; the strict protocol needs 30 or more)", minimum=2)
    max_per_set: int = opt(0, "cap on a concept's positives per run (0 = all; random negatives: the first ones of a fixed seeded order, as the reference truncates a concept folder; rest: a fresh seeded subsample each run)", minimum=0)
    test_fraction: float = opt(0.33, "held-out share for CAV accuracy", minimum=0.05, maximum=0.9)
    C: float = opt(1.0, "inverse regularisation strength of the logistic, svm and sgd classifiers", minimum=0.0)
    linear_alpha: float = opt(0.01, "regularisation alpha of the linear classifier (tensorflow/tcav: 0.01 in CAV.default_hparams; its Run_TCAV notebook passes 0.1)", minimum=0.0)
    splits: list = opt(["train"], "splits whose activations train the CAVs (never one that TCAV scores)")
    n_jobs: int = opt(-1, "parallel CAV fits (-1 = all cores)")


@dataclass
class TCAVConfig:
    protocol: str = opt("reference", "TCAV protocol, the defaults of the keys left empty: reference (Kim et al. 2018 and tensorflow/tcav: CAVs against random sets of images on raw activations with tensorflow/tcav's linear classifier, a two-sided Student t-test against random-vs-random CAVs, Bonferroni at the paper's m = 2) or strict (images without the concept as negatives, standardized logistic fits, Welch's t-test, Bonferroni over every concept tested)", choices=["reference", "strict"])
    test: str = opt("", "two-sided t-test of the concept's run scores against the random CAVs' scores: student (scipy.stats.ttest_ind equal_var=True, as tensorflow/tcav utils.py) or welch (equal_var=False); empty = the protocol's: student for reference, welch for strict", choices=["", "student", "welch"])
    correction: str = opt("", "significance threshold: paper (p < alpha/2, Kim et al. 2018 section 3.5's Bonferroni with m = 2), none (p < alpha, tensorflow/tcav's utils_plot/print_results) or concepts (p < alpha / number of concepts tested per class and layer); empty = the protocol's: paper for reference, concepts for strict", choices=["", "paper", "none", "concepts"])
    gradient: str = opt("logit", "what the directional derivative differentiates: logit (the class logit, Kim et al. 2018 eq. 1) or loss (minus the cross-entropy of the class, tensorflow/tcav's model.loss, sign flipped so that a positive derivative still means towards the class)", choices=["logit", "loss"])
    alpha: float = opt(0.05, "significance level before the correction (tcav.correction)", minimum=0.0, maximum=1.0)
    splits: list = opt(["val", "test"], "splits whose class images are scored (never one of cav.splits)")
    max_images_per_class: int = opt(0, "cap on scored images per class (0 = all)", minimum=0)


TCAV_PROTOCOLS = {  # the settings a protocol gives the keys left empty (cav.negatives, cav.features, ...)
    "reference": {"negatives": "random", "features": "raw", "classifier": "linear", "test": "student",
                  "correction": "paper"},
    "strict": {"negatives": "rest", "features": "standardized", "classifier": "logistic", "test": "welch",
               "correction": "concepts"},
}


@dataclass(frozen=True)
class Protocol:
    """The TCAV settings in force: ``tcav.protocol``'s defaults with the explicitly set keys on top."""

    name: str
    negatives: str
    features: str
    classifier: str
    test: str
    correction: str
    gradient: str
    label: str  # the protocol column of tcav_scores.csv: the name, with every key that departs from it

    @property
    def standardize(self) -> bool:
        return self.features == "standardized"


def cav_protocol(cfg: "Config") -> Protocol:
    """The resolved CAV and TCAV settings of ``cfg`` (steps 4 and 5, and whoever fits CAVs like them)."""
    preset = TCAV_PROTOCOLS[cfg.tcav.protocol]
    given = {"negatives": cfg.cav.negatives, "features": cfg.cav.features, "classifier": cfg.cav.classifier,
             "test": cfg.tcav.test, "correction": cfg.tcav.correction}
    chosen = {k: v or preset[k] for k, v in given.items()}
    section = {"negatives": "cav", "features": "cav", "classifier": "cav", "test": "tcav", "correction": "tcav"}
    departs = [f"{section[k]}.{k}={v}" for k, v in chosen.items() if v != preset[k]]
    if cfg.tcav.gradient != "logit":
        departs.append(f"tcav.gradient={cfg.tcav.gradient}")
    label = cfg.tcav.protocol + (f" ({', '.join(departs)})" if departs else "")
    return Protocol(name=cfg.tcav.protocol, gradient=cfg.tcav.gradient, label=label, **chosen)


@dataclass
class HeatmapConfig:
    methods: list = opt(["gradcam", "gradcampp", "grad_x_activation", "saliency", "integrated_gradients", "occlusion", "random"], "attribution methods to compute")
    layer: str = opt("", "layer for CAM methods (empty = the architecture's last conv block)")
    images_per_class: int = opt(4, "test images per class in labels_for_tcav (the same images every round)", minimum=1)
    target: str = opt("predicted", "class explained: the model's prediction or the true class", choices=["predicted", "true"])
    normalize: str = opt("max", "per-image normalisation of stored maps: divide by the max (max), (m - min) / (max - min) as pytorch-grad-cam and the Score-CAM authors' code (minmax), or raw values (none)", choices=["max", "minmax", "none"])
    ig_steps: int = opt(32, "integrated gradients: interpolation steps", minimum=2)
    ig_baseline: str = opt("black", "integrated gradients: baseline image (black = pixel value 0 as in the IG paper; mean = the dataset's mean colour, the all-zero normalised input; blur = Gaussian blur of the image; uniform = seeded uniform noise in pixel space)", choices=["black", "mean", "blur", "uniform"])
    ig_uniform_samples: int = opt(10, "integrated gradients with ig_baseline=uniform: noise baselines per image, attributions averaged (10 in the IG reference code)", minimum=1)
    ig_rule: str = opt("gauss_legendre", "integrated gradients: quadrature rule on the ig_steps points (gauss_legendre as Captum's default; trapezoid on evenly spaced points as the IG reference code)", choices=["gauss_legendre", "trapezoid"])
    ig_output: str = opt("logit", "integrated gradients: the explained output, the target logit (as Captum) or its softmax probability (the IG reference code)", choices=["logit", "probability"])
    ig_tolerance: float = opt(0.01, "integrated gradients: completeness gap |sum(attributions) - (F(x) - F(baseline))| / |F(x) - F(baseline)| above which an image is integrated again with twice the steps", minimum=0.0)
    ig_max_steps: int = opt(256, "integrated gradients: most steps the doubling reaches (at most ig_steps: no second pass); images still above ig_tolerance are reported in a warning", minimum=2)
    occlusion_patch: int = opt(0, "occlusion patch size in pixels (0 = 16 px at 224, scaled)", minimum=0)
    batch_size: int = opt(64, "copies per forward for perturbation methods", minimum=1)
    noise_base: str = opt("gradient", "smoothgrad, smoothgrad_sq, vargrad: the method averaged over the noisy copies: gradient (the raw input gradient, SmoothGrad's and Hooker et al.'s), gradient_x_input, guided_backprop or integrated_gradients (ig_* settings, ig_steps points per copy)", choices=["gradient", "gradient_x_input", "guided_backprop", "integrated_gradients"])
    noise_samples: int = opt(50, "smoothgrad, smoothgrad_sq, vargrad: noisy copies per image (the SmoothGrad paper's n = 50)", minimum=1)
    noise_level: float = opt(0.15, "smoothgrad, smoothgrad_sq, vargrad: noise standard deviation as a fraction of noise_range (the SmoothGrad paper's 10-20 %, PAIR-code/saliency's 0.15)", minimum=0.0)
    noise_range: str = opt("image", "smoothgrad, smoothgrad_sq, vargrad: what noise_level is a fraction of: image (max - min of each network input, SmoothGrad's code), valid (the valid pixel range [0, 1], per channel through the normalisation) or absolute (noise_level is the standard deviation, Captum's stdevs)", choices=["image", "valid", "absolute"])
    lrp_composite: str = opt("epsilon_plus_flat", "lrp: zennit composite: epsilon_plus_flat (z+ at convolutions, epsilon at dense layers, flat input layer: Kohlbrenner et al. 2020's recommendation), epsilon_alpha_beta_flat, epsilon_plus, epsilon_alpha_beta or epsilon (lrp_epsilon and lrp_alpha_beta fix it)", choices=["epsilon_plus_flat", "epsilon_alpha_beta_flat", "epsilon_plus", "epsilon_alpha_beta", "epsilon"])
    lrp_epsilon: float = opt(1e-6, "lrp, lrp_epsilon, lrp_alpha_beta: the epsilon rule's stabiliser (zennit's default 1e-6)", minimum=0.0)
    lrp_alpha: float = opt(2.0, "lrp_alpha_beta (and lrp with an alpha_beta composite): alpha of the alpha-beta rule (alpha - beta = 1)", minimum=1.0)
    lrp_beta: float = opt(1.0, "lrp_alpha_beta (and lrp with an alpha_beta composite): beta of the alpha-beta rule", minimum=0.0)
    grid_images: int = opt(6, "images shown in each round-by-round grid figure", minimum=1)


@dataclass
class MetricsConfig:
    n_steps: int = opt(28, "deletion/insertion: pixel steps from the clean to the fully perturbed image (RISE: 224*224 / (224*8) = 28)", minimum=2)
    deletion_substrate: str = opt("zeros", "deletion: what replaces the deleted pixels: zeros (RISE's torch.zeros_like: 0 after normalisation, i.e. the normalisation's mean colour, ImageNet's for CUB), train_mean (the training set's per-channel mean) or blur (the insertion blur)", choices=["zeros", "train_mean", "blur"])
    blur_kernel: int = opt(11, "insertion: side of RISE's Gaussian blur kernel (gkern) at 224 px, scaled with the image size to an odd size >= 3", minimum=1)
    blur_sigma: float = opt(5.0, "insertion: sigma of RISE's blur kernel at 224 px (scaled)", minimum=1e-6)
    perturbation: str = opt("samek", "MoRF/LeRF AOPC: samek (Samek et al. 2017: samek_region-pixel regions ranked by summed relevance, one replaced by uniform noise per step, samek_steps steps) or pixels (the top/bottom `fractions` of pixels replaced by pixel_fill)", choices=["samek", "pixels"])
    samek_region: float = opt(9.0, "samek: region side in pixels at 224 px (scaled with the image size, at least 1 px)", minimum=1.0)
    samek_steps: int = opt(100, "samek: perturbation steps L, one region each", minimum=1)
    fractions: list = opt([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10], "pixels: fractions of pixels replaced by pixel_fill")
    pixel_fill: str = opt("train_mean", "pixels: what replaces the pixels: train_mean (the training set's per-channel mean, as ROAR's fill) or zeros (0 after normalisation: the normalisation's mean colour)", choices=["train_mean", "zeros"])
    ties: str = opt("random", "ties in the pixel and region rankings of deletion/insertion, MoRF/LeRF and ROAR: a random permutation per image seeded from (seed, round, method), or raster (row-major order)", choices=["random", "raster"])
    pointing_tolerance: float = opt(15.0, "pointing game tolerance in pixels at 224 px (scaled with the image size)", minimum=0.0)
    pointing_ties: str = opt("first", "pointing game: first (TorchRay: the map's first maximal pixel in row-major order hits when a box pixel is closer than the tolerance) or half (a hit needs half of the tied maxima within the tolerance; a constant map misses)", choices=["first", "half"])
    zero_maps: str = opt("skip", "content heatmap: ground-truth-class maps with no positive energy are skipped and counted (CGC's reference; content_heatmap_zero_maps), counted as 0 (zero) or scored as a uniform map (uniform)", choices=["skip", "zero", "uniform"])
    pixel_scaling: str = opt("scaled", "pixel settings (blur, samek_region, pointing_tolerance, part_radius) are given at 224 px and scaled with the image side (scaled), or used as given (fixed)", choices=["scaled", "fixed"])
    top_fraction: float = opt(0.15, "consistency: share of top pixels compared by IoU", minimum=0.0, maximum=1.0)
    batch_size: int = opt(64, "perturbed copies per forward", minimum=1)
    part_radius: float = opt(15.0, "energy in parts: radius around each visible part in pixels at 224 px (scaled)", minimum=0.0)
    transform: str = opt("both", "consistency under transformation: flip, crop (random resized) or both", choices=["flip", "crop", "both"])
    n_transforms: int = opt(2, "random transforms per image for the transformation check", minimum=1)
    transform_methods: list = opt(["gradcam", "gradcampp", "grad_x_activation", "saliency", "random"], "methods recomputed on transformed images, among heatmaps.methods ([] = none; occlusion and IG cost many forwards)")
    names: list = opt(["default"], "metrics step 7 computes: registered metric names, families (faithfulness, localisation, consistency, robustness, complexity, randomisation: each of its metrics) or default (the faithfulness, localisation and consistency metrics; ROAD, infidelity, robustness, complexity and randomisation are opt-in), e.g. [default, sparseness, road_morf]")
    road_percentages: list = opt([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "road_morf, road_lerf: fractions of the pixels imputed (Rong et al. 2022: 10 % to 90 %)")
    road_selection: str = opt("rank", "road_morf, road_lerf: which pixels go: rank (road_evaluation's counts, ties by metrics.ties) or threshold (pytorch-grad-cam's percentile rule)", choices=["rank", "threshold"])
    road_noise: float = opt(0.01, "road_morf, road_lerf: standard deviation of the noise added to the imputed pixels, in pixel units (road_evaluation's NoisyLinearImputer 0.01)", minimum=0.0)
    robustness_samples: int = opt(200, "max_sensitivity, local_lipschitz: perturbed copies per image, each explained again (Quantus 0.6's nr_samples 200)", minimum=1)
    sensitivity_radius: float = opt(0.2, "max_sensitivity: uniform noise U(-r, r) on every input value, in the network input's units (Quantus 0.6's lower_bound 0.2)", minimum=1e-9)
    lipschitz_noise_std: float = opt(0.1, "local_lipschitz: Gaussian noise on every input value, in the network input's units (Quantus 0.6's perturb_std 0.1)", minimum=1e-9)
    random_logit_similarity: str = opt("quantus_ssim", "random_logit: similarity of the two maps: quantus_ssim (Quantus 0.6's SSIM of the flattened maps), ssim (2-D) or spearman", choices=["quantus_ssim", "ssim", "spearman"])
    randomisation_measure: str = opt("spearman_abs", "randomisation_score: the sanity step's measure read (spearman_abs: Quantus MPRT's Spearman of absolute maps; it must be in sanity.measures)", choices=["spearman", "spearman_abs", "ssim", "top_iou"])
    randomisation_stage: str = opt("last", "randomisation_score: the cascade's last stage (every block random, Quantus MPRT return_last_correlation) or the average over the stages", choices=["last", "average"])
    infidelity_noise: float = opt(0.2, "infidelity: standard deviation of the Gaussian perturbation in pixel units, clipped to valid pixels (Yeh et al.'s code: 0.2)", minimum=1e-9)
    infidelity_samples: int = opt(10, "infidelity: perturbations per image (Captum's n_perturb_samples 10)", minimum=1)


@dataclass
class RoarConfig:
    rounds: list = opt([0], "rounds whose model makes the maps (-1 = the sparsest; main_roar.py --rounds overrides)")
    methods: list = opt(["gradcam"], "attribution methods evaluated (the random baseline is always added)")
    percents: list = opt([0, 10, 30, 50, 70, 90], "percent of each image's pixels removed, most important first")
    seeds: int = opt(5, "retraining seeds per point (each point uses the same seeds); Hooker et al. 2019 train 5 models per point", minimum=1)
    epochs: int = opt(0, "retraining epochs (0 = train.epochs)", minimum=0)
    retrain: str = opt("dense", "what is retrained: the dense architecture from a fresh init per seed, or the round's ticket (its mask on the run's initial weights)", choices=["dense", "ticket"])


@dataclass
class HumanStudyConfig:
    weights_remaining: list = opt([1.0, 0.5, 0.03125], "rounds shown to people: the round whose prunable weights remaining is closest to each value (dense, rate 2, rate 32; main_human_study.py export --rounds overrides)")
    method: str = opt("gradcam", "attribution method whose maps are shown")
    images_per_class: int = opt(10, "test images per class that every chosen round classifies correctly (seeded choice)", minimum=1)
    top_fraction: float = opt(0.1, "experiment 2: share of the map's top pixels whose image pixels are shown (the rest black)", minimum=0.0, maximum=1.0)
    overlay_alpha: float = opt(0.7, "experiment 1: weight of the jet colouring of the squared map over the image", minimum=0.0, maximum=1.0)
    display_size: int = opt(224, "side in pixels of the stimulus images (0 = img_size)", minimum=0)
    url_prefix: str = opt("", "prefix of the image URLs in the Mechanical Turk batch files (where human_study/stimuli/ is uploaded; empty = relative paths)")
    workers_per_item: int = opt(5, "answers per task (the batch's assignments per HIT; the simulator's default)", minimum=1)
    preview_items: int = opt(3, "tasks of each experiment shown on the preview page", minimum=1)


ACE_CLUSTER_RULES = ("highly_common", "common_and_populated", "highly_populated")
ACE_PROTOCOLS = {  # the settings an ACE protocol gives the keys left empty (ace.test, ace.negatives, ...)
    "reference": {"test": "paired", "correction": "none", "negatives": "images", "classifier": "linear",
                  "features": "raw", "random_cavs": "counterpart"},
    "strict": {"test": "welch", "correction": "bonferroni", "negatives": "patches", "classifier": "logistic",
               "features": "standardized", "random_cavs": "consecutive"},
}
ACE_REFERENCE_ALPHA = 0.01  # amiratag/ACE test_and_remove_concepts: a concept with p > 0.01 is removed


@dataclass
class AceConfig:
    """ACE concept discovery (main_ace.py): superpixels of each class's train images, clustered at a layer."""
    images_per_class: int = opt(40, "discovery images per class in labels_for_tcav, from the train split (never the TCAV-scored splits)", minimum=1)
    n_segments: list = opt([15, 50, 80], "SLIC resolutions: approximate number of superpixels per image at each")
    compactness: float = opt(20.0, "SLIC compactness", minimum=0.0)
    sigma: float = opt(1.0, "SLIC Gaussian smoothing sigma", minimum=0.0)
    min_segment_fraction: float = opt(0.001, "segments of at most this share of the image are dropped", minimum=0.0, maximum=1.0)
    max_jaccard: float = opt(0.5, "a segment whose Jaccard overlap with a kept one (coarser resolution) exceeds this is dropped", minimum=0.0, maximum=1.0)
    superpixels: str = opt("slic", "ACE's segments: slic (SLIC superpixels, as ACE) or patch_grid (vision transformers: each SLIC map snapped to the model's p x p input patches, so that every segment is whole tokens; img_size must be a multiple of p)", choices=["slic", "patch_grid"])
    fill: float = opt(117 / 255, "value (0-1, before normalisation) of the pixels outside a segment in its patch", minimum=0.0, maximum=1.0)
    layer: str = opt("", "layer whose spatially averaged activations are clustered (empty = the first of bb_layers_for_concepts)")
    n_clusters: int = opt(25, "k-means clusters per class (seeded)", minimum=1)
    min_patches: int = opt(20, "a cluster needs more than this many patches to be considered", minimum=0)
    max_patches: int = opt(40, "patches of a kept cluster, closest to its centre, that form the concept", minimum=4)
    cluster_rules: list = opt(list(ACE_CLUSTER_RULES), "ACE's rules (amiratag/ACE discover_concepts), a cluster is kept when one holds, images = distinct discovery images among its patches: highly_common (images > 0.5 x patches), common_and_populated (images > 0.25 x patches and images > 0.25 x discovery images), highly_populated (images > 0.1 x patches and images > 0.5 x discovery images)")
    protocol: str = opt("reference", "ACE significance protocol, the defaults of the keys left empty: reference (amiratag/ACE: CAVs against random sets of train images, tensorflow/tcav's linear classifier on raw activations, the concept's TCAV scores against those of one more random set's CAVs by a paired t-test (scipy.stats.ttest_rel), a concept kept when p <= 0.01, no correction) or strict (random patches of other classes' images, standardized logistic fits, random CAVs between consecutive random sets, Welch's t-test, Bonferroni over each class's concepts at tcav.alpha)", choices=list(ACE_PROTOCOLS))
    negatives: str = opt("", "random sets of the CAVs: images (random train images of any class but the class's discovery images, step 3's activations, as ACE's random500_i folders) or patches (random patches of other classes' discovery images); empty = the protocol's: images for reference, patches for strict", choices=["", "images", "patches"])
    n_random: int = opt(20, "CAV runs per concept, each against another random set (ACE's num_random_exp, 20 in ace_run.py), and as many random CAVs", minimum=2)
    test: str = opt("", "test of a concept's TCAV scores against the random CAVs': paired (scipy.stats.ttest_rel of run i against random run i, ACE's do_statistical_testings) or welch (scipy.stats.ttest_ind equal_var=False); empty = the protocol's: paired for reference, welch for strict", choices=["", "paired", "welch"])
    correction: str = opt("", "significance threshold: none (p <= ace.alpha, ACE's test_and_remove_concepts) or bonferroni (p < ace.alpha / the number of the class's concepts tested); empty = the protocol's: none for reference, bonferroni for strict", choices=["", "none", "bonferroni"])
    alpha: float = opt(0.0, "significance level (0 = the protocol's: 0.01 as ACE's test_and_remove_concepts for reference, tcav.alpha for strict)", minimum=0.0, maximum=1.0)
    sided: str = opt("two", "two-sided test (as ACE), or one-sided (concept > random: concepts that push the class down are not evidence for it)", choices=["two", "one"])
    match_by: str = opt("overlap", "how a round's concepts are matched to the dense round's: Jaccard overlap of their patches, or CAV cosine", choices=["overlap", "cosine"])
    match_threshold: float = opt(0.2, "a matched pair counts as the same concept when its match_by score reaches this", minimum=-1.0, maximum=1.0)
    montage_patches: int = opt(8, "patches shown per concept in the montage figures", minimum=1)


@dataclass(frozen=True)
class AceProtocol:
    """The ACE settings in force: ``ace.protocol``'s defaults with the explicitly set keys on top."""

    name: str
    test: str  # paired | welch
    sided: str  # two | one
    correction: str  # none | bonferroni
    alpha: float
    negatives: str  # images | patches
    random_cavs: str  # counterpart (one more random set against each random set) | consecutive (set k against k + 1)
    classifier: str  # cav.classifier's choices
    features: str  # raw | standardized
    gradient: str  # tcav.gradient: logit | loss
    label: str  # the protocol column of ace/concepts.csv: the name, with every key that departs from it

    @property
    def standardize(self) -> bool:
        return self.features == "standardized"


def ace_protocol(cfg: "Config") -> AceProtocol:
    """The resolved ACE settings of ``cfg`` (main_ace.py, and step 4 for discovered concepts). The CAV
    classifier and features are ``cav.classifier`` / ``cav.features`` when set, else the ACE protocol's."""
    a = cfg.ace
    preset = ACE_PROTOCOLS[a.protocol]
    given = {"test": a.test, "correction": a.correction, "negatives": a.negatives,
             "classifier": cfg.cav.classifier, "features": cfg.cav.features}
    chosen = {k: v or preset[k] for k, v in given.items()}
    section = {"test": "ace", "correction": "ace", "negatives": "ace", "classifier": "cav", "features": "cav"}
    departs = [f"{section[k]}.{k}={v}" for k, v in chosen.items() if v != preset[k]]
    preset_alpha = ACE_REFERENCE_ALPHA if a.protocol == "reference" else cfg.tcav.alpha
    alpha = a.alpha or preset_alpha
    if alpha != preset_alpha:
        departs.append(f"ace.alpha={alpha:g}")
    if a.sided != "two":
        departs.append(f"ace.sided={a.sided}")
    if cfg.tcav.gradient != "logit":
        departs.append(f"tcav.gradient={cfg.tcav.gradient}")
    label = a.protocol + (f" ({', '.join(departs)})" if departs else "")
    return AceProtocol(name=a.protocol, sided=a.sided, alpha=float(alpha), random_cavs=preset["random_cavs"],
                       gradient=cfg.tcav.gradient, label=label, **chosen)


SANITY_MEASURES = ("spearman", "spearman_abs", "ssim", "top_iou", "emprt")
VERDICT_STAGES = ("all", "upper_half")


@dataclass
class SanityConfig:
    """The model-parameter randomisation test (main_sanity_checks.py; Adebayo et al. 2018)."""
    methods: list = opt([], "attribution methods tested by the randomisation test ([] = heatmaps.methods); sanity.controls are tested besides them")
    controls: list = opt(["guided_backprop", "guided_gradcam", "smoothgrad"], "methods whose outcome Adebayo et al. 2018 reported, tested besides sanity.methods so that the verdict is checked against known answers: guided backprop and guided Grad-CAM, found unchanged under randomisation (the positive controls), and SmoothGrad, found to change; a control that does not apply to the model (guided backprop needs nn.ReLU modules, guided Grad-CAM a layer with a spatial output) is left out with a log line; [] = none")
    rounds: list = opt([0, -1], "rounds whose model is randomised (-1 = the sparsest; main_sanity_checks.py --rounds overrides)")
    n_images: int = opt(12, "step-6 images used, spread evenly over them (0 = all)", minimum=0)
    randomization: str = opt("cascading", "cascading: re-initialise the blocks from the logits down, one more per stage (Adebayo et al.'s main test); independent: one block at a time, the others trained; both", choices=["cascading", "independent", "both"])
    measures: list = opt(["spearman", "spearman_abs", "ssim", "emprt"], "similarity of each randomised model's maps with the original model's maps (spearman: signed maps, spearman_abs: absolute values, as Adebayo et al. report both; ssim, top_iou), and emprt: the relative rise of the maps' entropy (Efficient MPRT, Hedström et al. 2024; a measure of change)")
    verdict_measure: str = opt("ssim", "measure the verdict reads (one of sanity.measures; ssim: the structural similarity, Adebayo et al.'s third measure; spearman: the signed maps, with verdict_stage all this tool's earlier default; spearman_abs: the absolute values; emprt: Efficient MPRT, judged against sanity.emprt_threshold)", choices=list(SANITY_MEASURES))
    verdict_stage: str = opt("upper_half", "the cascade's stage the verdict reads: upper_half (the top floor(K/2) of the K blocks random, the 'higher layers' under which Adebayo et al. found guided backprop's maps unchanged) or all (every block random); independent randomisation reads the block that changes the maps most; eMPRT is always read with every block random, as defined", choices=list(VERDICT_STAGES))
    threshold: float = opt(0.5, "a method 'changes' when the mean verdict_measure of the randomised model's maps against the original's is below this, at the stage sanity.verdict_stage names", minimum=-1.0, maximum=1.0)
    emprt_threshold: float = opt(0.0, "with sanity.verdict_measure: emprt, a method 'changes' when its mean eMPRT (the relative rise of its maps' entropy) is above this (0: the entropy rises)", minimum=-1.0)


@dataclass
class OcclusionStudyConfig:
    """The occlusion-sensitivity study (main_occlusion_study.py): random squares, z-scored probability drops."""
    n_masks: int = opt(500, "occluded copies per image, one square each at a seeded uniformly random position", minimum=2)
    size: int = opt(0, "side of the squares in pixels (0 = an eighth of img_size)", minimum=0)
    p: float = opt(0.01, "one-sided level: squares whose z-scored probability change is below -norm.ppf(1 - p) are selected", minimum=0.0, maximum=0.5)
    images_per_class: int = opt(4, "images per class in labels_for_tcav: the first of ACE's discovery images (train split)", minimum=1)
    batch_size: int = opt(128, "occluded copies per forward", minimum=1)


# -- stats (step 7's intervals and tests, main_aggregate.py's intervals over seeds)
MULTIPLE_TESTING = ["bonferroni", "sidak", "holm-sidak", "holm", "simes-hochberg", "hommel", "fdr_bh", "fdr_by",
                    "fdr_tsbh", "fdr_tsbky"]  # the methods of statsmodels.stats.multitest.multipletests


@dataclass
class StatsConfig:
    """Intervals and tests of the explanation metrics (step 7) and of the replicates (main_aggregate.py)."""
    n_bootstrap: int = opt(2000, "bootstrap resamples of the images for each metric's interval (step 7)", minimum=100)
    confidence: float = opt(0.95, "confidence level of every interval (bootstrap over images, t over seeds)", minimum=0.5, maximum=0.999)
    correction: str = opt("holm", "multiple-testing correction over rounds x methods x metrics (statsmodels multipletests method)", choices=MULTIPLE_TESTING)
    alpha: float = opt(0.05, "family-wise (or false-discovery) level of the paired tests", minimum=0.0, maximum=1.0)
# -- end stats


@dataclass
class SlurmConfig:
    """The SLURM launcher (``launcher: slurm``; python -m lottery_xai.launch): the resources of every task."""
    partition: str = opt("", "partition of the tasks that use the GPU (empty = the cluster's default)")
    cpu_partition: str = opt("", "partition of the tasks that need no GPU: CAV fits, merges, figures, report, replicates (empty = slurm.partition)")
    gpus_per_task: int = opt(1, "GPUs of each GPU task; step 1 runs under torchrun with one process per GPU when above 1 (the CPU-only tasks get none)", minimum=0)
    nodes: int = opt(1, "nodes of step 1's job (torchrun across them, one launcher per node through srun)", minimum=1)
    cpus_per_task: int = opt(8, "CPU cores of each task; each task sets torch's threads to them", minimum=1)
    mem: str = opt("", "memory of each task, as sbatch --mem takes it, e.g. 64G (empty = the partition's default)", pattern=r"^(|\d+[KMGT]?)$")
    time: int = opt(1440, "time limit of each task in minutes (a task that reaches it is requeued and resumes from its files, at most max_requeues times)", minimum=1)
    max_requeues: int = opt(3, "requeues of a task that reached its time limit (preemptions requeue without limit)", minimum=0)
    array_parallelism: int = opt(64, "most tasks of one job array running at once", minimum=1)
    rounds_per_task: int = opt(1, "rounds of each task of a per-round step (steps 2-7, sanity, occlusion, ACE; ROAR keeps one per round): above 1, a task pays its start and setup once for several rounds", minimum=1)
    sbatch: list = opt([], "extra sbatch options, each key=value or a flag, e.g. [account=proj, qos=high, constraint=a100]")
    setup: list = opt([], "shell lines run before every task, e.g. [module load cuda/12.4, source .venv/bin/activate]")
    folder: str = opt("", "folder of the job scripts, logs and the plan of each launch (empty = {logs}/launch/<date-time>)")


@dataclass
class Config:
    experiment_name: str = opt("", "run folder name under logs (empty = built from the settings that change results)")
    logs: str = opt("results", "root folder of all run directories")
    dataset: str = opt("synthetic_cub", "dataset (mnist_eo: even/odd with the digits as concepts; mnist: the ten digits, no concepts; both from the same prepared splits)", choices=["synthetic_cub", "cub", "mnist_eo", "mnist", "folder"])
    data_root: str = opt("data/synthetic_cub", "folder holding the dataset files")
    json_root: str = opt("data/synthetic_cub/prepared", "folder holding the prepared split and concept JSON files")
    seed: int = opt(0, "seed of every random choice", minimum=0)
    device: str = opt("auto", "auto | cpu | cuda | cuda:N", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    img_size: int = opt(64, "input image side in pixels", minimum=8)
    model_arch: str = opt("small_resnet", "backbone: small_resnet, torchvision's resnet18/34/50/101, vgg11_bn, vgg16_bn (lottery_xai.models.ARCHITECTURES), or any timm model as timm:<name> (e.g. timm:vit_small_patch16_224, timm:swin_tiny_patch4_window7_224; doc/models.md)")
    pretrained: bool | str = opt(False, "false; true (torchvision's ImageNet weights, which must be in the local torch cache); or the path of a local weights file for any backbone (.pth, .pt, .bin, .safetensors; keys and shapes checked, the classifier kept fresh when its number of classes differs)")
    model_args: list = opt([], "timm:<name> backbones: key=value arguments of timm.create_model, values read as YAML (e.g. [depth=2, embed_dim=64, num_heads=2]); empty for every other backbone")
    prune_iterations: int = opt(7, "pruning rounds after the dense round 0: the run has rounds 0..prune_iterations, and every step works on them", minimum=0)
    prune_percent: float = opt(20.0, "percent of the alive weights removed per round", minimum=0.0, maximum=100.0)
    labels_for_tcav: list = opt(["all"], "the classes studied, or [all]: TCAV scores them (step 5), step 6 explains heatmaps.images_per_class test images of each (so step 7 and the sanity checks measure those), ACE and the occlusion study take their train images")
    concepts_for_tcav: list = opt(["all"], "the labelled concepts step 4 fits CAVs for and step 5 scores, or [all]; names ace:CLASS:K (or ace:all) add concepts ACE discovered")
    bb_layers_for_concepts: list = opt(["layer3"], "the concept layers (dotted module names): step 3 stores their activations, step 4 fits CAVs and step 5 takes gradients there; ACE uses the first unless ace.layer is set")
    cav_flattening_type: str = opt("avg_pool", "how a layer's activation map becomes a vector", choices=["flatten", "avg_pool", "max_pool"])
    token_features: str = opt("auto", "vision transformers: what a token layer's output becomes for activations, CAVs, TCAV and ACE: cls (the class token), mean (the mean over the patch tokens), grid (the patch tokens as a map [D, h, w], then cav_flattening_type), auto (cls where the model has a class token, ViT / DeiT, else mean, Swin); a CNN's layers are not affected", choices=["auto", "cls", "mean", "grid"])
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    test: TestConfig = field(default_factory=TestConfig)
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    cav: CAVConfig = field(default_factory=CAVConfig)
    tcav: TCAVConfig = field(default_factory=TCAVConfig)
    heatmaps: HeatmapConfig = field(default_factory=HeatmapConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    roar: RoarConfig = field(default_factory=RoarConfig)
    ace: AceConfig = field(default_factory=AceConfig)
    occlusion_study: OcclusionStudyConfig = field(default_factory=OcclusionStudyConfig)
    human_study: HumanStudyConfig = field(default_factory=HumanStudyConfig)
    sanity: SanityConfig = field(default_factory=SanityConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    launcher: str = opt("local", "where python -m lottery_xai.launch runs the tasks: in this process, one step after the other (local), or as SLURM jobs through submitit (slurm, with the slurm.* resources)", choices=["local", "slurm"])
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


# ---------------------------------------------------------------- introspection

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def all_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema."""
    return [key for key, _, _ in describe(cls, prefix)]


def describe(cls=Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every key: the source of the key table (``lottery_xai.doc_reference.key_table``)."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            rows.extend(describe(t, prefix + f.name + "."))
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            rows.append((prefix + f.name, default, f.metadata.get("help", "")))
    return rows


# Keys that the schema once had but nothing read: an old config naming one is told where the setting lives.
REMOVED_KEYS = {
    "data.min_classes": "dataset preparation takes it as --min-classes of scripts_data/download_cub.py",
    "data.val_fraction": "dataset preparation takes it as --val-fraction of the scripts in scripts_data/",
}


def _unknown(key: str) -> UserError:
    if key in REMOVED_KEYS:
        return UserError(f"config key '{key}' is no longer read by the pipeline ({REMOVED_KEYS[key]}); "
                         "delete it from the config")
    return unknown_name(f"unknown config key '{key}'", key, all_keys(), n=1, otherwise="see doc/configuration.md")


def _coerce(key: str, value: Any, ftype, default: Any) -> Any:
    """Check one value against its declared type; ints are accepted where floats are expected."""
    if ftype is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}' must be true or false, got {value!r}")
    if ftype is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}' must be an integer, got {value!r}")
    if ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config key '{key}' must be a number, got {value!r}")
    if ftype is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}' must be a string, got {value!r}")
    if typing.get_origin(ftype) in (typing.Union, types.UnionType) and set(typing.get_args(ftype)) == {bool, str}:
        if isinstance(value, bool):  # pretrained: a flag or a file
            return value
        if isinstance(value, str) and value.strip():
            return value
        raise UserError(f"config key '{key}' must be true or false, or the path of a weights file, got {value!r}")
    if ftype is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `labels_for_tcav: all` means [all]
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        kinds = {type(v) for v in default} or {str}
        for v in value:
            if isinstance(v, dict) or isinstance(v, list):
                raise UserError(f"config key '{key}' must be a flat list, got {value!r}")
            if kinds <= {int} and not (isinstance(v, int) and not isinstance(v, bool)):
                raise UserError(f"config key '{key}' must be a list of integers, got {value!r}")
        if kinds <= {str}:
            value = [str(v) for v in value]
        return value
    raise TypeError(f"unsupported schema type {ftype} for {key}")


def _validate_field(key: str, value: Any, meta: dict) -> None:
    choices, lo, hi, pattern = meta.get("choices"), meta.get("min"), meta.get("max"), meta.get("pattern")
    if choices is not None and value not in choices:
        raise unknown_name(f"config key '{key}' is {value!r}; allowed: {', '.join(map(str, choices))}", value, choices,
                           n=1, cutoff=0.6)
    if lo is not None and value < lo:
        raise UserError(f"config key '{key}' is {value}; it must be >= {lo}")
    if hi is not None and value > hi:
        raise UserError(f"config key '{key}' is {value}; it must be <= {hi}")
    if pattern is not None and not re.match(pattern, str(value)):
        raise UserError(f"config key '{key}' is {value!r}; {meta['help']}")


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown(prefix + str(key))
    kwargs = {}
    for name, f in names.items():
        t = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(t):
            kwargs[name] = _build(t, data.get(name) or {}, key + ".")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if name in data:
            value = _coerce(key, data[name], t, default)
            _validate_field(key, value, f.metadata)
            kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", parsed value); the value is read as YAML (numbers, lists, booleans)."""
    if "=" not in text:
        raise UserError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in all_keys():
        raise _unknown(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict,)):
        value = raw  # 'epoch:2' parses as a mapping in YAML; it is a string here
    return key, value


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` silently keeps the last of two equal keys; a config file must not."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice (lines {first.start_mark.line + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (default: the embedded-default config), apply ``--set`` overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if path.is_dir():
        raise UserError(f"config file '{path}' is a folder; pass --config config/NAME.yaml")
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass --config config/NAME.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"config file '{path}' is not a YAML text file (not UTF-8); pass --config config/NAME.yaml") from None
    except OSError as exc:
        raise UserError(f"config file '{path}' cannot be read ({exc.strerror}); check its permissions") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise UserError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values")
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    cfg = _build(Config, data)
    check_consistency(cfg)
    check_values(cfg)
    return cfg


def check_consistency(cfg: Config) -> None:
    """Rules that involve more than one key (and short names made canonical: ``train.loss: ce``)."""
    if cfg.train.loss == "ce":  # one name per loss in run folders and tables
        cfg.train.loss = "cross_entropy"
    for key in PATH_KEYS:  # '~/runs' means the home folder's runs, once, here (not a folder named '~')
        setattr(cfg, key, os.path.expanduser(getattr(cfg, key)))
    if cfg.pruning.schedule == "compression_rates":
        rates = cfg.pruning.compression_rates
        if not rates or any((not isinstance(r, (int, float))) or r < 1 for r in rates):
            raise UserError("config key 'pruning.compression_rates' must be a list of numbers >= 1")
        if list(rates) != sorted(rates):
            raise UserError("config key 'pruning.compression_rates' must increase round by round")
    if cfg.prune_iterations > 0 and cfg.pruning.schedule == "iterative" and cfg.prune_percent <= 0:
        raise UserError("config key 'prune_percent' must be > 0 when prune_iterations > 0")
    if cfg.pruning.rewind == "reinit" and cfg.pruning.reinit_masks_from == "reinit":
        raise UserError("config key 'pruning.reinit_masks_from' cannot be 'reinit'")
    if not cfg.bb_layers_for_concepts:
        raise UserError("config key 'bb_layers_for_concepts' needs at least one layer name")
    if isinstance(cfg.pretrained, str):  # 'true' / 'false' written as strings mean the flags; a path is expanded
        text = cfg.pretrained.strip()
        flags = {"true": True, "false": False}
        cfg.pretrained = flags[text.lower()] if text.lower() in flags else os.path.expanduser(text)
    if cfg.model_args:
        from .timm_backbones import is_timm, parse_model_args  # lazy: it imports torch, which a config does not need

        if not is_timm(cfg.model_arch):
            raise UserError(f"config key 'model_args' applies to timm:<name> backbones only; model_arch is "
                            f"'{cfg.model_arch}': empty model_args")
        parse_model_args(cfg.model_args)  # a malformed argument fails before any step starts
    shared = [s for s in cfg.tcav.splits if s in cfg.cav.splits]
    if shared:
        raise UserError(f"config keys 'cav.splits' and 'tcav.splits' share {', '.join(shared)}: TCAV would score "
                        "images the CAVs were trained on; give them disjoint splits (default: cav [train], tcav [val, test])")


SPLIT_NAMES = ("train", "val", "test")


def _check_names(key: str, values: list, *, empty: str | None, known=None, extra=()) -> None:
    """A list of names: not empty (``empty`` says what to write instead), no repeats, each one known."""
    if not values and empty is not None:
        raise UserError(f"config key '{key}' is an empty list; {empty}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise UserError(f"config key '{key}' lists {', '.join(map(repr, repeated))} more than once")
    if known is not None:
        allowed = [*known, *extra]
        for value in values:
            if value not in allowed:
                raise unknown_name(f"config key '{key}' names {value!r}, which is unknown", value, allowed, n=1,
                                   cutoff=0.6, otherwise=f"allowed: {', '.join(allowed)}")


def _check_numbers(key: str, values: list, low: float, high: float, low_open: bool, high_open: bool) -> None:
    """A non-empty list of numbers within [low, high] (an open end excludes that bound)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    for v in values:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not number or v < low or v > high or (low_open and v == low) or (high_open and v == high):
            raise UserError(f"config key '{key}' holds {v!r}; every value must be a number in {interval}")
    if not values:
        raise UserError(f"config key '{key}' is an empty list; give at least one number in {interval}")


def check_values(cfg: Config) -> None:
    """Values that a key's type and range accept but that make no sense (an empty list of methods, pruning
    100 %, a run folder outside ``logs``), rejected before any step starts working."""
    name = cfg.experiment_name
    if name and (name in (".", "..") or any(ch in name for ch in "/\\\0") or name != name.strip()):
        raise UserError(f"config key 'experiment_name' is {name!r}; it must be one folder name inside logs "
                        "(no '/', '\\', '..' or surrounding spaces), or empty for the automatic name")
    for key in PATH_KEYS:
        if "\0" in getattr(cfg, key):
            raise UserError(f"config key '{key}' holds a NUL character; give a plain path")
    if cfg.prune_percent >= 100:
        raise UserError(f"config key 'prune_percent' is {cfg.prune_percent:g}; it must be below 100 "
                        "(100 % would remove every remaining weight in the first pruned round)")
    if cfg.prune_percent * cfg.pruning.prune_conv_rate >= 100:
        raise UserError(f"config keys 'prune_percent' ({cfg.prune_percent:g}) and 'pruning.prune_conv_rate' "
                        f"({cfg.pruning.prune_conv_rate:g}) prune conv layers by {cfg.prune_percent * cfg.pruning.prune_conv_rate:g} % "
                        "per round; it must be below 100")
    if cfg.pruning.structure == "channels" and cfg.pruning.prune_bn:
        raise UserError("config key 'pruning.prune_bn' is for unstructured pruning; with pruning.structure: channels "
                        "a BatchNorm's channels go with the conv channels they normalise (set pruning.prune_bn: false)")
    if cfg.cav.n_jobs == 0 or cfg.cav.n_jobs < -1:
        raise UserError(f"config key 'cav.n_jobs' is {cfg.cav.n_jobs}; use -1 (all cores) or a positive number of processes")
    for key, value in (("train.lr", cfg.train.lr), ("cav.C", cfg.cav.C), ("cav.linear_alpha", cfg.cav.linear_alpha)):
        if value <= 0:
            raise UserError(f"config key '{key}' is {value:g}; it must be > 0")
    if not 0 < cfg.tcav.alpha < 1:
        raise UserError(f"config key 'tcav.alpha' is {cfg.tcav.alpha:g}; it must be between 0 and 1 (exclusive)")
    if not 0 < cfg.metrics.top_fraction <= 1:
        raise UserError(f"config key 'metrics.top_fraction' is {cfg.metrics.top_fraction:g}; it must be in (0, 1]")
    if cfg.metrics.blur_kernel % 2 == 0:
        raise UserError(f"config key 'metrics.blur_kernel' is {cfg.metrics.blur_kernel}; a blur kernel needs an odd "
                        "side (RISE's is 11)")
    _check_names("labels_for_tcav", cfg.labels_for_tcav, empty="use [all] or name at least one class")
    _check_names("concepts_for_tcav", cfg.concepts_for_tcav, empty="use [all] or name at least one concept")
    _check_names("bb_layers_for_concepts", cfg.bb_layers_for_concepts, empty="name at least one layer, e.g. [layer3]")
    check_method_names(cfg, None)
    for key, splits in (("activations.splits", cfg.activations.splits), ("cav.splits", cfg.cav.splits),
                        ("tcav.splits", cfg.tcav.splits)):
        _check_names(key, splits, empty=f"name at least one of {', '.join(SPLIT_NAMES)}", known=SPLIT_NAMES)
    outside = [s for s in cfg.cav.splits if s not in cfg.activations.splits]
    if outside:
        raise UserError(f"config key 'cav.splits' names {outside[0]!r}, whose activations step 3 does not save; "
                        f"add it to activations.splits (now {cfg.activations.splits})")
    _check_numbers("metrics.fractions", cfg.metrics.fractions, 0, 1, low_open=True, high_open=False)
    _check_numbers("metrics.road_percentages", cfg.metrics.road_percentages, 0, 1, low_open=True, high_open=True)
    _check_names("metrics.names", cfg.metrics.names, empty="use [default] or name at least one metric")
    _check_numbers("roar.percents", cfg.roar.percents, 0, 100, low_open=False, high_open=True)
    if not cfg.roar.rounds:
        raise UserError("config key 'roar.rounds' is an empty list; name at least one round, e.g. [0] (-1 = the sparsest)")
    _check_names("roar.rounds", cfg.roar.rounds, empty=None)
    # ACE and the occlusion study (main_ace.py, main_occlusion_study.py)
    segments = cfg.ace.n_segments
    if not segments or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in segments):
        raise UserError(f"config key 'ace.n_segments' is {segments!r}; give a list of integers >= 2, e.g. [15, 50, 80]")
    _check_names("ace.cluster_rules", cfg.ace.cluster_rules, empty="name at least one rule, e.g. [highly_common]",
                 known=ACE_CLUSTER_RULES)
    if not 0 < cfg.occlusion_study.p < 0.5:
        raise UserError(f"config key 'occlusion_study.p' is {cfg.occlusion_study.p:g}; it must be between 0 and 0.5 (exclusive)")
    if cfg.occlusion_study.size > cfg.img_size:
        raise UserError(f"config key 'occlusion_study.size' is {cfg.occlusion_study.size}; it must be at most img_size "
                        f"({cfg.img_size}), or 0 for an eighth of it")
    _check_human_study(cfg)
    _check_sanity(cfg)


def _check_sanity(cfg: Config) -> None:
    """The randomisation test's lists (method names are checked against the registry by its step)."""
    s = cfg.sanity
    _check_names("sanity.methods", s.methods, empty=None)  # [] = heatmaps.methods
    _check_names("sanity.controls", s.controls, empty=None)  # [] = none
    _check_names("sanity.measures", s.measures, empty="name at least one of " + ", ".join(SANITY_MEASURES),
                 known=SANITY_MEASURES)
    if s.verdict_measure not in s.measures:
        raise UserError(f"config key 'sanity.verdict_measure' is {s.verdict_measure!r}, which is not in sanity.measures "
                        f"({s.measures}); add it there or choose one of them")
    if not s.rounds:
        raise UserError("config key 'sanity.rounds' is an empty list; name at least one round, e.g. [0, -1] (-1 = the sparsest)")
    _check_names("sanity.rounds", s.rounds, empty=None)


def _check_human_study(cfg: Config) -> None:
    h = cfg.human_study
    _check_numbers("human_study.weights_remaining", h.weights_remaining, 0, 1, low_open=True, high_open=False)
    _check_names("human_study.weights_remaining", h.weights_remaining, empty=None)
    if len(h.weights_remaining) < 2:
        raise UserError("config key 'human_study.weights_remaining' names one round; the study compares at least two, "
                        "e.g. [1.0, 0.5, 0.03125]")
    if h.top_fraction <= 0:
        raise UserError(f"config key 'human_study.top_fraction' is {h.top_fraction:g}; it must be in (0, 1]")


def check_method_names(cfg: Config, methods: list[str] | None) -> None:
    """The attribution-method lists: not empty (``metrics.transform_methods`` may be: none), and, given
    the registry's ``methods`` (the scripts and the pipeline pass it; the config layer does not import
    the methods), made of known names."""
    _check_names("heatmaps.methods", cfg.heatmaps.methods, empty="name at least one attribution method, e.g. [gradcam]",
                 known=methods)
    _check_names("metrics.transform_methods", cfg.metrics.transform_methods, empty=None, known=methods)  # [] = none
    _check_names("roar.methods", cfg.roar.methods, empty="name at least one attribution method, e.g. [gradcam]",
                 known=methods)


def roar_epochs(cfg: Config) -> int:
    """Epochs of each ROAR retrain: ``roar.epochs``, or ``train.epochs`` when it is 0."""
    return cfg.roar.epochs or cfg.train.epochs


def n_rounds(cfg: Config) -> int:
    """Rounds including the dense round 0."""
    if cfg.pruning.schedule == "compression_rates":
        return len(cfg.pruning.compression_rates) + 1
    return cfg.prune_iterations + 1


def configured_rounds(cfg: Config, key: str) -> list[int]:
    """The rounds a config list names (``key``, e.g. ``sanity.rounds``), sorted, with -1 (and other
    negatives) counted from the sparsest round; a round the schedule does not have is a user error."""
    values = dotted_value(cfg, key)
    total = n_rounds(cfg)
    rounds = sorted({r if r >= 0 else total + r for r in values})
    bad = [r for r in rounds if not 0 <= r < total]
    if bad:
        raise UserError(f"config key '{key}' names rounds {bad}; this config has rounds 0..{total - 1}")
    return rounds


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- the settings a run folder holds

# The settings that determine a run's checkpoints (step 1). A run folder holds the run of one set of them: step 1
# records them in the folder and every step compares (lottery_xai.rundir.RunDir.check_settings), as OpenLTH names
# a run by the hash of its hyperparameters. They are the top-level RUN_KEYS and every key of RUN_SECTIONS but the
# ones named in NOT_RUN_SETTINGS; every other top-level key and section is named there too (a test checks that each
# top-level key and section is in one list: a new one is classified when it is added). train.eval_every is a run
# setting although training is unchanged by it: the early-stopping iteration step 1 records in every checkpoint,
# pruning/early_stopping.csv and round_XX/early_stop.pt are read from its validation points. test.checkpoint is
# not: it picks which of step 1's checkpoints later steps load, and the fingerprints record that choice.
RUN_KEYS = ("dataset", "seed", "img_size", "model_arch", "model_args", "pretrained", "prune_percent")
RUN_SECTIONS = ("data", "train", "pruning")
NOT_RUN_SETTINGS = ("experiment_name", "logs", "data_root", "json_root", "device", "prune_iterations",
                    "labels_for_tcav", "concepts_for_tcav", "bb_layers_for_concepts", "cav_flattening_type",
                    "token_features", "launcher", "data.eval_batch_size", "data.num_workers",
                    # the sections of the later steps, the launcher's resources
                    "test", "activations", "cav", "tcav", "heatmaps", "metrics", "roar", "ace", "occlusion_study",
                    "human_study", "sanity", "stats", "slurm")


def dotted_value(cfg: Config, key: str) -> Any:
    """The value of a dotted key, e.g. ``dotted_value(cfg, "train.lr")``."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _inert(cfg: Config) -> set[str]:
    """Run settings that the other settings leave without effect (a change of one is not another run)."""
    p, t = cfg.pruning, cfg.train
    return ({"pruning.compression_rates"} if p.schedule != "compression_rates" else {"prune_percent"}) \
        | ({"pruning.random_sparsity"} if p.method != "random" else set()) \
        | ({"pruning.reinit_masks_from"} if p.rewind != "reinit" else set()) \
        | ({"train.lr_step_epochs", "train.lr_gamma"} if t.lr_schedule != "step" else set()) \
        | ({k for k in all_keys(TrainConfig, "train.") if k.startswith("train.cgc_")} if t.loss == "cross_entropy" else set()) \
        | ({"train.early_stopping_gain", "train.early_stopping_patience"} if not t.early_stopping else set()) \
        | ({"pruning.channel_norm", "pruning.channel_score"} if p.structure != "channels" else set()) \
        | ({"pruning.prune_conv_rate"} if p.schedule != "iterative" else set())


def run_settings(cfg: Config) -> dict[str, Any]:
    """The settings that determine the run's checkpoints (see ``RUN_KEYS``; those the others leave without effect
    are left out), by dotted key."""
    inert = _inert(cfg)
    return {key: dotted_value(cfg, key) for key in all_keys()
            if (key in RUN_KEYS or key.split(".")[0] in RUN_SECTIONS) and key not in NOT_RUN_SETTINGS + tuple(inert)}


def defaults() -> dict[str, Any]:
    """Every key's default, by dotted key."""
    return {key: default for key, default, _ in describe()}


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: Config, **changes) -> Config:
    """A copy with dotted keys changed, e.g. ``replace(cfg, **{"pruning.rewind": "reinit"})``."""
    data = to_dict(cfg)
    for key, value in changes.items():
        _set_dotted(data, key, value)
    return _build(Config, data)
