"""ACE's pure parts with known answers: superpixels, patches, ACE's cluster rules, significance, matching."""
import numpy as np
import pytest
import torch
from scipy import stats

from lottery_xai.concepts.ace import (CLUSTER_RULES, closest_members, concept_significance, discovery_indices,
                                      jaccard_matrix, kept_clusters, make_patches, mask_boxes, match_concepts,
                                      patch_locations, segment_image, segment_masks)
from lottery_xai.errors import UserError

COLOURS = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.2, 0.9], [0.95, 0.9, 0.1]])


def quadrants(size=64):
    """An image of four flat coloured quadrants and its true region of each pixel."""
    region = np.zeros((size, size), dtype=int)
    half = size // 2
    region[:half, half:], region[half:, :half], region[half:, half:] = 1, 2, 3
    return COLOURS[region], region


@pytest.mark.parametrize("n_segments", [4, 16])
def test_slic_recovers_flat_coloured_regions(n_segments):
    """Without smoothing every segment is one region (exactly the quadrant at 4 segments, a piece of one
    at 16), and the segments tile the image."""
    image, region = quadrants()
    maps, kept = segment_image(image, n_segments=[n_segments], compactness=20, sigma=0)
    masks = segment_masks(maps, kept)
    assert masks.sum(0).min() == masks.sum(0).max() == 1
    for mask in masks:
        assert len(np.unique(region[mask])) == 1
    if n_segments == 4:
        assert sorted(int(np.unique(region[m])[0]) for m in masks) == [0, 1, 2, 3]


def test_slic_with_ace_smoothing_recovers_the_regions_but_for_their_edges():
    image, region = quadrants()
    maps, kept = segment_image(image, n_segments=[4], compactness=20, sigma=1)  # ACE's settings
    masks = segment_masks(maps, kept)
    majority = [int(np.bincount(region[m]).argmax()) for m in masks]
    assert sorted(majority) == [0, 1, 2, 3]
    wrong = sum(int((region[m] != k).sum()) for m, k in zip(masks, majority))
    assert wrong < 0.02 * region.size  # the 1-pixel blur moves a few boundary pixels only


def test_coarser_duplicate_segments_are_dropped_and_tiny_ones_too():
    image, region = quadrants()
    maps, kept = segment_image(image, n_segments=[4, 4], compactness=20, sigma=0)
    assert maps.shape == (2, 64, 64)
    assert set(kept[:, 0]) == {0}  # the second resolution repeats the first: Jaccard 1 > 0.5, all dropped
    # a segment of at most min_fraction of the image is dropped: with 0.3 every quadrant (0.25) goes
    _, none = segment_image(image, n_segments=[4], compactness=20, sigma=0, min_fraction=0.3)
    assert len(none) == 0


def test_patch_is_the_bounding_box_with_the_outside_filled():
    image = torch.zeros(1, 3, 8, 8)
    image[0, 0] = 1.0
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:4, 4:8] = True  # a 2 x 4 box
    mask[0, 3, 7] = False  # one pixel of the box is outside the segment
    top, left, height, width = mask_boxes(mask)
    assert (int(top), int(left), int(height), int(width)) == (2, 4, 2, 4)
    patch = make_patches(image, mask, torch.tensor([0]), fill=0.5)
    assert patch.shape == (1, 3, 8, 8)
    # the top-left of the patch comes from the segment (red), the bottom-right corner from the fill
    assert patch[0, 0, 0, 0] == pytest.approx(1.0) and patch[0, 1, 0, 0] == pytest.approx(0.0)
    assert patch[0, :, -1, -1].tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_patch_locations_inside_the_box_and_nearest_part():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True  # inside the box, next to part 0
    masks[1, 7:10, 7:10] = True  # outside the box
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 2)
    parts = torch.tensor([[[2.0, 2.0, 1.0], [4.0, 4.0, 1.0]]] * 2)
    in_box, part = patch_locations(masks, boxes, parts)
    assert in_box.tolist() == pytest.approx([1.0, 0.0])
    assert part.tolist() == [0, -1]


def hand_made_clusters():
    """(assignment, patch_image) of clusters (patches, distinct images) built to meet known rules, with 40
    discovery images and min_patches 5; amiratag/ACE's conditions worked by hand (img = distinct images,
    n = patches): highly common img > 0.5 n; common and populated img > 0.25 n and img > 10;
    highly populated img > 0.1 n and img > 20.
    0: (12, 8)    8 > 6: highly common only (8 > 10, 8 > 20 fail)
    1: (100, 11)  none: 11 > 50, 11 > 25 fail; 11 > 10 but 11 > 20 fails (patches 100 > 20 would pass)
    2: (100, 21)  highly populated only: 21 > 10 and 21 > 20; 21 > 50 and 21 > 25 fail
    3: (30, 2)    none
    4: (5, 5)     too few patches (5 is not > 5)
    5: (40, 12)   common and populated only: 12 > 10 and 12 > 10; 12 > 20 fails for the other two
    6: (60, 31)   all three: 31 > 30; 31 > 15 and 31 > 10; 31 > 6 and 31 > 20."""
    spec = {0: (12, 8), 1: (100, 11), 2: (100, 21), 3: (30, 2), 4: (5, 5), 5: (40, 12), 6: (60, 31)}
    assignment, images = [], []
    for cluster, (n_patches, n_images) in spec.items():
        assignment += [cluster] * n_patches
        images += [i % n_images + 100 * cluster for i in range(n_patches)]
    return np.array(assignment), np.array(images)


