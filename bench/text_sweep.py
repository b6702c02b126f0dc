"""Sweep runs on texts other than Tiny Shakespeare, each scored the same way, for the fit's rule and docs/results.md.

    python bench/corpora.py                                   # build the corpora into /work/corpora (once)
    python bench/text_sweep.py --corpus chinese --point builtin --point fit
    python bench/text_sweep.py --corpus code_c --point fit --point "hidden_size=512,layers=1,dropout=0.0"
    python bench/text_sweep.py --corpus prose_small --point torch_lstm
    python bench/text_sweep.py --table                        # the results as markdown tables, per corpus

A point is one run of `--budget` seconds (default 300) on the corpus:
- `builtin`: `gru-lm train FILE --no-fit-to-machine`, the built-in settings (a GRU of 1 × 256) with no fitting;
- `fit`: `gru-lm train FILE`, the default, which fits the model to the text and the machine;
- `torch_lstm`: torch.nn.LSTM (1 × 512, embedding 64, no dropout, AdamW 2e-3, clipping 1, batch 32 × 64) with
  a plain training loop, the baseline anyone would write first;
- `key=value,...`: gru-lm with these settings (and no fitting).
Every point trains on the same training split and is scored the same way afterwards: the loss of its best.pt
(for torch_lstm, its final weights) on the corpus's whole validation split (blocks spread over the text), each
block cut into streams that start from a zero state. Rows go to bench/results/text_sweep.jsonl with the CPU,
its ISA level and the dtype. Run it on an otherwise idle machine: the budget is wall-clock time.

To see a CPU with AVX2 alone on one with AVX-512, set MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2,
ATEN_CPU_CAPABILITY=avx2 and GRU_LM_KERNELS=avx2 before starting (as bench/readout_speed.py explains); every run
inherits them, and the rows record them and name the ISA level "AVX2 (emulated)".
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.readout_speed import emulated, emulates_avx2
from gru_lm.analysis.evaluate import nll
from gru_lm.machine.cpu import cpu_model, isa_level
from gru_lm.model import checkpoint
from gru_lm.text.batches import StreamBatcher
from gru_lm.text.corpus import Corpus, load_corpus
from gru_lm.training.settings import Settings, resolve

RESULTS = ROOT / "bench" / "results" / "text_sweep.jsonl"
RUNS = Path("/work/runs/text_sweep")
CORPORA = Path("/work/corpora")
SCORE_STREAMS = 32


def corpus_of(name: str) -> tuple[Path, Corpus]:
    path = CORPORA / f"{name}.txt"
    if not path.is_file():
        sys.exit(f"{path}: not built; run python bench/corpora.py")
    return path, load_corpus(path, Settings())


def score(model: nn.Module, corpus: Corpus) -> float:
    total, n = nll(model, corpus.val_ids, SCORE_STREAMS, bounds=corpus.val_bounds)
    return total / n


def parse_point(point: str) -> dict:
    kinds = {f: type(getattr(Settings(), f)) for f in Settings.__dataclass_fields__}
    out: dict = {}
    for kv in point.split(","):
        k, v = kv.split("=", 1)
        out[k] = kinds[k](v) if kinds[k] is not bool else v.lower() in ("1", "true", "yes")
    return out


def gru_lm_point(path: Path, corpus: Corpus, point: str, budget: float, out: Path) -> dict:
    """One `gru-lm train` run of the point, and its best.pt scored."""
    flags = ["--max-time", str(budget), "--out", str(out), "--overwrite", "-q"]
    if point == "builtin":
        flags.append("--no-fit-to-machine")
    elif point != "fit":
        for k, v in parse_point(point).items():
            flags += [f"--{k.replace('_', '-')}", str(v)] if not isinstance(v, bool) else [f"--{k.replace('_', '-')}"]
        flags.append("--no-fit-to-machine")
    cmd = [sys.executable, "-m", "gru_lm", "train", str(path), *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    state = checkpoint.load(out / "best.pt")
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    settings = resolve(out / "config.toml", {})
    return {
        "loss": score(checkpoint.build_model(state), corpus),
        "chars": last["chars"],
        "chars_per_s": round(last["chars"] / last["elapsed_s"]),
        "size": f"{settings.layers} x {settings.hidden_size}",
        "settings": {k: v for k, v in settings.to_dict().items() if v != Settings().to_dict()[k]},
        "stderr_tail": done.stderr.strip().splitlines()[-3:],
        "dtype": settings.dtype,
    }


class TorchLSTM(nn.Module):
    """torch.nn.LSTM as a gru-lm model is called: ids T×B, state L×B×2H (h and c side by side)."""

    def __init__(self, vocab: int, hidden: int = 512, embed: int = 64) -> None:
        super().__init__()
        self.embed, self.lstm, self.head = nn.Embedding(vocab, embed), nn.LSTM(embed, hidden), nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        state = None if h is None else tuple(t.contiguous() for t in h.chunk(2, dim=-1))
        out, (h_n, c_n) = self.lstm(self.embed(ids), state)
        return self.head(out), torch.cat([h_n, c_n], dim=-1)


def torch_lstm_point(corpus: Corpus, budget: float) -> dict:
    """The plain torch.nn.LSTM baseline for `budget` seconds, its final weights scored."""
    torch.manual_seed(1337)
    model = TorchLSTM(len(corpus.vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batcher = StreamBatcher(corpus.train_ids, 32, 64, seed=1337)
    h, chars, epoch, k, t0 = None, 0, 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        if k == batcher.windows(epoch):
            epoch, k, h = epoch + 1, 0, None
        x, y = batcher.get(epoch, k)
        logits, h = model(x, h)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        h, k, chars = h.detach(), k + 1, chars + x.numel()
    elapsed = time.perf_counter() - t0
    return {"loss": score(model, corpus), "chars": chars, "chars_per_s": round(chars / elapsed), "size": "1 x 512"}


def machine() -> dict:
    """The CPU, its ISA level ("AVX2 (emulated)" where the variables limit the libraries to AVX2) and torch."""
    emulation = emulated()
    isa = "AVX2 (emulated)" if emulates_avx2(emulation) else isa_level()
    row = {"cpu": cpu_model(), "isa": isa, "torch": torch.__version__}
    return {**row, **({"emulation": emulation} if emulation else {})}


def table() -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    for name in dict.fromkeys(r["corpus"] for r in rows):
        print(f"\n### {name}\n\n| point | size | validation loss | chars/s | characters seen | CPU |")
        print("|---|---|---|---|---|---|")
        for r in sorted((r for r in rows if r["corpus"] == name), key=lambda r: r["loss"]):
            print(
                f"| {r['point']} | {r['size']} | {r['loss']:.4f} | {r['chars_per_s']:,} | {r['chars']:,} | "
                f"{r['cpu']}, {r['isa']} |"
            )


def _cell(row: dict | None) -> str:
    if not row:
        return "–"
    return f"{row['loss']:.4f} ({row['size'].replace(' x ', ' × ')}, {row['chars_per_s'] / 1000:.1f}k/s)"


SUMMARY_FILE = RESULTS.with_suffix(".md")
SUMMARY_HEADER = (
    "| text | training characters | built-in: 1 × 256 | default: fitted | best of the sweep | torch.nn.LSTM |\n"
    "|---|---|---|---|---|---|"
)


def summary() -> str:
    """One table per CPU and ISA level, one row per corpus: the built-in settings, the fitted default, the best
    run of the sweep on that CPU, torch.nn.LSTM (its latest row of each)."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    parts = [
        "# Five minutes on other texts",
        "",
        f"Written by `python bench/text_sweep.py --summary` from {RESULTS.name}. Validation loss in nats per "
        "character on each text's spread validation split; sizes are layers × hidden; chars/s is the training "
        "speed of the run. A corpus is built from the machine's own files (bench/corpora.py), so the same name "
        "can hold a slightly different text on another machine: each table gives its own character counts.",
    ]
    for cpu, isa in dict.fromkeys((r["cpu"], r["isa"]) for r in rows):
        here = [r for r in rows if (r["cpu"], r["isa"]) == (cpu, isa)]
        dtypes = ", ".join(sorted({r.get("dtype", "float32") for r in here}))  # torch_lstm rows: float32
        budgets = ", ".join(f"{b:.0f}" for b in sorted({r["budget_s"] for r in here}))
        dates = " to ".join(dict.fromkeys([min(r["date"] for r in here), max(r["date"] for r in here)]))
        parts += ["", f"## {cpu}, {isa}, {dtypes}, {budgets} s a run ({dates})", "", SUMMARY_HEADER]
        parts += [_summary_row(name, [r for r in here if r["corpus"] == name]) for name in _corpora(here)]
    return "\n".join(parts) + "\n"


