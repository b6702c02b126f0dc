"""The fast path for a whole window of one recurrent layer: the same equations as cells.py, with a
hand-derived backward, run by compiled kernels (csrc/window_kernels.cpp) or, where those cannot be
built, by the Python loops below, which do the same work in the same buffers.

Why it is faster than letting autograd record the step-by-step loop of cells.py:
- every step writes its results into preallocated T×B×… buffers: no autograd graph of T×10 nodes;
- the backward is linear in the incoming state gradient dh: each step is one fused element-wise
  pass over B×H values and one matrix product;
- the recurrent weight gradient is one (T·B × G·H)ᵀ(T·B × H) matrix product over the window instead
  of T small ones.

Shapes: gi is the input projection x W_ihᵀ + b_ih of all T steps (T×B×G·H), or, with ids (T×B), a
table of V such rows that the window reads by id (rows_of; the first layer's input_table), h0 is B×H, w_hh is
G·H×H and b_hh G·H (or None). Buffers: out is (T+1)×B×H with out[0] = h0, so out[:-1] are the
previous states. The reference loop in cells.py stays the definition; tests hold this file to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gru_lm.model.kernels import compiled

BF16 = torch.bfloat16  # the products' operand dtype under mixed precision (train --dtype bfloat16)


def _operands(w: Tensor, bfloat16_operands: bool) -> Tensor:
    """A product's operand in the operand dtype: bfloat16 under mixed precision, else itself. Only the
    operands of the matrix products are rounded; states, gates and gradients stay float32."""
    return w.to(BF16) if bfloat16_operands else w


def _mm_bias(bias: Tensor | None, a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out = a @ b (+ bias), b already in the operand dtype."""
    if a.dtype != b.dtype:
        out.copy_(a.to(b.dtype).mm(b))
        return out.add_(bias) if bias is not None else out
    return torch.addmm(bias, a, b, out=out) if bias is not None else torch.mm(a, b, out=out)


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b, b already in the operand dtype; the result in a's dtype."""
    return a.to(b.dtype).mm(b).to(a.dtype) if a.dtype != b.dtype else a.mm(b)


