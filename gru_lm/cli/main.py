"""The `gru-lm` command line: a thin layer over the library. Each command parses its options, calls the
library, and prints; every mistake the library reports (UserError) becomes one line and exit code 2."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from gru_lm import __version__
from gru_lm.cli.train_options import with_settings_options
from gru_lm.errors import UserError

if TYPE_CHECKING:
    from gru_lm.training.train import TrainResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train character-level language models with a GRU, an LSTM or a plain RNN written from "
    "their equations, sample from them, and measure them.",
)


@contextlib.contextmanager
def _user_errors():
    """A UserError becomes `gru-lm: error: ...` on stderr and exit code 2."""
    try:
        yield
    except UserError as e:
        print(f"gru-lm: error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        print(f"gru-lm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


@app.command()
@with_settings_options
def train(
    file: Path = typer.Argument(
        ...,
        help="UTF-8 text file to train on, or a folder made by `gru-lm prepare` "
        "(memory-mapped: for corpora of hundreds of MB).",
        show_default=False,
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML file of settings (flags override it)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder [default: runs/<config or file name>]."),
    nproc: int = typer.Option(
        1,
        "--nproc",
        help="Train with N processes on this host (data-parallel, as torchrun "
        "--standalone --nproc_per_node N would); over several hosts see docs/scaling.md.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt, exactly."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    **flags,
) -> None:
    """Train a character-level language model on FILE.

    Writes last.pt, best.pt (lowest validation loss), metrics.jsonl and config.toml into the run folder.
    Ctrl-C (or SIGTERM) saves last.pt and exits with 130; continue with --resume. Settings come from the
    built-in defaults, then --config, then the flags given here."""
    from gru_lm.machine import launcher
    from gru_lm.machine.distributed import from_env
    from gru_lm.training.resume import check_processes, run_settings
    from gru_lm.training.run_folder import default_out_dir
    from gru_lm.training.train import train as run_training

    with _user_errors():
        out = out or default_out_dir(file, config, flags["cell"])
        point, settings, start = run_settings(out, resume, config, flags)
        if nproc != 1:
            launcher.check_nproc(nproc)
            if point is not None:
                check_processes(point, nproc)
            launcher.check_job(nproc, file, settings.batch_size)
            raise typer.Exit(launcher.spawn(nproc, launcher.without_nproc(sys.argv[1:])))
        result = run_training(
            file,
            settings,
            out,
            resume=resume,
            overwrite=overwrite,
            progress=not quiet,
            resume_point=point,
            start_point=start,
            given={k for k, v in flags.items() if v is not None},
        )
    if not from_env().main:
        raise typer.Exit(130 if result.interrupted else 0)
    if result.interrupted:
        _interrupted(result, "continue with --resume")
    print(
        f"done: step {result.step}, {result.chars:,} characters in {result.elapsed_s:.0f}s, "
        f"val loss {result.val_loss:.4f} (best {result.best_val_loss:.4f}); checkpoints in {out}",
        file=sys.stderr,
    )
    from gru_lm.analysis.diagnosis import diagnose_run

    print(diagnose_run(out, result.train_chars), file=sys.stderr)


def _interrupted(result: TrainResult, hint: str) -> NoReturn:
    """After Ctrl-C or SIGTERM: say where the run was saved, and exit with 130."""
    print(f"interrupted at step {result.step}; saved {result.out_dir / 'last.pt'} ({hint})", file=sys.stderr)
    raise typer.Exit(130)


@app.command()
def prepare(
    file: Path = typer.Argument(..., help="UTF-8 text file (or UTF-16/32 with a byte-order mark).", show_default=False),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder to write ids.bin and vocab.json into.", show_default=False
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Encode a large text file once, for `gru-lm train OUT`: a compact id array (1 byte per character where
    there are at most 256 distinct ones, else 2 or 4) that training memory-maps, so its memory stays about the
    same whatever the corpus size. Streams the file in chunks. The vocabulary is every character of the file."""
    import time

    from gru_lm.text.prepared import prepare_corpus

    with _user_errors():
        t = time.perf_counter()
        meta = prepare_corpus(file, out, progress=not quiet)
    dt, mb = time.perf_counter() - t, meta["source_bytes"] / 1e6
    print(
        f"prepared {out}: {meta['n_chars']:,} characters, {len(meta['chars']):,} distinct ({meta['dtype']}), "
        f"from {mb:,.1f} MB in {dt:.1f}s ({mb / max(dt, 1e-9):,.1f} MB/s)",
        file=sys.stderr,
    )


