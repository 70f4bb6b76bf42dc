"""Contrastive Grad-CAM consistency (CGC; Pillai, Koohpayegani and Pirsiavash, CVPR 2022), as a
training loss of the registry (``train.loss: cgc``, and ``gc_mse``, the ablation without negatives).

For a batch, ``x`` is the original view (the evaluation transform of each training image, given
beside the augmented training view by step 1) and ``T(x)`` is a random resized crop (scale
0.08-1, ratio 3/4-4/3) of ``x`` with a horizontal flip of probability 0.5, drawn from the global
generator (seeded per round by step 1, so runs and resumes repeat it). The map of an image is
``ReLU(sum_k dz/dA_k * A_k)`` at the CAM layer (``train.cgc_map: grad_x_activation``, the authors'
variant) or Grad-CAM's ``ReLU(sum_k mean(dz/dA_k) A_k)`` (``gradcam``), for the class predicted on
``x`` (a pseudo-label: no label is needed), upsampled to the input size and normalised to sum 1.
The gradient is taken with ``create_graph=True``, so the loss back-propagates through the maps.
The map of ``x`` is carried to the frame of ``T(x)`` by the same crop and flip (one batched linear
operator, :mod:`lottery_xai.crops`): ``v = T(M(x))``, ``u = M(T(x))``, both flattened and
L2-normalised. CGC: ``logits_b = [u_b . v_b, {u_b . u_j}_{j != b}] / tau``, cross-entropy with
label 0; ``gc_mse``: the mean over the batch and the pixels of ``(u_b - v_b)^2`` (the reference's
``F.mse_loss``, see :func:`mse_loss`). Total: ``CE(training view) + CE(x) +
CE(T(x)) + lambda * L`` (three forwards; with ``data.augment: false`` the training view is ``x`` and
its cross-entropy counts once). With ``lambda = 0`` the registry builds the plain cross-entropy loss instead (nothing
else is computed or drawn), so such a run equals the cross-entropy run bit for bit.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..activations import LayerCapture
from ..config import TrainConfig
from ..crops import resized_crop, sample_crop_boxes
from ..errors import UserError
from ..models import get_layer
from .losses import CrossEntropy, labelled_cross_entropy, register_loss

MAP_VARIANTS = ("grad_x_activation", "gradcam")


def differentiable_maps(activation: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, size: tuple[int, int],
                        variant: str = "grad_x_activation") -> torch.Tensor:
    """Maps [N, H, W] of ``targets`` from a captured ``activation`` [N, C, h, w] (attached to the graph)
    and the ``logits`` it led to; differentiable (``create_graph=True``), each summing to 1."""
    if variant not in MAP_VARIANTS:
        raise UserError(f"unknown CGC map {variant!r}; use one of {', '.join(MAP_VARIANTS)}")
    selected = logits.gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(selected, activation, create_graph=True)
    weights = grad if variant == "grad_x_activation" else grad.mean(dim=(2, 3), keepdim=True)
    maps = (weights * activation).sum(1, keepdim=True)
    maps = F.relu(maps.float() if maps.dtype in (torch.float16, torch.bfloat16) else maps)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps / maps.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def _global_batch(u: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Under torchrun: every process's u, concatenated in rank order (differentiable all_gather, so
    each process's gradient reaches every map), and this process's offset in it; else (u, 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return u, 0
    return _GatherRows.apply(u.contiguous()), dist.get_rank() * u.shape[0]  # DistributedSampler: equal batches


class _GatherRows(torch.autograd.Function):
    """all_gather along the batch dimension; backward sums every process's gradient of the gathered
    tensor (all_reduce) and keeps this process's rows."""

    @staticmethod
    def forward(ctx, u):
        parts = [torch.empty_like(u) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, u)
        ctx.rank, ctx.rows = dist.get_rank(), u.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def contrastive_loss(u: torch.Tensor, v: torch.Tensor, temperature: float) -> torch.Tensor:
    """CGC's InfoNCE term for flattened maps u, v [B, D]: the positive of u_b is v_b, its negatives
    the other u_j of the global batch (under torchrun, of every process, so the result does not
    depend on the number of GPUs: DDP's gradient average then equals the single-process gradient)."""
    u, v = F.normalize(u.flatten(1), dim=1), F.normalize(v.flatten(1), dim=1)
    b = u.shape[0]
    everyone, offset = _global_batch(u)
    positive = (u * v).sum(1, keepdim=True)
    others = u @ everyone.T  # [B, B_global]
    self_mask = torch.zeros_like(others, dtype=torch.bool)
    self_mask[torch.arange(b, device=u.device), offset + torch.arange(b, device=u.device)] = True
    negatives = others[~self_mask].view(b, everyone.shape[0] - 1)
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=u.device))


