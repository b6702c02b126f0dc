"""Drawing what inspect_trace.py computes: each character coloured by one quantity, in the terminal or as an HTML page.

The colours come from one palette, computed here: each value becomes an index into it (white to
blue for a quantity, red through white to blue for a unit's activation). The terminal uses the
palette directly; the HTML page receives the palette and every quantity's indexes as data, so its
script only looks colours up when the menu switches, and never computes one.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import torch
from rich.console import Group
from rich.table import Table
from rich.text import Text
from torch import Tensor

from gru_lm.analysis.inspect_trace import LABELS, QUANTITIES, Trace, class_means, select_text, top_units, trace
from gru_lm.errors import UserError
from gru_lm.model import checkpoint
from gru_lm.text.vocab import Vocab

STEPS = 32  # colour levels on each side of white
_WHITE, _BLUE, _RED = (255, 255, 255), (40, 100, 205), (205, 55, 50)
_NAN = ("#dddddd", "#000000")


def _mix(a: float, end: tuple[int, int, int]) -> tuple[str, str]:
    rgb = [round(w + (e - w) * a) for w, e in zip(_WHITE, end)]
    return "#{:02x}{:02x}{:02x}".format(*tuple(rgb)), "#ffffff" if a > 0.6 else "#000000"


#: (background, text) colours: index 0 is a missing value, then red (-STEPS) through white (0) to blue (+STEPS).
PALETTE = [_NAN] + [_mix(abs(k) / STEPS, _RED if k < 0 else _BLUE) for k in range(-STEPS, STEPS + 1)]


def colour_range(values: Tensor, by: str) -> tuple[float, float]:
    """The values mapped to the two ends of the colour scale.

    A unit's activation is in (−1, 1) and keeps that fixed range (white = 0). The other
    quantities use the 1st to 99th percentile of this text, so that a mean over hundreds of
    units, which moves little, still shows contrast; the legend prints the range.
    """
    if by == "unit":  # white at 0; ±1 for a state in (−1, 1), the 99th percentile of |c| for an LSTM's cell
        m = float(torch.quantile(values.abs().double(), 0.99)) if len(values) else 1.0
        return -max(1.0, m), max(1.0, m)
    v = values[~values.isnan()].double()
    if len(v) == 0:
        return 0.0, 1.0
    lo, hi = float(torch.quantile(v, 0.01)), float(torch.quantile(v, 0.99))
    return (lo, hi) if hi > lo else (lo, lo + 1e-6)


def colour_index(value: float, lo: float, hi: float, diverging: bool) -> int:
    """The PALETTE index of a value: white at lo (or at 0 when diverging), full colour at hi (and at −hi)."""
    if math.isnan(value):
        return 0
    t = max(-1.0, min(1.0, value / hi)) if diverging else max(0.0, min(1.0, (value - lo) / (hi - lo)))
    return round(t * STEPS) + STEPS + 1


def colour_indexes(values: Tensor, by: str) -> list[int]:
    lo, hi = colour_range(values, by)
    return [colour_index(v, lo, hi, by == "unit") for v in values.tolist()]


def _shown(ch: str) -> str:
    """How a character is drawn: a newline as ↵ (then the line break), a tab as →."""
    return {"\n": "↵", "\t": "→"}.get(ch, ch)


def legend(by: str, lo: float, hi: float, unit: int | None = None) -> str:
    if by == "unit":
        return f"colour: {LABELS['unit']} {unit}: red = {lo:.3g}, white = 0, blue = +{hi:.3g}"
    return f"colour: {LABELS[by]}: white = {lo:.3g} (or less) … blue = {hi:.3g} (or more)"


def render_terminal(tr: Trace, by: str, unit: int | None = None) -> Text:
    """The text with each character's background coloured by `by` (rich markup-free Text)."""
    out = Text()
    for ch, k in zip(tr.text, colour_indexes(tr.values(by, unit), by)):
        bg, fg = PALETTE[k]
        out.append(_shown(ch), style=f"{fg} on {bg}")
        if ch == "\n":
            out.append("\n")
    return out