def _addmm(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """c + a @ b, b already in the operand dtype; the result in c's dtype."""
    return c + _mm(a, b) if a.dtype != b.dtype else torch.addmm(c, a, b)


def rows_of(gi: Tensor, ids: Tensor | None) -> Tensor:
    """The window's input projections T×B×G·H: gi itself, or, given ids (T×B), the rows of the table gi
    (V×G·H) that they pick. The compiled team kernels read the table in place instead (csrc/input_rows.h)."""
    return gi if ids is None else gi[ids]


def _states(gi: Tensor, h0: Tensor) -> Tensor:
    out = gi.new_empty(gi.shape[0] + 1, *h0.shape)
    out[0] = h0
    return out


# ---- GRU, reset after the product (torch.nn.GRU): n = tanh(x_n + r ⊙ (h W_hnᵀ + b_hn)) ----


def gru_after_forward(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
):
    """Returns out, G = [r, z, h W_hnᵀ + b_hn] and N = n for every step."""
    gi = rows_of(gi, ids)
    T, B, H3 = gi.shape
    H = H3 // 3
    w_t = _operands(
        w_hh.t().contiguous(), bfloat16_operands
    )  # h @ Wᵀ with Wᵀ contiguous: the faster layout for MKL (see csrc)
    out, G, N = _states(gi, h0), gi.new_empty(T, B, 3 * H), gi.new_empty(T, B, H)
    for t in range(T):
        g = _mm_bias(b_hh, out[t], w_t, G[t])
        rz = g[:, : 2 * H]
        rz.add_(gi[t, :, : 2 * H]).sigmoid_()
        n = torch.addcmul(gi[t, :, 2 * H :], rz[:, :H], g[:, 2 * H :], out=N[t]).tanh_()
        torch.lerp(n, out[t], rz[:, H:], out=out[t + 1])  # z ⊙ h + (1 − z) ⊙ n
    return out, G, N


def gru_after_backward(
    d_out: Tensor,
    d_hT: Tensor,
    out: Tensor,
    G: Tensor,
    N: Tensor,
    w_hh: Tensor,
    has_bias: bool,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
    table_rows: int = 0,
):
    T, B, H = N.shape
    w = _operands(w_hh, bfloat16_operands)
    r, z, ghn = G[..., :H], G[..., H : 2 * H], G[..., 2 * H :]
    h_prev = out[:-1]
    c_n = (1 - z) * (1 - N * N)  # ∂h'/∂a_n per unit of dh
    C = torch.cat([c_n * ghn * r * (1 - r), (h_prev - N) * z * (1 - z), c_n * r], dim=-1).view(T, B, 3, H)
    dG = torch.empty_like(G)  # [da_r, da_z, d(h W_hnᵀ + b_hn)]
    dH = torch.empty_like(N)  # dL/dh' per step
    dh = d_hT
    for t in range(T - 1, -1, -1):
        dh = torch.add(d_out[t], dh, out=dH[t])
        dg = torch.mul(dh.unsqueeze(1), C[t], out=dG[t].view(B, 3, H)).view(B, 3 * H)
        dh = _addmm(dh * z[t], dg, w)
    flat = dG.view(T * B, 3 * H)
    d_w = _mm(flat.t(), _operands(h_prev.reshape(T * B, H), bfloat16_operands))
    d_b = flat.sum(0) if has_bias else None
    torch.mul(dH, c_n, out=dG[..., 2 * H :])  # d_gi = [da_r, da_z, da_n]: dG's n part, reused once read
    return table_gradient_of(dG, ids, table_rows), dh, d_w, d_b


# ---- GRU, reset before the product (Dive into Deep Learning's): n = tanh(x_n + (r ⊙ h) W_hnᵀ + b_hn) ----


def gru_before_forward(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
):
    """Returns out, RZ = [r, z], Q = r ⊙ h and N = n for every step."""
    gi = rows_of(gi, ids)
    T, B, H3 = gi.shape
    H = H3 // 3
    w_rz_t, w_n_t = (_operands(w.t().contiguous(), bfloat16_operands) for w in (w_hh[: 2 * H], w_hh[2 * H :]))
    b_rz, b_n = (None, None) if b_hh is None else (b_hh[: 2 * H], b_hh[2 * H :])
    out, RZ = _states(gi, h0), gi.new_empty(T, B, 2 * H)
    Q, N = gi.new_empty(T, B, H), gi.new_empty(T, B, H)
    for t in range(T):
        rz = _mm_bias(b_rz, out[t], w_rz_t, RZ[t]).add_(gi[t, :, : 2 * H]).sigmoid_()
        q = torch.mul(rz[:, :H], out[t], out=Q[t])
        n = _mm_bias(b_n, q, w_n_t, N[t]).add_(gi[t, :, 2 * H :]).tanh_()
        torch.lerp(n, out[t], rz[:, H:], out=out[t + 1])
    return out, RZ, Q, N


def gru_before_backward(
    d_out, d_hT, out, RZ, Q, N, w_hh, has_bias: bool, bfloat16_operands: bool = False, ids=None, table_rows: int = 0
):
    T, B, H = N.shape
    r, z = RZ[..., :H], RZ[..., H:]
    w_rz, w_n = _operands(w_hh[: 2 * H], bfloat16_operands), _operands(w_hh[2 * H :], bfloat16_operands)
    h_prev = out[:-1]
    c_n = (1 - z) * (1 - N * N)  # ∂h'/∂a_n per unit of dh
    c_z = (h_prev - N) * z * (1 - z)  # ∂h'/∂a_z
    c_r = h_prev * r * (1 - r)  # ∂q/∂a_r per unit of dq
    dA = torch.empty(T, B, 3 * H, dtype=N.dtype, device=N.device)  # [da_r, da_z, da_n]
    dh = d_hT
    for t in range(T - 1, -1, -1):
        dh = d_out[t] + dh
        da = dA[t]
        dan = torch.mul(dh, c_n[t], out=da[:, 2 * H :])
        dq = _mm(dan, w_n)
        torch.mul(dq, c_r[t], out=da[:, :H])
        torch.mul(dh, c_z[t], out=da[:, H : 2 * H])
        dh = _addmm(torch.addcmul(dh * z[t], dq, r[t]), da[:, : 2 * H], w_rz)
    flat = dA.view(T * B, 3 * H)
    d_w = torch.cat(
        [
            _mm(flat[:, : 2 * H].t(), _operands(h_prev.reshape(T * B, H), bfloat16_operands)),
            _mm(flat[:, 2 * H :].t(), _operands(Q.view(T * B, H), bfloat16_operands)),
        ]
    )
    d_b = flat.sum(0) if has_bias else None
    return table_gradient_of(dA, ids, table_rows), dh, d_w, d_b


# ---- LSTM: [i, f, g, o] = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh), c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(c') ----


def lstm_forward(
    gi: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
):
    """Returns out and C ((T+1)×B×H each, out[0] = h0, C[0] = c0) and G = [i, f, g, o] for every step."""
    gi = rows_of(gi, ids)
    T, B, H4 = gi.shape
    H = H4 // 4
    w_t = _operands(w_hh.t().contiguous(), bfloat16_operands)
    out, C, G = _states(gi, h0), _states(gi, c0), gi.new_empty(T, B, 4 * H)
    for t in range(T):
        a = _mm_bias(b_hh, out[t], w_t, G[t]).add_(gi[t])
        a[:, : 2 * H].sigmoid_()
        a[:, 2 * H : 3 * H].tanh_()
        a[:, 3 * H :].sigmoid_()
        i, f, g, o = a.chunk(4, dim=-1)
        torch.addcmul(i * g, f, C[t], out=C[t + 1])  # c' = f ⊙ c + i ⊙ g
        torch.mul(o, torch.tanh(C[t + 1]), out=out[t + 1])
    return out, C, G


def lstm_backward(
    d_out: Tensor,
    d_hT: Tensor,
    d_cT: Tensor,
    out: Tensor,
    C: Tensor,
    G: Tensor,
    w_hh: Tensor,
    has_bias: bool,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
    table_rows: int = 0,
):
    T, B, H = d_out.shape
    w = _operands(w_hh, bfloat16_operands)
    i, f, g, o = G.chunk(4, dim=-1)
    tc = torch.tanh(C[1:])
    dG = torch.empty_like(G)  # [da_i, da_f, da_g, da_o]
    dh, dc = d_hT, d_cT
    for t in range(T - 1, -1, -1):
        dht = d_out[t] + dh
        dct = dc + dht * o[t] * (1 - tc[t] * tc[t])  # c' reaches the loss directly and through h' = o ⊙ tanh(c')
        da_i, da_f, da_g, da_o = dG[t].chunk(4, dim=-1)
        torch.mul(dct * g[t], i[t] * (1 - i[t]), out=da_i)
        torch.mul(dct * C[t], f[t] * (1 - f[t]), out=da_f)
        torch.mul(dct * i[t], 1 - g[t] * g[t], out=da_g)
        torch.mul(dht * tc[t], o[t] * (1 - o[t]), out=da_o)
        dc = dct * f[t]
        dh = _mm(dG[t], w)
    flat = dG.view(T * B, 4 * H)
    d_w = _mm(flat.t(), _operands(out[:-1].reshape(T * B, H), bfloat16_operands))
    return table_gradient_of(dG, ids, table_rows), dh, dc, d_w, flat.sum(0) if has_bias else None


# ---- plain RNN: h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh) ----


def rnn_forward(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
) -> Tensor:
    gi = rows_of(gi, ids)
    a = gi + b_hh if b_hh is not None else gi
    w_t = _operands(w_hh.t().contiguous(), bfloat16_operands)
    out = _states(gi, h0)
    for t in range(gi.shape[0]):
        _mm_bias(a[t], out[t], w_t, out[t + 1]).tanh_()
    return out


def rnn_backward(
    d_out: Tensor,
    d_hT: Tensor,
    out: Tensor,
    w_hh: Tensor,
    has_bias: bool,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
    table_rows: int = 0,
):
    T, B, H = d_out.shape
    w = _operands(w_hh, bfloat16_operands)
    c = 1 - out[1:] * out[1:]
    dA = torch.empty_like(d_out)
    dh = d_hT
    for t in range(T - 1, -1, -1):
        dh = _mm(torch.mul(d_out[t] + dh, c[t], out=dA[t]), w)
    flat = dA.view(T * B, H)
    d_w = _mm(flat.t(), _operands(out[:-1].reshape(T * B, H), bfloat16_operands))
    return table_gradient_of(dA, ids, table_rows), dh, d_w, flat.sum(0) if has_bias else None


def _impl(name: str, t: Tensor):
    """The compiled kernel of that name for CPU tensors where it could be built, else the Python
    function above (which also serves CUDA and MPS tensors: the kernels are CPU code)."""
    k = compiled() if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) else None
    return getattr(k, name) if k is not None else globals()[name]


