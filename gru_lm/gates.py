"""See what the gates do: per-character update gate, reset gate, state change and surprise (issue 8).

trace() runs a CharModel over a text one character at a time, from a zero state, and records for
one layer what the equations of cells.py compute at each step:

    z         update gate, h' = z ⊙ h + (1 − z) ⊙ n: z near 1 keeps the old state
    r         reset gate, inside the candidate n: r near 0 makes n ignore the old state
    change    mean over the units of |h' − h|, how far the state moved on this character
    surprise  −log p(character | all the characters before it) in nats; NaN for the first
              character, which nothing predicts

Step t is the model reading character t, so all four belong to that character. The renderers
colour each character by one of them (in the terminal with rich, or as one self-contained HTML
page), and top_units() finds hidden units that follow simple features of the text, as Karpathy,
Johnson and Fei-Fei did in "Visualizing and Understanding Recurrent Networks" (2015).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.text import Text
from torch import Tensor

from .cells import GRU, gru_gates
from .data import Vocab
from .errors import UserError

QUANTITIES = ("z", "r", "change", "surprise", "unit")
LABELS = {
    "z": "mean update gate z",
    "r": "mean reset gate r",
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
    h: Tensor  # T×H, the layer's state after each character
    change: Tensor  # T, mean over units of |h_t − h_{t−1}| (h_{−1} = 0)
    surprise: Tensor  # T, nats; surprise[0] is NaN
    z: Tensor | None = None  # T×H update gate (None for the plain RNN, which has no gates)
    r: Tensor | None = None  # T×H reset gate

    def values(self, by: str, unit: int | None = None) -> Tensor:
        """The per-character series `by` names: mean z, mean r, change, surprise, or h of `unit`."""
        if by in ("z", "r"):
            gate = self.z if by == "z" else self.r
            if gate is None:
                raise UserError(f"a plain RNN has no gates to show; colour by change, surprise or unit, not {by}")
            return gate.mean(-1)
        if by == "change":
            return self.change
        if by == "surprise":
            return self.surprise
        if by == "unit":
            if unit is None:
                raise UserError("colouring by unit needs --unit K")
            return self.h[:, unit]
        raise UserError(f"--color-by must be one of {', '.join(QUANTITIES)}, not {by!r}")


def _gru_layer(rnn: GRU, k: int, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Layer k over x (T×1×I) with its gates: (out T×1×H, z T×H, r T×H).

    The gates of step t depend only on x_t and the state before it, h_{t−1}, so once the layer
    has run, cells.gru_gates computes all T steps at once as a batch of T rows: no Python loop
    over time, and the same code gru_step runs.
    """
    out, _ = rnn.run_layer(k, x, h0)
    w_ih, w_hh, b_ih, b_hh = rnn.layer_weights(k)
    h_prev = torch.cat([h0, out[:-1, 0]])  # T×H, the state each character is read into
    r, z, _ = gru_gates(F.linear(x[:, 0], w_ih, b_ih), h_prev, w_hh, b_hh, rnn.reset_after)
    return out, z, r


@torch.no_grad()
def trace(model, vocab: Vocab, text: str, layer: int = -1) -> Trace:
    """Run model over text from a zero state and record layer `layer` (default the last) per character.

    Gates come from the layer's own weights through cells.gru_gates, the code gru_step runs,
    fed with the states the layer went through, so what is shown is what the model computes. Raises UserError for an empty
    text, characters outside the vocabulary, or a layer that does not exist.
    """
    if not text:
        raise UserError("the text to inspect is empty")
    bad = vocab.unknown(text)
    if bad:
        raise UserError(f"the text has characters the model has never seen: {bad[:40]!r}")
    rnn = model.rnn
    L = rnn.num_layers
    if not -L <= layer < L:
        raise UserError(f"--layer must be from 0 to {L - 1} (or -1 for the last), not {layer}")
    layer %= L
    device = next(model.parameters()).device
    ids = vocab.encode(text)[0].long().to(device)
    was_training = model.training
    model.eval()
    try:
        x = model.embed(ids).unsqueeze(1)  # T×1×E, time-major with one stream
        h0 = x.new_zeros(1, rnn.hidden_size)
        z = r = h = None
        for k in range(L):
            if k == layer and isinstance(rnn, GRU):
                x, z, r = _gru_layer(rnn, k, x, h0)
            else:
                x, _ = rnn.run_layer(k, x, h0)
            if k == layer:
                h = x[:, 0]
        logp = torch.log_softmax(model.head(x[:, 0]).float(), -1)  # T×V (eval mode: no dropout)
    finally:
        model.train(was_training)
    surprise = torch.full((len(ids),), math.nan, device=device)
    surprise[1:] = -logp[:-1].gather(1, ids[1:, None])[:, 0]  # character t predicted at step t − 1
    change = (h - torch.cat([h0, h[:-1]])).abs().mean(-1)
    cpu = lambda t: None if t is None else t.float().cpu()  # noqa: E731
    return Trace(text, "gru" if isinstance(rnn, GRU) else "rnn", layer, cpu(h), cpu(change), cpu(surprise), cpu(z), cpu(r))


