"""Generation speed: `gru-lm sample`'s sampler against torch.nn.GRU stepped one character at a time.

    python bench/sample_speed.py                  # GRU 1 × 256 and 2 × 512, one stream and 1..32 streams together
    python bench/sample_speed.py --ckpt runs/gru/best.pt   # a trained model instead of random weights

One stream: characters per second of sample.generate (what `gru-lm sample` runs) against a torch.nn.GRU of
the same size, stepped one character at a time with the same embedding, read-out and draw (sample.pick),
side by side in one run. N streams: `--num-samples N` generates its streams together; the table gives
the characters per second of all streams and that rate over N times the one-stream rate. Speed does
not depend on the weights, so random ones serve unless --ckpt is given. Where the compiled sampler has
more than one vector width here (AVX-512 and AVX2), the one-stream rate is measured at each, side by
side (GRU_LM_KERNELS set before each generate, which makes its sampler); the streams use the default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rnn_speed import header
from bench.summary import ResultFile, sample_speed
from gru_lm.generation.sample import Streams, generate, pick
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.model.kernels import available
from gru_lm.text.vocab import Vocab

VOCAB = "".join(chr(c) for c in range(32, 97))  # 65 characters, as Tiny Shakespeare's


def ours(model, vocab: Vocab, n: int, kernels: str | None = None) -> float:
    """Characters per second of sample.generate, one stream (its sampler at `kernels`' width if given)."""
    if kernels:
        os.environ["GRU_LM_KERNELS"] = kernels
    g = torch.Generator().manual_seed(0)
    for _ in generate(model, vocab, vocab.chars[:6], 64, generator=g):
        pass
    t0 = time.perf_counter()
    for _ in generate(model, vocab, vocab.chars[:6], n, generator=g):
        pass
    return n / (time.perf_counter() - t0)


def torch_gru(model, n: int) -> float:
    """Characters per second of torch.nn.GRU of the model's size, stepped one character at a time."""
    cfg = model.cfg
    ref = nn.GRU(cfg.embed_size, cfg.hidden_size, cfg.layers).eval()
    g = torch.Generator().manual_seed(0)
    rate = 0.0
    with torch.inference_mode():
        x, h = torch.zeros(1, 1, dtype=torch.long), None
        for _ in range(2):  # the first round warms up
            t0 = time.perf_counter()
            for _ in range(n):
                out, h = ref(model.embed(x), h)
                u = float(torch.rand(1, generator=g, dtype=torch.float64))
                x = torch.tensor([[pick(model.head(out[0, 0]), 1.0, None, None, u)]])
            rate = n / (time.perf_counter() - t0)
    return rate


def streams_rate(model, streams: int, n: int) -> float:
    """Characters per second of all streams generated together (Streams.next, as `--num-samples`)."""
    s = Streams(model, torch.tensor([1, 2, 3]), streams)
    g = torch.Generator().manual_seed(0)
    s.next(torch.rand(16, streams, generator=g, dtype=torch.float64), 1.0, None, None)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        s.next(torch.rand(256, streams, generator=g, dtype=torch.float64), 1.0, None, None)
        done += 256
    return done * streams / (time.perf_counter() - t0)


def models(ckpt: Path | None) -> list[tuple]:
    if ckpt:
        state = checkpoint.load(ckpt)
        return [(checkpoint.build_model(state), Vocab(state["vocab"]))]
    torch.manual_seed(0)
    return [(CharModel(ModelConfig(len(VOCAB), "gru", H, L)).eval(), Vocab(VOCAB)) for H, L in ((256, 1), (512, 2))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=None, help="a trained checkpoint instead of random GRUs")
    ap.add_argument("--chars", type=int, default=2000, help="characters per measurement")
    ap.add_argument("--streams", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    head = header()
    print("# " + ", ".join(f"{k} {v}" for k, v in head.items()))
    rows: list[dict] = []
    widths = [k for k in available() if k in ("avx512", "avx2")]
    for model, vocab in models(args.ckpt):
        size = f"{model.cfg.cell.upper()} {model.cfg.layers} × {model.cfg.hidden_size}"
        ref = torch_gru(model, max(200, args.chars // 10))
        by_width = {k: ours(model, vocab, args.chars, k) for k in widths}
        os.environ.pop("GRU_LM_KERNELS", None)
        one = ours(model, vocab, args.chars)
        widths_text = "".join(f"; [{k}] {r:,.0f} ({r / ref:.1f}×)" for k, r in by_width.items())
        print(
            f"\n{size}, one stream: gru-lm sample {one:,.0f} chars/s{widths_text}, torch.nn.GRU stepped {ref:,.0f} "
            f"({one / ref:.1f}×)\n\n| streams | chars/s, all streams | over N × one stream |\n|---|---|---|"
        )
        rows.append(
            {"model": size, "one_stream": one, "torch_gru": ref, "ratio": one / ref, "by_kernels": by_width}
            | {"streams": []}
        )
        for n in args.streams:
            rate = streams_rate(model, n, args.chars)
            print(f"| {n} | {rate:,.0f} | {rate / (n * one):.2f} |", flush=True)
            rows[-1]["streams"].append({"n": n, "chars_per_s": rate, "over_n_one": rate / (n * one)})
    results = {"machine": head, "rows": rows}
    print("\n" + sample_speed([ResultFile("this run", results)]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
