"""Starting a new run from a trained model's weights: `gru-lm train NEW.txt --init-from CKPT` (fine-tuning).

Only the weights come across. The optimiser, the step, the learning-rate schedule (with its
warm-up) and the random state start afresh, as in any new run. The model keeps the checkpoint's
shape and its vocabulary in the same order, so every character keeps its id; with --extend-vocab,
characters of the new text that the vocabulary lacks are added at its end (corpus.load_corpus),
and their rows of the embedding and the read-out are those a fresh model of the run's seed has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gru_lm.errors import UserError
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.text.vocab import Vocab
from gru_lm.training.settings import Settings, load_config, resolve

#: The settings that give a model its shape: a run that starts from a checkpoint takes them from it.
SHAPE = ("cell", "reset_after", "hidden_size", "layers", "embed_size")

#: Parameters with one row per character of the vocabulary (the rows --extend-vocab adds).
PER_CHARACTER = ("embed.weight", "head.weight", "head.bias")


@dataclass
class StartPoint:
    """The checkpoint a run starts from, loaded and checked to hold a model."""

    path: Path
    state: dict[str, Any]

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.state["vocab"])

    @property
    def shape(self) -> dict[str, Any]:
        cfg = ModelConfig(**self.state["model_config"])
        return {key: getattr(cfg, key) for key in SHAPE}

    def record(self, vocab: Vocab) -> dict[str, Any]:
        """What a run's checkpoints keep of where it started: the file, its step, the characters added."""
        return {
            "checkpoint": str(self.path.resolve()),
            "step": int(self.state.get("step", 0)),
            "vocab_added": vocab.chars[len(self.state["vocab"]) :],
        }


def load(path: str | Path) -> StartPoint:
    """The checkpoint for --init-from; a missing, corrupt or foreign file is a UserError."""
    state = checkpoint.load(path)
    checkpoint.build_model(state, path)  # weights that fit the settings it describes, or UserError
    return StartPoint(Path(path), state)


def check_shape(start: StartPoint, given: dict[str, tuple[Any, str]]) -> None:
    """Each shape setting given must be the checkpoint's: a run from its weights cannot change its shape.

    given maps a setting to its value and where that came from (a flag, a config file), for the message.
    """
    for key, was in start.shape.items():
        value, where = given.get(key, (was, ""))
        if value != was:
            raise UserError(
                f"--init-from: {key} is {was!r} in {start.path}, not {value!r} ({where}): the model "
                f"keeps its shape; leave {key} out to take the checkpoint's"
            )


def fresh_settings(config_file: str | Path | None, flags: dict[str, Any]) -> tuple[Settings, StartPoint | None]:
    """The settings of a new run, and the checkpoint it starts from (None without --init-from).

    With --init-from, the shape settings come from the checkpoint; a config file or flag that
    gives another value is a UserError, not silently overruled (a flag overrides the config file
    first, as always).
    """
    settings = resolve(config_file, flags)
    if not settings.init_from:
        return settings, None
    start = load(settings.init_from)
    given = {k: (v, f"{k} in {config_file}") for k, v in (load_config(config_file) if config_file else {}).items()}
    given.update({k: (v, "--" + k.replace("_", "-")) for k, v in flags.items() if v is not None})
    check_shape(start, given)
    return dataclasses.replace(settings, **start.shape), start


def copy_weights(model: CharModel, weights: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's weights into a fresh model of the same shape and a vocabulary as large or larger.

    The rows of the characters the checkpoint knows are overwritten; the rows after them (characters
    --extend-vocab added) keep the fresh model's initialisation.
    """
    with torch.no_grad():
        for name, param in model.state_dict().items():
            src = weights[name]
            if name in PER_CHARACTER and src.shape[1:] == param.shape[1:] and len(src) <= len(param):
                param[: len(src)].copy_(src)
            elif src.shape == param.shape:
                param.copy_(src)
            else:
                raise UserError(
                    f"--init-from: {name} is {tuple(src.shape)} in the checkpoint, not {tuple(param.shape)}"
                )


def describe(start: StartPoint, vocab: Vocab) -> str:
    """The note a run prints when it starts from a checkpoint."""
    added = vocab.chars[len(start.state["vocab"]) :]
    line = f"note: starting from the weights of {start.path} (a new optimiser and schedule)"
    if added:
        line += f"; --extend-vocab added {len(added)} characters to its {len(start.state['vocab'])}: {added!r}"
    return line
