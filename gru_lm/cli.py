"""The `gru-lm` command line: a thin layer over the library (train, sample, perplexity, inspect)."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer

from . import __version__, checkpoint
from .config import resolve
from .errors import UserError

if TYPE_CHECKING:
    from .train import TrainResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train character-level language models with a GRU (or a plain RNN) written from its equations, "
    "sample from them, and measure them.",
)


def _fail(message: str) -> None:
    print(f"gru-lm: error: {message}", file=sys.stderr)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors():
    try:
        yield
    except UserError as e:
        _fail(str(e))


def _version(value: bool) -> None:
    if value:
        print(f"gru-lm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


@app.command()
def train(
    file: Path = typer.Argument(..., help="UTF-8 text file to train on, or a folder made by `gru-lm prepare` "
                                "(memory-mapped: for corpora of hundreds of MB).", show_default=False),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file of settings (flags override it)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder [default: runs/<config or file name>]."),
    cell: Optional[str] = typer.Option(None, help="Recurrent cell: gru or rnn (the plain RNN baseline). [default: gru]"),
    reset_after: Optional[bool] = typer.Option(
        None, "--reset-after/--reset-before",
        help="GRU candidate: reset after the recurrent product (torch.nn.GRU, cuDNN) or before it "
        "(the lecture's form, Cho et al. 2014). [default: reset-before]"),
    hidden_size: Optional[int] = typer.Option(None, help="Units per recurrent layer. [default: 256]"),
    layers: Optional[int] = typer.Option(None, help="Stacked recurrent layers. [default: 1]"),
    embed_size: Optional[int] = typer.Option(None, help="Character embedding size. [default: 64]"),
    dropout: Optional[float] = typer.Option(None, help="Dropout between layers and before the read-out. [default: 0]"),
    weight_drop: Optional[float] = typer.Option(
        None, help="DropConnect on the recurrent weights: each window drops this fraction of every W_hh's entries, "
        "the same ones at every step (AWD-LSTM's weight drop). [default: 0]"),
    seq_len: Optional[int] = typer.Option(None, help="Window T of truncated backpropagation through time. [default: 64]"),
    batch_size: Optional[int] = typer.Option(None, help="B contiguous streams trained side by side. [default: 32]"),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate of AdamW. [default: 0.003]"),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps in all (0 = no limit). [default: 0]"),
    max_time: Optional[float] = typer.Option(None, help="Stop after this many wall seconds (0 = no limit). [default: 300]"),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate and save last.pt every N steps. [default: 200]"),
    eval_chars: Optional[int] = typer.Option(
        None, help="Validate during training on at most this many characters from the start of the validation "
        "split (0 = all of it; `gru-lm perplexity` always scores all). [default: 1000000]"),
    patience: Optional[int] = typer.Option(
        None, help="Stop early after N evaluations without a better validation loss (0 = never). [default: 0]"),
    ema_decay: Optional[float] = typer.Option(
        None, help="Evaluate, save as the checkpoint's model and sample from an exponential moving average of the "
        "weights, folded in after every step with this decay (0 = off; 0.99 averages over ~100 steps). [default: 0]"),
    val_fraction: Optional[float] = typer.Option(None, help="Last fraction of FILE kept for validation. [default: 0.1]"),
    val_file: Optional[Path] = typer.Option(None, help="Validate on this file instead of a split of FILE."),
    seed: Optional[int] = typer.Option(None, help="Seed of weights, dropout and data offsets. [default: 1337]"),
    device: Optional[str] = typer.Option(None, help="auto (cuda, then mps, then cpu), cpu, cuda or mps. [default: auto]"),
    dtype: Optional[str] = typer.Option(
        None, help="float32, or bfloat16: mixed precision. Every matrix product (input projections, recurrence, "
        "read-out) takes bfloat16 operands; states, gates, gradients and weights stay float32. Faster where the "
        "processor has bfloat16 units (AMX, AVX-512 BF16). auto: bfloat16 on such a CPU, else float32. "
        "[default: float32]"),
    nproc: int = typer.Option(
        1, "--nproc", help="Train with N processes on this host (data-parallel; each takes B/N of the streams), "
        "as `torchrun --standalone --nproc_per_node N -m gru_lm train ...` would. Over several hosts, run "
        "torchrun yourself (see the README)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt, exactly."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a character-level language model on FILE.

    Writes last.pt, best.pt (lowest validation loss), metrics.jsonl and config.toml into the run
    folder. Ctrl-C (or SIGTERM) saves last.pt and exits with 130; continue with --resume. Settings
    come from the built-in defaults, then --config, then the flags given here.
    """
    from .distributed import Dist, from_env, spawn, streams
    from .train import LOCKED_ON_RESUME, check_resumable
    from .train import train as run_training

    flags = dict(cell=cell, reset_after=reset_after, hidden_size=hidden_size, layers=layers, embed_size=embed_size,
                 dropout=dropout, weight_drop=weight_drop, seq_len=seq_len, batch_size=batch_size, lr=lr, max_steps=max_steps,
                 max_time=max_time, eval_every=eval_every, eval_chars=eval_chars, patience=patience, ema_decay=ema_decay,
                 val_fraction=val_fraction, val_file=str(val_file) if val_file else None, seed=seed, device=device,
                 dtype=dtype)
    with _user_errors():
        if out is None:
            name = config.stem if config else f"{file.stem}_{cell or 'gru'}"
            out = Path("runs") / name
        base, world = None, 1
        if resume and (out / "last.pt").exists():
            state = check_resumable(checkpoint.load(out / "last.pt"), out / "last.pt")
            base, world = state["settings"], state.get("world_size", 1)
        settings = resolve(config, flags, base)
        if base:
            was = resolve(None, {}, base)  # (settings newer than the run read as what it ran with)
            for key in LOCKED_ON_RESUME:
                if getattr(was, key) != getattr(settings, key):
                    raise UserError(f"--resume: {key} is {getattr(was, key)!r} in {out / 'last.pt'}; "
                                    f"it cannot change to {getattr(settings, key)!r}")
        if nproc != 1:  # the mistakes one can see before starting the processes get one line here
            if nproc < 1:
                raise UserError(f"--nproc must be at least 1, not {nproc}")
            if from_env().on:
                raise UserError("--nproc inside torchrun: give the number of processes to torchrun only")
            if base and world != nproc:
                raise UserError(f"{out / 'last.pt'}: was trained by {world} processes; resume it with the same number, not {nproc}")
            streams(settings.batch_size, Dist(0, nproc))
            if not file.exists():
                raise UserError(f"{file}: no such file")
            raise typer.Exit(spawn(nproc, _without_nproc(sys.argv[1:])))
        result = run_training(file, settings, out, resume=resume, overwrite=overwrite, progress=not quiet)
    if not from_env().main:
        raise typer.Exit(130 if result.interrupted else 0)
    if result.interrupted:
        _interrupted(result, "continue with --resume")
    print(f"done: step {result.step}, {result.chars:,} characters in {result.elapsed_s:.0f}s, "
          f"val loss {result.val_loss:.4f} (best {result.best_val_loss:.4f}); checkpoints in {out}", file=sys.stderr)


