"""Large corpora: encode throughput of `gru-lm prepare`, and peak resident memory of it and of `gru-lm train`
on the prepared folder, for a large and a small synthetic corpus.

    python bench/large_corpus.py                      # 200 MB and 2 MB corpora, 100 training steps each
    python bench/large_corpus.py --mb 50 --steps 20   # quicker
    python bench/large_corpus.py --raw                # also `gru-lm train FILE.txt` straight on the text

The corpus is synthetic UTF-8 (seeded): words over Latin, accented Latin, Greek, Cyrillic, CJK and
emoji characters (1 to 4 bytes each), with a Zipf-like word frequency and line breaks. Every command
runs as a user runs it, in its own process; peak resident memory is that process's ru_maxrss
(os.wait4), which counts the pages of the memory-mapped corpus it touched. Results go to
bench/results/large_corpus.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
POOL = (
    "abcdefghijklmnopqrstuvwxyz" * 6
    + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    + "éèüößçñåø"
    + "αβγδεζηθλμπσω"
    + "абвгдежзиклмнопрст"
    + "的一是不了人我在有他这中大来上国个到说们"
    + "😀🙂🚀🌍🎉✨"
)


def make_corpus(path: Path, mb: float, seed: int = 0) -> None:
    """About mb megabytes of UTF-8 words (written in blocks: the generator stays small too)."""
    rng = np.random.default_rng(seed)
    pool = np.array(list(POOL))
    words = np.array(["".join(rng.choice(pool, size=int(rng.integers(1, 11)))) for _ in range(30_000)], dtype=object)
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    target, written = int(mb * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            idx = rng.choice(len(words), size=200_000, p=p)
            block = " ".join(words[idx].tolist())
            block = re.sub(r"((?:\S+ ){12})", lambda m: m.group(1)[:-1] + "\n", block) + "\n"
            data = block.encode("utf-8")[: target - written]
            text = data.decode("utf-8", errors="ignore")  # never cut a character in two
            f.write(text)
            written += len(text.encode("utf-8"))


def run(cmd: list[str]) -> dict:
    """Run a command; its wall time, peak resident memory (MiB, ru_maxrss of that process alone) and stderr."""
    import tempfile

    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        err.seek(0)
        text = err.read()
    if p.returncode:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{text}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(ru.ru_maxrss / 1024, 1), "stderr": text}


def measure(mb: float, steps: int, work: Path, raw: bool) -> dict:
    gru = [sys.executable, "-m", "gru_lm"]
    src, prep, runs = work / f"corpus_{mb:g}MB.txt", work / f"prepared_{mb:g}MB", work / "runs"
    if not src.exists():
        t = time.perf_counter()
        make_corpus(src, mb)
        print(f"made {src} ({src.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.0f}s", flush=True)
    size = src.stat().st_size
    pr = run([*gru, "prepare", str(src), "--out", str(prep), "-q"])
    m = re.search(r"prepared .*: ([\d,]+) characters, ([\d,]+) distinct \((\w+)\).* in ([\d.]+)s", pr["stderr"])
    assert m is not None, pr["stderr"]
    chars, distinct, dtype, inner = int(m[1].replace(",", "")), int(m[2].replace(",", "")), m[3], float(m[4])
    train_args = [
        "--max-steps",
        str(steps),
        "--max-time",
        "0",
        "--eval-every",
        str(steps),
        "--eval-chars",
        "100000",
        "--overwrite",
        "-q",
        "--device",
        "cpu",
    ]
    tr = run([*gru, "train", str(prep), "--out", str(runs / f"prep_{mb:g}"), *train_args])
    row = {
        "mb": round(size / 1e6, 1),
        "chars": chars,
        "distinct": distinct,
        "dtype": dtype,
        "prepare_s": inner,
        "prepare_wall_s": pr["wall_s"],
        "encode_mb_s": round(size / 1e6 / inner, 1),
        "prepare_peak_mib": pr["peak_rss_mib"],
        "train_steps": steps,
        "train_wall_s": tr["wall_s"],
        "train_peak_mib": tr["peak_rss_mib"],
    }
    if raw:
        rr = run([*gru, "train", str(src), "--out", str(runs / f"raw_{mb:g}"), *train_args])
        row.update(raw_train_wall_s=rr["wall_s"], raw_train_peak_mib=rr["peak_rss_mib"])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200.0, help="size of the large corpus in MB (1e6 bytes)")
    ap.add_argument("--small-mb", type=float, default=2.0, help="size of the small corpus it is compared with")
    ap.add_argument("--steps", type=int, default=100, help="training steps on each (batch 32, window 64)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gru_lm_large_corpus"), help="where corpora and runs go")
    ap.add_argument("--raw", action="store_true", help="also train straight on the text file (in-memory encoding)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    small, large = (measure(mb, args.steps, args.work, args.raw) for mb in (args.small_mb, args.mb))
    ratio = large["train_peak_mib"] / small["train_peak_mib"]
    import torch

    sys.path.insert(0, str(ROOT))
    from gru_lm.machine.cpu import cpu_summary

    head = (
        f"{time.strftime('%Y-%m-%d')}, {cpu_summary()}, torch {torch.__version__}; "
        f"`python bench/large_corpus.py --mb {args.mb:g} --small-mb {args.small_mb:g} --steps {args.steps}"
        f"{' --raw' if args.raw else ''}`"
    )
    cols = [
        "mb",
        "chars",
        "distinct",
        "dtype",
        "prepare_s",
        "encode_mb_s",
        "prepare_peak_mib",
        "train_steps",
        "train_wall_s",
        "train_peak_mib",
    ] + (["raw_train_wall_s", "raw_train_peak_mib"] if args.raw else [])
    lines = [
        f"# Large corpora: prepare and train\n\n{head}\n",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += [
        "| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |"
        for r in (small, large)
    ]
    lines.append(
        f"\nPeak resident memory of `train` on the {large['mb']:g} MB corpus: {large['train_peak_mib']:.0f} MiB, "
        f"{ratio:.2f}x that on the {small['mb']:g} MB corpus."
    )
    md = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "large_corpus.md").write_text(md)
    (RESULTS / "large_corpus.json").write_text(
        json.dumps({"command": head, "rows": [small, large], "train_peak_ratio": ratio}, indent=1) + "\n"
    )
    print(md)


if __name__ == "__main__":
    main()