# ---- text features and the units that follow them ------------------------------------------

FEATURES = ("inside double quotes", "position in line", "just read a newline", "uppercase")


def text_features(text: str) -> dict[str, Tensor]:
    """Simple features of each character, as seen after reading it (row t = after character t).

    Quotes count double quotes only: in English text a single quote is mostly an apostrophe
    ('tis, o'er, don't), which would flip a quote tracker at random. Position in line is the
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
        c = correlations(tr.h.double(), f.double())
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
    """Mean z, r, change and surprise over the characters of each class (rows with none left out)."""
    kinds = [char_class(c) for c in tr.text]
    rows = []
    for cls in CLASSES:
        idx = torch.tensor([i for i, k in enumerate(kinds) if k == cls], dtype=torch.long)
        if len(idx) == 0:
            continue
        s = tr.surprise[idx]
        s = s[~s.isnan()]
        rows.append({
            "class": cls,
            "count": len(idx),
            "z": None if tr.z is None else float(tr.z[idx].mean()),
            "r": None if tr.r is None else float(tr.r[idx].mean()),
            "change": float(tr.change[idx].mean()),
            "surprise": float(s.mean()) if len(s) else math.nan,
        })
    return rows


# ---- colours -------------------------------------------------------------------------------------

_WHITE, _BLUE, _RED = (255, 255, 255), (40, 100, 205), (205, 55, 50)


def colour_range(values: Tensor, by: str) -> tuple[float, float]:
    """The values mapped to the two ends of the colour scale.

    A unit's activation is in (−1, 1) and keeps that fixed range (white = 0). The other
    quantities use the 1st to 99th percentile of this text, so that a mean over hundreds of
    units, which moves little, still shows contrast; the legend prints the range.
    """
    if by == "unit":
        return -1.0, 1.0
    v = values[~values.isnan()].double()
    if len(v) == 0:
        return 0.0, 1.0
    lo, hi = float(torch.quantile(v, 0.01)), float(torch.quantile(v, 0.99))
    return (lo, hi) if hi > lo else (lo, lo + 1e-6)


def colour(value: float, lo: float, hi: float, diverging: bool) -> tuple[str, str]:
    """(background, text) colours as #rrggbb: white → blue (or red ← white → blue when diverging)."""
    if math.isnan(value):
        return "#dddddd", "#000000"
    if diverging:
        t = max(-1.0, min(1.0, value / hi))
        end = _BLUE if t >= 0 else _RED
    else:
        t = max(0.0, min(1.0, (value - lo) / (hi - lo)))
        end = _BLUE
    a = abs(t)
    rgb = [round(w + (e - w) * a) for w, e in zip(_WHITE, end)]
    return "#%02x%02x%02x" % tuple(rgb), "#ffffff" if a > 0.6 else "#000000"


def _shown(ch: str) -> str:
    """How a character is drawn: a newline as ↵ (then the line break), a tab as →."""
    return {"\n": "↵", "\t": "→"}.get(ch, ch)


def legend(by: str, lo: float, hi: float, unit: int | None = None) -> str:
    name = f"{LABELS['unit']} {unit}" if by == "unit" else LABELS[by]
    if by == "unit":
        return f"colour: {name}: red = −1, white = 0, blue = +1"
    return f"colour: {name}: white = {lo:.3g} (or less) … blue = {hi:.3g} (or more)"


def render_terminal(tr: Trace, by: str, unit: int | None = None) -> Text:
    """The text with each character's background coloured by `by` (rich markup-free Text)."""
    vals = tr.values(by, unit)
    lo, hi = colour_range(vals, by)
    out = Text()
    for ch, v in zip(tr.text, vals.tolist()):
        bg, fg = colour(v, lo, hi, by == "unit")
        out.append(_shown(ch), style=f"{fg} on {bg}")
        if ch == "\n":
            out.append("\n")
    return out