def means_table(tr: Trace) -> Table:
    table = Table(title="means by the character read")
    cols = (*tr.gates, "change", "surprise")  # an RNN has no gates
    for col in ("character", "count", *cols):
        table.add_column(col, justify="left" if col == "character" else "right")
    for row in class_means(tr):
        table.add_row(row["class"], str(row["count"]), *("-" if math.isnan(row[c]) else f"{row[c]:.3f}" for c in cols))
    return table


def top_units_table(tr: Trace) -> Table:
    table = Table(title=f"units of layer {tr.layer} that follow the text ({len(tr.text):,} characters)")
    for col in ("feature", "unit", "r"):
        table.add_column(col, justify="left" if col == "feature" else "right")
    for feature, rows in top_units(tr).items():
        if rows is None:
            table.add_row(feature, "-", "constant in this text")
            continue
        for i, (u, r) in enumerate(rows):
            table.add_row(feature if i == 0 else "", str(u), f"{r:+.3f}")
    return table


def inspect_checkpoint(
    ckpt: Path,
    text: str | None,
    file: Path | None,
    start: int,
    length: int,
    color_by: str | None,
    unit: int | None,
    layer: int,
    html_out: Path | None,
    units: bool,
) -> Group:
    """`gru-lm inspect`: trace a checkpoint's model over the chosen text; what to print (and the page, written)."""
    if color_by is not None and color_by not in QUANTITIES:
        raise UserError(f"--color-by must be one of {', '.join(QUANTITIES)}, not {color_by!r}")
    state = checkpoint.load(ckpt)
    model, vocab = checkpoint.build_model(state), Vocab(state["vocab"])
    piece, source = select_text(vocab, text, file, start, length)
    H = model.rnn.hidden_size
    if unit is not None and not 0 <= unit < H:
        raise UserError(f"--unit must be from 0 to {H - 1} (the layer has {H} units), not {unit}")
    tr = trace(model, vocab, piece, layer)
    color_by = color_by or ("unit" if unit is not None else next(iter(tr.gates), "change"))
    values = tr.values(color_by, unit)  # refuses z/r for an RNN, unit without --unit
    if html_out is not None:
        page = render_html(
            tr,
            color_by,
            unit,
            title="gru-lm inspect: what the gates do",
            meta=describe(tr, Path(ckpt).name, state["model_config"], source),
        )
        try:
            html_out.write_text(page, encoding="utf-8")
        except OSError as e:
            raise UserError(f"{html_out}: cannot write ({e.strerror or e})") from None
    if units:
        return Group(top_units_table(tr))
    lo, hi = colour_range(values, color_by)
    return Group(
        render_terminal(tr, color_by, unit), Text(legend(color_by, lo, hi, unit), style="dim"), means_table(tr)
    )


def describe(tr: Trace, name: str, cfg: dict, source: str) -> str:
    """One line about the model and the text, for the page's header."""
    s = tr.surprise[1:]
    line = (
        f"{name}: {tr.cell.upper()}, {cfg.get('layers', 1)} layer(s) of {tr.h.shape[1]} units, layer {tr.layer} "
        f"shown; {len(tr.text):,} characters of {source}"
    )
    if len(s):
        line += f"; mean surprise {float(s.mean()):.3f} nats ({float(s.mean()) / math.log(2):.3f} bits) per character"
    return line


# ---- the HTML page -------------------------------------------------------------------------------

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

# Looks colours up in the data the page carries (#colours): no colour is computed here.
_JS = """
const C = JSON.parse(document.getElementById('colours').textContent);
function paint(by) {
  const idx = C.index[by], spans = document.querySelectorAll('#text span.c');
  spans.forEach((el, i) => { const [bg, fg] = C.palette[idx[i]]; el.style.background = bg; el.style.color = fg; });
  document.getElementById('lo').textContent = C.scale[by].lo;
  document.getElementById('hi').textContent = C.scale[by].hi;
  document.getElementById('grad').style.background = C.scale[by].gradient;
}
const sel = document.getElementById('by');
sel.addEventListener('change', () => paint(sel.value));
document.getElementById('text').addEventListener('mouseover', (e) => {
  if (e.target.classList && e.target.classList.contains('c'))
    document.getElementById('info').textContent = e.target.title;
});
"""


def _fmt(v: float) -> str:
    return "NaN" if math.isnan(v) else f"{v:.4g}"


