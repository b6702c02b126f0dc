"""Every table the docs include, by the name a block gives it: the speed tables of bench/summary.py and the
quality tables of bench/quality.py, each rendered with the caption that names where its figures come from."""

from __future__ import annotations

from collections.abc import Callable

from bench.quality import QUALITY, report_caption
from bench.summary import ONE_CPU, SPEED, ResultFile, caption

RENDERERS: dict[str, Callable[[list[ResultFile]], str]] = SPEED | QUALITY

#: the tables of one report, whose caption names the machine its runs trained on (gru_rnn has a column for it)
FROM_REPORTS = ("report_groups", "report_pairs", "report_runs")


def render(kind: str, names: list[str]) -> str:
    """The table of this kind over these results files, and under it the caption naming their CPUs and paths."""
    if kind not in RENDERERS:
        raise ValueError(f"no table called {kind!r}; there are {', '.join(RENDERERS)}")
    files = [ResultFile.read(n) for n in names]
    text = RENDERERS[kind](files)
    cap = caption(files) if kind in ONE_CPU else report_caption(files) if kind in FROM_REPORTS else ""
    return text + (f"\n\n{cap}" if cap else "")
