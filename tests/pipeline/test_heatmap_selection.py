"""Step 6's choice of test images: the first heatmaps.images_per_class of each class of labels_for_tcav, in that
order, found with one grouping of the split (not a scan of the whole split per class, which grew as classes x
images: issue 21's cost at CUB scale)."""
from types import SimpleNamespace

import numpy as np

from lottery_xai.pipeline.heatmaps import heatmap_selection


def _cfg(classes, per_class):
    return SimpleNamespace(labels_for_tcav=classes, heatmaps=SimpleNamespace(images_per_class=per_class))


def _expected(labels, names, classes, per_class):
    """The definition written out: for each chosen class in order, its first images in split order."""
    out = []
    for name in classes:
        out += [i for i, label in enumerate(labels) if label == names.index(name)][:per_class]
    return out


def test_selection_is_the_first_images_of_each_class_in_the_configs_order():
    rng = np.random.default_rng(0)
    names = [f"class_{k}" for k in range(7)]
    labels = rng.integers(0, 6, size=60)  # class_6 has no test image; classes interleaved in the split
    test = SimpleNamespace(labels=labels)
    for classes in (["all"], ["class_5", "class_0", "class_3"], ["class_6", "class_1"]):
        for per_class in (1, 3, 100):  # 100: more than any class has
            wanted = names if classes == ["all"] else classes
            got = heatmap_selection(_cfg(classes, per_class), test, names)
            assert got.dtype == np.int64
            assert got.tolist() == _expected(labels.tolist(), names, wanted, per_class)


def test_selection_without_a_labels_attribute_reads_the_items():
    labels = [2, 0, 1, 0, 2, 1, 0]
    items = [{"label": label} for label in labels]
    names = ["a", "b", "c"]
    got = heatmap_selection(_cfg(["c", "a"], 2), items, names)
    assert got.tolist() == _expected(labels, names, ["c", "a"], 2) == [0, 4, 1, 3]
