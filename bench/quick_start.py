"""Record a run of the README's first command, so docs/results.md can say what it gives on each CPU class.

    gru-lm train data/tinyshakespeare.txt --config configs/shakespeare_gru.toml --out runs/gru --overwrite
    python bench/quick_start.py runs/gru      # on the machine that trained it: appends one row
    python bench/include.py                   # the Quick start table of docs/results.md, rendered afresh

A row names this machine's CPU (model, family and model number, ISA level), the dtype the run trained in,
the size the fit picked, the run's characters per second and its best validation loss, and appends to
bench/results/quick_start.jsonl. Rows record ranges ([low, high] over `runs` runs), so the runs measured
before this script existed, known only by their range, stand beside single runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import quick_start
from bench.summary import ResultFile
from gru_lm.analysis.report import summarize
from gru_lm.machine.cpu import cpu_family_model, cpu_model, isa_level

RESULTS = "bench/results/quick_start.jsonl"


def row_of(run: Path) -> dict:
    """One run's row: this machine's CPU and the run's dtype, size, speed and best validation loss."""
    s = summarize(run)
    here = f"{cpu_model()} ({isa_level()})"
    if not s["machine"].startswith(here):
        raise SystemExit(f"{run} trained on {s['machine']}, not on this {here}: record it where it trained")
    dtype = s["machine"].rsplit(", torch ", 1)[0].rsplit(", ", 1)[1]
    return {
        "cpu": cpu_model(),
        "cpuid": cpu_family_model(),
        "isa": isa_level(),
        "dtype": dtype,
        "size": f"{s['layers']} × {s['hidden']}",
        "runs": 1,
        "chars_per_s": [round(s["chars_per_s"])] * 2,
        "best_val_loss": [round(s["val_loss"], 4)] * 2,
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the run folder the README's first command wrote (runs/gru)")
    args = ap.parse_args()
    row = row_of(args.run)
    with (ROOT / RESULTS).open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(quick_start([ResultFile.read(RESULTS)]))


if __name__ == "__main__":
    main()
