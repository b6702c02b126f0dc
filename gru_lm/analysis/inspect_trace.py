"""See what the gates do: per-character update gate, reset gate, state change and surprise (`gru-lm inspect`).

trace() runs a CharModel over a text one character at a time, from a zero state, and records for
one layer what the equations of cells.py compute at each step:

    z         update gate, h' = z ⊙ h + (1 − z) ⊙ n: z near 1 keeps the old state
    r         reset gate, inside the candidate n: r near 0 makes n ignore the old state
    change    mean over the units of |h' − h|, how far the state moved on this character
    surprise  −log p(character | all the characters before it) in nats; NaN for the first
              character, which nothing predicts

Step t is the model reading character t, so all four belong to that character. inspect_view.py
colours each character by one of them (in the terminal, or as one self-contained HTML page), and
top_units() finds hidden units that follow simple features of the text, as Karpathy, Johnson and
Fei-Fei did in "Visualizing and Understanding Recurrent Networks" (2015). This module computes;
inspect_view.py draws.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gru_lm.errors import UserError
from gru_lm.model.cells import GRU, LSTM, gru_gates, lstm_gates
from gru_lm.text.reading import read_text
from gru_lm.text.vocab import Vocab

QUANTITIES = ("z", "r", "i", "f", "o", "change", "surprise", "unit")
LABELS = {
    "z": "mean update gate z",
    "r": "mean reset gate r",
    "i": "mean input gate i",
    "f": "mean forget gate f",
    "o": "mean output gate o",
    "change": "state change mean |h'−h|",
    "surprise": "surprise −log p (nats)",
    "unit": "activation of unit",
}


@dataclass
class Trace:
    """What one layer did on each character of `text` (row t = reading character t)."""

    text: str
    cell: str
    layer: int  # 0-based index of the layer traced
    h: Tensor  # T×H, the layer's state (its output) after each character
    change: Tensor  # T, mean over units of |h_t − h_{t−1}| (h_{−1} = 0)
    surprise: Tensor  # T, nats; surprise[0] is NaN
    gates: dict[str, Tensor] = field(default_factory=dict)  # T×H each: z, r (GRU) or i, f, o (LSTM); none for the RNN
    c: Tensor | None = None  # T×H, the LSTM's cell state after each character

    @property
    def z(self) -> Tensor | None:
        return self.gates.get("z")

    @property
    def r(self) -> Tensor | None:
        return self.gates.get("r")

    @property
    def units(self) -> Tensor:
        """What --unit and --top-units follow: the cell state c of an LSTM (as Karpathy et al. did), else h."""
        return self.c if self.c is not None else self.h

    def values(self, by: str, unit: int | None = None) -> Tensor:
        """The per-character series `by` names: a gate's mean over the units, change, surprise, or `unit`."""
        if by in LABELS and by not in ("change", "surprise", "unit"):
            if by not in self.gates:
                has = ", ".join(self.gates) or "no gates"
                raise UserError(
                    f"a {self.cell.upper()} has {has} to show; colour by "
                    f"{', '.join([*self.gates, 'change', 'surprise', 'unit'])}, not {by}"
                )
            return self.gates[by].mean(-1)
        if by == "change":
            return self.change
        if by == "surprise":
            return self.surprise
        if by == "unit":
            if unit is None:
                raise UserError("colouring by unit needs --unit K")
            return self.units[:, unit]
        raise UserError(f"--color-by must be one of {', '.join(QUANTITIES)}, not {by!r}")


def _gru_layer(rnn: GRU, k: int, x: Tensor, h0: Tensor) -> tuple[Tensor, dict[str, Tensor], None]:
    """Layer k over x (T×B×I) with its gates: (out T×B×H, {z, r: T×B×H}, no cell state).

    The gates of step t depend only on x_t and the state before it, h_{t−1}, so once the layer
    has run, cells.gru_gates computes all T steps of all B streams at once as a batch of T·B rows:
    no Python loop over time, and the same code gru_step runs.
    """
    out, _ = rnn.run_layer(k, x, h0)
    w_ih, w_hh, b_ih, b_hh = rnn.layer_weights(k)
    T, B = x.shape[:2]
    h_prev = torch.cat([h0[None], out[:-1]]).reshape(T * B, -1)  # the state each character is read into
    r, z, _ = gru_gates(F.linear(x.reshape(T * B, -1), w_ih, b_ih), h_prev, w_hh, b_hh, rnn.reset_after)
    return out, {"z": z.view(T, B, -1), "r": r.view(T, B, -1)}, None


