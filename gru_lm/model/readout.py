"""The read-out and its loss in one pass: linear H→V, softmax cross-entropy and their gradients, chunk by chunk.

The plain way, `F.cross_entropy(F.linear(h, W, b), y)`, makes the N×V logits, then their log-softmax,
then in the backward their gradient: three N×V float32 tensors alive at once. With a large alphabet
(V = 6,000 for Chinese text, N = 2,048 positions a step) each is ~50 MB, allocated afresh every
step: the allocator maps them from the system (millions of page faults) and every element-wise pass
streams them through main memory while the matrix units wait.

Here the loss is computed together with its gradient, in the forward, a few hundred rows at a time
(the idea of Liger-kernel's fused linear cross-entropy). For each chunk h_c of rows:

    p    = softmax(h_c Wᵀ + b)            in place, in one chunk-sized float32 buffer reused by every chunk
    loss −= log p[target]                 of each row (see below for a target too improbable for float32)
    g    = p − onehot(target)             in place: the gradient of the summed loss with respect to the logits
    dh_c = g W,  dW += gᵀ h_c,  db += Σ_rows g

and the chunk buffer is free for the next one: it stays in cache, and no N×V tensor ever exists. The
matrix products do the work they would do anyway; what is saved is the N×V allocations and the
passes over them through main memory (the logits, their float32 copy, the log-softmax, its gradient).
The mean's 1/n (n the targets not equal to ignore_index) is applied in the backward, which only scales
the saved gradients by grad_output / n. Rows whose target is ignore_index get a zero gradient row and
add nothing to the loss.

The log of a softmax probability is as exact as the log-softmax while the probability is a normal
float32 number (above ~1e-38, a loss below ~87 nats); a row whose target probability is below TINY has
its log-probability computed again from its own logits, so the loss is exact there too.

Under autocast to bfloat16 (or float16) the three products take low-precision operands, as F.linear
under autocast would, but the logits, the softmax, the loss and every gradient accumulate in float32:
each chunk's product result is widened into the float32 buffer, and the weight gradient is summed in
float32 over the chunks. Autocast itself is switched off inside, and the casts are explicit.

When nothing needs a gradient (evaluation under torch.no_grad, or frozen inputs) only the loss is
computed; when only some inputs need one, only their products run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gru_lm.model import products

#: Bytes of float32 logits one chunk may hold: a share of the last-level cache, so that the passes over a chunk (the
#: softmax, the one-hot, the bias gradient, and the two products that read the gradient) find it in cache.
CHUNK_BYTES = 8 << 20
#: The fewest rows a chunk has (where there are as many): thinner, the matrix products run below their full rate.
MIN_ROWS = 128


def chunk_rows(n: int, vocab_size: int, budget: int = CHUNK_BYTES) -> int:
    """Rows per chunk for n rows of vocab_size logits: n split evenly into the fewest chunks within the budget
    (of at least MIN_ROWS rows each). A small alphabet's logits fit in one chunk."""
    most = max(MIN_ROWS, budget // (4 * max(vocab_size, 1)))
    chunks = -(-n // most)  # (ceiling divisions)
    return max(1, -(-n // chunks))


def product_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The operand dtype of the products: autocast's where it is on for device_type, else the weight's own."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def linear_cross_entropy(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    ignore_index: int = -100,
    chunk: int | None = None,
) -> Tensor:
    """The mean of cross_entropy(h Wᵀ + b, targets) over targets not equal to ignore_index, without the N×V logits.

    h: N×H, weight: V×H, bias: V or None, targets: N (long). The same value and gradients as
    `F.cross_entropy(F.linear(h, weight, bias), targets, ignore_index=ignore_index)` (float32 logits),
    computed chunk rows at a time (default: chunk_rows).
    """
    if h.dim() != 2 or targets.shape != h.shape[:1] or weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"shapes h {tuple(h.shape)}, weight {tuple(weight.shape)}, targets {tuple(targets.shape)}")
    needs = (
        torch.is_grad_enabled() and h.requires_grad,
        torch.is_grad_enabled() and weight.requires_grad,
        torch.is_grad_enabled() and bias is not None and bias.requires_grad,
    )
    rows = chunk or chunk_rows(h.shape[0], weight.shape[0])
    dtype = product_dtype(h.device.type, weight.dtype)
    loss: Tensor = _LinearCrossEntropy.apply(h, weight, bias, targets, ignore_index, rows, dtype, needs)
    return loss


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        h: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        ignore_index: int,
        rows: int,
        dtype: torch.dtype,
        needs: tuple[bool, bool, bool],
    ) -> Tensor:
        valid = targets != ignore_index
        n_valid = valid.sum().to(torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            total, grads = _summed_loss_and_grads(h, weight, bias, targets, valid, rows, dtype, needs)
        # the mean's 1/n is applied in the backward, with grad_output: one pass over each gradient, not two
        ctx.save_for_backward(1.0 / n_valid.clamp(min=1.0), *(g if g is not None else h.new_empty(0) for g in grads))
        ctx.present = tuple(g is not None for g in grads)
        return total / n_valid  # (nan when every target is ignored, as F.cross_entropy)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        scale, *saved = ctx.saved_tensors
        factor = grad_output * scale
        grads = [g * factor if present else None for g, present in zip(saved, ctx.present)]
        return grads[0], grads[1], grads[2], None, None, None, None, None


def _summed_loss_and_grads(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    valid: Tensor,
    rows: int,
    dtype: torch.dtype,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """The summed loss over the valid rows (float32 scalar) and the gradients of that sum with respect to h, weight
    and bias, float32, each where `needs` asks for it (else None)."""
    N, H, V = h.shape[0], h.shape[1], weight.shape[0]
    need_h, need_w, need_b = needs
    masked = not bool(valid.all())
    safe = targets.masked_fill(~valid, 0) if masked else targets  # (ignored rows gather row 0, then count nothing)
    low = dtype != torch.float32
    ops = _Operands(h.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None)
    z = h.new_empty(min(rows, N), V, dtype=torch.float32)  # the chunk of logits, reused by every chunk
    z_low = torch.empty_like(z, dtype=dtype) if low else z  # the chunk as a low-precision product operand
    dh = h.new_empty(N, H, dtype=dtype) if need_h else None
    dw = h.new_zeros(V, H, dtype=torch.float32) if need_w else None
    dw_part = torch.empty_like(weight, dtype=dtype) if need_w and low else None  # a chunk's share, then widened
    db = h.new_zeros(V, dtype=torch.float32) if need_b else None
    total = h.new_zeros((), dtype=torch.float32)
    column = h.new_empty(min(rows, N), 1, dtype=torch.float32)

    for r0 in range(0, N, rows):
        r1 = min(r0 + rows, N)
        zc, z_lowc, h_c, t_c = z[: r1 - r0], z_low[: r1 - r0], ops.h[r0:r1], safe[r0:r1, None]
        valid_c = valid[r0:r1, None] if masked else None
        _softmax_of_logits(zc, z_lowc, h_c, ops)
        total.sub_(_target_log_probs(zc, t_c, valid_c, column[: r1 - r0], h_c, ops).sum())
        if not (need_h or need_w or need_b):
            continue
        zc.scatter_add_(1, t_c, column[: r1 - r0].fill_(-1.0))  # g = softmax − onehot(target)
        if valid_c is not None:
            zc.mul_(valid_c)
        g = z_lowc.copy_(zc) if low else zc
        if dh is not None:
            products.mm(g, ops.w, out=dh[r0:r1])
        if dw is not None and dw_part is not None:
            dw.add_(products.mm(g.t(), h_c, out=dw_part))
        elif dw is not None:
            products.mm(g.t(), h_c, out=dw, accumulate=True)
        if db is not None:
            db.add_(zc.sum(0))
    return total, (dh.to(torch.float32) if dh is not None else None, dw, db)


@dataclass
class _Operands:
    """The products' operands, in their dtype: h (N×H), W (V×H), b (V, or None)."""

    h: Tensor
    w: Tensor
    b: Tensor | None


def _softmax_of_logits(zc: Tensor, z_low: Tensor, h_c: Tensor, ops: _Operands) -> None:
    """zc = softmax(h_c Wᵀ + b) over each row, in float32, in place (z_low: the low-precision product, or zc)."""
    if ops.b is not None:
        products.addmm(ops.b, h_c, ops.w.t(), out=z_low)
    else:
        products.mm(h_c, ops.w.t(), out=z_low)
    if z_low.data_ptr() != zc.data_ptr():
        zc.copy_(z_low)
    torch._softmax(zc, 1, False, out=zc)


#: Below this a target's probability, taken from the softmax, has lost digits to underflow (float32's smallest normal
#: number is ~1.2e-38): its log-probability is then computed again from its row's logits.
TINY = 1e-30


def _target_log_probs(
    p: Tensor, t_c: Tensor, valid_c: Tensor | None, out: Tensor, h_c: Tensor, ops: _Operands
) -> Tensor:
    """log p[target] of each row of the softmax chunk p (rows×1, 0 for an ignored row).

    log of the softmax is exact to float32 rounding while the probability is a normal number; the rare
    row whose target probability is below TINY gets it from its logits' log-softmax instead.
    """
    logp = torch.gather(p, 1, t_c, out=out)
    tiny = logp < TINY
    if valid_c is not None:
        tiny &= valid_c
    logp.log_()
    if valid_c is not None:
        logp.masked_fill_(~valid_c, 0.0)
    if bool(tiny.any()):
        at = tiny.view(-1).nonzero().view(-1)
        logits = torch.mm(h_c[at], ops.w.t()).float() + (ops.b.float() if ops.b is not None else 0.0)
        logp[at] = torch.log_softmax(logits, 1).gather(1, t_c[at])
    return logp
