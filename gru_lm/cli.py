"""The `gru-lm` command line: a thin layer over the library (train, sample, perplexity)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__, checkpoint
from .config import resolve
from .errors import UserError

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
    file: Path = typer.Argument(..., help="UTF-8 text file to train on.", show_default=False),
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
    seq_len: Optional[int] = typer.Option(None, help="Window T of truncated backpropagation through time. [default: 64]"),
    batch_size: Optional[int] = typer.Option(None, help="B contiguous streams trained side by side. [default: 32]"),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate of AdamW. [default: 0.003]"),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps in all (0 = no limit). [default: 0]"),
    max_time: Optional[float] = typer.Option(None, help="Stop after this many wall seconds (0 = no limit). [default: 300]"),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate and save last.pt every N steps. [default: 200]"),
    val_fraction: Optional[float] = typer.Option(None, help="Last fraction of FILE kept for validation. [default: 0.1]"),
    val_file: Optional[Path] = typer.Option(None, help="Validate on this file instead of a split of FILE."),
    seed: Optional[int] = typer.Option(None, help="Seed of weights, dropout and data offsets. [default: 1337]"),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps. [default: auto]"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt, exactly."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a character-level language model on FILE.

    Writes last.pt, best.pt (lowest validation loss), metrics.jsonl and config.toml into the run
    folder. Ctrl-C saves last.pt and exits with 130; continue with --resume. Settings come from the
    built-in defaults, then --config, then the flags given here.
    """
    from .train import LOCKED_ON_RESUME, check_resumable
    from .train import train as run_training

    flags = dict(cell=cell, reset_after=reset_after, hidden_size=hidden_size, layers=layers, embed_size=embed_size,
                 dropout=dropout, seq_len=seq_len, batch_size=batch_size, lr=lr, max_steps=max_steps,
                 max_time=max_time, eval_every=eval_every, val_fraction=val_fraction,
                 val_file=str(val_file) if val_file else None, seed=seed, device=device)
    with _user_errors():
        if out is None:
            name = config.stem if config else f"{file.stem}_{cell or 'gru'}"
            out = Path("runs") / name
        base = None
        if resume and (out / "last.pt").exists():
            base = check_resumable(checkpoint.load(out / "last.pt"), out / "last.pt")["settings"]
        settings = resolve(config, flags, base)
        if base:
            for key in LOCKED_ON_RESUME:
                if base.get(key) != getattr(settings, key):
                    raise UserError(f"--resume: {key} is {base.get(key)!r} in {out / 'last.pt'}; it cannot change to {getattr(settings, key)!r}")
        result = run_training(file, settings, out, resume=resume, overwrite=overwrite, progress=not quiet)
    if result.interrupted:
        print(f"interrupted at step {result.step}; saved {out / 'last.pt'} (continue with --resume)", file=sys.stderr)
        raise typer.Exit(130)
    print(f"done: step {result.step}, {result.chars:,} characters in {result.elapsed_s:.0f}s, "
          f"val loss {result.val_loss:.4f} (best {result.best_val_loss:.4f}); checkpoints in {out}", file=sys.stderr)


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
        table.add_column(col, justify="left" if col in ("checkpoint", "cell") else "right")
    for r in rows:
        table.add_row(r["checkpoint"], r["cell"], f"{r['params']:,}", f"{r['chars']:,}", f"{r['loss']:.4f}",
                      f"{r['perplexity']:.3f}", f"{r['bpc']:.4f}")
    Console().print(table)


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
    sys.exit(code if isinstance(code, int) else 0)