def _corpora(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["corpus"] for r in rows))


def training_chars(rows: list[dict]) -> str:
    """The training characters, as a gru-lm run of this text reported them in its last line."""
    for r in rows:
        found = re.search(r"passes over the ([\d,]+) training characters", " ".join(r.get("stderr_tail", [])))
        if found:
            return found.group(1)
    return "–"


def _summary_row(name: str, mine: list[dict]) -> str:
    cell = {p: next((r for r in reversed(mine) if r["point"] == p), None) for p in ("builtin", "fit", "torch_lstm")}
    best = min(mine, key=lambda r: r["loss"])
    shown = [_cell(r) for r in cell.values()]
    return (
        f"| {name} | {training_chars(mine)} | {shown[0]} | **{shown[1]}** | "
        f"{best['loss']:.4f} ({_point_label(best)}) | {shown[2]} |"
    )


def _point_label(row: dict) -> str:
    """The point's name, or for a point of settings (key=value,...) its size."""
    return f"settings of {row['size'].replace(' x ', ' × ')}" if "=" in row["point"] else row["point"]


def write_summary() -> str:
    text = summary()
    SUMMARY_FILE.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="a corpus of bench/corpora.py, by name")
    ap.add_argument("--point", action="append", default=[], help="builtin, fit, torch_lstm or key=value,...")
    ap.add_argument("--budget", type=float, default=300.0)
    ap.add_argument("--table", action="store_true", help="print the recorded results")
    ap.add_argument("--summary", action="store_true", help=f"write (and print) {SUMMARY_FILE.name}")
    args = ap.parse_args()
    if args.table:
        return table()
    if args.summary:
        print(write_summary(), end="")
        return None
    path, corpus = corpus_of(args.corpus)
    for point in args.point:
        out = RUNS / args.corpus / point.replace(",", "_")
        if point == "torch_lstm":
            row = torch_lstm_point(corpus, args.budget)
        else:
            row = gru_lm_point(path, corpus, point, args.budget, out)
        row = {"corpus": args.corpus, "point": point, "budget_s": args.budget, **row}
        row.update(machine(), date=time.strftime("%Y-%m-%d"))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{args.corpus} {point}: {row['loss']:.4f} ({row['size']}, {row['chars_per_s']:,} chars/s)", flush=True)
        write_summary()


if __name__ == "__main__":
    main()
