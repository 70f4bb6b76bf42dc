"""Patch-grid superpixels for ACE on transformers."""
import numpy as np
import pytest

from lottery_xai.concepts.patch_grid import model_patch_size, snap_to_patches
from lottery_xai.errors import UserError


def test_each_cell_takes_its_majority_label():
    labels = np.array([[0, 0, 1, 1],
                       [0, 1, 1, 1],
                       [2, 2, 2, 1],
                       [2, 0, 3, 3]])
    snapped = snap_to_patches(labels, 2)
    # cells: top-left {0:3, 1:1} -> 0; top-right {1:4} -> 1; bottom-left {2:3, 0:1} -> 2; bottom-right {2:1, 1:1, 3:2} -> 3
    assert snapped.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert snapped.dtype == labels.dtype


def test_ties_go_to_the_smallest_label_and_whole_cells_stay():
    labels = np.array([[5, 2], [2, 5]])
    assert snap_to_patches(labels, 2).tolist() == [[2, 2], [2, 2]]
    rng = np.random.default_rng(0)
    big = rng.integers(0, 6, size=(32, 32))
    snapped = snap_to_patches(big, 8)
    cells = snapped.reshape(4, 8, 4, 8)
    assert (cells == cells[:, :1, :, :1]).all()  # constant on every 8 x 8 cell
    for i in range(4):
        for j in range(4):
            counts = np.bincount(big[8 * i:8 * i + 8, 8 * j:8 * j + 8].ravel(), minlength=6)
            assert snapped[8 * i, 8 * j] == np.flatnonzero(counts == counts.max())[0]


def test_sizes_that_do_not_divide_are_refused():
    with pytest.raises(UserError, match="multiple of the transformer's patch size"):
        snap_to_patches(np.zeros((30, 32), dtype=int), 8)


def test_patch_size_of_a_timm_vit():
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=8, depth=1,
                                                           num_heads=2, num_classes=2)
    assert model_patch_size(vit) == 8
    with pytest.raises(UserError, match="patch embedding"):
        model_patch_size(object())


def test_ace_segments_snapped_to_the_patch_grid_are_whole_tokens():
    from lottery_xai.concepts.ace import segment_image, segment_masks

    image = np.random.default_rng(1).random((32, 32, 3))
    maps, kept = segment_image(image, [6, 12], patch=8, min_fraction=0.0, max_jaccard=1.0)
    masks = segment_masks(maps, kept).reshape(-1, 4, 8, 4, 8)
    assert len(masks) > 0 and (masks == masks[:, :, :1, :, :1]).all()
    plain, _ = segment_image(image, [6, 12])
    assert np.array_equal(np.stack([snap_to_patches(m, 8) for m in plain]), maps)  # SLIC first, then snapped
