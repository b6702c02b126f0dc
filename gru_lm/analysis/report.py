"""Reports of finished runs: Markdown tables and loss curves (for `gru-lm plot` and `gru-lm compare`).

A report compares groups of runs: a config trained with several seeds is one group, and its rows
are summarised by their mean, spread and range; each pair of groups gets the difference of their
mean validation losses with a 95% interval (stats.difference), so a report says "better" only where
the runs can tell the two apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gru_lm.analysis.stats import difference, spread
from gru_lm.errors import UserError
from gru_lm.model import checkpoint
from gru_lm.model.char_model import ModelConfig


@dataclass
class RunGroup:
    """The runs of one config (its seeds), or one run given with --run: one row of a report."""

    name: str
    runs: list[Path] = field(default_factory=list)


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
    val = best["val_loss"] if best else math.nan
    return {
        "run": str(run_dir),
        "cell": ModelConfig(**cfg).label(),
        "hidden": cfg["hidden_size"],
        "layers": cfg["layers"],
        "params": params,
        "seed": state["settings"]["seed"],
        "steps": last["step"],
        "chars": last["chars"],
        "wall_s": last["elapsed_s"],
        "train_loss": last["train_loss"],
        "val_loss": val,
        "perplexity": math.exp(val),
        "bpc": val / math.log(2),
        "chars_per_s": last["chars"] / max(last["elapsed_s"], 1e-9),
        "budget_s": state["settings"]["max_time"],
        "machine": state["machine"],
    }


def markdown_table(summaries: list[dict], names: list[str] | None = None) -> str:
    """One row per run: names (default: the run folders' names), cell, size, budget spent, losses."""
    head = (
        "| run | cell | layers × hidden | parameters | steps | characters | wall time | train loss | "
        "best val loss | val perplexity | val bpc | chars/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    names = names or [Path(s["run"]).name for s in summaries]
    body = "".join(
        f"| {name} | {s['cell']} | {s['layers']} × {s['hidden']} | {s['params']:,} | {s['steps']:,} | "
        f"{s['chars']:,} | {s['wall_s']:.0f} s | {s['train_loss']:.3f} | {s['val_loss']:.4f} | {s['perplexity']:.3f} | "
        f"{s['bpc']:.3f} | {s['chars_per_s']:,.0f} |\n"
        for name, s in zip(names, summaries)
    )
    return head + body


def spread_of(values: list[float]) -> dict:
    """A group's mean, sample standard deviation and range, as report.json records them: a single value
    has no standard deviation (None); a run without evaluations makes its group's figures NaN, as in report.md."""
    s = spread(values)
    return {"n": s.n, "mean": s.mean, "std": s.std if s.n > 1 else None, "low": s.low, "high": s.high}


def group_stats(group: RunGroup, rows: list[dict]) -> dict:
    """One group's summary: its cell, size and runs, and the spread of its losses and speed."""
    first = rows[0]
    stats = {key: spread_of([r[key] for r in rows]) for key in ("val_loss", "perplexity", "bpc", "chars_per_s")}
    size = {"layers": first["layers"], "hidden": first["hidden"], "params": first["params"]}
    return {"name": group.name, "cell": first["cell"], **size, "runs": len(rows), **stats}


def pair_stats(a: dict, b: dict, rows: dict[str, list[dict]]) -> dict:
    """Two groups' difference of mean validation loss, with its 95% Welch interval where both have seeds."""
    d = difference([r["val_loss"] for r in rows[a["name"]]], [r["val_loss"] for r in rows[b["name"]]])
    interval = {} if math.isnan(d.low) else {"low": d.low, "high": d.high, "decided": d.decided}
    return {"a": a["name"], "b": b["name"], "diff": d.diff, "low": None, "high": None, "decided": False} | interval


def gru_against_rnn(groups: list[dict]) -> dict | None:
    """The best GRU group against the best RNN group, by mean validation loss (where both are there)."""
    grus = [g for g in groups if g["cell"].startswith("gru")]
    rnns = [g for g in groups if g["cell"] == "rnn"]
    if not grus or not rnns:
        return None
    g = min(grus, key=lambda x: x["val_loss"]["mean"])
    r = min(rnns, key=lambda x: x["val_loss"]["mean"])
    gp, rp = g["perplexity"]["mean"], r["perplexity"]["mean"]
    return {
        "gru": g["name"],
        "rnn": r["name"],
        "gru_loss": g["val_loss"]["mean"],
        "rnn_loss": r["val_loss"]["mean"],
        "gru_perplexity": gp,
        "rnn_perplexity": rp,
        "rnn_minus_gru": r["val_loss"]["mean"] - g["val_loss"]["mean"],
        "perplexity_ratio": gp / rp,
    }


def report_data(title: str, groups: list[RunGroup], rows: dict[str, list[dict]]) -> dict:
    """What report.md shows, as report.json records it for other tools (bench/quality.py renders the docs'
    tables from it): every run, each group's spread, each pair's difference, the GRU against the RNN."""
    stats = [group_stats(g, rows[g.name]) for g in groups]
    runs = [
        {"name": g.name if len(g.runs) == 1 else f"{g.name} (seed {r['seed']})", "group": g.name, **r}
        for g in groups
        for r in rows[g.name]
    ]
    pairs = [pair_stats(a, b, rows) for i, a in enumerate(stats) for b in stats[i + 1 :]]
    return {"title": title, "runs": runs, "groups": stats, "pairs": pairs, "gru_against_rnn": gru_against_rnn(stats)}


def groups_table(groups: list[dict]) -> str:
    """Per group: runs, and the mean ± standard deviation [range] of validation loss, perplexity and bpc."""
    out = "| config | cell | runs | val loss, mean ± sd [range] | perplexity | bits/char |\n|---|---|---|---|---|---|\n"
    for g in groups:
        cells = []
        for key, fmt in (("val_loss", ".4f"), ("perplexity", ".3f"), ("bpc", ".4f")):
            s = g[key]
            several = s["n"] > 1
            sd = f" ± {s['std']:{fmt}}" if several else ""
            rng = f" [{s['low']:{fmt}}–{s['high']:{fmt}}]" if several else ""
            cells.append(f"{s['mean']:{fmt}}{sd}{rng}")
        out += f"| {g['name']} | {g['cell']} | {g['runs']} | " + " | ".join(cells) + " |\n"
    return out


def pairs_table(pairs: list[dict]) -> str:
    """Each pair of groups: the difference of mean validation losses, its 95% interval, and the verdict."""
    out = "| A | B | A − B (val loss) | 95% interval (Welch) | verdict |\n|---|---|---|---|---|\n"
    for p in pairs:
        if p["low"] is None:
            interval, verdict = "-", "one run on a side: no interval"
        else:
            interval = f"[{p['low']:+.4f}, {p['high']:+.4f}]"
            better = p["a"] if p["diff"] < 0 else p["b"]
            verdict = f"{better} is better" if p["decided"] else "the runs cannot tell them apart"
        out += f"| {p['a']} | {p['b']} | {p['diff']:+.4f} | {interval} | {verdict} |\n"
    return out


def gru_against_rnn_line(best: dict | None) -> str:
    """The sentence under the tables that sets the best GRU against the best RNN, where both were trained."""
    if best is None:
        return ""
    return (
        f"\nBest GRU against best RNN: validation loss {best['gru_loss']:.4f} against {best['rnn_loss']:.4f} "
        f"nats/char (RNN minus GRU: {best['rnn_minus_gru']:+.4f}); perplexity {best['gru_perplexity']:.3f} against "
        f"{best['rnn_perplexity']:.3f} (the GRU's is {best['perplexity_ratio']:.3f}× the RNN's).\n"
    )


def plot_runs(groups: list[RunGroup] | list[Path], out_png: Path, title: str = "") -> None:
    """Validation loss against wall time and characters seen: every run of a group faint, their mean bold.

    A group's mean is taken evaluation by evaluation, over as many evaluations as its shortest run has.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _as_groups(groups)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    all_vals = []
    for g in groups:
        metrics = [read_metrics(run) for run in g.runs]
        evals = [[r for r in m if "val_loss" in r] for m in metrics]
        all_vals += [r["val_loss"] for e in evals for r in e]
        for ax, key, scale in ((axes[0], "elapsed_s", 1.0), (axes[1], "chars", 1e6)):
            color = None
            if len(metrics) == 1:  # a single run: its training loss too, faint
                (train,) = ax.plot(
                    [r[key] / scale for r in metrics[0]],
                    [r["train_loss"] for r in metrics[0]],
                    alpha=0.25,
                    linewidth=0.8,
                    label=f"{g.name} (train)",
                )
                color = train.get_color()
            for e in evals:
                (line,) = ax.plot(
                    [r[key] / scale for r in e],
                    [r["val_loss"] for r in e],
                    color=color,
                    alpha=0.3 if len(evals) > 1 else 1.0,
                    linewidth=0.9,
                    marker="" if len(evals) > 1 else ".",
                )
                color = line.get_color()
            if len(evals) > 1:
                n = min(len(e) for e in evals)
                xs = [sum(e[i][key] for e in evals) / len(evals) / scale for i in range(n)]
                ys = [sum(e[i]["val_loss"] for e in evals) / len(evals) for i in range(n)]
                ax.plot(xs, ys, color=color, linewidth=2.2, label=f"{g.name} (mean of {len(evals)})")
            else:
                ax.lines[-1].set_label(f"{g.name} (val)")
    _finish_plot(fig, axes, all_vals, title, out_png)


def _finish_plot(fig, axes, all_vals: list[float], title: str, out_png: Path) -> None:
    import matplotlib.pyplot as plt

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


def _as_groups(items: list[RunGroup] | list[Path]) -> list[RunGroup]:
    return [g if isinstance(g, RunGroup) else RunGroup(Path(g).name, [Path(g)]) for g in items]


def write_report(groups: list[RunGroup] | list[Path], out_dir: Path, title: str) -> Path:
    """report.md (every run; with several runs per group their spread and the pairwise differences;
    the GRU against the RNN where both are there), the same as report.json, and loss.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _as_groups(groups)
    rows = {g.name: [summarize(r) for r in g.runs] for g in groups}
    plot_runs(groups, out_dir / "loss.png", title)
    data = report_data(title, groups, rows)
    (out_dir / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    (out_dir / "report.md").write_text(report_markdown(data))
    return out_dir / "report.md"


def report_markdown(data: dict) -> str:
    """report.md from report.json's data: the runs; the groups and pairs where a group has several seeds;
    the GRU against the RNN; the machines; how the figures were measured."""
    runs = data["runs"]
    text = f"# {data['title']}\n\n" + markdown_table(runs, [r["name"] for r in runs])
    if any(g["runs"] > 1 for g in data["groups"]):
        text += "\n" + groups_table(data["groups"]) + "\n" + pairs_table(data["pairs"])
    text += gru_against_rnn_line(data["gru_against_rnn"])
    text += _machines(runs, [r["name"] for r in runs])
    return text + (
        "\nLosses in nats per character; validation as during training (the validation split's blocks, at most "
        "eval_chars characters taken from the start of every block, in at least eval_streams contiguous streams, "
        "each from a zero state); `gru-lm perplexity` gives the exact single-stream figure. Intervals are "
        "Welch's t intervals for the difference of the mean best validation losses.\n"
        "\n![validation loss against wall time and characters seen](loss.png)\n"
    )


def _machines(summaries: list[dict], names: list[str]) -> str:
    """Where the runs were trained: one line if they all share a machine, else one per run."""
    machines = [s["machine"] for s in summaries]
    if len(set(machines)) == 1:
        return f"\nTrained on: {machines[0]}.\n"
    return "\nTrained on:\n\n" + "".join(f"- {n}: {m}\n" for n, m in zip(names, machines))


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
        table.add_row(
            r["checkpoint"],
            r["cell"],
            f"{r['params']:,}",
            f"{r['chars']:,}",
            f"{r['loss']:.4f}",
            f"{r['perplexity']:.3f}",
            f"{r['bpc']:.4f}",
        )
    return table
