"""The cells against torch's own (the GRU's reset-after form, the LSTM, the RNN), the equations written out
line by line (Dive into Deep Learning's reset-before GRU, the LSTM), float64 gradcheck, the gate semantics,
and the fast window path (compiled AVX2 and BLAS kernels, and its Python fallback) against the plain loop."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import nn

from gru_lm.model import window
from gru_lm.model.cells import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, TableRows, gru_step, lstm_step
from gru_lm.model.kernels import compiled

torch.manual_seed(0)
ATOL = 1e-5


def _copy(ours: nn.Module, ref: nn.Module) -> None:
    missing = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_same_grads(a: nn.Module, b: nn.Module, atol: float = ATOL) -> None:
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], atol=atol, rtol=1e-4, msg=f"gradient of {name}")


@pytest.mark.parametrize("bias", [True, False])
def test_gru_cell_matches_torch(bias):
    ref = nn.GRUCell(5, 7, bias=bias)
    ours = GRUCell(5, 7, bias=bias, reset_after=True)
    _copy(ours, ref)
    x, h = torch.randn(3, 5), torch.randn(3, 7)
    out_ref, out = ref(x, h), ours(x, h)
    torch.testing.assert_close(out, out_ref, atol=ATOL, rtol=1e-5)
    (out_ref.square().sum()).backward()
    (out.square().sum()).backward()
    _assert_same_grads(ours, ref)


def test_rnn_cell_matches_torch():
    ref, ours = nn.RNNCell(5, 7), RNNCell(5, 7)
    _copy(ours, ref)
    x, h = torch.randn(3, 5), torch.randn(3, 7)
    torch.testing.assert_close(ours(x, h), ref(x, h), atol=ATOL, rtol=1e-5)
    ours(x, h).sum().backward()
    ref(x, h).sum().backward()
    _assert_same_grads(ours, ref)


def test_lstm_cell_matches_torch():
    ref, ours = nn.LSTMCell(5, 7), LSTMCell(5, 7)
    _copy(ours, ref)
    x, h, c = torch.randn(3, 5), torch.randn(3, 7), torch.randn(3, 7)
    (h1, c1), (h2, c2) = ours(x, (h, c)), ref(x, (h, c))
    torch.testing.assert_close((h1, c1), (h2, c2), atol=ATOL, rtol=1e-5)
    (h1.square().sum() + c1.sum()).backward()
    (h2.square().sum() + c2.sum()).backward()
    _assert_same_grads(ours, ref)


def test_cells_default_to_zero_state():
    cell = GRUCell(4, 6)
    x = torch.randn(2, 4)
    torch.testing.assert_close(cell(x), cell(x, torch.zeros(2, 6)))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_sequence_modules_match_torch(kind, layers, fast):
    T, B, I, H = 9, 4, 6, 8
    if kind == "gru":
        ref, ours = nn.GRU(I, H, layers), GRU(I, H, layers, reset_after=True, fast=fast)
    elif kind == "lstm":
        ref, ours = nn.LSTM(I, H, layers), LSTM(I, H, layers, fast=fast)
    else:
        ref, ours = nn.RNN(I, H, layers), RNN(I, H, layers, fast=fast)
    _copy(ours, ref)
    x = torch.randn(T, B, I, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    h0 = torch.randn(layers, B, H)
    h0 = (h0, torch.randn(layers, B, H)) if kind == "lstm" else h0
    out_ref, hn_ref = ref(x, h0)
    out, hn = ours(x2, h0)
    assert out.shape == (T, B, H) and torch.cat([*hn] if kind == "lstm" else [hn]).shape[1:] == (B, H)
    torch.testing.assert_close(out, out_ref, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(hn, hn_ref, atol=ATOL, rtol=1e-5)
    w = torch.randn_like(out)
    final = (lambda s: s[0].sum() + s[1].square().sum()) if kind == "lstm" else (lambda s: s.sum())
    ((out_ref * w).sum() + final(hn_ref)).backward()
    ((out * w).sum() + final(hn)).backward()
    _assert_same_grads(ours, ref)
    torch.testing.assert_close(x2.grad, x.grad, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("ours, ref", [(GRU, nn.GRU), (LSTM, nn.LSTM), (RNN, nn.RNN)])
def test_parameter_names_and_shapes_follow_torch(ours, ref):
    a, b = ours(5, 7, 2), ref(5, 7, 2)
    assert {n: p.shape for n, p in a.named_parameters()} == {n: p.shape for n, p in b.named_parameters()}


def _d2l_gru(x, h, W_xr, W_hr, b_r, W_xz, W_hz, b_z, W_xh, W_hh, b_h):
    """Dive into Deep Learning's GRU equations, written out line by line with row-vector weights (X W)."""
    outs = []
    for X in x:
        R = torch.sigmoid(X @ W_xr + h @ W_hr + b_r)
        Z = torch.sigmoid(X @ W_xz + h @ W_hz + b_z)
        H_tilde = torch.tanh(X @ W_xh + (R * h) @ W_hh + b_h)
        h = Z * h + (1 - Z) * H_tilde
        outs.append(h)
    return torch.stack(outs), h


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_reset_before_gru_matches_the_dive_into_deep_learning_equations(fast):
    T, B, I, H = 7, 3, 4, 5
    gru = GRU(I, H, 1, reset_after=False, fast=fast)
    w_ih, w_hh, b_ih, b_hh = gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    r, z, n = slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H)
    x, h0 = torch.randn(T, B, I), torch.randn(B, H)
    out, hn = gru(x, h0[None])
    ref_out, ref_h = _d2l_gru(
        x,
        h0,
        w_ih[r].T,
        w_hh[r].T,
        b_ih[r] + b_hh[r],
        w_ih[z].T,
        w_hh[z].T,
        b_ih[z] + b_hh[z],
        w_ih[n].T,
        w_hh[n].T,
        b_ih[n] + b_hh[n],
    )
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(hn[0], ref_h, atol=ATOL, rtol=1e-5)
    # and the two forms really differ (so the test above could fail)
    after = GRU(I, H, 1, reset_after=True, fast=fast)
    after.load_state_dict(gru.state_dict())
    assert (after(x, h0[None])[0] - out).abs().max() > 1e-3


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_lstm_matches_its_equations_written_out(fast):
    """c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(c'), each gate from its own weights, step by step in float64."""
    T, B, I, H = 6, 3, 4, 8
    lstm = LSTM(I, H, 1, fast=fast)
    w_ih, w_hh, b_ih, b_hh = (t.detach().double() for t in lstm.layer_weights(0))
    x, h, c = torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H)
    out, (hn, cn) = lstm(x, (h[None], c[None]))
    h, c = h.double(), c.double()

    def gate(k, X, h):
        return (
            X @ w_ih[k * H : (k + 1) * H].T
            + b_ih[k * H : (k + 1) * H]
            + h @ w_hh[k * H : (k + 1) * H].T
            + b_hh[k * H : (k + 1) * H]
        )

    outs = []
    for X in x.double():
        i, f = torch.sigmoid(gate(0, X, h)), torch.sigmoid(gate(1, X, h))
        g, o = torch.tanh(gate(2, X, h)), torch.sigmoid(gate(3, X, h))
        c = f * c + i * g
        h = o * torch.tanh(c)
        outs.append(h)
    torch.testing.assert_close(out.double(), torch.stack(outs), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close((hn[0].double(), cn[0].double()), (h, c), atol=ATOL, rtol=1e-5)


def test_lstm_forget_one_input_zero_copies_the_cell_and_its_gradient():
    H = 6
    gi, h, w_hh = torch.randn(3, 4 * H), torch.rand(3, H) * 1.8 - 0.9, torch.randn(4 * H, H)
    gi[:, :H] = -1e4  # i = 0: nothing written
    gi[:, H : 2 * H] = 1e4  # f = 1: everything kept
    c = torch.randn(3, H, requires_grad=True)
    _h1, c1 = lstm_step(gi, (h, c), w_hh, None)
    torch.testing.assert_close(c1, c.detach())
    (g,) = torch.autograd.grad(c1.sum(), c)
    torch.testing.assert_close(g, torch.ones_like(c))


@pytest.mark.parametrize(
    "make",
    [
        lambda: LSTMCell(3, 4),
        lambda: LSTM(3, 4, 2, fast=False),
        lambda: LSTM(3, 4, 2),
        lambda: LSTM(3, 4, 1, bias=False),
    ],
    ids=["lstmcell", "lstm-ref", "lstm-fast", "lstm-fast-nobias"],
)
def test_gradcheck_float64_lstm(make):
    torch.manual_seed(1)
    m = make().double()
    params = tuple(m.parameters())
    seq = isinstance(m, LSTM)
    x = torch.randn(*((4, 2, 3) if seq else (2, 3)), dtype=torch.float64, requires_grad=True)
    shape = (m.num_layers, 2, 4) if seq else (2, 4)
    h, c = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for _ in range(2))
    inputs = (x, h, c, *tuple(p.detach().clone().requires_grad_(True) for p in params))

    def f(x, h, c, *ps):
        state = {n: v for (n, _), v in zip(m.named_parameters(), ps)}
        out = torch.func.functional_call(m, state, (x, (h, c)))
        return (out[0], *out[1]) if seq else out

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GRUCell(3, 4, reset_after=False),
        lambda: GRUCell(3, 4, reset_after=True),
        lambda: RNNCell(3, 4),
        lambda: GRU(3, 4, 2, reset_after=False, fast=False),
        lambda: GRU(3, 4, 2, reset_after=True, fast=False),
        lambda: RNN(3, 4, 2, fast=False),
        lambda: GRU(3, 4, 2, reset_after=False),
        lambda: GRU(3, 4, 2, reset_after=True),
        lambda: RNN(3, 4, 2),
        lambda: GRU(3, 4, 1, reset_after=False, bias=False),
        lambda: GRU(3, 4, 1, reset_after=True, bias=False),
        lambda: RNN(3, 4, 1, bias=False),
    ],
    ids=[
        "grucell-before",
        "grucell-after",
        "rnncell",
        "gru-before-ref",
        "gru-after-ref",
        "rnn-ref",
        "gru-before-fast",
        "gru-after-fast",
        "rnn-fast",
        "gru-before-fast-nobias",
        "gru-after-fast-nobias",
        "rnn-fast-nobias",
    ],
)
def test_gradcheck_float64(make):
    torch.manual_seed(1)
    m = make().double()
    params = tuple(m.parameters())
    seq = not isinstance(m, (GRUCell, RNNCell))
    x = torch.randn(*((4, 2, 3) if seq else (2, 3)), dtype=torch.float64, requires_grad=True)
    h = torch.randn(*((m.num_layers, 2, 4) if seq else (2, 4)), dtype=torch.float64, requires_grad=True)

    inputs = (x, h, *tuple(p.detach().clone().requires_grad_(True) for p in params))

    def g(x, h, *ps):
        state = {n: v for (n, _), v in zip(m.named_parameters(), ps)}
        return torch.func.functional_call(m, state, (x, h))

    assert torch.autograd.gradcheck(g, inputs, eps=1e-6, atol=1e-5)


