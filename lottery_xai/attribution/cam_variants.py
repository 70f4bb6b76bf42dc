"""The CAM variants pytorch-grad-cam users choose: HiResCAM, LayerCAM, XGrad-CAM, EigenCAM.

Built on the Grad-CAM skeleton of `lottery_xai.attribution.cam` (one forward, one backward that stops
at the layer, a ReLU, bilinear upsampling to the input with align_corners=False); each method only
says how the activation A [N, K, h, w] and its gradient G = dz_c/dA combine. The definitions are
pytorch-grad-cam's (jacobgil/pytorch-grad-cam 1.5.7, ``get_cam_image`` / ``get_cam_weights`` of each
class, after which ``BaseCAM`` applies ``np.maximum(cam, 0)``):

- HiResCAM (Draelos & Carin 2020): sum_k G_k * A_k (element-wise; the same map as
  ``grad_x_activation``, registered under its paper's name).
- LayerCAM (Jiang et al., IEEE TIP 2021): sum_k relu(G_k) * A_k.
- XGrad-CAM (Fu et al., BMVC 2020): sum_k w_k A_k with w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7)
  (the 1e-7 is pytorch-grad-cam's).
- EigenCAM (Muhammad & Yeasin, IJCNN 2020): no gradient; the projection of each image's activations
  (h*w rows, K columns, centred per column) on their first right singular vector.

pytorch-grad-cam then min-max scales each map to [0, 1] (``scale_cam_image``: (m - min) / (max + 1e-7)
after subtracting the min) before and after resizing with ``cv2.resize`` (bilinear); here the maps
stay raw (``attribute`` normalises them as every method's), which differs from theirs by that
per-image affine scaling only.
"""
from __future__ import annotations

import torch
from torch import nn

from lottery_xai.attribution._hooks import (
    TargetsLike,
    as_grid,
    check_eval,
    check_images,
    find_default_layer,
    upsample_maps,
)
from lottery_xai.activations import layer_activations
from lottery_xai.attribution.cam import _layer_cam
from lottery_xai.errors import UserError

EIGEN_SIGNS = ("max_abs", "none")


def _hirescam_combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return (grad * activation).sum(dim=1)


def _layercam_combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return (torch.relu(grad) * activation).sum(dim=1)


def _xgradcam_combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    weights = (grad * activation / (activation.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3))
    return torch.einsum("nc,nchw->nhw", weights, activation)


def hirescam(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *, layer: str | None = None,
             upsample: bool = True) -> torch.Tensor:
    """HiResCAM maps [N, H, W] (Draelos & Carin 2020; pytorch-grad-cam ``HiResCAM``): ReLU(sum_k G_k * A_k),
    bilinearly upsampled. Same arguments as `gradcam`."""
    return _layer_cam(model, images, targets, layer, upsample, _hirescam_combine)


def layercam(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *, layer: str | None = None,
             upsample: bool = True) -> torch.Tensor:
    """LayerCAM maps [N, H, W] (Jiang et al. 2021; pytorch-grad-cam ``LayerCAM``): ReLU(sum_k relu(G_k) * A_k),
    bilinearly upsampled. Same arguments as `gradcam`."""
    return _layer_cam(model, images, targets, layer, upsample, _layercam_combine)


def xgradcam(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *, layer: str | None = None,
             upsample: bool = True) -> torch.Tensor:
    """XGrad-CAM maps [N, H, W] (Fu et al. 2020; pytorch-grad-cam ``XGradCAM``): ReLU(sum_k w_k A_k),
    w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7), bilinearly upsampled. Same arguments as `gradcam`."""
    return _layer_cam(model, images, targets, layer, upsample, _xgradcam_combine)


def eigen_projection(activation: torch.Tensor, sign: str = "max_abs") -> torch.Tensor:
    """[N, K, h, w] -> [N, h, w]: each image's activations as h*w rows of K values, centred per column,
    projected on their first right singular vector (pytorch-grad-cam ``get_2d_projection``).

    The singular vector's sign is arbitrary (LAPACK's choice: it differs between numpy, torch, CPU and
    GPU). `sign` 'max_abs' (default) fixes it so that the projection's largest absolute value is
    positive (flip when |min| > |max|: pytorch-grad-cam's ``get_2d_projection_with_sign_correction``,
    Chung & Ying 2025, Eq. 13), so the map does not depend on the device; 'none' keeps torch's sign.
    """
    if sign not in EIGEN_SIGNS:
        raise UserError(f"sign must be one of {', '.join(EIGEN_SIGNS)}, got {sign!r}")
    n, k, h, w = activation.shape
    rows = activation.reshape(n, k, h * w).transpose(1, 2)
    rows = torch.nan_to_num(rows, nan=0.0)
    rows = rows - rows.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    projection = torch.einsum("npk,nk->np", rows, vh[:, 0, :])
    if sign == "max_abs":
        flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
        projection = torch.where(flip[:, None], -projection, projection)
    return projection.view(n, h, w)


def eigencam(model: nn.Module, images: torch.Tensor, targets: TargetsLike = None, *, layer: str | None = None,
             upsample: bool = True, sign: str = "max_abs") -> torch.Tensor:
    """EigenCAM maps [N, H, W] (Muhammad & Yeasin 2020; pytorch-grad-cam ``EigenCAM``): ReLU of the first
    principal component of the layer's activations (`eigen_projection`, `sign` fixes the SVD's sign),
    bilinearly upsampled. Class-agnostic: `targets` is accepted and ignored. One forward that stops at
    the layer, no backward; the SVD runs in float32 on the activations' device."""
    check_images(images)
    check_eval(model)
    layer = layer if layer is not None else find_default_layer(model, images)
    activation = as_grid(model, layer_activations(model, layer, images.detach()), layer)
    if not isinstance(activation, torch.Tensor) or activation.dim() != 4:
        raise UserError(f"EigenCAM needs a layer with a spatial output [N, K, h, w]; {layer!r} gives "
                        f"{tuple(getattr(activation, 'shape', ()))}")
    with torch.no_grad():
        maps = torch.relu(eigen_projection(activation.float(), sign))
        return upsample_maps(maps, images.shape[-2:]) if upsample else maps
