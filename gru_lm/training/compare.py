"""`gru-lm compare`: train several configs on the same data and budget, each with one or more seeds,
then report on them side by side (report.py).

With --seeds N each config is trained N times, with the seeds s, s+1, ..., s+N−1 (s its own seed),
into OUT/runs/<config>/seed<seed>; with one seed, into OUT/runs/<config>. Runs that already hold
best.pt are reused, so a stopped comparison continues where it stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gru_lm.analysis.report import RunGroup
from gru_lm.errors import UserError
from gru_lm.training import train as training
from gru_lm.training.settings import resolve


def run_dirs(out: Path, config: Path, seeds: int, first_seed: int) -> list[tuple[Path, int]]:
    """Where each seed of a config trains: (folder, seed)."""
    base = out / "runs" / config.stem
    if seeds == 1:
        return [(base, first_seed)]
    return [(base / f"seed{first_seed + k}", first_seed + k) for k in range(seeds)]


def train_configs(
    file: Path, configs: list[Path], out: Path, max_time: float | None, retrain: bool, progress: bool, seeds: int = 1
) -> tuple[list[RunGroup], training.TrainResult | None]:
    """Train every seed of every config (one after another, the same budget each), reusing finished runs.

    Returns the groups, and the result of a run stopped by Ctrl-C or SIGTERM (then nothing more is
    trained), else None.
    """
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, not {seeds}")
    groups = []
    for cfg in configs:
        group = RunGroup(cfg.stem)
        groups.append(group)
        for run_dir, seed in run_dirs(out, cfg, seeds, resolve(cfg, {}).seed):
            group.runs.append(run_dir)
            if (run_dir / "best.pt").exists() and not retrain:
                print(f"{run_dir}: already trained, reused (--retrain to train it again)", file=sys.stderr)
                continue
            settings = resolve(cfg, {"max_time": max_time, "seed": seed})
            print(f"training {cfg} (seed {seed}) into {run_dir}", file=sys.stderr)
            result = training.train(file, settings, run_dir, overwrite=True, progress=progress)
            if result.interrupted:
                return groups, result
    return groups, None


def given_runs(runs: list[Path]) -> list[RunGroup]:
    """Groups of runs given with --run: a run folder, or a folder of seed runs (seed*/) made by compare."""
    groups = []
    for r in runs:
        seeds = sorted(p for p in r.glob("seed*") if (p / "metrics.jsonl").is_file()) if r.is_dir() else []
        groups.append(RunGroup(r.name, seeds or [r]))
    return groups