def _gate_inputs(H: int, B: int = 3):
    gi = torch.randn(B, 3 * H)
    h = torch.rand(B, H) * 1.8 - 0.9
    w_hh = torch.randn(3 * H, H)
    b_hh = torch.randn(3 * H)
    return gi, h, w_hh, b_hh


@pytest.mark.parametrize("reset_after", [False, True])
def test_update_gate_one_copies_state_and_gradient(reset_after):
    H = 6
    gi, h, w_hh, b_hh = _gate_inputs(H)
    gi[:, H : 2 * H] = 1e4  # z = σ(huge) = 1
    h = h.requires_grad_(True)
    out = gru_step(gi, h, w_hh, b_hh, reset_after)
    torch.testing.assert_close(out, h.detach())
    (g,) = torch.autograd.grad(out.sum(), h)
    torch.testing.assert_close(g, torch.ones_like(h))  # the gradient flows straight through


@pytest.mark.parametrize("reset_after", [False, True])
def test_reset_gate_zero_makes_candidate_ignore_old_state(reset_after):
    H = 6
    gi, h, w_hh, b_hh = _gate_inputs(H)
    gi[:, :H] = -1e4  # r = 0
    gi[:, H : 2 * H] = -1e4  # z = 0, so h' = n, the candidate alone
    # with the reset after the product, r = 0 removes h W_hn + b_hn entirely;
    # with the reset before it, (0 ⊙ h) W_hn leaves only the bias b_hn
    expected = torch.tanh(gi[:, 2 * H :]) if reset_after else torch.tanh(gi[:, 2 * H :] + b_hh[2 * H :])
    other_h = torch.rand_like(h) * 1.8 - 0.9
    out1 = gru_step(gi, h, w_hh, b_hh, reset_after)
    out2 = gru_step(gi, other_h, w_hh, b_hh, reset_after)
    torch.testing.assert_close(out1, expected)
    torch.testing.assert_close(out1, out2)


