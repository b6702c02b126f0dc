"""The learning-rate schedule and the budget: linear warm-up, then cosine decay over steps or wall time."""

from __future__ import annotations

import math

from gru_lm.training.settings import Settings


def budget_progress(settings: Settings, step: int, elapsed_s: float) -> float:
    """How far through its budget (0..1) a run is: the larger of the step and the time fractions."""
    p = 0.0
    if settings.max_steps:
        p = max(p, step / settings.max_steps)
    if settings.max_time:
        p = max(p, elapsed_s / settings.max_time)
    return min(1.0, p)


def budget_over(settings: Settings, step: int, elapsed_s: float) -> bool:
    """Whether the run has reached --max-steps or --max-time (0 means no limit)."""
    return bool(
        (settings.max_steps and step >= settings.max_steps) or (settings.max_time and elapsed_s >= settings.max_time)
    )


def learning_rate(settings: Settings, step: int, elapsed_s: float) -> float:
    """Linear warm-up over warmup_steps, then cosine decay from lr to min_lr over the budget.

    Progress through the budget is the larger of step/max_steps and elapsed/max_time, so a
    time-budgeted run still ends its decay at the deadline. Runs bounded only by max_steps
    follow the same schedule every time (what exact resume and --seed reproducibility rely on).
    """
    s = settings
    warm = min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps else 1.0
    progress = budget_progress(s, step, elapsed_s)
    return warm * (s.min_lr + (s.lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def time_left(settings: Settings, step: int, elapsed_s: float, chars_per_s: float) -> float:
    """Seconds until the budget runs out, from the time limit or the steps left at the current rate."""
    left = math.inf
    if settings.max_time:
        left = settings.max_time - elapsed_s
    if settings.max_steps and chars_per_s > 0:
        left = min(left, (settings.max_steps - step) * settings.batch_size * settings.seq_len / chars_per_s)
    return max(0.0, left)