def mse_loss(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The ablation without negatives (``train.loss: gc_mse``): the mean over the batch AND the pixels
    of ``(u - v)^2`` for the flattened, L2-normalised maps, i.e. ``|u_b - v_b|^2 / D`` averaged over b.

    Reference: UCDvision/CGC ``train_eval_gc_l2_no_contrast_baseline.py`` (``disable_contrast=True``
    in ``models/resnet_multigpu_cgc.py``): ``torch.nn.functional.mse_loss(aug_gradcam_mask,
    orig_aug_gradcam_mask)`` on the L2-normalised maps flattened at the input size (224 x 224), whose
    default reduction is the mean over every element. (Before issue 19 this was the sum over pixels,
    D = H x W times stronger: 4096x at 64 px.)"""
    u, v = F.normalize(u.flatten(1), dim=1), F.normalize(v.flatten(1), dim=1)
    return ((u - v) ** 2).mean()


def consistency_term(forward: nn.Module, model: nn.Module, images: torch.Tensor, crop: tuple, layer: str,
                     variant: str = "grad_x_activation", temperature: float = 0.5, contrastive: bool = True):
    """(L_CGC or L_MSE, logits of x, logits of T(x)) for the crop ``(top, left, height, width, flip)``
    [N] each; ``forward`` runs the batch (``model`` itself, or its DistributedDataParallel wrapper)."""
    n, _, height, width = images.shape
    top, left, h, w, flip = crop
    transformed = resized_crop(images, top, left, h, w, flip)

    def run(batch):
        capture = LayerCapture(get_layer(model, layer), layer, "attached")
        with capture:
            logits = forward(batch)
        return capture.activation, logits

    act_x, logits_x = run(images)
    act_t, logits_t = run(transformed)
    pseudo = logits_x.detach().argmax(1)  # the class predicted on x: no label needed
    maps_x = differentiable_maps(act_x, logits_x, pseudo, (height, width), variant)
    maps_t = differentiable_maps(act_t, logits_t, pseudo, (height, width), variant)
    v = resized_crop(maps_x, top, left, h, w, flip)
    term = contrastive_loss(maps_t, v, temperature) if contrastive else mse_loss(maps_t, v)
    return term, logits_x, logits_t


def random_crops(images: torch.Tensor) -> tuple:
    """T's parameters for a batch: RandomResizedCrop boxes (scale 0.08-1) and flips, from the global generator."""
    n, _, height, width = images.shape
    top, left, h, w = sample_crop_boxes(n, height, width, torch.default_generator, scale=(0.08, 1.0))
    flip = torch.rand(n) < 0.5
    return tuple(t.to(images.device) for t in (top, left, h, w, flip))


class CGCLoss:
    """``train.loss: cgc`` (or ``gc_mse`` with ``contrastive=False``); runs its own forwards."""

    own_forward = True
    needs_original_view = True  # step 1 gives each batch its evaluation-transform view (loaders.WithOriginalView)

    def __init__(self, tc: TrainConfig, layer: str, contrastive: bool = True):
        self.tc, self.layer, self.contrastive = tc, layer, contrastive
        self.lam, self.tau, self.variant = tc.cgc_lambda, tc.cgc_temperature, tc.cgc_map

    def forward_pass(self, forward: nn.Module, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     autocast, originals: torch.Tensor | None = None) -> torch.Tensor:
        """The total loss of a batch: ``CE(training view) + CE(x) + CE(T(x)) + lambda * L`` where ``x`` is
        the original (evaluation-transform) view ``originals``; without one (``data.augment: false``, or
        a caller that has only one view) ``x`` is ``images`` and its cross-entropy counts once.
        ``forward`` may be the DistributedDataParallel wrapper of ``model``."""
        ls = self.tc.label_smoothing
        x = images if originals is None else originals
        crop = random_crops(x)
        with autocast:
            consistency, logits_x, logits_t = consistency_term(forward, model, x, crop, self.layer, self.variant,
                                                               self.tau, self.contrastive)
            logits_train = forward(images) if originals is not None else None
        ce = labelled_cross_entropy(logits_x, labels, ls) + labelled_cross_entropy(logits_t, labels, ls)
        if logits_train is not None:
            ce = ce + labelled_cross_entropy(logits_train, labels, ls)
        return ce + self.lam * consistency


def _cgc(tc: TrainConfig, layer: str = "", contrastive: bool = True, **context):
    if tc.cgc_lambda == 0:  # no consistency term: the cross-entropy run, exactly
        return CrossEntropy(tc)
    if not (tc.cgc_layer or layer):
        raise UserError(f"train.loss={'cgc' if contrastive else 'gc_mse'} needs a layer: set train.cgc_layer")
    return CGCLoss(tc, tc.cgc_layer or layer, contrastive=contrastive)


register_loss("cgc", _cgc)
register_loss("gc_mse", lambda tc, **context: _cgc(tc, contrastive=False, **context))
