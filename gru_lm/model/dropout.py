"""Dropout masks from a counter-based hash: fast on CPU, reproducible from two seed words.

Element i of a mask is kept when the top 24 bits of a 32-bit hash of i (MurmurHash3's finaliser over
i scrambled by the seed words) are at least p·2²⁴; kept values are 1/(1 − p), dropped ones 0, so
x * mask is inverted dropout, as F.dropout. The seed words are two draws from torch's generator, so
torch.manual_seed and the generator state in a checkpoint fix every mask, as they would torch's own
draws. The compiled kernel (csrc/dropout.cpp) makes the mask with all threads; where it is not built,
or for tensors on a GPU, the same hash runs as torch integer operations and gives the same mask bit
for bit. Why not torch.rand_like(x) >= p: torch's uniform draws on CPU come from one sequential
generator and cost more than the rest of the dropout (docs/performance.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gru_lm.model.kernels import compiled

_M32 = 0xFFFFFFFF


def _mul32(h: Tensor, c: int) -> Tensor:
    """(h · c) mod 2³² for h < 2³², in two halves so that no int64 product overflows."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def hashed_mask(n: int, p: float, lo: int, hi: int, device: torch.device | str = "cpu") -> Tensor:
    """The mask of n elements with torch operations: the reference the compiled kernel is held to."""
    h = torch.arange(n, dtype=torch.int64, device=device)
    h = ((_mul32(h, 0x9E3779B9) ^ lo) + hi) & _M32
    h ^= h >> 16
    h = _mul32(h, 0x85EBCA6B)
    h ^= h >> 13
    h = _mul32(h, 0xC2B2AE35)
    h ^= h >> 16
    keep = (h >> 8) >= round(p * 2**24)
    return keep.float() * (1.0 / (1.0 - p))


def keep_mask(like: Tensor, p: float) -> Tensor:
    """A fresh dropout mask shaped and typed like `like`, for 0 < p < 1."""
    lo, hi = torch.randint(0, 2**31, (2,)).tolist()
    k = compiled() if like.device.type == "cpu" else None
    mask = (
        k.dropout_mask(like.numel(), p, lo, hi) if k is not None else hashed_mask(like.numel(), p, lo, hi, like.device)
    )
    return mask.view(like.shape).to(like.dtype)