class GRUWindow(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        gi: Tensor,
        h0: Tensor,
        w_hh: Tensor,
        b_hh: Tensor | None,
        reset_after: bool,
        bfloat16_operands: bool,
        ids: Tensor | None,
    ):
        kind = "gru_after" if reset_after else "gru_before"
        saved = _impl(kind + "_forward", gi)(gi, h0.contiguous(), w_hh, b_hh, bfloat16_operands, ids)
        ctx.save_for_backward(w_hh, ids, *saved)
        ctx.kind, ctx.has_bias, ctx.bfloat16_operands, ctx.rows = kind, b_hh is not None, bfloat16_operands, len(gi)
        out = saved[0]
        return out[1:], out[-1].clone()

    @staticmethod
    def backward(ctx, d_out: Tensor, d_hT: Tensor):
        w_hh, ids, *saved = ctx.saved_tensors
        d_gi, d_h0, d_w, d_b = _impl(ctx.kind + "_backward", w_hh)(
            d_out, d_hT, *saved, w_hh, ctx.has_bias, ctx.bfloat16_operands, ids, ctx.rows
        )
        return d_gi, d_h0, d_w, d_b, None, None, None


class RNNWindow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, bfloat16_operands: bool, ids):
        out = _impl("rnn_forward", gi)(gi, h0.contiguous(), w_hh, b_hh, bfloat16_operands, ids)
        ctx.save_for_backward(w_hh, ids, out)
        ctx.has_bias, ctx.bfloat16_operands, ctx.rows = b_hh is not None, bfloat16_operands, len(gi)
        return out[1:], out[-1].clone()

    @staticmethod
    def backward(ctx, d_out: Tensor, d_hT: Tensor):
        w_hh, ids, out = ctx.saved_tensors
        backward = _impl("rnn_backward", w_hh)
        d_gi, d_h0, d_w, d_b = backward(d_out, d_hT, out, w_hh, ctx.has_bias, ctx.bfloat16_operands, ids, ctx.rows)
        return d_gi, d_h0, d_w, d_b, None, None