def _interrupted(result: TrainResult, hint: str) -> NoReturn:
    """After Ctrl-C or SIGTERM: say where the run was saved, and exit with 130."""
    print(f"interrupted at step {result.step}; saved {result.out_dir / 'last.pt'} ({hint})", file=sys.stderr)
    raise typer.Exit(130)


def _without_nproc(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


@app.command()
def prepare(
    file: Path = typer.Argument(..., help="UTF-8 text file (or UTF-16/32 with a byte-order mark).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write ids.bin and vocab.json into.", show_default=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Encode a large text file once, for `gru-lm train OUT`: the characters become a compact id array
    (1 byte each where there are at most 256 distinct characters, else 2 or 4) that training
    memory-maps, so its memory stays about the same whatever the corpus size. Streams the file in
    chunks: memory stays small while it encodes. The vocabulary is every character of the file."""
    import time

    from .prepare import prepare as run_prepare

    with _user_errors():
        t = time.perf_counter()
        meta = run_prepare(file, out, progress=not quiet)
        dt = time.perf_counter() - t
    mb = meta["source_bytes"] / 1e6
    print(f"prepared {out}: {meta['n_chars']:,} characters, {len(meta['chars']):,} distinct ({meta['dtype']}), "
          f"from {mb:,.1f} MB in {dt:.1f}s ({mb / max(dt, 1e-9):,.1f} MB/s)", file=sys.stderr)


@app.command()
def sample(
    ckpt: Path = typer.Argument(..., help="Checkpoint (best.pt or last.pt of a run).", show_default=False),
    prime: Optional[str] = typer.Option(None, help="Text to start from; printed first. [default: a newline]"),
    length: int = typer.Option(500, help="Characters to generate after the prime."),
    temperature: float = typer.Option(1.0, help="Softmax temperature; 0 picks the most likely character (greedy)."),
    top_k: Optional[int] = typer.Option(None, help="Sample only among the K most likely characters."),
    top_p: Optional[float] = typer.Option(None, help="Sample only among the most likely characters whose probabilities add up to P."),
    seed: Optional[int] = typer.Option(None, help="Random seed; the same seed gives the same text. [default: random]"),
    num_samples: int = typer.Option(1, help="How many samples to generate, one after another."),
) -> None:
    """Generate text from a checkpoint, streamed to stdout as it is made."""
    import torch

    from .data import Vocab
    from .sample import check_options, default_prime, generate

    with _user_errors():
        check_options(temperature, top_k, top_p, length)
        if num_samples < 1:
            raise UserError(f"--num-samples must be at least 1, not {num_samples}")
        state = checkpoint.load(ckpt)
        model = checkpoint.build_model(state, ckpt)
        vocab = Vocab(state["vocab"])
        prime = prime if prime else default_prime(vocab)
        try:
            generate(model, vocab, prime, 0)  # checks the prime before anything is printed
        except UserError as e:
            raise UserError(f"{ckpt}: {e}") from None
        if seed is not None and not 0 <= seed < 2**63:
            raise UserError(f"--seed must be in [0, 2^63), not {seed}")
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
            print(f"seed {seed}", file=sys.stderr)
        gen = torch.Generator().manual_seed(seed)
        for i in range(num_samples):
            if i:
                sys.stdout.write("\n\n")
            sys.stdout.write(prime)
            sys.stdout.flush()
            for ch in generate(model, vocab, prime, length, temperature, top_k, top_p, gen):
                sys.stdout.write(ch)
                sys.stdout.flush()
        sys.stdout.write("\n")


@app.command()
def perplexity(
    ckpts: list[Path] = typer.Argument(..., metavar="CKPT...", help="One or more checkpoints to compare.", show_default=False),
    file: Optional[Path] = typer.Option(None, help="Text to score [default: each checkpoint's own validation split]."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """Loss (nats/char), perplexity and bits per character of checkpoints on a text, side by side.

    Every character is scored given all the characters before it (the state is carried through
    the whole text from zeros; the first character is not predicted). Characters outside a
    checkpoint's vocabulary are left out and counted.
    """
    from .evaluate import measure

    rows = []
    with _user_errors():
        for ck in ckpts:
            row = measure(ck, file)
            if row["unknown"]:
                print(f"note: {row['file']}: {row['unknown']} characters outside the vocabulary of {ck} were left out: "
                      f"{row['unknown_chars'][:40]!r}", file=sys.stderr)
            rows.append(row)
    if as_json:
        keys = ("checkpoint", "file", "chars", "loss", "perplexity", "bpc", "unknown")
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"scored on {rows[0]['file']}" if file else "scored on each checkpoint's validation split")
    for col in ("checkpoint", "cell", "params", "chars", "loss", "perplexity", "bpc"):
        table.add_column(col, justify="left" if col in ("checkpoint", "cell") else "right", overflow="fold")
    for r in rows:
        table.add_row(r["checkpoint"], r["cell"], f"{r['params']:,}", f"{r['chars']:,}", f"{r['loss']:.4f}",
                      f"{r['perplexity']:.3f}", f"{r['bpc']:.4f}")
    Console().print(table)


@app.command("inspect")
def inspect_cmd(
    ckpt: Path = typer.Argument(..., help="Checkpoint (best.pt or last.pt of a run).", show_default=False),
    text: Optional[str] = typer.Option(
        None, "--text", help="Text to run the model over; every character must be in the model's vocabulary."),
    file: Optional[Path] = typer.Option(
        None, "--file", help="Read the text from this UTF-8 file instead of --text; characters outside the "
        "vocabulary are left out, with a note."),
    start: int = typer.Option(0, help="First character to take from the text; negative counts from the end "
                              "(--start -600 takes the last 600)."),
    length: int = typer.Option(1000, help="Inspect at most this many characters (from --start)."),
    color_by: Optional[str] = typer.Option(
        None, "--color-by", help="What colours each character: z (update gate, mean over units), r (reset gate, "
        "mean over units), change (mean |h'-h| over units), surprise (-log p of the character, nats) or unit "
        "(activation of --unit). [default: unit with --unit, else z for a GRU, change for an RNN]"),
    unit: Optional[int] = typer.Option(
        None, help="Follow hidden unit K (0-based) of the inspected layer: its activation in (-1, 1), red "
        "negative, blue positive."),
    layer: int = typer.Option(-1, help="Layer to inspect, 0-based; -1 is the last."),
    html_out: Optional[Path] = typer.Option(
        None, "--html", help="Also write a self-contained HTML page here: each character coloured, a hover "
        "shows all its values, a menu switches the colouring."),
    top_units: bool = typer.Option(
        False, "--top-units", help="Instead of the coloured text, list the 5 hidden units whose activation "
        "correlates most (Pearson r) with: inside double quotes, position in line, just read a newline, "
        "uppercase. Use a few thousand characters."),
) -> None:
    """Show what the gates do on a text, character by character.

    For each character the model reads: the mean update gate z (h' = z*h + (1-z)*n, so z near 1
    keeps the old state), the mean reset gate r (r near 0 makes the candidate n ignore the old
    state), the state change mean |h'-h|, and the surprise -log p(character | the ones before),
    in nats. The state starts from zeros; the first character has no surprise (shown grey).
    Colours span the 1st to 99th percentile of the text (printed in the legend).
    """
    from rich.console import Console
    from rich.table import Table

    from .data import Vocab, read_text
    from .gates import QUANTITIES, class_means, colour_range, legend, render_html, render_terminal, top_units as find_units, trace

    with _user_errors():
        if (text is None) == (file is None):
            raise UserError("give the text to inspect with exactly one of --text or --file")
        if length < 1:
            raise UserError(f"--length must be at least 1, not {length}")
        if color_by is not None and color_by not in QUANTITIES:
            raise UserError(f"--color-by must be one of {', '.join(QUANTITIES)}, not {color_by!r}")
        state = checkpoint.load(ckpt)
        model = checkpoint.build_model(state)
        vocab = Vocab(state["vocab"])
        source = "--text" if file is None else str(file)
        full = text if file is None else read_text(file)
        if not full:
            raise UserError("--text is empty")
        if not -len(full) <= start < len(full):
            raise UserError(f"--start {start} is outside the text ({len(full):,} characters)")
        piece = full[start:][:length]
        if file is not None:
            bad = vocab.unknown(piece)
            if bad:
                piece = "".join(c for c in piece if c not in set(bad))
                print(f"note: {file}: characters outside the vocabulary of {ckpt} were left out: {bad[:40]!r}",
                      file=sys.stderr)
                if not piece:
                    raise UserError(f"{file}: no character of the chosen part is in the model's vocabulary")
        H = model.rnn.hidden_size
        if unit is not None and not 0 <= unit < H:
            raise UserError(f"--unit must be from 0 to {H - 1} (the layer has {H} units), not {unit}")
        if color_by is None:
            color_by = "unit" if unit is not None else ("z" if state["model_config"].get("cell", "gru") == "gru" else "change")
        tr = trace(model, vocab, piece, layer)
        vals = tr.values(color_by, unit)  # refuses z/r for an RNN, unit without --unit
        cfg = state["model_config"]
        s = tr.surprise[1:]
        meta = (f"{Path(ckpt).name}: {tr.cell.upper()}, {cfg.get('layers', 1)} layer(s) of {H} units, layer {tr.layer} "
                f"shown; {len(piece):,} characters of {source}"
                + (f"; mean surprise {float(s.mean()):.3f} nats ({float(s.mean()) / math.log(2):.3f} bits) per character"
                   if len(s) else ""))
        if html_out is not None:
            page = render_html(tr, color_by, unit, title="gru-lm inspect: what the gates do", meta=meta)
            try:
                html_out.write_text(page, encoding="utf-8")
            except OSError as e:
                raise UserError(f"{html_out}: cannot write ({e.strerror or e})") from None
            print(f"wrote {html_out}", file=sys.stderr)
    console = Console()
    if top_units:
        table = Table(title=f"units of layer {tr.layer} that follow the text ({len(piece):,} characters)")
        for col in ("feature", "unit", "r"):
            table.add_column(col, justify="left" if col == "feature" else "right")
        for feature, rows in find_units(tr).items():
            if rows is None:
                table.add_row(feature, "-", "constant in this text")
                continue
            for i, (u, r) in enumerate(rows):
                table.add_row(feature if i == 0 else "", str(u), f"{r:+.3f}")
        console.print(table)
        return
    console.print(render_terminal(tr, color_by, unit))
    lo, hi = colour_range(vals, color_by)
    console.print(legend(color_by, lo, hi, unit), style="dim")
    table = Table(title="means by the character read")
    cols = ("z", "r", "change", "surprise") if tr.z is not None else ("change", "surprise")  # an RNN has no gates
    for col in ("character", "count", *cols):
        table.add_column(col, justify="left" if col == "character" else "right")
    f = lambda v: "-" if math.isnan(v) else f"{v:.3f}"  # noqa: E731
    for row in class_means(tr):
        table.add_row(row["class"], str(row["count"]), *(f(row[c]) for c in cols))
    console.print(table)


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="A run folder (with metrics.jsonl).", show_default=False),
    out: Optional[Path] = typer.Option(None, help="PNG to write [default: RUN_DIR/loss.png]."),
) -> None:
    """Plot a run's train and validation loss against wall time and characters seen."""
    from .report import plot_runs, read_metrics

    with _user_errors():
        read_metrics(run_dir)
        out = out or run_dir / "loss.png"
        plot_runs([run_dir], out, title=str(run_dir))
    print(out)


@app.command()
def compare(
    file: Path = typer.Argument(..., help="UTF-8 text file every run trains on.", show_default=False),
    config: list[Path] = typer.Option([], "--config", "-c", help="A config to train (repeat: one run each)."),
    run: list[Path] = typer.Option([], "--run", help="An existing run folder to include (repeat)."),
    out: Path = typer.Option(Path("reports/compare"), "--out", "-o", help="Report folder."),
    max_time: Optional[float] = typer.Option(None, help="The same wall-clock budget for every trained run (seconds)."),
    retrain: bool = typer.Option(False, "--retrain", help="Train again runs that the report folder already holds."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train several configs on the same data and budget (e.g. a GRU and the RNN baseline) and write
    OUT/report.md (a table: parameters, steps, characters, wall time, losses, perplexity, bpc,
    chars/s) and OUT/loss.png (validation loss against wall time and characters seen)."""
    from .report import write_report
    from .train import train as run_training

    with _user_errors():
        if not config and not run:
            raise UserError("give at least one --config to train or --run to include")
        runs = list(run)
        for cfg in config:
            run_dir = out / "runs" / cfg.stem
            runs.append(run_dir)
            if (run_dir / "best.pt").exists() and not retrain:
                print(f"{run_dir}: already trained, reused (--retrain to train it again)", file=sys.stderr)
                continue
            settings = resolve(cfg, {"max_time": max_time})
            print(f"training {cfg} into {run_dir}", file=sys.stderr)
            result = run_training(file, settings, run_dir, overwrite=True, progress=not quiet)
            if result.interrupted:  # Ctrl-C or SIGTERM: stop here, not go on to the next config
                _interrupted(result, f"continue with `gru-lm train {file} --out {run_dir} --resume`")
        report = write_report(runs, out, title=f"{file.name}: {out.name}")
    print(report)


def main() -> None:
    """Entry point: usage errors (bad flags) become one line on stderr with exit code 2, like ours."""
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    try:
        code = app(standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("gru-lm: aborted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`): nothing more to say
        code = 0
    except Exception as e:
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):  # click's usage errors
            raise
        print(f"gru-lm: error: {e.format_message()}", file=sys.stderr)
        code = e.exit_code
    code = code if isinstance(code, int) else 0
    if "gru_lm.distributed" in sys.modules:  # a process of a --nproc or torchrun job: see exit_process
        sys.modules["gru_lm.distributed"].exit_process(code)
    sys.exit(code)
