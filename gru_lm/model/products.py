"""The float32 matrix products outside the recurrent loop: the input projections of every layer and the
read-out's three products.

They go through the compiled module's `mm_into` (csrc/products.h), which picks the library: oneDNN's
matmul on an AMD processor with AVX-512, where MKL (torch.mm's library on the CPU) runs only its AVX2
kernels, and MKL elsewhere; GRU_LM_PRODUCTS=mkl or =onednn forces one. Both sum in float32 and differ
only in the order of the additions. Other dtypes, other devices and a machine without the compiled module
take torch's own products, and so does `linear` inside an autocast region (the read-out turns autocast off
around its products and picks their dtype itself).

`mm` and `addmm` are not recorded by autograd: they serve hand-written backward passes. `linear` is an
autograd Function with its own backward, differentiable once (as the windows of window.py are).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gru_lm.model.kernels import compiled


def _module_for(*tensors: Tensor):
    """The compiled module where every tensor is a float32 CPU tensor and it could be built, else None."""
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
        return None
    return compiled()


def mm(a: Tensor, b: Tensor, out: Tensor | None = None, accumulate: bool = False) -> Tensor:
    """a @ b (into out, or added to out with accumulate), as torch.mm and Tensor.addmm_ compute it."""
    k = _module_for(a, b, *(() if out is None else (out,)))
    if out is None:
        out = a.new_empty(a.shape[0], b.shape[1])
        accumulate = False
    if k is None:
        return out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)
    k.mm_into(out, a, b, accumulate)
    return out


def addmm(bias: Tensor, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """bias + a @ b with the bias broadcast over rows, as torch.addmm.

    The product is written first and the bias added to it after, while the product's rows are still in
    cache: seeding out with the bias and accumulating into it would write a fresh (cold) out once more and
    have the product read it back."""
    if _module_for(bias, a, b) is None:
        return torch.addmm(bias, a, b, out=out)
    return mm(a, b, out=out).add_(bias)


class _Linear(torch.autograd.Function):
    """F.linear over the last dimension, forward and backward through mm above."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        y = addmm(bias, rows, weight.t()) if bias is not None else mm(rows, weight.t())
        ctx.save_for_backward(rows, weight)
        ctx.has_bias, ctx.x_shape = bias is not None, x.shape
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        rows, weight = ctx.saved_tensors
        dy = dy.reshape(-1, weight.shape[0])
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = mm(dy, weight).view(*ctx.x_shape) if need_x else None
        dw = mm(dy.t(), rows) if need_w else None
        db = dy.sum(0) if need_b and ctx.has_bias else None
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x Wᵀ + b over x's last dimension, as F.linear: through mm above for float32 on the CPU."""
    if torch.is_autocast_enabled(x.device.type) or _module_for(x, weight, *(() if bias is None else (bias,))) is None:
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias)
