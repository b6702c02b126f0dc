"""Recurrent cells written from their equations, shaped like torch.nn.GRU / torch.nn.LSTM / torch.nn.RNN.

The GRU is the one of Dive into Deep Learning's GRU chapter (Zhang, Lipton, Li, Smola) and Cho et al.
2014. Notation: x is one step's input (B×I), h the previous state (B×H), weights as torch lays them out.

GRU, gates in the order r, z, n (as torch.nn.GRU lays them out):

    r  = σ(x W_ir + b_ir + h W_hr + b_hr)            reset gate
    z  = σ(x W_iz + b_iz + h W_hz + b_hz)            update gate
    n  = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn)   reset BEFORE the product (Dive into Deep Learning, Cho et al.)
    n  = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))   reset AFTER the product (torch.nn.GRU, cuDNN)
    h' = z ⊙ h + (1 − z) ⊙ n

z = 1 copies the old state (and its gradient) straight through; r = 0 makes the candidate
ignore the old state: the model forgetting from inside what a fresh zero state forgets from outside.

LSTM (Hochreiter and Schmidhuber 1997, with the forget gate of Gers et al. 2000), gates in the order
i, f, g, o (as torch.nn.LSTM lays them out); the state is (h, c):

    i  = σ(x W_ii + b_ii + h W_hi + b_hi)            input gate
    f  = σ(x W_if + b_if + h W_hf + b_hf)            forget gate
    g  = tanh(x W_ig + b_ig + h W_hg + b_hg)         candidate
    o  = σ(x W_io + b_io + h W_ho + b_ho)            output gate
    c' = f ⊙ c + i ⊙ g
    h' = o ⊙ tanh(c')

Plain RNN: h' = tanh(x W_ih + b_ih + h W_hh + b_hh).

The sequence modules compute the input projections of a whole window in one matrix product
(they do not depend on h) and then step through time with only the recurrent products left.
By default they run the window through window.py (the same equations with a hand-derived backward);
`fast=False` runs the plain loop below under autograd, the reference the tests hold window.py to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gru_lm.model.dropout import keep_mask
from gru_lm.model.products import linear
from gru_lm.model.window import gru_window, lstm_window, rnn_window


def gru_gates(
    gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, reset_after: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The reset gate r, update gate z and candidate n of one GRU step (the one copy of the equations).

    gi = x W_ih + b_ih (B×3H, already projected), h is B×H. gru_step mixes them into h';
    inspect_trace.trace reads them out to show what the gates do.
    """
    H = h.shape[-1]
    i_r, i_z, i_n = gi[..., :H], gi[..., H : 2 * H], gi[..., 2 * H :]
    b_rz = None if b_hh is None else b_hh[: 2 * H]
    b_n = None if b_hh is None else b_hh[2 * H :]
    if reset_after:
        gh = F.linear(h, w_hh, b_hh)
        r = torch.sigmoid(i_r + gh[..., :H])
        z = torch.sigmoid(i_z + gh[..., H : 2 * H])
        n = torch.tanh(i_n + r * gh[..., 2 * H :])
    else:
        gh_rz = F.linear(h, w_hh[: 2 * H], b_rz)
        r = torch.sigmoid(i_r + gh_rz[..., :H])
        z = torch.sigmoid(i_z + gh_rz[..., H:])
        n = torch.tanh(i_n + F.linear(r * h, w_hh[2 * H :], b_n))
    return r, z, n


def gru_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, reset_after: bool) -> Tensor:
    """One GRU step given gi = x W_ih + b_ih (B×3H, already projected) and h (B×H)."""
    _, z, n = gru_gates(gi, h, w_hh, b_hh, reset_after)
    return torch.lerp(n, h, z)  # z ⊙ h + (1 − z) ⊙ n


