"""The speed tables of the benchmarks, rendered from the JSON files they write to bench/results/.

Each benchmark prints its summary at the end of a run through these functions, and docs/performance.md
includes the same tables (bench/include.py writes them between marker comments there; a test checks that
they are current), so a figure in the docs is the one a benchmark wrote, never a copy made by hand.
bench/quality.py does the same for the tables of docs/results.md; bench/tables.py names them all.

Every renderer takes the results files of one block, in the order the block names them: one file for the
per-CPU tables (training, sampling), one file per CPU for the tables that set CPUs side by side (serving,
the large read-out, exported models). Sizes are written layers × hidden.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: our float32 window paths, fastest first, as rnn_speed names them in a cell's [kernels] ending
PATHS = ("avx512", "avx2", "blas")


@dataclass(frozen=True)
class ResultFile:
    """One benchmark's results: its path relative to the repository (what a table cites) and its JSON."""

    name: str
    data: dict

    @classmethod
    def read(cls, name: str) -> ResultFile:
        """A .json file as it is; a .jsonl file (one run a line, as the sweeps append them) as {"rows": [...]}."""
        text = (ROOT / name).read_text(encoding="utf-8")
        if name.endswith(".jsonl"):
            return cls(name, {"rows": [json.loads(line) for line in text.splitlines() if line.strip()]})
        return cls(name, json.loads(text))


def cpu_line(machine: dict, dtype: str | None = None) -> str:
    """The CPU a run measured, as a table's caption names it: model, ISA level, dtype (the header's unless
    given), default kernels, date."""
    cpuid = f" ({machine['cpuid']})" if machine.get("cpuid") else ""
    products = f", products {machine['products']}" if machine.get("products") else ""
    dtype = dtype or machine["dtype"]
    return (
        f"{machine['cpu']}{cpuid}, {machine['isa']}, {dtype}, kernels {machine['kernels']}{products}, "
        f"torch {machine['torch']}, {machine['threads']} threads, {machine['date']}"
    )


def ceiling_note(data: dict) -> str:
    """The ceiling's numerator where a run recorded it: the 2048³ float32 product's rate, and each library's
    where the run timed both (runs before that timed torch.mm only)."""
    if "matmul_flops" not in data:
        return ""
    libraries = data.get("matmul_flops_by_library")
    each = ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in libraries.items()) if libraries else "torch.mm"
    return f", ceiling {data['matmul_flops'] / 1e9:.0f} GFLOP/s ({each})"


#: The training step around the cells an rnn_speed run timed, as its caption names it (runs without the
#: header's "step" timed the plain one).
STEP_NAMES = {"train": "gru-lm train's step", "plain": "plain step (nn.Linear, F.cross_entropy, Adam's loop)"}


def step_note(data: dict) -> str:
    """The step an rnn_speed run timed around its cells, for a file whose rows are its cells at their shapes."""
    if not any("cell" in row and "window" in row for row in data.get("rows", [])):
        return ""
    return ", " + STEP_NAMES[data["machine"].get("step", "plain")]


def thousands(rate: float) -> str:
    """One short form of a rate for every table: 12.3k below a hundred thousand, 123k from there."""
    return f"{rate / 1e3:.1f}k" if rate < 1e5 else f"{rate / 1e3:.0f}k"


def size_of(layers: int, hidden: int) -> str:
    return f"{layers} × {hidden}"


def only(files: list[ResultFile]) -> ResultFile:
    if len(files) != 1:
        raise ValueError(f"this table reads one results file, not {len(files)}")
    return files[0]


# training: bench/rnn_speed.py


#: the ending of a cell's name that rnn_speed runs under bfloat16 autocast
BF16 = " (bfloat16)"


def on_kernels(name: str) -> tuple[str, str | None]:
    """A cell's name without its [kernels] ending, and those kernels (None: the default choice)."""
    if name.endswith("]"):
        base, _, kernels = name[:-1].rpartition(" [")
        return base, kernels
    return name, None


