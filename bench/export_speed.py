"""One-stream sampling speed of the exported model: onnxruntime and the browser page against `gru-lm sample`.

    python bench/export_speed.py                          # a 1 × 384 GRU with random weights, 5,000 characters
    python bench/export_speed.py --browser                # and the page of `gru-lm export --web` in headless Chromium
    python bench/export_speed.py --ckpt runs/gru/best.pt  # a trained model instead of random weights
    python bench/export_speed.py --hidden 16 --chars 200 --browser   # a quick check that everything runs

Side by side in one run, characters per second of one stream at temperature 1:

- `gru-lm sample`: sample.generate, what the command runs (the compiled sampler where it can run the model);
- onnxruntime: the graph of `gru-lm export --onnx`, one session.run per character, the draw in numpy: the loop
  a user writes around the one-step graph;
- the page (--browser): index.html?...&autostart=1&sync=1, the continuation generated while the page loads, timed
  by the page itself (performance.now() around the generation only; the page's load and the weights' decoding are
  not counted), read back from the DOM (#stats data-chars-per-s).

Speed does not depend on the weights, so random ones serve unless --ckpt is given. Run it on a quiet machine:
each figure is the best of --rounds rounds.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rnn_speed import header
from bench.summary import ResultFile, export_speed
from gru_lm.export import web
from gru_lm.export.onnx_graph import graph_bytes
from gru_lm.export.weights import from_model
from gru_lm.generation.sample import generate
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.text.vocab import Vocab

VOCAB = "".join(chr(c) for c in range(32, 97))  # 65 characters, as Tiny Shakespeare's
PRIME = "ROMEO:"


def gru_lm_sample(model, vocab: Vocab, n: int) -> float:
    """Characters per second of sample.generate, one stream (what `gru-lm sample` runs)."""
    g = torch.Generator().manual_seed(0)
    for _ in generate(model, vocab, PRIME, 64, generator=g):  # warm-up
        pass
    t0 = time.perf_counter()
    for _ in generate(model, vocab, PRIME, n, generator=g):
        pass
    return n / (time.perf_counter() - t0)


def onnxruntime_sample(graph: bytes, vocab: Vocab, n: int, threads: int) -> float:
    """Characters per second of the one-step graph in onnxruntime, one stream, the loop and the draw in Python."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default (a thread per core)
    sess = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()][1:]
    H = sess.get_inputs()[1].shape[1]
    rng = np.random.default_rng(0)

    def run(count: int) -> None:
        state = {name: np.zeros((1, H), np.float32) for name in names}
        ids = vocab.encode(PRIME)[0].long().numpy()
        for i in ids[:-1]:
            _, *new = sess.run(None, {"ids": np.array([i], np.int64), **state})
            state = dict(zip(names, new))
        last = np.array([ids[-1]], np.int64)
        for _ in range(count):
            logits, *new = sess.run(None, {"ids": last, **state})
            state = dict(zip(names, new))
            z = logits[0].astype(np.float64)
            p = np.exp(z - z.max())
            cdf = np.cumsum(p)
            last = np.array([min(int(np.searchsorted(cdf, rng.random() * cdf[-1])), len(p) - 1)], np.int64)

    run(64)  # warm-up
    t0 = time.perf_counter()
    run(n)
    return n / (time.perf_counter() - t0)


def browser_sample(weights, n: int, profile: Path) -> float:
    """Characters per second of the exported page in headless Chromium, as the page timed its generation."""
    site = profile / "site"
    site.mkdir(parents=True, exist_ok=True)
    for name, data in web.folder_files(weights).items():
        (site / name).write_bytes(data)
    url = (site / "index.html").as_uri() + f"?prime={PRIME}&length={n}&seed=1&autostart=1&sync=1"
    cmd = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile / 'chromium'}",
        "--dump-dom",
        url,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = re.search(r'id="stats" data-state="done" data-chars="(\d+)" data-chars-per-s="([\d.]+)"', r.stdout)
    if r.returncode != 0 or not m or int(m.group(1)) != n:
        raise SystemExit(f"the page did not finish: {r.stderr[-1000:]}")
    return float(m.group(2))


def load(args) -> tuple[CharModel, Vocab]:
    if args.ckpt:
        state = checkpoint.load(args.ckpt)
        return checkpoint.build_model(state, args.ckpt), Vocab(state["vocab"])
    torch.manual_seed(0)
    cfg = ModelConfig(len(VOCAB), args.cell, args.hidden, args.layers, reset_after=args.reset_after)
    return CharModel(cfg).eval(), Vocab(VOCAB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=None, help="a trained checkpoint instead of random weights")
    ap.add_argument("--cell", default="gru", choices=["gru", "lstm", "rnn"])
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--reset-after", action="store_true")
    ap.add_argument("--chars", type=int, default=5000, help="characters per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each; the best is reported")
    ap.add_argument("--ort-threads", type=int, default=0, help="onnxruntime's intra-op threads (0: its default)")
    ap.add_argument("--browser", action="store_true", help="also the page of `gru-lm export --web` in Chromium")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.browser and shutil.which("chromium") is None:
        raise SystemExit("--browser needs chromium on the PATH")
    model, vocab = load(args)
    weights = from_model(model, vocab.chars)
    graph = graph_bytes(weights)
    head = header()
    size = f"{model.cfg.label().upper()} {model.cfg.layers} × {model.cfg.hidden_size}"
    print("# " + ", ".join(f"{k} {v}" for k, v in head.items()))
    print(f"# {size}, {len(vocab)} characters, one stream, {args.chars:,} characters, best of {args.rounds}")
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # the ways interleaved, so a change in the machine's load touches them alike
            rates = {
                "gru-lm sample": gru_lm_sample(model, vocab, args.chars),
                "onnxruntime (one-step graph)": onnxruntime_sample(graph, vocab, args.chars, args.ort_threads),
            }
            if args.browser:
                rates["browser page (headless Chromium)"] = browser_sample(weights, args.chars, Path(tmp))
            for k, v in rates.items():
                best[k] = max(best.get(k, 0.0), v)
    figures = {"machine": head, "model": size, "chars": args.chars, "rates": best}
    print("\n" + export_speed([ResultFile("this run", figures)]))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
