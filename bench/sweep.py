"""Sweep model and training settings under a wall-clock budget on Tiny Shakespeare.

    python bench/sweep.py --budget 100 --grid g100          # the candidates behind configs/shakespeare_100s.toml
    python bench/sweep.py --budget 300 --grid g300
    python bench/sweep.py --budget 100 --set hidden_size=384 --set lr=0.004   # one ad-hoc point

Every point trains from the same seed on the same split (the last 10% of data/tinyshakespeare.txt)
for `--budget` seconds into bench/results/runs/<budget>s/<cell>_<settings>/ (so that `gru-lm compare
--run ...` can report on it) and records its best validation loss in bench/results/sweep.jsonl (one
JSON object per line, with the settings and the machine: CPU model, ISA level, dtype, kernels). Points
already measured on a CPU of the same ISA level are skipped, so a sweep can be stopped and continued.
Run it on an otherwise idle machine: the budget is wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gru_lm.machine.cpu import cpu_model, isa_level
from gru_lm.machine.device import pick_autocast_dtype
from gru_lm.model.kernels import backend
from gru_lm.training.fit_to_machine import load_table
from gru_lm.training.settings import Settings, resolve
from gru_lm.training.train import train

RESULTS = ROOT / "bench" / "results" / "sweep.jsonl"
RUNS = ROOT / "bench" / "results" / "runs"
GRIDS: dict[str, list[dict]] = {
    "g100": [  # the 100-second points (docs/results.md tells what each showed)
        {"hidden_size": 256, "dropout": 0.1},
        {"hidden_size": 256},
        {"hidden_size": 384, "dropout": 0.1},
        {"hidden_size": 384, "dropout": 0.1, "reset_after": True},
        {"hidden_size": 384, "dropout": 0.1, "seq_len": 128},
        {"hidden_size": 384, "dropout": 0.1, "batch_size": 64, "lr": 0.004},
        {"hidden_size": 384, "dropout": 0.1, "batch_size": 16},
        {"hidden_size": 384, "dropout": 0.1, "batch_size": 16, "lr": 0.002},
        {"hidden_size": 384, "dropout": 0.1, "min_lr": 0.0001},
        {"hidden_size": 384, "dropout": 0.1, "lr": 0.005},
        {"hidden_size": 384, "dropout": 0.1, "lr": 0.007},
        {"hidden_size": 384, "dropout": 0.1, "lr": 0.01},
        {"hidden_size": 512, "dropout": 0.1, "lr": 0.005},
    ],
    "g300": [
        {"hidden_size": 512, "dropout": 0.2},
        {"hidden_size": 384, "dropout": 0.2},
        {"hidden_size": 384, "layers": 2, "dropout": 0.2},
        {"hidden_size": 384, "layers": 2, "dropout": 0.2, "lr": 0.007},
        {"hidden_size": 384, "layers": 2, "dropout": 0.2, "lr": 0.0045},
        {"hidden_size": 512, "dropout": 0.2, "lr": 0.006},
        {"hidden_size": 512, "dropout": 0.3, "lr": 0.006},
    ],
    "g300bf": [  # mixed precision (bfloat16 products), and the float32 default again for comparison
        {"hidden_size": 384, "layers": 2, "dropout": 0.2},
        {"hidden_size": 384, "layers": 2, "dropout": 0.2, "dtype": "bfloat16"},
        {"hidden_size": 512, "layers": 2, "dropout": 0.2, "dtype": "bfloat16"},
        {"hidden_size": 384, "layers": 2, "dropout": 0.2, "batch_size": 64, "lr": 0.004, "dtype": "bfloat16"},
        {"hidden_size": 512, "layers": 2, "dropout": 0.2, "batch_size": 64, "lr": 0.004, "dtype": "bfloat16"},
        {"hidden_size": 512, "dropout": 0.2, "lr": 0.006, "dtype": "bfloat16"},
    ],
    "g300pk": [  # the same points again after the recurrent weights were packed (a faster bfloat16 step)
        {"hidden_size": 512, "layers": 2, "dropout": 0.2, "dtype": "bfloat16"},
        {"hidden_size": 512, "layers": 2, "dropout": 0.2, "batch_size": 64, "lr": 0.004, "dtype": "bfloat16"},
    ],
    "g300ema": [  # the cosine down to ~0 (min_lr 1e-5), then weight averaging, weight decay 0.1, weight drop on top
        {"hidden_size": 512, "layers": 2, "dropout": 0.2, "dtype": "bfloat16", "min_lr": 1e-05},
        {"hidden_size": 512, "layers": 2, "dropout": 0.2, "dtype": "bfloat16", "min_lr": 1e-05, "ema_decay": 0.995},
        {
            "hidden_size": 512,
            "layers": 2,
            "dropout": 0.2,
            "dtype": "bfloat16",
            "min_lr": 1e-05,
            "ema_decay": 0.995,
            "weight_decay": 0.1,
        },
        {
            "hidden_size": 512,
            "layers": 2,
            "dropout": 0.2,
            "dtype": "bfloat16",
            "min_lr": 1e-05,
            "ema_decay": 0.995,
            "weight_decay": 0.1,
            "weight_drop": 0.2,
        },
    ],
    "g1800": [
        {"hidden_size": 512, "layers": 2, "dropout": 0.3, "lr": 0.004},
        {"hidden_size": 512, "layers": 2, "dropout": 0.3, "lr": 0.004, "dtype": "bfloat16"},
        # wider, more dropout, the cosine down to ~0 and weight averaging
        {
            "hidden_size": 768,
            "layers": 2,
            "dropout": 0.4,
            "dtype": "bfloat16",
            "lr": 0.003,
            "min_lr": 1e-05,
            "ema_decay": 0.998,
        },
        {
            "hidden_size": 768,
            "layers": 2,
            "dropout": 0.4,
            "dtype": "bfloat16",
            "lr": 0.003,
            "min_lr": 1e-05,
            "ema_decay": 0.998,
            "weight_decay": 0.1,
            "weight_drop": 0.25,
        },
        {
            "hidden_size": 1024,
            "layers": 2,
            "dropout": 0.4,
            "dtype": "bfloat16",
            "lr": 0.003,
            "min_lr": 1e-05,
            "ema_decay": 0.998,
            "weight_decay": 0.1,
            "weight_drop": 0.25,
        },
        # three layers of 512; then two layers of 512 with that recipe (two more points were stopped early
        # and not recorded: docs/results.md)
        {
            "hidden_size": 512,
            "layers": 3,
            "dropout": 0.3,
            "dtype": "bfloat16",
            "lr": 0.003,
            "min_lr": 1e-05,
            "ema_decay": 0.998,
            "weight_decay": 0.1,
            "weight_drop": 0.2,
        },
        {
            "hidden_size": 512,
            "layers": 2,
            "dropout": 0.3,
            "dtype": "bfloat16",
            "lr": 0.003,
            "min_lr": 1e-05,
            "ema_decay": 0.998,
            "weight_decay": 0.1,
            "weight_drop": 0.15,
        },
    ],
    "lstm300": [  # LSTMs for the 5-minute comparison of the three cells, with the GRU's recipe
        {
            "hidden_size": 512,
            "layers": 1,
            "dropout": 0.2,
            "lr": 0.005,
            "min_lr": 1e-05,
            "weight_decay": 0.1,
            "ema_decay": 0.995,
        },
        {
            "hidden_size": 384,
            "layers": 1,
            "dropout": 0.1,
            "lr": 0.007,
            "min_lr": 1e-05,
            "weight_decay": 0.1,
            "ema_decay": 0.995,
        },
    ],
}


def run_dir(point: dict, budget: float, cell: str) -> Path:
    name = "_".join([cell] + [f"{k}={v}" for k, v in sorted(point.items())])
    return RUNS / f"{budget:.0f}s" / name


def run_point(point: dict, budget: float, cell: str, candidate: str | None = None) -> dict | None:
    """The point's row, or None when the run was stopped (Ctrl-C, SIGTERM) before its budget ran out."""
    s = resolve(None, {**point, "cell": cell, "max_time": float(budget), "max_steps": 0, "eval_every": 250})
    out = run_dir(point, budget, cell)
    res = train(ROOT / "data" / "tinyshakespeare.txt", s, out, overwrite=True, progress=False)
    if res.interrupted:
        return None
    dtype = "bfloat16" if pick_autocast_dtype(s.dtype, torch.device("cpu")) else "float32"
    row = {
        "budget_s": budget,
        "cell": cell,
        "point": point,
        "run": str(out.relative_to(ROOT)),
        "best_val_loss": res.best_val_loss,
        "final_val_loss": res.val_loss,
        "steps": res.step,
        "chars": res.chars,
        "elapsed_s": round(res.elapsed_s, 1),
        "chars_per_s": round(res.chars / res.elapsed_s),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "cpu": cpu_model(),
        "isa": isa_level(),
        "dtype": dtype,
        "kernels": backend(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    return {**row, "candidate": candidate} if candidate else row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, required=True, help="wall seconds per point")
    ap.add_argument("--grid", choices=sorted(GRIDS), help="a named list of points")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one ad-hoc point (repeat keys)")
    ap.add_argument("--cell", default="gru", choices=["gru", "lstm", "rnn"])
    ap.add_argument(
        "--candidates",
        nargs="*",
        default=None,
        metavar="NAME",
        help="the size candidates of gru_lm/training/fit_candidates.json (what bench/fit_sizes.py fits): all, or these",
    )
    ap.add_argument(
        "--again",
        action="store_true",
        help="measure points already in the results again (machines drift from day to day: "
        "compare points measured the same day)",
    )
    args = ap.parse_args()
    points = list(GRIDS[args.grid]) if args.grid else []
    names: dict[int, str] = {}
    if args.candidates is not None:
        for c in load_table()[1]:
            if args.candidates and c.name not in args.candidates:
                continue
            names[len(points)] = c.name
            points.append(dict(c.settings))
    if args.set:
        kinds = {f: type(getattr(Settings(), f)) for f in Settings.__dataclass_fields__}
        point = {}
        for kv in args.set:
            k, v = kv.split("=", 1)
            point[k] = kinds[k](v) if kinds[k] is not bool else v.lower() in ("1", "true", "yes")
        points.append(point)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(ln) for ln in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    for i, point in enumerate(points):
        same = [d for d in done if d["point"] == point and d["budget_s"] == args.budget and d["cell"] == args.cell]
        if not args.again and any(d.get("isa") == isa_level() for d in same):
            print(f"skip (done on an {isa_level()} CPU): {point}")
            continue
        row = run_point(point, args.budget, args.cell, names.get(i))
        if row is None:  # a stopped run's loss is not the budget's: leave it out, and stop the sweep
            print(f"stopped: {point} not recorded", file=sys.stderr)
            sys.exit(130)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"{args.cell} {args.budget:.0f}s {point}: best val {row['best_val_loss']:.4f} "
            f"({row['chars']:,} chars, {row['chars_per_s']:,}/s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
