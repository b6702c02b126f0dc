"""Reports of finished runs: a Markdown table and loss curves (for `gru-lm plot` and `gru-lm compare`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import checkpoint
from .errors import UserError
from .model import ModelConfig


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl here (is it a gru-lm run folder?)")
    try:
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON lines ({e})") from None


def summarize(run_dir: Path) -> dict:
    """One row of the comparison table, from a run folder's metrics and its best checkpoint."""
    rows = read_metrics(run_dir)
    if not rows:
        raise UserError(f"{run_dir}: metrics.jsonl is empty")
    state = checkpoint.load(Path(run_dir) / "best.pt")
    params = sum(t.numel() for t in state["model"].values())
    evals = [r for r in rows if "val_loss" in r]
    best = min(evals, key=lambda r: r["val_loss"]) if evals else None
    last = rows[-1]
    cfg = state["model_config"]
    cell = ModelConfig(**cfg).label()
    val = best["val_loss"] if best else math.nan
    return {
        "run": str(run_dir), "cell": cell, "hidden": cfg["hidden_size"], "layers": cfg["layers"], "params": params,
        "steps": last["step"], "chars": last["chars"], "wall_s": last["elapsed_s"],
        "train_loss": last["train_loss"], "val_loss": val, "perplexity": math.exp(val), "bpc": val / math.log(2),
        "chars_per_s": last["chars"] / max(last["elapsed_s"], 1e-9),
    }


def markdown_table(summaries: list[dict]) -> str:
    head = ("| run | cell | hidden × layers | parameters | steps | characters | wall time | train loss | "
            "best val loss | val perplexity | val bpc | chars/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {Path(s['run']).name} | {s['cell']} | {s['hidden']} × {s['layers']} | {s['params']:,} | {s['steps']:,} | "
        f"{s['chars']:,} | {s['wall_s']:.0f} s | {s['train_loss']:.3f} | {s['val_loss']:.4f} | {s['perplexity']:.3f} | "
        f"{s['bpc']:.3f} | {s['chars_per_s']:,.0f} |\n"
        for s in summaries
    )
    return head + body


def plot_runs(run_dirs: list[Path], out_png: Path, title: str = "") -> None:
    """Validation (and train) loss against wall time and against characters seen, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    all_vals = []
    for run in run_dirs:
        rows = read_metrics(run)
        evals = [r for r in rows if "val_loss" in r]
        all_vals += [r["val_loss"] for r in evals]
        for ax, key, scale in ((axes[0], "elapsed_s", 1.0), (axes[1], "chars", 1e6)):
            line, = ax.plot([r[key] / scale for r in evals], [r["val_loss"] for r in evals], marker=".",
                            label=f"{Path(run).name} (val)")
            ax.plot([r[key] / scale for r in rows], [r["train_loss"] for r in rows], color=line.get_color(),
                    alpha=0.25, linewidth=0.8, label=f"{Path(run).name} (train)")
    axes[0].set_xlabel("wall time (s)")
    axes[1].set_xlabel("characters seen (millions)")
    axes[0].set_ylabel("loss (nats per character)")
    if all_vals:
        axes[0].set_ylim(min(all_vals) - 0.05, min(max(all_vals), min(all_vals) + 1.0) + 0.05)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def write_report(run_dirs: list[Path], out_dir: Path, title: str) -> Path:
    """report.md (table, the GRU-versus-RNN difference where both are there) and loss.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = [summarize(r) for r in run_dirs]
    plot_runs(run_dirs, out_dir / "loss.png", title)
    text = f"# {title}\n\n" + markdown_table(summaries)
    grus = [s for s in summaries if s["cell"].startswith("gru")]
    rnns = [s for s in summaries if s["cell"] == "rnn"]
    if grus and rnns:
        g, r = min(grus, key=lambda s: s["val_loss"]), min(rnns, key=lambda s: s["val_loss"])
        text += (f"\nBest GRU against best RNN: validation loss {g['val_loss']:.4f} against {r['val_loss']:.4f} nats/char "
                 f"(RNN minus GRU: {r['val_loss'] - g['val_loss']:+.4f}); perplexity {g['perplexity']:.3f} against "
                 f"{r['perplexity']:.3f} (the GRU's is {g['perplexity'] / r['perplexity']:.3f}× the RNN's).\n")
    text += ("\nLosses in nats per character; validation as during training (the validation split, at most its "
             "first eval_chars characters, in eval_streams contiguous streams, each from a zero state; 32 and "
             "1,000,000 by default); `gru-lm perplexity` gives the exact single-stream figure.\n"
             "\n![validation loss against wall time and characters seen](loss.png)\n")
    (out_dir / "report.md").write_text(text)
    return out_dir / "report.md"


def perplexity_json(rows: list[dict]) -> str:
    """`gru-lm perplexity --json`: a list with one object per checkpoint."""
    keys = ("checkpoint", "file", "chars", "loss", "perplexity", "bpc", "unknown")
    return json.dumps([{k: r[k] for k in keys} for r in rows], indent=2)


def perplexity_table(rows: list[dict], scored_on: str | None):
    """The rich table of `gru-lm perplexity`: one row per checkpoint."""
    from rich.table import Table

    table = Table(title=f"scored on {scored_on}" if scored_on else "scored on each checkpoint's validation split")
    for col in ("checkpoint", "cell", "params", "chars", "loss", "perplexity", "bpc"):
        table.add_column(col, justify="left" if col in ("checkpoint", "cell") else "right", overflow="fold")
    for r in rows:
        table.add_row(r["checkpoint"], r["cell"], f"{r['params']:,}", f"{r['chars']:,}", f"{r['loss']:.4f}",
                      f"{r['perplexity']:.3f}", f"{r['bpc']:.4f}")
    return table
