"""The occlusion-sensitivity study with known answers: a model that looks at one square only."""
import pytest
import torch
from scipy import stats
from torch import nn

from lottery_xai.attribution.occlusion_study import (energy_in_box, occlusion_study, square_counts, square_masks,
                                                     z_threshold)
from lottery_xai.errors import UserError

TOP, LEFT, SIDE = 10, 14, 6  # the only region the model looks at


class OneSquare(nn.Module):
    """Logits [s, 0] with s growing with the mean of the first channel inside one square region."""

    def forward(self, x):
        s = x[:, 0, TOP:TOP + SIDE, LEFT:LEFT + SIDE].mean(dim=(1, 2)) * 4 - 2
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def images(n=2, size=32):
    x = torch.zeros(n, 3, size, size)
    x[:, 0, TOP:TOP + SIDE, LEFT:LEFT + SIDE] = 1.0
    return x


@pytest.mark.parametrize("p", [0.01, 0.05, 0.001])
def test_z_threshold_is_the_one_sided_normal_quantile(p):
    assert z_threshold(p) == pytest.approx(stats.norm.ppf(1 - p), abs=1e-12)
    assert z_threshold(0.01) == pytest.approx(2.326348, abs=1e-6)  # not the seed's 2.644854


def test_bad_level_is_a_user_error():
    with pytest.raises(UserError):
        z_threshold(0.0)


def test_heatmap_lights_the_region_the_model_looks_at_and_nothing_else():
    size = 4
    out = occlusion_study(OneSquare().eval(), images(), torch.zeros(2, dtype=torch.long), n_masks=600, size=size,
                          p=0.01, batch_size=97, generator=torch.Generator().manual_seed(0))
    heat = out["heatmap"]
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[TOP:TOP + SIDE, LEFT:LEFT + SIDE] = True
    reach = torch.zeros(32, 32, dtype=torch.bool)  # pixels a square touching the region can cover
    reach[TOP - size + 1:TOP + SIDE + size - 1, LEFT - size + 1:LEFT + SIDE + size - 1] = True
    for i in range(2):
        assert out["selected"][i].sum() > 0
        assert heat[i][~reach].sum() == 0  # nothing away from the region
        assert region[heat[i] == heat[i].max()].all()  # the most selected pixels are in the region
        assert out["mask"][i][region].float().mean() > 0.9  # and the region is lit
    # the selected squares are exactly the ones whose probability dropped far below the others
    covers = square_masks(out["tops"].reshape(-1), out["lefts"].reshape(-1), size, 32, 32)[:, region].any(1)
    assert not out["selected"].reshape(-1)[~covers].any()
    assert (out["delta"].reshape(-1)[~covers] == 0).all()
    assert out["z_threshold"] == pytest.approx(stats.norm.ppf(0.99))


def test_batches_and_seed_do_not_change_the_answer():
    model, x = OneSquare().eval(), images(1)
    a = occlusion_study(model, x, n_masks=100, size=5, batch_size=7, seed=3)
    b = occlusion_study(model, x, n_masks=100, size=5, batch_size=100, seed=3)
    assert torch.equal(a["tops"], b["tops"]) and torch.equal(a["heatmap"], b["heatmap"])
    assert torch.allclose(a["delta"], b["delta"], atol=1e-6)
    c = occlusion_study(model, x, n_masks=100, size=5, seed=4)
    assert not torch.equal(a["tops"], c["tops"])


def test_square_counts_equal_the_sum_of_square_masks():
    g = torch.Generator().manual_seed(1)
    tops, lefts = torch.randint(0, 8, (3, 20), generator=g), torch.randint(0, 6, (3, 20), generator=g)
    weights = torch.rand(3, 20, generator=g)
    counts = square_counts(tops, lefts, weights, 4, 11, 9)
    masks = square_masks(tops.reshape(-1), lefts.reshape(-1), 4, 11, 9).view(3, 20, 11, 9).double()
    assert torch.allclose(counts, (masks * weights[..., None, None].double()).sum(1), atol=1e-9)


def test_energy_in_box():
    maps = torch.zeros(2, 10, 10)
    maps[0, 0:5, 0:5] = 1.0  # all inside
    maps[1, 0:5, 0:10] = 1.0  # half inside
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 5.0, 5.0]])
    assert energy_in_box(maps, boxes).tolist() == pytest.approx([1.0, 0.5])
    assert energy_in_box(torch.zeros(1, 4, 4), boxes[:1]).tolist() == [0.0]