def cell_family(cell: str) -> tuple[str, str]:
    """("GRU reset-after", "ours [avx512]") from "ours GRU reset-after [avx512]"; torch.nn.GRU is the
    reset-after GRU (torch's own form), and a name's (bfloat16) goes to the column, after its path:
    "ours GRU reset-after (bfloat16) [blas]" is ("GRU reset-after", "ours [blas] (bfloat16)")."""
    base, kernels = on_kernels(cell)
    bf16 = BF16 if base.endswith(BF16) else ""
    base = base.removesuffix(BF16)
    path = f" [{kernels}]" if kernels else ""
    if base.startswith("torch.nn."):
        name = base.removeprefix("torch.nn.")
        return ("GRU reset-after" if name == "GRU" else name), "torch.nn" + bf16
    return base.removeprefix("ours "), "ours" + path + bf16


#: the torch.nn cell a cell of ours is measured against: torch.nn.GRU has the reset-after form only
TORCH_TWIN = {"GRU reset-before": "GRU reset-after"}


def rnn_speed(files: list[ResultFile]) -> str:
    """One row per size and cell, one column per way of running it (torch.nn, ours on each window path):
    characters per second, the ratio to torch.nn's cell of the same kind, the share of the ceiling."""
    result = only(files).data
    default = result["machine"]["kernels"]
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    columns: list[str] = []
    for row in result["rows"]:
        if "cell" not in row:
            continue  # an end-to-end command's row
        family, column = cell_family(row["cell"])
        if column == "ours":
            column = f"ours [{default}]"
        columns += [column] if column not in columns else []
        cells.setdefault((size_of(row["layers"], row["hidden"]), family), {})[column] = row
    columns.sort(key=column_order)
    lines = ["| layers × hidden | cell | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for (size, family), by_column in cells.items():
        torch_nn = cells.get((size, TORCH_TWIN.get(family, family)), {}).get("torch.nn")
        entries = [rnn_entry(by_column.get(c), torch_nn) for c in columns]
        lines.append(f"| {size} | {family} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def column_order(column: str) -> tuple[int, int, int, str]:
    """torch.nn's columns first, then ours: float32 before bfloat16, and each on its paths fastest first."""
    kernels = re.search(r"\[(\w+)\]", column)
    rank = PATHS.index(kernels.group(1)) if kernels and kernels.group(1) in PATHS else len(PATHS)
    return (0 if column.startswith("torch.nn") else 1, 1 if column.endswith(BF16) else 0, rank, column)


def rnn_entry(row: dict | None, torch_nn: dict | None) -> str:
    """chars/s, the ratio to torch.nn's cell (the median of the run's side-by-side ratios, each taken against
    torch.nn.GRU in the same round), the share of the ceiling."""
    if row is None:
        return "–"
    ratio = f", {row['ratio'] / torch_nn['ratio']:.2f}×" if torch_nn else ""
    return f"{thousands(row['chars_per_s'])}{ratio}, {row['of_ceiling']:.0%}"


# sampling: bench/sample_speed.py


def sample_speed(files: list[ResultFile]) -> str:
    """One stream per model: gru-lm sample (on each vector width measured) against torch.nn.GRU stepped."""
    rows = only(files).data["rows"]
    widths = list(dict.fromkeys(k for row in rows for k in row.get("by_kernels", {})))
    head = ["model", "gru-lm sample", *(f"sampler [{k}]" for k in widths), "torch.nn.GRU stepped", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in rows:
        by_width = [f"{row['by_kernels'][k]:,.0f}" if k in row.get("by_kernels", {}) else "–" for k in widths]
        cells = [row["model"], f"{row['one_stream']:,.0f}", *by_width, f"{row['torch_gru']:,.0f}"]
        lines.append("| " + " | ".join(cells) + f" | **{row['ratio']:.1f}×** |")
    return "\n".join(lines)


def sample_streams(files: list[ResultFile]) -> str:
    """N streams generated together: the characters per second of all of them, and that over N × one stream."""
    rows = only(files).data["rows"]
    head = "| streams N | " + " | ".join(f"{r['model']}: chars/s, all streams | over N × one stream" for r in rows)
    lines = [head + " |", "|---" * (1 + 2 * len(rows)) + "|"]
    for i, first in enumerate(rows[0]["streams"]):
        cells = [f"{r['streams'][i]['chars_per_s']:,.0f} | {r['streams'][i]['over_n_one']:.2f}" for r in rows]
        lines.append(f"| {first['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# serving: bench/serve_load.py


def serve_load(files: list[ResultFile]) -> str:
    """A row per CPU: this checkout's server at 32 and 128 writers, and the previous server's 32 where measured."""
    head = "| CPU, float32 | 32 writers: chars/s | first char p99 | 128 writers: chars/s | whole answer p99 "
    lines = [head + "| previous server, 32 writers | results |", "|---" * 7 + "|"]
    for f in files:
        rows = {(r["server"].split(" (")[0], r["clients"]): r for r in f.data["rows"]}
        now, crowd, old = rows.get(("this checkout", 32)), rows.get(("this checkout", 128)), rows.get(("previous", 32))
        if now is None or crowd is None:
            raise ValueError(f"{f.name} has no 32- and 128-writer levels of this checkout")
        before = f"{old['chars_per_s']:,.0f}" if old else "–"
        cpu = f"{f.data['cpu']}, {f.data['cpuid']}" if f.data.get("cpuid") else f.data["cpu"]
        lines.append(
            f"| {cpu} | {now['chars_per_s']:,.0f} | {now['first_p99']:.2f} s | {crowd['chars_per_s']:,.0f} "
            f"| {crowd['whole_p99']:.2f} s | {before} | `{f.name}` |"
        )
    return "\n".join(lines)


# the large read-out: bench/readout_speed.py


def readout_speed(files: list[ResultFile]) -> str:
    """A row per CPU and window path: the fused read-out at V = 6,000, its share of the ceiling and its
    speed over the plain read-out's on the same path."""
    lines = ["| CPU | kernels | V = 6,000, fused: chars/s | share of the ceiling | fused over plain | results |"]
    lines.append("|---" * 6 + "|")
    for f in files:
        machine = f.data["machine"]
        cpuid = f" ({machine['cpuid']})" if machine.get("cpuid") else ""
        cpu = f"{machine['cpu']}{cpuid}, {machine['isa']}, {machine['dtype']}"
        if f.data.get("emulating"):
            cpu += " (AVX2 alone, emulated)"
        for row in f.data["rows"]:
            if row["V"] == 6000 and row["readout"] == "fused":
                lines.append(
                    f"| {cpu} | {row['kernels']} | {row['chars_per_s']:,.0f} | {row['of_ceiling']:.0%} "
                    f"| {row['vs_plain']:.2f}× | `{f.name}` |"
                )
    return "\n".join(lines)


# exported models: bench/export_speed.py


def export_speed(files: list[ResultFile]) -> str:
    result = only(files).data
    lines = [f"| runtime, {result['model']}, one stream | chars/s | over gru-lm sample |", "|---|---|---|"]
    base = result["rates"]["gru-lm sample"]
    for runtime, rate in result["rates"].items():
        lines.append(f"| {runtime} | {rate:,.0f} | {rate / base:.2f}× |")
    return "\n".join(lines)


SPEED: dict[str, Callable[[list[ResultFile]], str]] = {
    "rnn_speed": rnn_speed,
    "sample_speed": sample_speed,
    "sample_streams": sample_streams,
    "serve_load": serve_load,
    "readout_speed": readout_speed,
    "export_speed": export_speed,
}

#: the tables whose results file names its CPU in a machine header, which their caption repeats
ONE_CPU = ("rnn_speed", "sample_speed", "sample_streams", "export_speed")


def measured_dtype(data: dict) -> str:
    """The dtypes a run's rows measured: its header's, and bfloat16 autocast where rows of cells under it are
    there (rnn_speed --bfloat16 runs both, and its header named only float32)."""
    dtype = data["machine"]["dtype"]
    under_autocast = any(str(row.get("cell", "")).endswith(BF16) for row in data.get("rows", []))
    return f"{dtype} and bfloat16 autocast" if under_autocast and "bfloat16" not in dtype else dtype


def caption(files: list[ResultFile]) -> str:
    """The line under a table: the CPU of each file that names one, and the file."""
    parts = [
        f"{cpu_line(f.data['machine'], measured_dtype(f.data))}{ceiling_note(f.data)}{step_note(f.data)}: `{f.name}`"
        for f in files
        if "machine" in f.data
    ]
    return "CPU " + "; ".join(parts) if parts else ""