@pytest.mark.parametrize("cls", [GRU, RNN])
def test_state_stays_inside_minus_one_one(cls):
    m = cls(4, 16, 2)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(20)  # large weights push the gates to saturation
        x = torch.randn(50, 3, 4) * 10
        out, hn = m(x, torch.rand(2, 3, 16) * 2 - 1)
    assert out.abs().max() <= 1.0 and hn.abs().max() <= 1.0


def test_dropout_between_layers_only_in_training():
    m = GRU(4, 8, 2, dropout=0.5)
    x = torch.randn(5, 2, 4)
    m.eval()
    a, b = m(x)[0], m(x)[0]
    torch.testing.assert_close(a, b)
    m.train()
    torch.manual_seed(0)
    c = m(x)[0]
    torch.manual_seed(1)
    d = m(x)[0]
    assert (c - d).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn"])
def test_weight_drop_masks_the_recurrent_weights_once_per_window(kind):
    """DropConnect: in training the compiled window sees W_hh with a fraction of its entries zeroed
    (the same ones at every step): it matches the reference loop given the same draws, no gradient
    reaches a dropped entry, and in eval mode the weights are whole."""
    cls = {"gru": GRU, "lstm": LSTM, "rnn": RNN}[kind]
    fast_m, ref_m = cls(6, 16, 2, weight_drop=0.5), cls(6, 16, 2, weight_drop=0.5, fast=False)
    ref_m.load_state_dict(fast_m.state_dict())
    x = torch.randn(7, 3, 6)
    outs = []
    for m in (fast_m, ref_m):
        torch.manual_seed(5)
        out, h = m(x)
        (out.square().sum() + (torch.cat(h) if kind == "lstm" else h).sum()).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, a), b in zip(fast_m.named_parameters(), ref_m.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    dropped = fast_m.weight_hh_l0.grad == 0
    assert 0.35 < dropped.float().mean().item() < 0.65  # the gradient reaches the kept entries only
    fast_m.eval()
    plain = cls(6, 16, 2)
    plain.load_state_dict(fast_m.state_dict())
    torch.testing.assert_close(fast_m(x)[0], plain.eval()(x)[0])
    fast_m.train()
    torch.manual_seed(5)
    assert (fast_m(x)[0] - plain.train()(x)[0]).abs().max() > 1e-3


def _use_backend(backend: str, monkeypatch) -> None:
    """Run windows on the team micro-kernels at AVX-512 or AVX2 width, the BLAS path (all compiled) or
    the Python loops."""
    if backend == "python":
        monkeypatch.setattr(window, "compiled", lambda: None)
        return
    if compiled() is None:
        pytest.skip("no compiler here: the compiled kernels could not be built")
    monkeypatch.setenv("GRU_LM_KERNELS", backend)
    if compiled().preferred_kernels() != backend:
        pytest.skip(f"this CPU or build has no {backend} kernels")


_MAKERS = {
    "gru-before": lambda b, H: GRU(6, H, 2, bias=b),
    "gru-after": lambda b, H: GRU(6, H, 2, reset_after=True, bias=b),
    "lstm": lambda b, H: LSTM(6, H, 2, bias=b),
    "rnn": lambda b, H: RNN(6, H, 2, bias=b),
}


def _state(m, B: int, H: int):
    h0 = torch.randn(2, B, H)
    return (h0, torch.randn(2, B, H)) if isinstance(m, LSTM) else h0


_SHAPES = {
    "small": (11, 5, 8),
    "units-split-over-threads": (5, 17, 256),
    "hidden-a-multiple-of-8-not-16": (6, 9, 40),
    "hidden-not-a-multiple-of-8": (4, 3, 20),
}
# The team paths take hidden sizes that are multiples of 8 (others run the BLAS path, tested as "blas");
# at AVX-512 width 8 and 40 end in half a vector, and batches of 5, 9 and 17 leave rows after blocks of 8
_TEAM = ("avx512", "avx2")
_BACKEND_SHAPES = [
    pytest.param(backend, shape, id=f"{backend}-{name}")
    for backend in (*_TEAM, "blas", "python")
    for name, shape in _SHAPES.items()
    if not (backend in _TEAM and shape[2] % 8)
]


@pytest.mark.parametrize(("backend", "shape"), _BACKEND_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", list(_MAKERS))
def test_fast_path_equals_the_reference_loop(kind, bias, backend, shape, monkeypatch):
    """The hand-derived backward of window.py (the team kernels at both widths, the BLAS path and the Python fallback)
    against autograd through the plain loop of cells.py."""
    _use_backend(backend, monkeypatch)
    T, B, H = shape
    quick = _MAKERS[kind](bias, H)
    ref = _MAKERS[kind](bias, H)
    ref.fast = False
    ref.load_state_dict(quick.state_dict())
    x = torch.randn(T, B, 6)
    h0 = _state(quick, B, H)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    hs = [
        tuple(t.clone().requires_grad_(True) for t in h0) if kind == "lstm" else h0.clone().requires_grad_(True)
        for _ in range(2)
    ]
    w = torch.randn(T, B, H)
    results = []
    for m, xi, hi in ((quick, xs[0], hs[0]), (ref, xs[1], hs[1])):
        out, hn = m(xi, hi)
        final = torch.cat(hn) if kind == "lstm" else hn
        ((out * w).sum() + (final * final).sum()).backward()
        results.append((out, final))
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-5)
    _assert_same_grads(quick, ref, atol=1e-5)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-5, rtol=1e-4)
    for a, b in zip(*(h if kind == "lstm" else (h,) for h in hs)):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


