"""The tables of docs/results.md (how good a model gets in a budget), rendered from the files the tools wrote.

- `gru-lm compare` writes report.json beside each report.md: its runs, each config's spread over seeds, each
  pair's Welch difference and the best GRU against the best RNN. `gru_rnn`, `report_groups`, `report_pairs`
  and `report_runs` render them.
- bench/sweep.py appends its runs to bench/results/sweep.jsonl; `sweep` sets each size candidate of
  gru_lm/training/fit_candidates.json against the budgets it was swept at.
- bench/quick_start.py appends a run of the README's first command to bench/results/quick_start.jsonl;
  `quick_start` gives one row per CPU class and the size the fit picked there.

The renderers only choose and format: every mean, spread and interval is the one its tool computed.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.summary import ResultFile, only, size_of, thousands

#: how the tables name a cell (report.json keeps ModelConfig.label's lower case)
CELL_NAMES = {"gru": "GRU", "gru (reset-after)": "GRU (reset-after)", "lstm": "LSTM", "rnn": "RNN"}


def cell_name(label: str) -> str:
    return CELL_NAMES.get(label, label)


def budget(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 300 else f"{seconds:.0f} s"


def machine_of(report: ResultFile) -> str:
    """The CPU and dtype its runs trained on (torch's version left to the report), or each one's if they differ."""
    machines = dict.fromkeys(r["machine"].split(", torch ")[0] for r in report.data["runs"])
    return "; ".join(machines)


def report_link(report: ResultFile) -> str:
    folder = report.name.rsplit("/", 1)[0]
    return f"[{folder}](../{folder}/report.md)"


def loss_of(group: dict, bold: bool = False) -> str:
    """A group's mean validation loss, with ± its standard deviation over seeds where it has several."""
    loss = group["val_loss"]
    mean = f"**{loss['mean']:.4f}**" if bold else f"{loss['mean']:.4f}"
    return mean + (f" ± {loss['std']:.4f}" if loss["n"] > 1 else "")


def sized(group: dict) -> str:
    seeds = f", {group['runs']} seeds" if group["runs"] > 1 else ""
    return f"({size_of(group['layers'], group['hidden'])}{seeds})"


def gru_rnn(files: list[ResultFile]) -> str:
    """A row per report: its budget and CPU, the best GRU, the best plain RNN (as the report chose them),
    and their perplexities' ratio."""
    lines = ["| budget | CPU, dtype | GRU | plain RNN | GRU's perplexity / RNN's | report |", "|---" * 6 + "|"]
    for f in files:
        groups = {g["name"]: g for g in f.data["groups"]}
        against = f.data["gru_against_rnn"]
        gru = groups[against["gru"]] if against else best_gru(f)
        rnn_cell = f"{loss_of(groups[against['rnn']])} {sized(groups[against['rnn']])}" if against else "not measured"
        ratio = f"{against['perplexity_ratio']:.3f}×" if against else ""
        spent = next(r["budget_s"] for r in f.data["runs"] if r["group"] == gru["name"])
        lines.append(
            f"| {budget(spent) if spent else 'steps'} | {machine_of(f)} | {loss_of(gru, bold=True)} {sized(gru)} "
            f"| {rnn_cell} | {ratio} | {report_link(f)} |"
        )
    return "\n".join(lines)


def best_gru(report: ResultFile) -> dict:
    """The GRU group of lowest mean validation loss, in a report that trained no RNN to set it against."""
    grus = [g for g in report.data["groups"] if g["cell"].startswith("gru")]
    if not grus:
        raise ValueError(f"{report.name} has no GRU run")
    return min(grus, key=lambda g: g["val_loss"]["mean"])


def spread_text(s: dict, fmt: str) -> str:
    return f"{s['mean']:{fmt}}" + (f" ± {s['std']:{fmt}}" if s["n"] > 1 else "")


def report_groups(files: list[ResultFile]) -> str:
    """One report's configs: size, speed, and the mean ± sd [range] of their losses over the seeds."""
    report = only_report(files)
    groups = report.data["groups"]
    best = min(g["val_loss"]["mean"] for g in groups)
    head = "| config | cell | size | parameters | chars/s | val loss, mean ± sd [range] | perplexity | bits/char |"
    lines = [head, "|---" * 8 + "|"]
    for g in groups:
        loss = g["val_loss"]
        mean = spread_text(loss, ".4f")
        shown = f"**{mean}**" if loss["mean"] == best else mean
        seeds = f" [{loss['low']:.4f}–{loss['high']:.4f}]" if loss["n"] > 1 else ""
        lines.append(
            f"| {g['name']} | {cell_name(g['cell'])} | {size_of(g['layers'], g['hidden'])} | {g['params']:,} "
            f"| {thousands(g['chars_per_s']['mean'])} | {shown}{seeds} "
            f"| {spread_text(g['perplexity'], '.3f')} | {spread_text(g['bpc'], '.3f')} |"
        )
    return "\n".join(lines)


def report_pairs(files: list[ResultFile]) -> str:
    """One report's pairs of configs: the difference of their mean losses, its 95% interval, the verdict."""
    report = only_report(files)
    cells = {g["name"]: cell_name(g["cell"]) for g in report.data["groups"]}
    name = cells.get if len(set(cells.values())) == len(cells) else str
    lines = ["| A − B | difference of mean val loss | 95% interval (Welch) | verdict |", "|---" * 4 + "|"]
    for p in report.data["pairs"]:
        a, b = name(p["a"]), name(p["b"])
        if p["low"] is None:
            interval, verdict = "–", "one run on a side: no interval"
        else:
            interval = f"[{signed(p['low'])}, {signed(p['high'])}]"
            verdict = f"the {a if p['diff'] < 0 else b} is better" if p["decided"] else "the seeds cannot tell"
        lines.append(f"| {a} − {b} | {signed(p['diff'])} | {interval} | {verdict} |")
    return "\n".join(lines)


def signed(x: float) -> str:
    return f"{x:+.4f}".replace("-", "−")


def report_runs(files: list[ResultFile]) -> str:
    """One report's runs, one row each: size, parameters, speed, characters seen and best validation loss."""
    runs = only_report(files).data["runs"]
    best = min(r["val_loss"] for r in runs)
    lines = ["| run | cell | size | parameters | chars/s | characters seen | best val loss |", "|---" * 7 + "|"]
    for r in runs:
        loss = f"**{r['val_loss']:.4f}**" if r["val_loss"] == best else f"{r['val_loss']:.4f}"
        lines.append(
            f"| {r['name']} | {cell_name(r['cell'])} | {size_of(r['layers'], r['hidden'])} | {r['params']:,} "
            f"| {thousands(r['chars_per_s'])} | {r['chars'] / 1e6:.2f}M | {loss} |"
        )
    return "\n".join(lines)


def only_report(files: list[ResultFile]) -> ResultFile:
    if len(files) != 1 or "groups" not in files[0].data:
        raise ValueError("this table reads one report.json")
    return files[0]


def report_caption(files: list[ResultFile]) -> str:
    return "Trained on " + "; ".join(f"{machine_of(f)}: `{f.name}`" for f in files)


# the size candidates: bench/sweep.py --candidates


def recipe(settings: dict) -> str:
    """A candidate's settings as a table cell: size, dropout, weight drop, schedule, decay, averaging."""
    parts = [size_of(settings["layers"], settings["hidden_size"]), f"dropout {settings['dropout']:g}"]
    if settings.get("weight_drop"):
        parts.append(f"weight drop {settings['weight_drop']:g}")
    parts.append(f"lr {settings['lr']:g} → {short(settings['min_lr'])}")
    if settings.get("weight_decay") is not None:
        parts.append(f"weight decay {settings['weight_decay']:g}")
    if settings.get("ema_decay"):
        parts.append(f"averaging {settings['ema_decay']:g}")
    return ", ".join(parts)


def short(x: float) -> str:
    """1e-5 and 3e-4 for small rates, as the configs are read; plain decimals above a thousandth."""
    if x == 0 or x >= 1e-3:
        return f"{x:g}"
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def sweep(files: list[ResultFile]) -> str:
    """Per CPU that swept the candidates: a row per candidate of fit_candidates.json, a column per budget,
    each run's best validation loss (characters seen, characters per second); the best of a budget bold,
    and * marking a run that a config made as it fitted itself (its row's source says so)."""
    rows, table = files[0].data["rows"], files[1].data
    swept = [r for r in rows if r.get("candidate") and r.get("cpu")]
    cpus = list(dict.fromkeys((r["cpu"], r["isa"], r["dtype"]) for r in swept))
    return "\n\n".join(
        sweep_table(cpu, [r for r in swept if (r["cpu"], r["isa"], r["dtype"]) == cpu], table) for cpu in cpus
    )


def sweep_table(cpu: tuple[str, str, str], rows: list[dict], table: dict) -> str:
    budgets = sorted({r["budget_s"] for r in rows})
    best = {b: min(r["best_val_loss"] for r in rows if r["budget_s"] == b) for b in budgets}
    head = f"| candidate ({', '.join(cpu)}) | recipe | " + " | ".join(budget(b) for b in budgets) + " |"
    lines = [head, "|---" * (2 + len(budgets)) + "|"]
    for c in table["candidates"]:
        mine = [r for r in rows if r["candidate"] == c["name"]]
        cells = ["; ".join(sweep_entry(r, best[b]) for r in mine if r["budget_s"] == b) for b in budgets]
        lines.append(f"| {c['name']} | {recipe(c['settings'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_entry(row: dict, best: float) -> str:
    loss = f"{row['best_val_loss']:.4f}"
    shown = f"**{loss}**" if row["best_val_loss"] == best else loss
    made_by = "*" if row.get("source") else ""
    return f"{shown} ({row['chars'] / 1e6:.2f}M, {thousands(row['chars_per_s'])}/s){made_by}"


# the README's first command: bench/quick_start.py


def quick_start(files: list[ResultFile]) -> str:
    """A row per CPU class and size the fit picked there: the runs recorded, their speed and best losses."""
    merged: dict[tuple, dict] = {}
    for r in only(files).data["rows"]:
        key = (r["cpu"], r.get("cpuid"), r["isa"], r["dtype"], r["size"])
        m = merged.setdefault(key, {"runs": 0, "timed": 0, "chars_per_s": [], "best_val_loss": []})
        m["runs"] += r["runs"]
        m["timed"] += r["runs"] if r["chars_per_s"] else 0
        m["chars_per_s"] += r["chars_per_s"] or []
        m["best_val_loss"] += r["best_val_loss"]
    head = "| CPU (2-core VM) | ISA level | dtype (`auto`) | size the fit picked | chars/s | best val loss | runs |"
    lines = [head, "|---" * 7 + "|"]
    for (cpu, cpuid, isa, dtype, size), m in merged.items():
        name = f"{cpu} ({cpuid})" if cpuid else cpu
        rate = span(m["chars_per_s"], thousands) if m["chars_per_s"] else "–"
        rate += f" ({m['timed']} of the runs)" if 0 < m["timed"] < m["runs"] else ""
        loss = span(m["best_val_loss"], lambda x: f"{x:.4f}")
        lines.append(f"| {name} | {isa} | {dtype} | {size} | {rate} | {loss} | {m['runs']} |")
    return "\n".join(lines)


def span(values: list[float], fmt: Callable[[float], str]) -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}–{high}"


QUALITY: dict[str, Callable[[list[ResultFile]], str]] = {
    "gru_rnn": gru_rnn,
    "report_groups": report_groups,
    "report_pairs": report_pairs,
    "report_runs": report_runs,
    "sweep": sweep,
    "quick_start": quick_start,
}