def _lstm_layer(rnn: LSTM, k: int, x: Tensor, h0: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Layer k over x (T×B×I) with its gates i, f, o and its cell state c (T×B×H each).

    The gates come from cells.lstm_gates over all T steps at once (given the states h_{t−1} the layer
    went through); the cell state then follows c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t.
    """
    out, _ = rnn.run_layer(k, x, (h0, h0))
    w_ih, w_hh, b_ih, b_hh = rnn.layer_weights(k)
    T, B = x.shape[:2]
    h_prev = torch.cat([h0[None], out[:-1]]).reshape(T * B, -1)
    i, f, g, o = (q.view(T, B, -1) for q in lstm_gates(F.linear(x.reshape(T * B, -1), w_ih, b_ih), h_prev, w_hh, b_hh))
    c, cs = h0, []
    for t in range(T):
        c = f[t] * c + i[t] * g[t]
        cs.append(c)
    return out, {"i": i, "f": f, "o": o}, torch.stack(cs)


@torch.no_grad()
def trace(model, vocab: Vocab, text: str, layer: int = -1) -> Trace:
    """Run model over text from a zero state and record layer `layer` (default the last) per character.

    Gates come from the layer's own weights through cells.gru_gates or cells.lstm_gates, the code the
    steps run, fed with the states the layer went through, so what is shown is what the model
    computes. Raises UserError for an empty text, characters outside the vocabulary, or a layer that
    does not exist.
    """
    return trace_many(model, vocab, [text], layer)[0]


@torch.no_grad()
def trace_many(model, vocab: Vocab, texts: list[str], layer: int = -1) -> list[Trace]:
    """trace() of several texts in one batched pass: each text is a stream of the batch, the shorter
    ones padded at their end (a stream's steps depend only on the characters before them, so the
    padding changes nothing of what is kept)."""
    for text in texts:
        if not text:
            raise UserError("the text to inspect is empty")
        bad = vocab.unknown(text)
        if bad:
            raise UserError(f"the text has characters the model has never seen: {bad[:40]!r}")
    rnn, cell = model.rnn, model.cfg.cell
    L = rnn.num_layers
    if not -L <= layer < L:
        raise UserError(f"--layer must be from 0 to {L - 1} (or -1 for the last), not {layer}")
    layer %= L
    device = next(model.parameters()).device
    T = max(len(t) for t in texts)
    ids = torch.zeros(T, len(texts), dtype=torch.long)  # time-major, one stream per text
    for b, text in enumerate(texts):
        ids[: len(text), b] = vocab.encode(text)[0].long()
    ids = ids.to(device)
    was_training = model.training
    model.eval()
    try:
        x = model.embed(ids)  # T×B×E
        h0 = x.new_zeros(len(texts), rnn.hidden_size)
        gates, c = {}, None
        for k in range(L):
            if k == layer and cell in ("gru", "lstm"):
                x, gates, c = (_gru_layer if cell == "gru" else _lstm_layer)(rnn, k, x, h0)
            else:
                x, _ = rnn.run_layer(k, x, (h0, h0) if cell == "lstm" else h0)
            if k == layer:
                h = x
        logp = torch.log_softmax(model.head(x).float(), -1)  # T×B×V (eval mode: no dropout)
    finally:
        model.train(was_training)
    surprise = torch.full(ids.shape, math.nan, device=device)
    surprise[1:] = -logp[:-1].gather(2, ids[1:, :, None])[..., 0]  # character t predicted at step t − 1
    change = (h - torch.cat([h0[None], h[:-1]])).abs().mean(-1)
    return [
        Trace(
            text,
            cell,
            layer,
            _on_cpu(h[: len(text), b]),
            _on_cpu(change[: len(text), b]),
            _on_cpu(surprise[: len(text), b]),
            {n: _on_cpu(g[: len(text), b]) for n, g in gates.items()},
            None if c is None else _on_cpu(c[: len(text), b]),
        )
        for b, text in enumerate(texts)
    ]


def _on_cpu(t: Tensor) -> Tensor:
    return t.float().cpu()


# ---- text features and the units that follow them ------------------------------------------

FEATURES = ("inside double quotes", "position in line", "just read a newline", "uppercase")


def text_features(text: str) -> dict[str, Tensor]:
    """Simple features of each character, as seen after reading it (row t = after character t).

    Quotes count double quotes only: in English text a single quote is mostly an apostrophe
    ('tis, o'er, don't), which would flip a quote-following unit at random. Position in line is the
    number of characters since the last newline (0 right after one).
    """
    quote, pos = False, 0
    inside, position, newline, upper = [], [], [], []
    for ch in text:
        if ch == '"':
            quote = not quote
        pos = 0 if ch == "\n" else pos + 1
        inside.append(float(quote))
        position.append(float(pos))
        newline.append(float(ch == "\n"))
        upper.append(float(ch.isupper()))
    return dict(zip(FEATURES, (torch.tensor(v) for v in (inside, position, newline, upper))))


def correlations(h: Tensor, f: Tensor) -> Tensor | None:
    """Pearson correlation of each column of h (T×H) with f (T); None when f is constant."""
    fc = f - f.mean()
    if float(fc.norm()) == 0.0:
        return None
    hc = h - h.mean(0)
    return (hc * fc[:, None]).sum(0) / (hc.norm(dim=0) * fc.norm()).clamp_min(1e-12)


def top_units(tr: Trace, k: int = 5) -> dict[str, list[tuple[int, float]] | None]:
    """For each feature, the k units whose activation correlates most with it (by |r|), with r.

    None for a feature that does not vary in this text (no quotes, no newline...).
    """
    result: dict[str, list[tuple[int, float]] | None] = {}
    for name, f in text_features(tr.text).items():
        c = correlations(tr.units.double(), f.double())
        if c is None:
            result[name] = None
            continue
        order = torch.argsort(c.abs(), descending=True)[:k]
        result[name] = [(int(u), float(c[u])) for u in order]
    return result


# ---- means by kind of character ----------------------------------------------------------------

CLASSES = ("lowercase", "uppercase", "space", "newline", "other")


def char_class(ch: str) -> str:
    if ch == "\n":
        return "newline"
    if ch == " ":
        return "space"
    if ch.islower():
        return "lowercase"
    if ch.isupper():
        return "uppercase"
    return "other"


def class_means(tr: Trace) -> list[dict]:
    """Mean gates, change and surprise over the characters of each class (classes with none left out)."""
    kinds = [char_class(c) for c in tr.text]
    rows = []
    for cls in CLASSES:
        idx = torch.tensor([i for i, k in enumerate(kinds) if k == cls], dtype=torch.long)
        if len(idx) == 0:
            continue
        s = tr.surprise[idx]
        s = s[~s.isnan()]
        rows.append(
            {
                "class": cls,
                "count": len(idx),
                **{name: float(g[idx].mean()) for name, g in tr.gates.items()},
                "change": float(tr.change[idx].mean()),
                "surprise": float(s.mean()) if len(s) else math.nan,
            }
        )
    return rows


# ---- the part of a text to inspect ---------------------------------------------------------------


def select_text(vocab: Vocab, text: str | None, file: Path | None, start: int, length: int) -> tuple[str, str]:
    """The characters to inspect and where they came from: --text as given, or a slice of --file.

    --text must use only the model's characters; from a file, unknown characters are left out
    with a note. start may be negative (counted from the end).
    """
    if (text is None) == (file is None):
        raise UserError("give the text to inspect with exactly one of --text or --file")
    if length < 1:
        raise UserError(f"--length must be at least 1, not {length}")
    full = text if file is None else read_text(file)
    if not full:
        raise UserError("--text is empty")
    if not -len(full) <= start < len(full):
        raise UserError(f"--start {start} is outside the text ({len(full):,} characters)")
    piece = full[start:][:length]
    if file is not None and (bad := vocab.unknown(piece)):
        piece = "".join(c for c in piece if c not in set(bad))
        print(f"note: {file}: characters outside the model's vocabulary were left out: {bad[:40]!r}", file=sys.stderr)
        if not piece:
            raise UserError(f"{file}: no character of the chosen part is in the model's vocabulary")
    return piece, ("--text" if file is None else str(file))