@app.command()
def sample(
    ckpt: Path = typer.Argument(..., help="Checkpoint (best.pt or last.pt of a run).", show_default=False),
    prime: str | None = typer.Option(None, help="Text to start from; printed first. [default: a newline]"),
    length: int = typer.Option(500, help="Characters to generate after the prime."),
    temperature: float | None = typer.Option(None, help="Softmax temperature; 0: greedy. [default: 1.0]"),
    top_k: int | None = typer.Option(None, help="Sample only among the K most likely characters."),
    top_p: float | None = typer.Option(
        None, help="Sample only among the most likely characters whose probabilities add up to P."
    ),
    seed: int | None = typer.Option(None, help="Random seed; the same seed gives the same text. [default: random]"),
    num_samples: int = typer.Option(1, help="How many samples to generate; their streams are generated together."),
    beam: int | None = typer.Option(None, help="Instead of sampling: the most likely continuation, K beams."),
    length_norm: float = typer.Option(0.0, help="With --beam: rank by log p / length^ALPHA (matters with --stop)."),
    stop: str | None = typer.Option(None, help="With --beam: end a continuation at this character (\\n: newline)."),
) -> None:
    """Generate text from a checkpoint, streamed to stdout as it is made (or with --beam, its best continuation)."""
    import random

    from gru_lm.generation import beam as beams
    from gru_lm.generation import sample as sampling

    with _user_errors():
        beams.check_options(
            beam,
            length_norm,
            stop,
            {
                "--temperature": temperature,
                "--top-k": top_k,
                "--top-p": top_p,
                "--seed": seed,
                "--num-samples": None if num_samples == 1 else num_samples,
            },
        )
        req = sampling.sample_request(
            ckpt, prime, length, 1.0 if temperature is None else temperature, top_k, top_p, num_samples, seed
        )
        best = beams.search(req.model, req.vocab, req.prime, length, beam, length_norm, stop) if beam else None
    if best is not None and beam:
        _write_out(req.prime + best.text + "\n")
        print(beams.describe(best, beam), file=sys.stderr)
        return
    if seed is None:
        seed = random.randrange(2**31 - 1)
        print(f"seed {seed}", file=sys.stderr)
    sampling.write_samples(req, seed, _write_out)


def _write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def perplexity(
    ckpts: list[Path] = typer.Argument(
        ..., metavar="CKPT...", help="One or more checkpoints to compare.", show_default=False
    ),
    file: Path | None = typer.Option(None, help="Text to score [default: each checkpoint's own validation split]."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """Loss (nats/char), perplexity and bits per character of checkpoints on a text, side by side: every character
    given all those before it (the first is not predicted); characters a checkpoint does not know are left out."""
    from rich.console import Console

    from gru_lm.analysis.evaluate import measure_all
    from gru_lm.analysis.report import perplexity_json, perplexity_table

    with _user_errors():
        rows = measure_all(ckpts, file)
    if as_json:
        print(perplexity_json(rows))
    else:
        Console().print(perplexity_table(rows, rows[0]["file"] if file else None))


@app.command("inspect")
def inspect_cmd(
    ckpt: Path = typer.Argument(..., help="Checkpoint (best.pt or last.pt of a run).", show_default=False),
    text: str | None = typer.Option(None, help="Text to run the model over; all its characters known to the model."),
    file: Path | None = typer.Option(None, help="Read the text from this file; unknown characters are left out."),
    start: int = typer.Option(0, help="First character to take; negative counts from the end (-600: the last 600)."),
    length: int = typer.Option(1000, help="Inspect at most this many characters (from --start)."),
    color_by: str | None = typer.Option(
        None,
        "--color-by",
        help="What colours each character: a gate's mean over the units (z, r: GRU; i, f, o: "
        "LSTM), change (mean |h'-h|), surprise (-log p, nats) or unit. "
        "[default: unit, else the first gate, else change]",
    ),
    unit: int | None = typer.Option(None, help="Follow unit K (0-based) of the layer (an LSTM's cell state c)."),
    layer: int = typer.Option(-1, help="Layer to inspect, 0-based; -1 is the last."),
    html_out: Path | None = typer.Option(
        None,
        "--html",
        help="Also write a self-contained HTML page here (hover: a character's values; a menu switches the colouring).",
    ),
    top_units: bool = typer.Option(
        False,
        "--top-units",
        help="Instead of the coloured text, list the 5 hidden units "
        "whose activation correlates most (Pearson r) with: inside double quotes, position "
        "in line, just read a newline, uppercase. Use a few thousand characters.",
    ),
) -> None:
    """Show what the gates do on a text, character by character (docs/inspect.md).

    For each character the model reads: the mean of each gate over the units (a GRU's update gate z and
    reset gate r; an LSTM's input, forget and output gates), the state change mean |h'-h|, and the surprise
    -log p(character | the ones before), in nats. The state starts from zeros; the first character has no
    surprise (grey). Colours span the 1st to 99th percentile of the text.
    """
    from rich.console import Console

    from gru_lm.analysis.inspect_view import inspect_checkpoint

    with _user_errors():
        shown = inspect_checkpoint(ckpt, text, file, start, length, color_by, unit, layer, html_out, top_units)
    if html_out is not None:
        print(f"wrote {html_out}", file=sys.stderr)
    Console().print(shown)


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="A run folder (with metrics.jsonl).", show_default=False),
    out: Path | None = typer.Option(None, help="PNG to write [default: RUN_DIR/loss.png]."),
) -> None:
    """Plot a run's train and validation loss against wall time and characters seen."""
    from gru_lm.analysis.report import plot_runs, read_metrics

    with _user_errors():
        read_metrics(run_dir)
        out = out or run_dir / "loss.png"
        plot_runs([run_dir], out, title=str(run_dir))
    print(out)