def _table_and_ids(m, V: int, T: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A first-layer input table for m (V rows of its projected embedding) and a window's ids that use every row."""
    table = m.input_table(torch.randn(V, 6)).detach().requires_grad_(True)
    ids = torch.randint(0, V, (T, B))
    ids.view(-1)[:V] = torch.arange(V)
    return table, ids


def _run_and_backward(m, first_gi, h0, w) -> tuple[torch.Tensor, torch.Tensor]:
    out, hn = m(None, h0, first_gi=first_gi)
    final = torch.cat(hn) if isinstance(hn, tuple) else hn
    ((out.float() * w).sum() + (final * final).sum()).backward()
    return out, final


@pytest.mark.parametrize(("backend", "shape"), _BACKEND_SHAPES)
@pytest.mark.parametrize("kind", list(_MAKERS))
def test_a_window_reading_the_table_by_id_equals_one_given_its_rows(kind, backend, shape, monkeypatch):
    """TableRows (the table and the ids) in place of the rows table[ids]: the team kernels read the table in place,
    the BLAS path and the Python loops look the rows up; the same outputs, and the table's gradient is the sum of
    its rows' gradients."""
    _use_backend(backend, monkeypatch)
    T, B, H = shape
    torch.manual_seed(3)
    m = _MAKERS[kind](True, H)
    table, ids = _table_and_ids(m, 7, T, B)
    h0, w = _state(m, B, H), torch.randn(T, B, H)
    by_id = _run_and_backward(m, TableRows(table, ids), h0, w)
    grads = [table.grad.clone()] + [p.grad for p in m.parameters()]  # (the first layer's w_ih and b_ih: None)
    m.zero_grad(set_to_none=True)
    rows = table.detach()[ids].requires_grad_(True)
    given = _run_and_backward(m, rows, h0, w)
    torch.testing.assert_close(by_id, given, atol=1e-6, rtol=1e-5)
    summed = torch.zeros_like(table).index_add_(0, ids.view(-1), rows.grad.view(-1, table.shape[1]))
    torch.testing.assert_close(grads[0], summed, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(grads[1:], (p.grad for p in m.parameters())):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["avx512", "blas"])
@pytest.mark.parametrize("kind", list(_MAKERS))
def test_a_bfloat16_window_reading_the_table_by_id_equals_one_given_its_rows(kind, path, monkeypatch):
    """Under bfloat16 autocast too (the bfloat16 team kernels where the CPU has them, and the BLAS path)."""
    if compiled() is None:
        pytest.skip("no compiler here: the compiled kernels could not be built")
    monkeypatch.setenv("GRU_LM_KERNELS", path)
    T, B, H = 9, 5, 40
    torch.manual_seed(4)
    m = _MAKERS[kind](True, H)
    table, ids = _table_and_ids(m, 7, T, B)
    h0, w = _state(m, B, H), torch.randn(T, B, H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        by_id = _run_and_backward(m, TableRows(table, ids), h0, w)
        grad = table.grad.clone()
        rows = table.detach()[ids].requires_grad_(True)
        given = _run_and_backward(m, rows, h0, w)
    torch.testing.assert_close(by_id, given, atol=1e-6, rtol=1e-5)
    summed = torch.zeros_like(table).index_add_(0, ids.view(-1), rows.grad.view(-1, table.shape[1]))
    torch.testing.assert_close(grad, summed, atol=1e-5, rtol=1e-5)


def test_an_id_outside_the_table_is_refused_before_any_row_is_read():
    if compiled() is None:
        pytest.skip("no compiler here: the compiled kernels could not be built")
    m = GRU(6, 16, 1)
    table = m.input_table(torch.randn(7, 6)).detach()
    for bad in (7, -1):
        ids = torch.zeros(4, 3, dtype=torch.long)
        ids[2, 1] = bad
        with pytest.raises(RuntimeError, match="not a row of the 7-row input table"):
            m(None, torch.zeros(1, 3, 16), first_gi=TableRows(table, ids))


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_compiled_kernels_build_where_there_is_a_compiler():
    assert compiled() is not None


@pytest.mark.parametrize("backend", ["compiled", "compiled-unpacked", "python"])
@pytest.mark.parametrize(
    "make",
    [lambda: GRU(6, 32, 2), lambda: GRU(6, 32, 2, reset_after=True), lambda: RNN(6, 32, 2), lambda: LSTM(6, 32, 2)],
    ids=["gru-before", "gru-after", "rnn", "lstm"],
)
def test_bfloat16_autocast_rounds_only_the_products(make, backend, monkeypatch):
    """Under CPU autocast to bfloat16 (train --dtype bfloat16) the window's products take bfloat16
    operands: outputs and gradients move by bfloat16 rounding (~1e-3 relative), not more, and do move,
    so the mixed path is really taken. States and gradients stay float32. "compiled-unpacked" is the
    plain-product path that processors without oneDNN's bfloat16 support take."""
    if backend == "python":
        monkeypatch.setattr(window, "compiled", lambda: None)
    elif compiled() is None:
        pytest.skip("no compiler here: the compiled kernels could not be built")
    if backend == "compiled-unpacked":
        monkeypatch.setenv("GRU_LM_PACK", "0")
    torch.manual_seed(3)
    exact, mixed = make(), make()
    mixed.load_state_dict(exact.state_dict())
    x, h0 = torch.randn(12, 4, 6), _state(exact, 4, 32)
    w = torch.randn(12, 4, 32)
    outs = []
    for m, amp in ((exact, False), (mixed, True)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out, hn = m(x, h0)
        hn = torch.cat(hn) if isinstance(hn, tuple) else hn
        assert out.dtype == hn.dtype == torch.float32
        ((out.float() * w).sum() + (hn * hn).sum()).backward()
        outs.append(out.float())
    diff = (outs[0] - outs[1]).abs().max().item()
    assert 0 < diff < 3e-2
    for (name, a), b in zip(exact.named_parameters(), mixed.parameters()):
        assert b.grad.dtype == torch.float32
        rel = (a.grad - b.grad).norm() / a.grad.norm()
        assert 0 < rel < 3e-2, f"gradient of {name}: relative difference {rel:.2e}"


@pytest.mark.parametrize("shape", [s for s in _SHAPES.values() if s[2] % 8 == 0], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", list(_MAKERS))
def test_bfloat16_team_path_agrees_with_the_blas_path(kind, shape, monkeypatch):
    """On a CPU with AVX-512 BF16 a window with bfloat16 operands runs the team kernels with bfloat16 products
    (packed_gemm_bf16.h; GRU_LM_KERNELS=avx512 asks for them on AMX CPUs too) instead of the BLAS path: the same
    operands rounded the same way, summed in another order (and kept float32, where oneDNN rounds its results),
    so the two agree to bfloat16's rounding, outputs and gradients; both stay that close to float32 and move
    away from it. The shapes leave half vectors and rows after blocks of 8, and split the units over the threads."""
    monkeypatch.setenv("GRU_LM_KERNELS", "avx512")
    if compiled() is None or compiled().preferred_bfloat16_kernels() != "avx512_bf16":
        pytest.skip("this CPU or build has no bfloat16 team kernels")
    T, B, H = shape
    torch.manual_seed(7)
    models = [_MAKERS[kind](True, H) for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    x, h0, w = torch.randn(T, B, 6), _state(models[0], B, H), torch.randn(T, B, H)
    outs = []
    for m, (path, amp) in zip(models, (("avx512", False), ("avx512", True), ("blas", True))):
        monkeypatch.setenv("GRU_LM_KERNELS", path)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out, hn = m(x, h0)
        hn = torch.cat(hn) if isinstance(hn, tuple) else hn
        ((out.float() * w).sum() + (hn * hn).sum()).backward()
        outs.append(out.float())
    exact, team, blas = outs
    assert 0 < (team - blas).abs().max() < 3e-2 and 1e-4 < (team - exact).abs().max() < 3e-2
    for (name, a), b, c in zip(models[0].named_parameters(), models[1].parameters(), models[2].parameters()):
        for mixed in (b, c):
            rel = (a.grad - mixed.grad).norm() / a.grad.norm()
            assert rel < 3e-2, f"gradient of {name}: relative difference {rel:.2e}"


def test_dropout_keeps_the_expected_fraction_and_scales():
    from gru_lm.model.cells import dropout

    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # the gradient flows through the kept values only
    assert dropout(x, 0.3, training=False) is x
    assert (dropout(x, 1.0, training=True) == 0).all()


def test_the_paths_said_available_are_the_ones_dispatch_takes(monkeypatch):
    """kernels.available() names each compiled path that GRU_LM_KERNELS can select here, the default among
    them, and leaves the environment as it found it."""
    from gru_lm.model.kernels import available, backend

    monkeypatch.delenv("GRU_LM_KERNELS", raising=False)
    paths = available()
    assert paths[-1] == "python" and "GRU_LM_KERNELS" not in os.environ
    if compiled() is None:
        assert paths == ["python"]
        return
    assert backend() in paths and "blas" in paths
    for path in paths[:-1]:
        monkeypatch.setenv("GRU_LM_KERNELS", path)
        assert compiled().preferred_kernels() == path


def test_the_bfloat16_paths_said_available_are_the_ones_dispatch_takes(monkeypatch):
    """kernels.available_bfloat16() names "avx512" only where GRU_LM_KERNELS=avx512 gives a bfloat16 window the
    team kernels, always "blas" with the compiled module, and leaves the environment as it found it."""
    from gru_lm.model.kernels import available_bfloat16

    monkeypatch.setenv("GRU_LM_KERNELS", "blas")
    paths = available_bfloat16()
    assert os.environ["GRU_LM_KERNELS"] == "blas"
    if compiled() is None:
        assert paths == []
        return
    assert paths[-1] == "blas" and compiled().preferred_bfloat16_kernels() == "blas"
    monkeypatch.setenv("GRU_LM_KERNELS", "avx512")
    assert ("avx512" in paths) == (compiled().preferred_bfloat16_kernels() == "avx512_bf16")
