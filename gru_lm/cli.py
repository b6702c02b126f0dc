"""The `gru-lm` command line: a thin layer over the library. Each command parses its options, calls the
library, and prints; every mistake the library reports (UserError) becomes one line and exit code 2."""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer

from . import __version__
from .config import DEFAULTS, FIELD_TYPES, HELP
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


def _fail(message: str) -> NoReturn:
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


def _with_settings_options(command):
    """Give a command one option per training setting (--hidden-size, ...), help and default from config.Settings.

    Each option defaults to None, meaning "not given": the setting then comes from --config, a resumed
    run or the built-in default, in that order of precedence (config.resolve).
    """
    types = {"int": int, "float": float, "str": str, "bool": bool}
    sig = inspect.signature(command)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for name, kind in FIELD_TYPES.items():
        default = DEFAULTS[name]
        if name == "reset_after":
            decl, shown = "--reset-after/--reset-before", "reset-after" if default else "reset-before"
        elif kind == "bool":  # a plain flag: given means true
            decl, shown = "--" + name.replace("_", "-"), "off"
        else:
            decl, shown = "--" + name.replace("_", "-"), default if default != "" else "none"
        option = typer.Option(None, decl, help=f"{HELP[name]} [default: {shown}]", show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[types[kind]]))
    command.__signature__ = sig.replace(parameters=params)
    return command


@app.command()
@_with_settings_options
def train(
    file: Path = typer.Argument(..., help="UTF-8 text file to train on, or a folder made by `gru-lm prepare` "
                                "(memory-mapped: for corpora of hundreds of MB).", show_default=False),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file of settings (flags override it)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder [default: runs/<config or file name>]."),
    nproc: int = typer.Option(1, "--nproc", help="Train with N processes on this host (data-parallel; each takes "
                              "B/N of the streams), as `torchrun --standalone --nproc_per_node N -m gru_lm train` "
                              "would. Over several hosts, run torchrun yourself (docs/scaling.md)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt, exactly."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    **flags,
) -> None:
    """Train a character-level language model on FILE.

    Writes last.pt, best.pt (lowest validation loss), metrics.jsonl and config.toml into the run
    folder. Ctrl-C (or SIGTERM) saves last.pt and exits with 130; continue with --resume. Settings
    come from the built-in defaults, then --config, then the flags given here.
    """
    from . import launcher, resume as resuming
    from .distributed import from_env
    from .init_from import fresh_settings
    from .run_folder import default_out_dir
    from .train import train as run_training

    with _user_errors():
        out = out or default_out_dir(file, config, flags["cell"])
        point = resuming.load(out) if resume and (out / "last.pt").exists() else None
        settings, start = (resuming.resume_settings(point, config, flags), None) if point else fresh_settings(config, flags)
        if nproc != 1:
            launcher.check_launch(nproc, file, settings.batch_size, point)
            raise typer.Exit(launcher.spawn(nproc, launcher.without_nproc(sys.argv[1:])))
        result = run_training(file, settings, out, resume=resume, overwrite=overwrite, progress=not quiet,
                              resume_point=point, start_point=start)
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
    import random

    from . import sample as sampling

    with _user_errors():
        request = sampling.prepare(ckpt, prime, length, temperature, top_k, top_p, num_samples, seed)
    if seed is None:
        seed = random.randrange(2**31 - 1)
        print(f"seed {seed}", file=sys.stderr)
    sampling.write_samples(request, seed, _write_out)


def _write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


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
    from rich.console import Console

    from .evaluate import measure
    from .report import perplexity_table

    rows = []
    with _user_errors():
        for ck in ckpts:
            rows.append(row := measure(ck, file))
            if row["unknown"]:
                print(f"note: {row['file']}: {row['unknown']} characters outside the vocabulary of {ck} were left out: "
                      f"{row['unknown_chars'][:40]!r}", file=sys.stderr)
    if as_json:
        keys = ("checkpoint", "file", "chars", "loss", "perplexity", "bpc", "unknown")
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
    else:
        Console().print(perplexity_table(rows, rows[0]["file"] if file else None))


@app.command("inspect")
def inspect_cmd(
    ckpt: Path = typer.Argument(..., help="Checkpoint (best.pt or last.pt of a run).", show_default=False),
    text: Optional[str] = typer.Option(None, help="Text to run the model over; every character must be in the "
                                       "model's vocabulary."),
    file: Optional[Path] = typer.Option(None, help="Read the text from this UTF-8 file instead of --text; "
                                        "characters outside the vocabulary are left out, with a note."),
    start: int = typer.Option(0, help="First character to take from the text; negative counts from the end "
                              "(--start -600 takes the last 600)."),
    length: int = typer.Option(1000, help="Inspect at most this many characters (from --start)."),
    color_by: Optional[str] = typer.Option(
        None, "--color-by", help="What colours each character: z (update gate, mean over units), r (reset gate, "
        "mean over units), change (mean |h'-h| over units), surprise (-log p of the character, nats) or unit "
        "(activation of --unit). [default: unit with --unit, else z for a GRU, change for an RNN]"),
    unit: Optional[int] = typer.Option(None, help="Follow hidden unit K (0-based) of the inspected layer: its "
                                       "activation in (-1, 1), red negative, blue positive."),
    layer: int = typer.Option(-1, help="Layer to inspect, 0-based; -1 is the last."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML page here: each "
                                            "character coloured, a hover shows all its values, a menu switches the colouring."),
    top_units: bool = typer.Option(False, "--top-units", help="Instead of the coloured text, list the 5 hidden units "
                                   "whose activation correlates most (Pearson r) with: inside double quotes, position "
                                   "in line, just read a newline, uppercase. Use a few thousand characters."),
) -> None:
    """Show what the gates do on a text, character by character.

    For each character the model reads: the mean update gate z (h' = z*h + (1-z)*n, so z near 1
    keeps the old state), the mean reset gate r (r near 0 makes the candidate n ignore the old
    state), the state change mean |h'-h|, and the surprise -log p(character | the ones before),
    in nats. The state starts from zeros; the first character has no surprise (shown grey).
    Colours span the 1st to 99th percentile of the text (printed in the legend).
    """
    from rich.console import Console

    from .gates_view import inspect as run_inspect

    with _user_errors():
        shown = run_inspect(ckpt, text, file, start, length, color_by, unit, layer, html_out, top_units)
    if html_out is not None:
        print(f"wrote {html_out}", file=sys.stderr)
    Console().print(shown)


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
    from .compare import train_configs
    from .report import write_report

    with _user_errors():
        if not config and not run:
            raise UserError("give at least one --config to train or --run to include")
        trained, stopped = train_configs(file, config, out, max_time, retrain, progress=not quiet)
        if stopped:  # Ctrl-C or SIGTERM: stop here, not go on to the next config
            _interrupted(stopped, f"continue with `gru-lm train {file} --out {stopped.out_dir} --resume`")
        report = write_report([*run, *trained], out, title=f"{file.name}: {out.name}")
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
    if "gru_lm.distributed" in sys.modules:  # a process of a --nproc or torchrun job: see launcher.exit_process
        from .launcher import exit_process

        exit_process(code)
    sys.exit(code)