@app.command()
def compare(
    file: Path = typer.Argument(..., help="UTF-8 text file every run trains on.", show_default=False),
    config: list[Path] = typer.Option([], "--config", "-c", help="A config to train (repeat: one run each)."),
    run: list[Path] = typer.Option(
        [],
        "--run",
        help="A finished run folder to include (repeat), or a folder of seed runs made by an earlier compare.",
    ),
    seeds: int = typer.Option(
        1,
        "--seeds",
        help="Train each config N times with the seeds s..s+N-1; the report "
        "gives means, spreads and the difference of each pair with a 95% interval.",
    ),
    out: Path = typer.Option(Path("reports/compare"), "--out", "-o", help="Report folder."),
    max_time: float | None = typer.Option(None, help="The same wall-clock budget for every trained run (seconds)."),
    retrain: bool = typer.Option(False, "--retrain", help="Train again runs that the report folder already holds."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train several configs on the same data and budget (e.g. a GRU, an LSTM and the RNN baseline), each with
    --seeds seeds, and write OUT/report.md (every run; per config the mean and spread of the losses; each
    pair's difference with its interval) and OUT/loss.png."""
    from gru_lm.analysis.report import write_report
    from gru_lm.training.compare import given_runs, train_configs

    with _user_errors():
        if not config and not run:
            raise UserError("give at least one --config to train or --run to include")
        trained, stopped = train_configs(file, config, out, max_time, retrain, not quiet, seeds)
        if stopped:  # Ctrl-C or SIGTERM: stop here, not go on to the next run
            _interrupted(stopped, f"continue with `gru-lm train {file} --out {stopped.out_dir} --resume`")
        report = write_report([*given_runs(run), *trained], out, title=f"{file.name}: {out.name}")
    print(report)


@app.command()
def serve(
    ckpts: list[Path] = typer.Argument(
        ..., metavar="CKPT...", help="Checkpoints to write with; the page chooses.", show_default=False
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, help="Port to listen on (0: any free one)."),
    max_streams: int = typer.Option(64, help="Requests generated at once, together in one batch."),
    max_queue: int = typer.Option(128, help="Requests that may wait for a place; beyond, a 503 with Retry-After."),
) -> None:
    """A local web page to write with a model: it continues what you type, as it generates. Ctrl-C stops it."""
    from gru_lm.generation.serve import Limits, open_server, serve_until_interrupted
    from gru_lm.machine.process import exit_without_teardown

    with _user_errors():
        server = open_server(ckpts, host, port, Limits(max_streams, max_queue))
    print(f"serving {len(ckpts)} checkpoint(s) at {server.url} (Ctrl-C stops)", flush=True)
    serve_until_interrupted(server)
    print("stopped", file=sys.stderr)
    exit_without_teardown(0)  # the engine's thread may still be inside torch


@app.command()
def export(
    ckpt: Path = typer.Argument(..., help="Checkpoint (best.pt or last.pt of a run).", show_default=False),
    onnx_file: Path | None = typer.Option(
        None,
        "--onnx",
        help="Write a one-step ONNX graph here: (ids, state) -> (logits, next state); its inputs, outputs and "
        "metadata are in the README.",
    ),
    web_dir: Path | None = typer.Option(
        None, "--web", help="Write a static page here that writes with the model in the browser, with no server."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the --onnx file, or the export's own files in a non-empty --web folder."
    ),
) -> None:
    """Take a model out of gru-lm: a one-step ONNX graph (--onnx FILE) or a static web page (--web DIR).

    Both carry the weights the checkpoint samples with, its cell and sizes, and its vocabulary. The page
    (index.html) takes a prime, length, temperature, top-p and seed; open it from any static server or file."""
    from gru_lm.export.request import export as run_export

    with _user_errors():
        weights, out = run_export(ckpt, onnx_file, web_dir, overwrite)
    m = weights.description()
    opening = f"; open {out / 'index.html'}, or serve the folder" if web_dir is not None else ""
    print(
        f"wrote {out}: {str(m['cell']).upper()} {m['layers']} × {m['hidden_size']}, {m['vocab_size']} characters"
        + opening,
        file=sys.stderr,
    )


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
    if "gru_lm.machine.distributed" in sys.modules:  # a process of a --nproc or torchrun job may have joined a group
        from gru_lm.machine.distributed import end_joined_process

        end_joined_process(code)
    sys.exit(code)
