"""Fit the loss curves of the fit candidates (gru_lm/training/fit_candidates.json) on the sweeps
(bench/results/sweep.jsonl).

    python bench/sweep.py --budget 100 --candidates     # each fit candidate for 100 s on this machine
    python bench/sweep.py --budget 300 --candidates
    python bench/fit_sizes.py                           # refit their curves, rewrite fit_candidates.json

A sweep row counts for a candidate when it trained the candidate's recipe on Tiny Shakespeare: rows of
`--candidates` sweeps name it, and older rows whose settings equal the recipe count too, whatever the
machine and dtype (a loss against characters seen does not depend on the CPU that computed it). Each
candidate's best validation loss L against the characters C its run saw is fitted as
L = a + b·(C/10⁶)^(−α), with one exponent α for all (the one that fits all rows best) and a and b by
least squares per candidate; a candidate needs two rows at different C.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gru_lm.training.settings import (
    FIT_CANDIDATES_FILE,
    resolve,
)

RESULTS = ROOT / "bench" / "results" / "sweep.jsonl"
RECIPE_KEYS = (
    "cell",
    "reset_after",
    "hidden_size",
    "layers",
    "embed_size",
    "dropout",
    "weight_drop",
    "seq_len",
    "batch_size",
    "lr",
    "min_lr",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "ema_decay",
)


def recipe(settings) -> tuple:
    return tuple(getattr(settings, k) for k in RECIPE_KEYS)


def rows_of(candidate: dict, rows: list[dict]) -> list[tuple[float, float]]:
    """(characters seen, best validation loss) of every sweep row that trained this candidate's recipe."""
    want = recipe(resolve(None, candidate["settings"]))
    out = []
    for r in rows:
        if r.get("candidate") == candidate["name"] or recipe(resolve(None, {**r["point"], "cell": r["cell"]})) == want:
            out.append((float(r["chars"]), float(r["best_val_loss"])))
    return out


def fit_line(points: list[tuple[float, float]], alpha: float) -> tuple[float, float, float]:
    """a, b and the squared error of L = a + b·x, x = (C/10⁶)^(−α), by least squares."""
    xs = [(c / 1e6) ** (-alpha) for c, _ in points]
    ys = [loss for _, loss in points]
    _n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    a = my - b * mx
    return a, b, sum((a + b * x - y) ** 2 for x, y in zip(xs, ys))


def main() -> None:
    table = json.loads(FIT_CANDIDATES_FILE.read_text())
    rows = [json.loads(ln) for ln in RESULTS.read_text().splitlines() if ln.strip()]
    points = {c["name"]: rows_of(c, rows) for c in table["candidates"]}
    fitted = {name: p for name, p in points.items() if len({c for c, _ in p}) >= 2}
    missing = sorted(set(points) - set(fitted))
    if missing:
        sys.exit(f"fewer than two runs at different lengths for {', '.join(missing)}: sweep them first")
    alpha = min((k / 100 for k in range(10, 151)), key=lambda al: sum(fit_line(p, al)[2] for p in fitted.values()))
    table["alpha"] = alpha
    for c in table["candidates"]:
        a, b, err = fit_line(fitted[c["name"]], alpha)
        c.update(a=round(a, 5), b=round(b, 5), runs=len(fitted[c["name"]]))
        print(
            f"{c['name']}: L = {a:.4f} + {b:.4f}·(C/1M)^-{alpha:.2f} from {len(fitted[c['name']])} runs "
            f"(rms error {(err / len(fitted[c['name']])) ** 0.5:.4f})"
        )
    FIT_CANDIDATES_FILE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {FIT_CANDIDATES_FILE}")


if __name__ == "__main__":
    main()
