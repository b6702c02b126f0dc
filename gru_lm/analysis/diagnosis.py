"""How a finished run went, read from its metrics as an expert reads the curves: overfitting, underfitting, or
about right, and what to change.

The signs are the ones practitioners use. A model that overfits has a training loss well below its validation
loss, and its validation loss has turned back up from its best: it is learning the training text by heart
(the cure is more regularisation, a smaller model or more text). A model that underfits has training and
validation close together and its validation loss still falling when the budget ran out (the cure is a larger
model or a longer run). Training losses are taken over the last stretch of the run, as validation is taken at
its end; with dropout the training loss is measured on a thinned network, so a small negative gap is normal.
"""

from __future__ import annotations

import json
import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path

#: A validation loss this far (nats per character) above the run's best has turned back up.
ROSE_BY = 0.01
#: Training this far below validation is learning the training text by heart.
GAP = 0.1
#: Validation still falling by this much over the last quarter of the run: more of the same would help.
STILL_FALLING = 0.01


@dataclass
class Curves:
    """What the diagnosis reads of a run's metrics."""

    val_steps: list[int]
    val_losses: list[float]
    train_loss: float  # the mean training loss over the last tenth of the steps
    chars: int  # characters trained on in all

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Curves:
        evals = [r for r in rows if "val_loss" in r]
        last_step = rows[-1]["step"] if rows else 0
        recent = [r["train_loss"] for r in rows if r["step"] >= 0.9 * last_step and "train_loss" in r]
        return cls(
            [r["step"] for r in evals],
            [r["val_loss"] for r in evals],
            statistics.fmean(recent) if recent else float("nan"),
            rows[-1]["chars"] if rows else 0,
        )


def diagnose(rows: list[dict], train_chars: int, dropout: float) -> str:
    """One or two lines on how the run went (see the module's docstring), from its metrics.jsonl rows."""
    c = Curves.from_rows(rows)
    if len(c.val_losses) < 3:
        return "how it went: too few evaluations to tell (a longer --max-time or a smaller --eval-every)"
    passes = c.chars / max(train_chars, 1)
    best = min(c.val_losses)
    best_step = c.val_steps[c.val_losses.index(best)]
    last = c.val_losses[-1]
    gap = last - c.train_loss
    quarter = next(v for s, v in zip(c.val_steps, c.val_losses) if s >= 0.75 * c.val_steps[-1])
    seen = f"{passes:.1f} passes over the {train_chars:,} training characters"
    falling = quarter - last > STILL_FALLING
    turned = last > best + ROSE_BY
    if turned or (gap > GAP and passes > 1 and not falling):
        rose = f"validation rose from its best {best:.3f} (step {best_step:,}) to {last:.3f}" if turned else ""
        return (
            f"how it went: overfitting. After {seen}, training is {gap:.2f} below validation"
            f"{'; ' + rose if rose else ' and validation has stopped falling'}; best.pt keeps the best step. "
            f"Regularise more (--dropout {min(dropout + 0.1, 0.5):.1f}, --weight-drop 0.1), train a smaller model, "
            "or give it more text."
        )
    if falling and gap < GAP / 2:
        return (
            f"how it went: underfitting. After {seen}, validation was still falling at the end ({quarter - last:.3f} "
            f"over the last quarter of the run) with training only {gap:+.2f} from it: a larger model "
            "(--hidden-size, --layers) or a longer --max-time would do better."
        )
    if falling:
        return (
            f"how it went: still improving. After {seen}, validation was still falling at the end "
            f"({quarter - last:.3f} over the last quarter of the run) and training is {gap:.2f} below it: a longer "
            "--max-time would do better; a larger model would need more dropout."
        )
    return (
        f"how it went: about right. After {seen}, validation levelled off ({quarter - last:+.3f} over the last "
        f"quarter of the run) with training {gap:+.2f} from it."
    )


def diagnose_run(out_dir: Path, train_chars: int) -> str:
    """diagnose() of the run in out_dir, from its metrics.jsonl and the dropout its config.toml records."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    dropout = tomllib.loads((out_dir / "config.toml").read_text()).get("dropout", 0.0)
    return diagnose([json.loads(line) for line in lines if line.strip()], train_chars, dropout)