class LSTMWindow(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        gi: Tensor,
        h0: Tensor,
        c0: Tensor,
        w_hh: Tensor,
        b_hh: Tensor | None,
        bfloat16_operands: bool,
        ids: Tensor | None,
    ):
        forward = _impl("lstm_forward", gi)
        out, C, G = forward(gi, h0.contiguous(), c0.contiguous(), w_hh, b_hh, bfloat16_operands, ids)
        ctx.save_for_backward(w_hh, ids, out, C, G)
        ctx.has_bias, ctx.bfloat16_operands, ctx.rows = b_hh is not None, bfloat16_operands, len(gi)
        return out[1:], out[-1].clone(), C[-1].clone()

    @staticmethod
    def backward(ctx, d_out: Tensor, d_hT: Tensor, d_cT: Tensor):
        w_hh, ids, out, C, G = ctx.saved_tensors
        d_gi, d_h0, d_c0, d_w, d_b = _impl("lstm_backward", w_hh)(
            d_out.contiguous(),
            d_hT.contiguous(),
            d_cT.contiguous(),
            out,
            C,
            G,
            w_hh,
            ctx.has_bias,
            ctx.bfloat16_operands,
            ids,
            ctx.rows,
        )
        return d_gi, d_h0, d_c0, d_w, d_b, None, None


def table_gradient_of(d_gi: Tensor, ids: Tensor | None, table_rows: int) -> Tensor:
    """The gradient of what a window read: d_gi itself, or, where it read a table's rows by ids, d_gi's rows
    summed into the table's rows (the compiled team kernels sum them as they go, csrc/input_rows.h)."""
    return d_gi if ids is None else sum_rows_by_id(d_gi, ids, table_rows)


def sum_rows_by_id(grad: Tensor, ids: Tensor, rows: int) -> Tensor:
    """The backward of table[ids] for a table of `rows` rows: each of grad's rows (one per id, in ids' order)
    added into its id's row, with one index_add_ (a single pass in the order given, where F.embedding's
    backward first sorts the ids), summed in float32 at least and returned in grad's dtype."""
    flat = grad.reshape(-1, grad.shape[-1])
    wide = torch.promote_types(flat.dtype, torch.float32)  # float32 sums for bfloat16 too
    summed = flat.new_zeros(rows, flat.shape[1], dtype=wide)
    return summed.index_add_(0, ids.reshape(-1), flat.to(wide)).to(grad.dtype)


def lstm_window(
    gi: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out T×B×H, h_T, c_T) of an LSTM layer over a window. With ids (T×B), gi is the table (V×4H) whose
    rows the window reads (rows_of), and the gradient of gi is the table's."""
    return LSTMWindow.apply(gi, h0, c0, w_hh, b_hh, bfloat16_operands, ids)


def gru_window(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    reset_after: bool,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """bfloat16_operands: bfloat16 operands for the matrix products (mixed precision), float32 everywhere else.
    ids: as lstm_window's."""
    return GRUWindow.apply(gi, h0, w_hh, b_hh, reset_after, bfloat16_operands, ids)


def rnn_window(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    bfloat16_operands: bool = False,
    ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    return RNNWindow.apply(gi, h0, w_hh, b_hh, bfloat16_operands, ids)
