"""Activations: flattening, the stopped forward, and streaming to .npy memory maps with flat memory."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lottery_xai.activations import flatten_activations, layer_activations, save_activations
from lottery_xai.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


class Boom(nn.Module):
    """Fails if the forward ever reaches it: proves the forward stopped earlier."""

    def forward(self, x):
        raise AssertionError("the forward ran past the requested layer")


class Birds(Dataset):
    """Tiny synthetic split in the data module's batch format (image, label, concepts, id, index)."""

    def __init__(self, n, size=6, n_concepts=3, string_ids=False):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.arange(n) % 4
        self.concepts = (torch.rand(n, n_concepts, generator=g) > 0.5).to(torch.uint8)
        self.string_ids = string_ids

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        ident = f"img_{i:04d}" if self.string_ids else 1000 + i
        return dict(image=self.images[i], label=self.labels[i], concepts=self.concepts[i], id=ident, index=i)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, stride=2, padding=1), Boom())


def test_flatten_modes_shapes_and_values():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert flatten_activations(a, "flatten").shape == (2, 12)
    torch.testing.assert_close(flatten_activations(a, "flatten")[1], a[1].reshape(-1))
    torch.testing.assert_close(flatten_activations(a, "avg_pool"), a.mean(dim=(2, 3)))
    torch.testing.assert_close(flatten_activations(a, "max_pool"), a[:, :, 1, 1])  # arange: the last position is max
    v = torch.randn(4, 7)
    for mode in ("flatten", "avg_pool", "max_pool"):
        torch.testing.assert_close(flatten_activations(v, mode), v)  # already a vector per image
    with pytest.raises(UserError, match="avg_pool"):
        flatten_activations(a, "mean")


def test_layer_activations_stop_at_the_layer():
    model = net().eval()
    x = torch.randn(5, 3, 6, 6)
    with torch.no_grad():
        expected = model[3](model[2](model[1](model[0](x))))
    got = layer_activations(model, "3", x)  # Boom (layer 4) would raise if the forward went on
    torch.testing.assert_close(got, expected)
    assert not got.requires_grad
    with pytest.raises(UserError, match="did you mean"):
        layer_activations(model, "33", x)


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 2e-3)])
def test_save_activations_files_equal_direct_activations(tmp_path, dtype, tol):
    model = net()
    model.train()  # the step must run in eval mode and give the mode back
    data = Birds(23, string_ids=True)
    loader = DataLoader(data, batch_size=5, shuffle=False)
    layers = ["3", "0"]  # any order: the forward stops after the later one
    out = {"0": tmp_path / "test_0.npy", "3": tmp_path / "test_3.npy"}
    extra = {k: tmp_path / f"test_{k}.npy" for k in ("labels", "concepts", "ids")}
    summary = save_activations(model, layers, loader, out, flattening="flatten", n_images=len(data), dtype=dtype,
                               device="cpu", extra_paths=extra, progress=False)
    assert model.training
    assert summary["n_images"] == 23 and summary["3"] == (23, 5 * 3 * 3) and summary["0"] == (23, 4 * 6 * 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [*out.values(), *extra.values()])
    model.eval()
    with torch.no_grad():
        a0 = model[0](data.images)
        a3 = model[3](model[2](model[1](a0)))
    for name, ref in (("0", a0), ("3", a3)):
        arr = np.load(out[name], mmap_mode="r")
        assert arr.dtype == np.dtype(dtype)
        np.testing.assert_allclose(arr.astype(np.float32), ref.reshape(23, -1).numpy(), rtol=tol, atol=tol)
    np.testing.assert_array_equal(np.load(extra["labels"]), data.labels.numpy())
    np.testing.assert_array_equal(np.load(extra["concepts"]), data.concepts.numpy())
    assert np.load(extra["ids"]).tolist() == [f"img_{i:04d}" for i in range(23)]


def test_save_activations_pooled_and_numeric_ids(tmp_path):
    model = net().eval()
    data = Birds(9)
    out = {"3": tmp_path / "val_3.npy"}
    save_activations(model, ["3"], DataLoader(data, batch_size=4), out, flattening="avg_pool", n_images=9,
                     extra_paths={"ids": tmp_path / "val_ids.npy"}, progress=False)
    with torch.no_grad():
        ref = layer_activations(model, "3", data.images).mean(dim=(2, 3))
    np.testing.assert_allclose(np.load(out["3"]), ref.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "val_ids.npy"), 1000 + np.arange(9))


def test_save_activations_wrong_count_leaves_no_file(tmp_path):
    model = net().eval()
    loader = DataLoader(Birds(7), batch_size=3)
    with pytest.raises(UserError, match="n_images"):
        save_activations(model, ["0"], loader, {"0": tmp_path / "a.npy"}, flattening="flatten", n_images=10,
                         progress=False)
    with pytest.raises(UserError, match="n_images"):
        save_activations(model, ["0"], loader, {"0": tmp_path / "a.npy"}, flattening="flatten", n_images=5,
                         progress=False)
    with pytest.raises(UserError, match="does not exist"):
        save_activations(model, ["O"], loader, {"O": tmp_path / "a.npy"}, flattening="flatten", n_images=7,
                         progress=False)
    assert list(tmp_path.iterdir()) == []


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, os, resource, sys
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from lottery_xai.activations import save_activations

    n, out = int(sys.argv[1]), sys.argv[2]

    class Synthetic(Dataset):
        def __len__(self):
            return n
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return dict(image=torch.randn(3, 16, 16, generator=g), label=i % 3, concepts=torch.zeros(4), id=i, index=i)

    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 16 * 16, 3)).eval()
    torch.manual_seed(0)
    save_activations(model, ["1"], DataLoader(Synthetic(), batch_size=50), {"1": out}, flattening="flatten",
                     n_images=n, progress=False)
    print(json.dumps(dict(maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, size=os.path.getsize(out))))
""")


def _peak(n, path):
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(n), str(path)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_save_activations_memory_stays_flat(tmp_path):
    """64 KiB per image: 800 images are 50 MiB, which would show in the peak if they were held in memory."""
    small = _peak(200, tmp_path / "small.npy")
    large = _peak(800, tmp_path / "large.npy")
    per_image = 64 * 16 * 16 * 4
    assert large["size"] - small["size"] == 600 * per_image
    grown_mb = (large["maxrss_kb"] - small["maxrss_kb"]) / 1024
    assert grown_mb < 12, f"peak memory grew by {grown_mb:.1f} MiB for 4x the images"
    assert 600 * per_image / 2**20 > 3 * 12  # holding the activations would have grown it by 37 MiB
