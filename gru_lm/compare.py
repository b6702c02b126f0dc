"""`gru-lm compare`: train several configs on the same data and budget, then report on them side by side."""

from __future__ import annotations

import sys
from pathlib import Path

from .config import resolve
from .train import TrainResult, train


def train_configs(file: Path, configs: list[Path], out: Path, max_time: float | None, retrain: bool,
                  progress: bool) -> tuple[list[Path], TrainResult | None]:
    """Train each config into OUT/runs/<config name> (reusing finished runs unless retrain).

    Returns the run folders, and the result of a run stopped by Ctrl-C or SIGTERM (then the later
    configs are not trained), else None.
    """
    runs = []
    for cfg in configs:
        run_dir = out / "runs" / cfg.stem
        runs.append(run_dir)
        if (run_dir / "best.pt").exists() and not retrain:
            print(f"{run_dir}: already trained, reused (--retrain to train it again)", file=sys.stderr)
            continue
        settings = resolve(cfg, {"max_time": max_time})
        print(f"training {cfg} into {run_dir}", file=sys.stderr)
        result = train(file, settings, run_dir, overwrite=True, progress=progress)
        if result.interrupted:
            return runs, result
    return runs, None
