"""What a training run shows on the terminal: a progress bar, and a line at every evaluation."""

from __future__ import annotations

import importlib.util
import math
import sys

from tqdm import tqdm

from gru_lm.training.run_state import RunState
from gru_lm.training.schedule import budget_progress, time_left
from gru_lm.training.settings import Settings


def bar_type() -> type[tqdm]:
    """tqdm's notebook bar (a widget) inside a Jupyter kernel that has ipywidgets, else the terminal bar, which a
    notebook without ipywidgets shows as text."""
    try:
        from IPython import get_ipython
    except ImportError:
        return tqdm
    shell = get_ipython()
    if shell is None or "IPKernelApp" not in shell.config or importlib.util.find_spec("ipywidgets") is None:
        return tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    return notebook_tqdm


class Progress:
    """A bar (step, losses, characters per second, time left) and lines said above it.

    show_bar: draw the bar (not with --quiet); speak: print lines at all (rank 0 of a job only).
    """

    def __init__(self, settings: Settings, show_bar: bool, speak: bool) -> None:
        self.settings, self.speak = settings, speak
        self.bar = bar_type()(
            total=1.0,
            disable=not show_bar,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
            mininterval=0.5,
            bar_format="{desc} |{bar}| {percentage:3.0f}%",
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def say(self, line: str) -> None:
        if self.speak:
            self.bar.write(line, file=sys.stderr)

    def update(self, state: RunState, log: dict, rate: float) -> None:
        """Move the bar to the step just logged."""
        elapsed = log["elapsed_s"]
        self.bar.n = budget_progress(self.settings, state.step, elapsed)
        val = f"{state.val_loss:.3f}" if math.isfinite(state.val_loss) else "-"
        left = time_left(self.settings, state.step, elapsed, rate)
        self.bar.set_description_str(
            f"step {state.step} | loss {log['train_loss']:.3f} | val {val} | "
            f"{rate / 1000:.1f}k chars/s | left {format_time(left)}"
        )


def format_time(sec: float) -> str:
    if not math.isfinite(sec):
        return "?"
    m, s = divmod(int(sec), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
