"""gru-lm from Python, for a notebook or a script: train on a text file, load a checkpoint, generate text and
score it, with the same settings, checks and results as the commands, which call the same functions.

    import gru_lm

    run = gru_lm.train("data/tinyshakespeare.txt", max_time=60)    # any setting of `gru-lm train --help`
    print(run.model.sample(prime="ROMEO:", length=200, seed=1))    # what `gru-lm sample ... --seed 1` prints
    print(run.model.perplexity("To be, or not to be"))            # what `gru-lm perplexity` measures

    model = gru_lm.load("runs/tinyshakespeare_gru/best.pt")       # a checkpoint of any run

A mistake raises gru_lm.UserError with the message the command would print.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gru_lm.errors import UserError


@dataclass
class Model:
    """A trained character model and its vocabulary, ready to generate and to score text."""

    net: Any  # the CharModel (a torch.nn.Module)
    vocab: Any  # its Vocab
    checkpoint: Path

    def sample(
        self,
        prime: str | None = None,
        length: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> str:
        """The prime (default: a newline) and `length` characters after it. temperature 0 is greedy; top_k and
        top_p keep only the most likely characters; the same seed gives the same text (default: a random one)."""
        from gru_lm.generation.sample import sample_text

        seed = random.randrange(2**31 - 1) if seed is None else seed
        return sample_text(self.net, self.vocab, prime, length, temperature, top_k, top_p, seed)

    def perplexity(self, text: str):
        """Loss (nats per character), perplexity and bits per character of the model on `text`: every character
        given all those before it, from a fresh state; characters outside the vocabulary are left out."""
        from gru_lm.analysis.evaluate import score

        ids, _ = self.vocab.encode(text, drop_unknown=True)
        return score(self.net, ids)

    def __repr__(self) -> str:
        cfg = self.net.cfg
        return f"<gru_lm.Model {cfg.label()}, {len(self.vocab.chars)} characters, from {self.checkpoint}>"


@dataclass
class Run:
    """A finished (or interrupted) training run: its folder, its losses and its best model."""

    folder: Path
    best_loss: float  # the lowest validation loss, which best.pt holds
    val_loss: float  # the last validation loss
    steps: int
    chars: int  # characters trained on
    elapsed_s: float
    interrupted: bool
    model: Model  # best.pt

    def __repr__(self) -> str:
        return (
            f"<gru_lm.Run {self.folder}: {self.steps} steps, {self.chars:,} characters in {self.elapsed_s:.0f} s, "
            f"best validation loss {self.best_loss:.4f}>"
        )


def load(checkpoint: str | Path) -> Model:
    """The model of a checkpoint (a run's best.pt or last.pt)."""
    from gru_lm.model import checkpoint as checkpoints
    from gru_lm.text.vocab import Vocab

    state = checkpoints.load(checkpoint)
    return Model(checkpoints.build_model(state, checkpoint).eval(), Vocab(state["vocab"]), Path(checkpoint))


def train(
    path: str | Path,
    *,
    config: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> Run:
    """Train on the text file (or prepared folder) at `path`, as `gru-lm train` does: settings from the built-in
    defaults, then `config` (a TOML file), then the keyword arguments, named as the settings of
    `gru-lm train --help` are (hidden_size=256, max_time=60, cell="lstm", ...). A setting given here keeps its
    value, even one equal to its default (dropout=0.0). The run folder is `out` (default
    runs/<file name>_<cell>); resume continues its last.pt."""
    from gru_lm.training.resume import run_settings
    from gru_lm.training.run_folder import default_out_dir
    from gru_lm.training.settings import FIELD_TYPES
    from gru_lm.training.train import train as run_training

    unknown = sorted(set(settings) - set(FIELD_TYPES))
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r}; the settings are those of `gru-lm train --help`")
    folder = Path(out) if out else default_out_dir(Path(path), Path(config) if config else None, settings.get("cell"))
    point, resolved, start = run_settings(folder, resume, config, settings)
    result = run_training(
        path,
        resolved,
        folder,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        resume_point=point,
        start_point=start,
        given={k for k, v in settings.items() if v is not None},
    )
    return Run(
        folder,
        result.best_val_loss,
        result.val_loss,
        result.step,
        result.chars,
        result.elapsed_s,
        result.interrupted,
        load(folder / "best.pt" if (folder / "best.pt").exists() else folder / "last.pt"),
    )
