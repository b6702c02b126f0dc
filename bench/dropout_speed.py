"""Dropout masks: a training step with masks from torch's random draws against the hashed masks of gru_lm.

    python bench/dropout_speed.py                        # 2 × 384, dropout 0.25, weight drop 0.1 (30-minute recipe)
    python bench/dropout_speed.py --hidden-size 384 --layers 1 --dropout 0.1 --weight-drop 0

A char-LM training step of CharModel (as `gru-lm train` runs it, without evaluations) with cells.dropout
first as `x * (torch.rand_like(x) >= p) / (1 - p)`, then as gru_lm's hashed masks (gru_lm/model/dropout.py), in
interleaved rounds in one process; the table gives the median characters per second of each and the
median ratio of the rounds. The two differ only in how the masks are drawn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rnn_speed import header
from gru_lm.machine.memory import keep_freed_memory
from gru_lm.model import cells, char_model
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.model.kernels import compiled


def uniform_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with a mask from torch's uniform draws (what gru_lm did before its hashed masks)."""
    if not training or p == 0:
        return x
    return x * (torch.rand_like(x) >= p) * (1 / (1 - p))


def use_dropout(fn) -> None:
    cells.dropout = fn
    char_model.dropout = fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden-size", type=int, default=384)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.25)
    ap.add_argument("--weight-drop", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0, help="per round and variant")
    args = ap.parse_args()
    keep_freed_memory()
    compiled()
    torch.manual_seed(0)
    net = CharModel(ModelConfig(65, "gru", args.hidden_size, args.layers, 64, args.dropout, False, args.weight_drop))
    net.train()
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    x, y = torch.randint(0, 65, (64, 32)), torch.randint(0, 65, (64, 32))
    state = {"h": net.init_state(32, torch.device("cpu"))}

    def step() -> None:
        logits, h = net(x, state["h"])
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["h"] = h.detach()

    variants = {"torch.rand_like masks": uniform_dropout, "hashed masks (gru_lm)": cells.dropout}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            use_dropout(fn)
            for _ in range(2):
                step()
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < args.seconds:
                step()
                n += 1
            rates[name].append(n * x.numel() / (time.perf_counter() - t0))
    use_dropout(variants["hashed masks (gru_lm)"])
    h = header()
    print(
        f"# cpu {h['cpu']}, isa {h['isa']}, dtype float32, kernels {h['kernels']}, torch {h['torch']}, "
        f"threads {h['threads']}, date {h['date']}"
    )
    print(
        f"# GRU {args.layers} × {args.hidden_size}, dropout {args.dropout}, weight drop {args.weight_drop}, "
        f"batch 32, window 64; {args.rounds} rounds of {args.seconds} s each"
    )
    print("| masks | chars/s (median) |\n|---|---|")
    for name, v in rates.items():
        print(f"| {name} | {statistics.median(v):,.0f} |")
    ratio = statistics.median(hashed / drawn for drawn, hashed in zip(*rates.values()))
    print(f"\nhashed over torch.rand_like, median of the rounds: {ratio:.3f}×")


if __name__ == "__main__":
    main()