@pytest.mark.parametrize("rules, expected", [
    (list(CLUSTER_RULES), [6, 2, 5, 0]),  # ordered by distinct images: 31, 21, 12, 8
    (["highly_common"], [6, 0]),
    (["common_and_populated"], [6, 5]),
    (["highly_populated"], [6, 2]),
    (["highly_common", "highly_populated"], [6, 2, 0]),
])
def test_cluster_rules_keep_exactly_the_right_clusters(rules, expected):
    assignment, images = hand_made_clusters()
    assert kept_clusters(assignment, images, n_discovery=40, rules=rules, min_patches=5) == expected


def test_highly_populated_counts_distinct_discovery_images_not_patches():
    """amiratag/ACE: highly_populated_concept = len(concept_image_numbers) > 0.5 * discovery_size. A cluster
    of 100 patches from 11 of 40 discovery images is dropped; from 21 images it is kept; 20 is not > 20."""
    for n_images, kept in ((11, []), (20, []), (21, [0])):
        assignment = np.zeros(100, dtype=int)
        images = np.arange(100) % n_images
        assert kept_clusters(assignment, images, n_discovery=40, rules=["highly_populated"], min_patches=20) == kept
        assert kept_clusters(assignment, images, n_discovery=40, min_patches=20) == kept  # no other rule holds


def test_minimum_cluster_size_is_strict():
    """ACE considers a cluster when len(label_idxs) > min_imgs: 20 patches of 20 images are too few at 20."""
    images = np.arange(20)
    assert kept_clusters(np.zeros(20, int), images, n_discovery=40, min_patches=20) == []
    assert kept_clusters(np.zeros(21, int), np.arange(21), n_discovery=40, min_patches=20) == [0]


def test_unknown_cluster_rule_is_a_user_error():
    assignment, images = hand_made_clusters()
    with pytest.raises(UserError, match="unknown cluster rule"):
        kept_clusters(assignment, images, 40, rules=["popular"])


def test_closest_members_and_discovery_images_are_deterministic():
    assignment = np.array([0, 1, 0, 0, 1])
    distance = np.array([3.0, 1.0, 1.0, 2.0, 0.5])
    assert closest_members(assignment, distance, 0, 2).tolist() == [2, 3]
    labels = np.repeat(np.arange(3), 10)
    a, b = discovery_indices(labels, [0, 2], 4, seed=7), discovery_indices(labels, [0, 2], 4, seed=7)
    assert all(np.array_equal(a[c], b[c]) for c in (0, 2))
    assert (labels[a[2]] == 2).all() and len(a[0]) == 4


def test_significance_welch_option_one_sided_and_paired():
    random = np.linspace(0.3, 0.7, 10)
    high, low = random + 0.25, random - 0.25
    two = concept_significance(np.stack([high, low]), random, test="welch", sided="two", correction="bonferroni",
                               alpha=0.05)
    assert two["significant"].tolist() == [True, True]  # two-sided: a concept far below random counts too
    one = concept_significance(np.stack([high, low]), random, test="welch", sided="one", correction="bonferroni",
                               alpha=0.05)
    assert one["significant"].tolist() == [True, False]  # one-sided: it does not
    assert one["p_value"][0] == pytest.approx(stats.ttest_ind(high, random, equal_var=False,
                                                              alternative="greater").pvalue)
    noisy = high + np.random.default_rng(0).normal(0, 0.01, 10)
    paired = concept_significance(noisy[None], random, test="paired", sided="two")
    assert paired["p_value"][0] == pytest.approx(stats.ttest_rel(noisy, random).pvalue)


def test_matching_is_one_to_one_and_thresholded():
    overlap = jaccard_matrix([np.array([0, 1, 2]), np.array([5, 6])], [np.array([5, 6, 7]), np.array([0, 1, 2])], 10)
    assert np.allclose(overlap, [[0, 1], [2 / 3, 0]])
    assert match_concepts(overlap, 0.7) == [(0, 1, 1.0)]
    assert [(r, c) for r, c, _ in match_concepts(overlap, 0.2)] == [(0, 1), (1, 0)]


@pytest.mark.parametrize("override, message", [
    ("ace.n_segments=[]", "ace.n_segments"),
    ("ace.cluster_rules=[popular]", "ace.cluster_rules"),
    ("occlusion_study.p=0.7", "occlusion_study.p"),
    ("ace.negatives=noise", "ace.negatives"),
])
def test_bad_ace_and_occlusion_settings_are_user_errors(override, message):
    from lottery_xai.config import load_config

    with pytest.raises(UserError, match=message):
        load_config(None, [override])