def lstm_gates(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The input gate i, forget gate f, candidate g and output gate o of one LSTM step (B×H each).

    gi = x W_ih + b_ih (B×4H, already projected), h is B×H. lstm_step mixes them into (h', c');
    inspect_trace.trace reads them out.
    """
    a = gi + F.linear(h, w_hh, b_hh)
    i, f, g, o = a.chunk(4, dim=-1)
    return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)


def lstm_step(gi: Tensor, state: tuple[Tensor, Tensor], w_hh: Tensor, b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    """One LSTM step given gi = x W_ih + b_ih (B×4H) and the state (h, c): returns (h', c')."""
    h, c = state
    i, f, g, o = lstm_gates(gi, h, w_hh, b_hh)
    c = f * c + i * g
    return o * torch.tanh(c), c


def rnn_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """One plain RNN step given gi = x W_ih + b_ih (B×H) and h (B×H)."""
    return torch.tanh(gi + F.linear(h, w_hh, b_hh))


def _init_uniform(module: nn.Module, hidden_size: int) -> None:
    """PyTorch's initialisation for recurrent layers: every parameter uniform in ±1/√H."""
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


class _CellBase(nn.Module):
    gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        G = self.gates
        self.weight_ih = nn.Parameter(torch.empty(G * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G * hidden_size, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(G * hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        _init_uniform(self, hidden_size)

    def _zeros(self, x: Tensor) -> Tensor:
        return x.new_zeros(*x.shape[:-1], self.hidden_size)


class GRUCell(_CellBase):
    """A single GRU step, parameters laid out as torch.nn.GRUCell (r, z, n)."""

    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = False) -> None:
        super().__init__(input_size, hidden_size, bias)
        self.reset_after = reset_after

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        h = self._zeros(x) if h is None else h
        gi = F.linear(x, self.weight_ih, self.bias_ih)
        return gru_step(gi, h, self.weight_hh, self.bias_hh, self.reset_after)


class LSTMCell(_CellBase):
    """A single LSTM step, parameters laid out as torch.nn.LSTMCell (i, f, g, o); state (h, c)."""

    gates = 4

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        state = (self._zeros(x), self._zeros(x)) if state is None else state
        return lstm_step(F.linear(x, self.weight_ih, self.bias_ih), state, self.weight_hh, self.bias_hh)


class RNNCell(_CellBase):
    """A single tanh RNN step, parameters laid out as torch.nn.RNNCell."""

    gates = 1

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        h = self._zeros(x) if h is None else h
        return rnn_step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh, self.bias_hh)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, as F.dropout: keep each value with probability 1 − p and scale by 1/(1 − p).

    The mask comes from a hash of each element's index (dropout.py), made in parallel, rather than from
    torch's sequential random draws, which cost more than the rest of a training step's dropouts."""
    if not training or p == 0:
        return x
    if p >= 1:
        return x * 0
    return x * keep_mask(x, p)


@dataclass(frozen=True)
class TableRows:
    """A window's first-layer input projections as a table and ids: the projection of every character
    (V×G·H, input_table) and the window's characters (T×B). What a model hands its stack in place of the
    T·B rows themselves: the windows read the table by id (window.py), the reference loop looks the rows up."""

    table: Tensor
    ids: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of the rows it stands for, T×B×G·H."""
        return (self.ids.shape[0], self.ids.shape[1], self.table.shape[1])

    def rows(self) -> Tensor:
        """The rows themselves, table[ids] (differentiable with respect to the table)."""
        return F.embedding(self.ids, self.table)


class _Stack(nn.Module):
    """Stacked recurrent layers, time-major, with parameters named as torch.nn.GRU/RNN."""

    gates = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        bias: bool = True,
        fast: bool = True,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be at least 1")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.dropout, self.fast, self.weight_drop = bias, dropout, fast, weight_drop
        G, H = self.gates, hidden_size
        for k in range(num_layers):
            in_k = input_size if k == 0 else H
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(G * H, in_k)))
            setattr(self, f"weight_hh_l{k}", nn.Parameter(torch.empty(G * H, H)))
            if bias:
                setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(G * H)))
                setattr(self, f"bias_hh_l{k}", nn.Parameter(torch.empty(G * H)))
            else:
                self.register_parameter(f"bias_ih_l{k}", None)
                self.register_parameter(f"bias_hh_l{k}", None)
        _init_uniform(self, hidden_size)

    def layer_weights(self, k: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        return (
            getattr(self, f"weight_ih_l{k}"),
            getattr(self, f"weight_hh_l{k}"),
            getattr(self, f"bias_ih_l{k}"),
            getattr(self, f"bias_hh_l{k}"),
        )

    def step(self, gi: Tensor, state, w_hh: Tensor, b_hh: Tensor | None):
        """One step from the layer's state (B×H; (h, c) for the LSTM) to the next."""
        raise NotImplementedError

    def window(
        self,
        gi: Tensor,
        state,
        w_hh: Tensor,
        b_hh: Tensor | None,
        bfloat16_operands: bool = False,
        ids: Tensor | None = None,
    ):
        """The whole window (window.py): returns (out T×B×H, the final state). With ids, gi is a table of
        input projections that the window reads by id."""
        raise NotImplementedError

    @staticmethod
    def output(state) -> Tensor:
        """What a step hands to the next layer: the state itself (h of (h, c) for the LSTM)."""
        return state

    def input_table(self, embedding: Tensor) -> Tensor:
        """The first layer's input projection of every row of an embedding (V×G·H). A window over
        embedding[ids] can look its T·B projections up in it instead of computing each: the same
        products, V of them instead of T·B, which for a character alphabet is far fewer."""
        w_ih, _, b_ih, _ = self.layer_weights(0)
        return linear(embedding, w_ih, b_ih)

    def initial_state(self, x: Tensor | None, first_gi: Tensor | TableRows | None) -> Tensor:
        """Zeros for every layer's state (L×B×H, B from whichever input forward has), in the weights' dtype."""
        given = x if x is not None else first_gi
        if given is None:
            raise ValueError("the stack needs its input x or the first layer's input projections first_gi")
        return self.layer_weights(0)[1].new_zeros(self.num_layers, given.shape[1], self.hidden_size)

    def run_layer(self, k: int, x: Tensor | None, h, gi: Tensor | TableRows | None = None):
        """Layer k over a whole window: x is T×B×I, h the layer's state (B×H, or (h, c) for the LSTM);
        returns (out T×B×H, the final state). gi, when given, is the layer's input projections (T×B×G·H,
        or a TableRows of input_table's table and the window's ids) and x is not read."""
        w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
        if self.weight_drop > 0 and self.training:
            # DropConnect on the recurrent weights (AWD-LSTM's weight drop): one mask per window, the
            # same for every step and stream, so the state's own path is what gets regularised
            w_hh = dropout(w_hh, self.weight_drop, training=True)
        if gi is None:
            if x is None:
                raise ValueError("run_layer needs the layer's input x or its input projections gi")
            gi = linear(x, w_ih, b_ih)  # all T input projections in one matrix product
        if not self.fast:
            return self._loop(gi.rows() if isinstance(gi, TableRows) else gi, h, w_hh, b_hh)
        gi, ids = (gi.table, gi.ids) if isinstance(gi, TableRows) else (gi, None)
        device = gi.device.type
        if torch.is_autocast_enabled(device):
            # mixed precision: the window's matrix products take bfloat16 operands, while its
            # states, gates and hand-derived backward stay float32 arithmetic
            bfloat16_operands = torch.get_autocast_dtype(device) == torch.bfloat16
            with torch.autocast(device, enabled=False):
                state = _map(h, lambda t: t.float().contiguous())
                return self.window(gi.float(), state, w_hh, b_hh, bfloat16_operands, ids)
        return self.window(gi, _map(h, Tensor.contiguous), w_hh, b_hh, ids=ids)

    def _loop(self, gi: Tensor, h, w_hh: Tensor, b_hh: Tensor | None):
        """The reference: step by step under autograd (fast=False)."""
        outs = []
        for t in range(gi.shape[0]):
            h = self.step(gi[t], h, w_hh, b_hh)
            outs.append(self.output(h))
        return torch.stack(outs), h

    def forward(
        self, x: Tensor | None, h0: Tensor | None = None, first_gi: Tensor | TableRows | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: T×B×I, h0: L×B×H (zeros when None) -> (out: T×B×H, h_n: L×B×H). With first_gi (the first
        layer's input projections: T×B×G·H, or a TableRows of input_table's table and the ids) x may be None."""
        if h0 is None:
            h0 = self.initial_state(x, first_gi)
        out, finals = self.run_layers(x, [h0[k] for k in range(self.num_layers)], first_gi)
        return out, torch.stack(finals)

    def run_layers(self, x: Tensor | None, states: list, first_gi: Tensor | TableRows | None) -> tuple[Tensor, list]:
        """Every layer over the window, each reading the one below (after dropout, when training): states
        holds each layer's state (B×H, or (h, c) for the LSTM); returns (the top layer's out, the final
        state of each layer). The first layer reads first_gi, when given, instead of x."""
        out, final = self.run_layer(0, x, states[0], first_gi)
        finals = [final]
        for k in range(1, self.num_layers):
            if self.dropout > 0 and self.training:
                out = dropout(out, self.dropout, training=True)
            out, final = self.run_layer(k, out, states[k])
            finals.append(final)
        return out, finals


class GRU(_Stack):
    """Multi-layer GRU, time-major, interface and parameter names of torch.nn.GRU."""

    gates = 3

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        reset_after: bool = False,
        bias: bool = True,
        fast: bool = True,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, dropout, bias, fast, weight_drop)
        self.reset_after = reset_after

    def step(self, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
        return gru_step(gi, h, w_hh, b_hh, self.reset_after)

    def window(
        self,
        gi: Tensor,
        h: Tensor,
        w_hh: Tensor,
        b_hh: Tensor | None,
        bfloat16_operands: bool = False,
        ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        return gru_window(gi, h, w_hh, b_hh, self.reset_after, bfloat16_operands, ids)


class LSTM(_Stack):
    """Multi-layer LSTM, time-major, interface and parameter names of torch.nn.LSTM: the state is (h, c)."""

    gates = 4  # the constructor is _Stack's: (input_size, hidden_size, num_layers, dropout, bias, fast, weight_drop)

    def step(
        self, gi: Tensor, state: tuple[Tensor, Tensor], w_hh: Tensor, b_hh: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        return lstm_step(gi, state, w_hh, b_hh)

    def window(
        self,
        gi: Tensor,
        state: tuple[Tensor, Tensor],
        w_hh: Tensor,
        b_hh: Tensor | None,
        bfloat16_operands: bool = False,
        ids: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, h, c = lstm_window(gi, state[0], state[1], w_hh, b_hh, bfloat16_operands, ids)
        return out, (h, c)

    @staticmethod
    def output(state: tuple[Tensor, Tensor]) -> Tensor:
        return state[0]

    def forward(  # type: ignore[override]  # the state is (h, c), as torch.nn.LSTM's
        self,
        x: Tensor | None,
        state: tuple[Tensor, Tensor] | None = None,
        first_gi: Tensor | TableRows | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: T×B×I, state (h0, c0), each L×B×H (zeros when None) -> (out T×B×H, (h_n, c_n)). With first_gi
        (the first layer's input projections, from input_table) x may be None."""
        if state is None:
            zeros = self.initial_state(x, first_gi)
            state = (zeros, zeros)
        out, finals = self.run_layers(x, [(state[0][k], state[1][k]) for k in range(self.num_layers)], first_gi)
        return out, (torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))


def _map(state, fn):
    """fn applied to a layer's state: one tensor, or each of (h, c)."""
    return tuple(fn(t) for t in state) if isinstance(state, tuple) else fn(state)


class RNN(_Stack):
    """Multi-layer tanh RNN, time-major, interface and parameter names of torch.nn.RNN."""

    gates = 1  # the constructor is _Stack's: (input_size, hidden_size, num_layers, dropout, bias, fast, weight_drop)

    def step(self, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
        return rnn_step(gi, h, w_hh, b_hh)

    def window(
        self,
        gi: Tensor,
        h: Tensor,
        w_hh: Tensor,
        b_hh: Tensor | None,
        bfloat16_operands: bool = False,
        ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        return rnn_window(gi, h, w_hh, b_hh, bfloat16_operands, ids)
