"""The colours of finished continuations: inspect's quantities, from one batched trace of all of them."""

from __future__ import annotations

from gru_lm.analysis.inspect_trace import LABELS, trace_many
from gru_lm.analysis.inspect_view import colour_indexes, legend_scale, quantity_series
from gru_lm.generation.serve_request import Served


def colours_many(served: Served, primes: list[str], texts: list[str]) -> list[dict[str, dict]]:
    """For each (prime, text) and each quantity the trace measures (surprise, the mean update gate z, ...),
    the palette index of each character of text (read after its prime), and the legend.

    All the texts go through the model in one batched pass (inspect_trace.trace_many); the scale of each
    quantity (inspect_view.colour_range) spans that continuation's characters, as inspect's spans its text.
    """
    traces = trace_many(served.model, served.vocab, [p + t for p, t in zip(primes, texts)])
    out = []
    for prime, tr in zip(primes, traces):
        one = {}
        for name, values in quantity_series(tr, None).items():
            part = values[len(prime) :]
            one[name] = {"label": LABELS[name], "index": colour_indexes(part, name), **legend_scale(part, name)}
        out.append(one)
    return out