# ---- the HTML page -----------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 6px; }
.meta, .eq { font-size: 13px; color: #555; margin: 2px 0; }
.eq { font-family: Georgia, serif; font-size: 14px; color: #333; }
.bar { display: flex; align-items: center; gap: 10px; margin: 12px 0; font-size: 13px; }
#grad { width: 220px; height: 14px; border: 1px solid #999; }
#text { font-family: Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 15px; line-height: 1.55;
        white-space: pre-wrap; word-break: break-all; border: 1px solid #ccc; padding: 10px; }
#text span.c:hover { outline: 2px solid #000; }
#info { font-family: monospace; font-size: 13px; min-height: 1.4em; margin: 8px 0; color: #555; }
"""

_JS = """
const S = JSON.parse(document.getElementById('scales').textContent);
const KEY = {z: 'z', r: 'r', change: 'c', surprise: 's', unit: 'u'};
const WHITE = [255, 255, 255], BLUE = [40, 100, 205], RED = [205, 55, 50];
function mix(a, e) { return '#' + WHITE.map((w, i) => Math.round(w + (e[i] - w) * a).toString(16).padStart(2, '0')).join(''); }
function colour(v, s) {
  if (isNaN(v)) return ['#dddddd', '#000000'];
  let t, end = BLUE;
  if (s.div) { t = Math.max(-1, Math.min(1, v / s.hi)); if (t < 0) end = RED; }
  else { t = Math.max(0, Math.min(1, (v - s.lo) / (s.hi - s.lo))); }
  const a = Math.abs(t);
  return [mix(a, end), a > 0.6 ? '#ffffff' : '#000000'];
}
function paint(by) {
  const s = S[by];
  for (const el of document.querySelectorAll('#text span.c')) {
    const [bg, fg] = colour(parseFloat(el.dataset[KEY[by]]), s);
    el.style.background = bg; el.style.color = fg;
  }
  document.getElementById('lo').textContent = s.div ? '−1' : s.lo.toPrecision(3);
  document.getElementById('hi').textContent = s.div ? '+1' : s.hi.toPrecision(3);
  document.getElementById('grad').style.background = s.div
    ? 'linear-gradient(to right, ' + mix(1, RED) + ', #ffffff, ' + mix(1, BLUE) + ')'
    : 'linear-gradient(to right, #ffffff, ' + mix(1, BLUE) + ')';
}
const sel = document.getElementById('by');
sel.addEventListener('change', () => paint(sel.value));
document.getElementById('text').addEventListener('mouseover', (e) => {
  if (e.target.classList && e.target.classList.contains('c')) document.getElementById('info').textContent = e.target.title;
});
"""


def _fmt(v: float) -> str:
    return "NaN" if math.isnan(v) else f"{v:.4g}"


def render_html(tr: Trace, by: str, unit: int | None = None, title: str = "gru-lm inspect", meta: str = "") -> str:
    """One self-contained page (inline CSS and JS, no external URL): a span per character.

    Each span carries its values as data attributes and a title (the hover); the background is
    set inline for `by`, so the page reads without JavaScript; the script only switches the
    colouring when another quantity is chosen and shows the hovered values in a line.
    """
    series = {"change": tr.change, "surprise": tr.surprise}
    if tr.z is not None:
        series = {"z": tr.z.mean(-1), "r": tr.r.mean(-1), **series}
    if unit is not None:
        series["unit"] = tr.h[:, unit]
    vals = tr.values(by, unit)  # raises for a quantity this trace lacks
    scales = {}
    for name, v in series.items():
        lo, hi = colour_range(v, name)
        scales[name] = {"lo": lo, "hi": hi, "div": name == "unit"}
    lo, hi = scales[by]["lo"], scales[by]["hi"]
    key = {"z": "z", "r": "r", "change": "c", "surprise": "s", "unit": "u"}
    lists = {name: v.tolist() for name, v in series.items()}
    spans = []
    for i, ch in enumerate(tr.text):
        bg, fg = colour(vals[i].item(), lo, hi, by == "unit")
        data = " ".join(f'data-{key[n]}="{_fmt(lists[n][i])}"' for n in series)
        hover = f"#{i} {ch!r}  " + "  ".join(
            f"{'h[' + str(unit) + ']' if n == 'unit' else n}={_fmt(lists[n][i])}" for n in series)
        body = html.escape(_shown(ch)) + ("\n" if ch == "\n" else "")
        spans.append(f'<span class="c" style="background:{bg};color:{fg}" {data} '
                     f'title="{html.escape(hover, quote=True)}">{body}</span>')
    options = "".join(
        f'<option value="{n}"{" selected" if n == by else ""}>'
        f"{html.escape(LABELS[n] + (f' {unit}' if n == 'unit' else ''))}</option>" for n in series)
    grad_end = "#%02x%02x%02x" % _BLUE
    grad = (f"linear-gradient(to right, #%02x%02x%02x, #ffffff, {grad_end})" % _RED if by == "unit"
            else f"linear-gradient(to right, #ffffff, {grad_end})")
    lo_s, hi_s = ("−1", "+1") if by == "unit" else (f"{lo:.3g}", f"{hi:.3g}")
    scales_json = json.dumps(scales).replace("<", "\\u003c")  # numbers only; never a closing tag
    gates = ("h′ = z ⊙ h + (1 − z) ⊙ n: z near 1 keeps the old state, z near 0 replaces it by the candidate n; "
             "r near 0 makes n ignore the old state (a reset).") if tr.z is not None else (
             "A plain RNN has no gates: h′ = tanh(x W_ih + b_ih + h W_hh + b_hh).")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(meta)}</p>
<p class="eq">{html.escape(gates)}</p>
<div class="bar"><label for="by">colour by</label> <select id="by">{options}</select>
<span id="lo">{lo_s}</span><div id="grad" style="background:{grad}"></div><span id="hi">{hi_s}</span></div>
<div id="info">hover a character to see all its values</div>
<div id="text">{"".join(spans)}</div>
<script type="application/json" id="scales">{scales_json}</script>
<script>{_JS}</script>
</body>
</html>
"""
