"""Dropout masks (gru_lm/masks.py, csrc/dropout.cpp): right rate and scale, reproducible, and the
compiled kernel equal bit for bit to the torch-operations reference."""

import pytest
import torch

from gru_lm.model.dropout import hashed_mask, keep_mask
from gru_lm.model.kernels import compiled


@pytest.mark.parametrize("n, p, lo, hi", [(1, 0.5, 0, 0), (1000, 0.25, 5, 7), (300_001, 0.3, 2**31 - 1, 123_456_789)])
def test_compiled_mask_equals_the_reference(n, p, lo, hi):
    if compiled() is None:
        pytest.skip("no compiler here: the compiled kernels could not be built")
    assert torch.equal(compiled().dropout_mask(n, p, lo, hi), hashed_mask(n, p, lo, hi))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_keeps_one_minus_p_scaled_up(p):
    mask = keep_mask(torch.empty(200_000), p)
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    assert abs((mask > 0).float().mean().item() - (1 - p)) < 0.005
    kept = (mask > 0).float()
    neighbours = torch.corrcoef(torch.stack([kept[:-1], kept[1:]]))[0, 1]
    assert abs(neighbours.item()) < 0.01  # no pattern between adjacent elements


def test_masks_follow_torch_seed():
    x = torch.empty(64, 8)
    torch.manual_seed(3)
    a, b = keep_mask(x, 0.3), keep_mask(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(keep_mask(x, 0.3), a)
    assert not torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == x.dtype
