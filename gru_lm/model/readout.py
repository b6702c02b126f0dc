"""The read-out and its loss in one pass: linear H→V, softmax cross-entropy and their gradients, chunk by chunk.

The plain way, `F.cross_entropy(F.linear(h, W, b), y)`, makes the N×V logits, then their log-softmax,
then in the backward their gradient: three N×V float32 tensors alive at once. With a large alphabet
(V = 6,000 for Chinese text, N = 2,048 positions a step) each is ~50 MB, allocated afresh every
step: the allocator maps them from the system (millions of page faults) and every element-wise pass
streams them through main memory while the matrix units wait.

Here the loss is computed together with its gradient, in the forward, a few hundred rows at a time
(the idea of Liger-kernel's fused linear cross-entropy). For each chunk h_c of rows:

    z   = h_c Wᵀ + b                      logits, into one chunk-sized buffer reused by every chunk
    z   = z − logsumexp(z)                log-softmax in place; the loss adds −z[target] of each row
    g   = exp(z) − onehot(target)         the gradient of the summed loss with respect to the logits
    dh_c = g W,  dW += gᵀ h_c,  db += Σ_rows g

and the chunk buffer is free for the next one: it stays in cache, and no N×V tensor ever exists.
The mean's 1/n (n the targets not equal to ignore_index) is applied once at the end to dh, dW and db,
and the backward only scales the saved gradients by the incoming grad_output (a scalar). Rows whose
target is ignore_index get a zero gradient row and add nothing to the loss.

Under autocast to bfloat16 (or float16) the three products take low-precision operands, as F.linear
under autocast would, but the logits, the softmax, the loss and every gradient accumulate in float32:
each chunk's product result is widened into the float32 buffer, and the weight gradient is summed in
float32 over the chunks. Autocast itself is switched off inside, and the casts are explicit.

When nothing needs a gradient (evaluation under torch.no_grad, or frozen inputs) only the loss is
computed; when only some inputs need one, only their products run.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Bytes of float32 logits one chunk may hold: about a core's L2 cache, so that the element-wise passes over a
#: chunk (log-softmax, exp, one-hot, the bias gradient) read it from cache rather than memory.
CHUNK_BYTES = 1 << 20
#: Row bounds of a chunk: below the lower one the matrix products get too thin to run at full rate.
MIN_ROWS, MAX_ROWS = 128, 512


def chunk_rows(n: int, vocab_size: int, budget: int = CHUNK_BYTES) -> int:
    """Rows per chunk for n rows of vocab_size logits: the budget's worth, within [MIN_ROWS, MAX_ROWS], at most n."""
    rows = budget // (4 * max(vocab_size, 1))
    return max(1, min(n, max(MIN_ROWS, min(MAX_ROWS, rows))))


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
        with torch.autocast(h.device.type, enabled=False):
            loss, grads = _loss_and_grads(h, weight, bias, targets, ignore_index, rows, dtype, needs)
        ctx.save_for_backward(*(g if g is not None else h.new_empty(0) for g in grads))
        ctx.present = tuple(g is not None for g in grads)
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grads = [g * grad_output if present else None for g, present in zip(ctx.saved_tensors, ctx.present)]
        return grads[0], grads[1], grads[2], None, None, None, None, None


def _loss_and_grads(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    ignore_index: int,
    rows: int,
    dtype: torch.dtype,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """The mean loss (float32 scalar) and the gradients of h, weight and bias that `needs` asks for (else None)."""
    N, V = h.shape[0], weight.shape[0]
    need_h, need_w, need_b = needs
    need_g = need_h or need_w or need_b
    valid = targets != ignore_index
    n_valid = valid.sum()
    masked = bool(n_valid < N)
    safe_targets = targets.masked_fill(~valid, 0) if masked else targets
    rowmask = valid.to(torch.float32) if masked else None

    low = dtype != torch.float32
    w = weight.to(dtype)  # V×H: operand of z = h Wᵀ and of dh = g W
    hs, b = h.to(dtype), (bias.to(dtype) if bias is not None else None)
    z = h.new_empty(min(rows, N), V, dtype=torch.float32)  # the chunk of logits, reused by every chunk
    z_low = torch.empty_like(z, dtype=dtype) if low else z  # the chunk as the backward products' operand
    dh = h.new_empty(N, h.shape[1], dtype=dtype) if need_h else None
    dw = h.new_zeros(V, h.shape[1], dtype=torch.float32) if need_w else None
    dw_part = torch.empty_like(weight, dtype=dtype) if need_w and low else None  # one chunk's share, widened
    db = h.new_zeros(V, dtype=torch.float32) if need_b else None
    total = h.new_zeros((), dtype=torch.float32)
    picked = h.new_empty(min(rows, N), 1, dtype=torch.float32)

    for r0 in range(0, N, rows):
        r1 = min(r0 + rows, N)
        zc, h_c, t_c = z[: r1 - r0], hs[r0:r1], safe_targets[r0:r1, None]
        _logits(zc, z_low[: r1 - r0], h_c, w, b)
        torch._log_softmax(zc, 1, False, out=zc)
        logp = torch.gather(zc, 1, t_c, out=picked[: r1 - r0])
        if rowmask is not None:
            logp.mul_(rowmask[r0:r1, None])
        total.sub_(logp.sum())
        if not need_g:
            continue
        zc.exp_()  # the softmax
        zc.scatter_add_(1, t_c, _minus_ones(picked, r1 - r0))  # − onehot(target)
        if rowmask is not None:
            zc.mul_(rowmask[r0:r1, None])
        g = z_low[: r1 - r0].copy_(zc) if low else zc
        if dh is not None:
            torch.mm(g, w, out=dh[r0:r1])
        if dw is not None and dw_part is not None:
            dw.add_(torch.mm(g.t(), h_c, out=dw_part))
        elif dw is not None:
            dw.addmm_(g.t(), h_c)
        if db is not None:
            db.add_(zc.sum(0))

    scale = 1.0 / n_valid.to(torch.float32)
    grad_h = dh.to(torch.float32).mul_(scale) if dh is not None else None
    grad_w = dw.mul_(scale) if dw is not None else None
    return total * scale, (grad_h, grad_w, db.mul_(scale) if db is not None else None)


def _logits(zc: Tensor, z_low: Tensor, h_c: Tensor, w: Tensor, b: Tensor | None) -> None:
    """zc = h_c Wᵀ + b in float32; with low-precision operands the product lands in z_low, then is widened."""
    if b is not None:
        torch.addmm(b, h_c, w.t(), out=z_low)
    else:
        torch.mm(h_c, w.t(), out=z_low)
    if z_low.data_ptr() != zc.data_ptr():
        zc.copy_(z_low)


def _minus_ones(buffer: Tensor, rows: int) -> Tensor:
    """rows×1 of −1 in buffer (float32), the values scatter_add_ puts at each row's target."""
    return buffer[:rows].fill_(-1.0)