def legend_scale(values: Tensor, by: str) -> dict:
    """The legend of one quantity: its two ends as text and the gradient bar, from the palette."""
    lo, hi = colour_range(values, by)
    if by == "unit":
        return {
            "lo": f"{lo:.3g}",
            "hi": f"+{hi:.3g}",
            "gradient": f"linear-gradient(to right, {PALETTE[1][0]}, #ffffff, {PALETTE[-1][0]})",
        }
    return {"lo": f"{lo:.3g}", "hi": f"{hi:.3g}", "gradient": f"linear-gradient(to right, #ffffff, {PALETTE[-1][0]})"}


def quantity_series(tr: Trace, unit: int | None) -> dict[str, Tensor]:
    """Every quantity the trace has, per character: the gates' means, change, surprise, and unit's value."""
    series = {**{name: g.mean(-1) for name, g in tr.gates.items()}, "change": tr.change, "surprise": tr.surprise}
    if unit is not None:
        series["unit"] = tr.units[:, unit]
    return series


def render_html(tr: Trace, by: str, unit: int | None = None, title: str = "gru-lm inspect", meta: str = "") -> str:
    """One self-contained page (inline CSS and JS, no external URL): a span per character.

    Each span carries its values as data attributes and a title (the hover); the background is
    set inline for `by`, so the page reads without JavaScript; the script only switches the
    colouring when another quantity is chosen and shows the hovered values in a line.
    """
    tr.values(by, unit)  # raises for a quantity this trace lacks
    series = quantity_series(tr, unit)
    index = {name: colour_indexes(v, name) for name, v in series.items()}
    lists = {name: v.tolist() for name, v in series.items()}
    key = {"z": "z", "r": "r", "i": "i", "f": "f", "o": "o", "change": "c", "surprise": "s", "unit": "u"}
    spans = []
    for i, ch in enumerate(tr.text):
        bg, fg = PALETTE[index[by][i]]
        data = " ".join(f'data-{key[n]}="{_fmt(lists[n][i])}"' for n in series)
        name_of_unit = f"{'c' if tr.c is not None else 'h'}[{unit}]"
        hover = f"#{i} {ch!r}  " + "  ".join(
            f"{name_of_unit if n == 'unit' else n}={_fmt(lists[n][i])}" for n in series
        )
        body = html.escape(_shown(ch)) + ("\n" if ch == "\n" else "")
        spans.append(
            f'<span class="c" style="background:{bg};color:{fg}" {data} '
            f'title="{html.escape(hover, quote=True)}">{body}</span>'
        )
    options = "".join(
        f'<option value="{n}"{" selected" if n == by else ""}>'
        f"{html.escape(LABELS[n] + (f' {unit}' if n == 'unit' else ''))}</option>"
        for n in series
    )
    scale = {name: legend_scale(v, name) for name, v in series.items()}
    colours = json.dumps({"palette": PALETTE, "index": index, "scale": scale}).replace("<", "\\u003c")
    return _page(title, meta, _equations(tr), options, scale[by], "".join(spans), colours)


def _equations(tr: Trace) -> str:
    if tr.cell == "lstm":
        return (
            "c′ = f ⊙ c + i ⊙ g, h′ = o ⊙ tanh(c′): f near 1 keeps the cell state, i near 1 writes the "
            "candidate g into it, o sets how much of it the layer shows."
        )
    if tr.cell == "rnn":
        return "A plain RNN has no gates: h′ = tanh(x W_ih + b_ih + h W_hh + b_hh)."
    return (
        "h′ = z ⊙ h + (1 − z) ⊙ n: z near 1 keeps the old state, z near 0 replaces it by the candidate n; "
        "r near 0 makes n ignore the old state (a reset)."
    )


def _page(title: str, meta: str, equations: str, options: str, scale: dict, spans: str, colours: str) -> str:
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
<p class="eq">{html.escape(equations)}</p>
<div class="bar"><label for="by">colour by</label> <select id="by">{options}</select>
<span id="lo">{scale["lo"]}</span><div id="grad" style="background:{scale["gradient"]}"></div>
<span id="hi">{scale["hi"]}</span></div>
<div id="info">hover a character to see all its values</div>
<div id="text">{spans}</div>
<script type="application/json" id="colours">{colours}</script>
<script>{_JS}</script>
</body>
</html>
"""
