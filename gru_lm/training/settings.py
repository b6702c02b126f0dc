"""Training settings: built-in defaults < TOML config file < command-line flags.

Each field of Settings is one TOML key and one `gru-lm train` flag (`hidden_size` is `--hidden-size`);
its help text lives beside its default, and the command line is built from them.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gru_lm.errors import UserError, check_seed

#: The fit candidates: each a GRU recipe and its fitted loss curve (read by fit_to_machine.py, written by
#: bench/fit_sizes.py).
FIT_CANDIDATES_FILE = Path(__file__).with_name("fit_candidates.json")


def setting(default: Any, help: str) -> Any:
    """A Settings field with the help text that `gru-lm train --help` shows for it."""
    return field(default=default, metadata={"help": help})


@dataclass
class Settings:
    """Everything a training run needs; field names are the TOML keys and the flags (with - for _)."""

    # model
    cell: str = setting("gru", "Recurrent cell: gru, lstm, or rnn (the plain RNN baseline).")
    reset_after: bool = setting(
        False,
        "GRU candidate: reset after the recurrent product (torch.nn.GRU, cuDNN) "
        "or before it (Dive into Deep Learning, Cho et al. 2014).",
    )
    hidden_size: int = setting(256, "Units per recurrent layer.")
    layers: int = setting(1, "Stacked recurrent layers.")
    embed_size: int = setting(64, "Character embedding size.")
    dropout: float = setting(0.0, "Dropout between layers and before the read-out.")
    weight_drop: float = setting(
        0.0,
        "DropConnect on the recurrent weights: each window drops this fraction of "
        "every W_hh's entries, the same ones at every step (AWD-LSTM's weight drop).",
    )
    fit_to_machine: bool = setting(
        True,
        "With --max-time (and no --max-steps): before the clock starts, fit the model to this text and this "
        "machine: measure "
        "this machine's speed for the candidate sizes of gru_lm/training/fit_candidates.json on this text's "
        "alphabet, train the one predicted best for the characters it will see, and fit dropout, embedding "
        "and evaluations to the text's size and alphabet (a setting you give keeps its value). "
        "--hidden-size or --layers switch it off; so does --no-fit-to-machine (a GRU of 1 × 256).",
    )
    fit_candidates: str = setting(
        "",
        "With fit_to_machine: the candidates to choose from, by name, comma-separated "
        "(a config lists the recipes made for its budget); empty: all of fit_candidates.json.",
    )
    # where the weights start (a fresh run otherwise)
    init_from: str = setting(
        "",
        "Start from this checkpoint's weights (not its optimiser, step or schedule): "
        "fine-tuning on FILE with the checkpoint's model and vocabulary.",
    )
    extend_vocab: bool = setting(
        False,
        "With --init-from: add FILE's characters that the checkpoint has never seen "
        "to its vocabulary (new rows initialised as a fresh model's), instead of refusing.",
    )
    # data
    seq_len: int = setting(64, "Window T of truncated backpropagation through time.")
    batch_size: int = setting(32, "B contiguous streams trained side by side.")
    val_fraction: float = setting(0.1, "Share of FILE kept for validation.")
    val_blocks: int = setting(
        0,
        "Take the validation share as this many blocks spread evenly over FILE (the end of each "
        "1/N of it), so it measures the whole text, not only its last part; each block is scored from a "
        "fresh state. 1: the last val_fraction of FILE, the split published Tiny Shakespeare results use. "
        "0: by the text's size (blocks of a few thousand characters, at most 100).",
    )
    val_file: str = setting("", "Validate on this file instead of a split of FILE.")
    # optimisation
    lr: float = setting(3e-3, "Peak learning rate of AdamW.")
    min_lr: float = setting(3e-4, "Learning rate at the end of the cosine decay.")
    warmup_steps: int = setting(100, "Steps of linear learning-rate warm-up.")
    weight_decay: float = setting(0.01, "AdamW weight decay on the weight matrices (not embeddings or biases).")
    grad_clip: float = setting(1.0, "Clip the gradient norm to this (0 = no clipping).")
    ema_decay: float = setting(
        0.0,
        "Evaluate, save as the checkpoint's model and sample from an exponential "
        "moving average of the weights with this decay (0 = off; 0.99 averages ~100 steps).",
    )
    # budget and bookkeeping (0 means no limit)
    max_steps: int = setting(0, "Stop after this many steps in all (0 = no limit).")
    max_time: float = setting(300.0, "Stop after this many wall seconds (0 = no limit).")
    eval_every: int = setting(200, "Evaluate and save last.pt every N steps.")
    eval_streams: int = setting(32, "Contiguous streams the validation text is cut into during training.")
    eval_chars: int = setting(
        1_000_000,
        "Validate during training on at most this many characters from the start "
        "of the validation split (0 = all; `gru-lm perplexity` always scores all).",
    )
    patience: int = setting(0, "Stop after N evaluations without a better validation loss (0 = never).")
    log_every: int = setting(10, "Write a metrics line every N steps.")
    seed: int = setting(1337, "Seed of the weights, dropout and data offsets.")
    device: str = setting("auto", "auto (cuda, then mps, then cpu), cpu, cuda or mps.")
    dtype: str = setting(
        "float32",
        "float32, or bfloat16: mixed precision (every matrix product takes bfloat16 "
        "operands; states, gates, gradients and weights stay float32), faster on CPUs with "
        "bfloat16 units (AMX, AVX-512 BF16). auto: bfloat16 on such a CPU, else float32.",
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(Settings)}  # "int", "float", "str" or "bool"
HELP = {f.name: f.metadata["help"] for f in fields(Settings)}
DEFAULTS = Settings().to_dict()
CHOICES = {
    "cell": ("gru", "lstm", "rnn"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "dtype": ("float32", "bfloat16", "auto"),
}


def _check_type(key: str, value: Any, source: str) -> Any:
    kind = FIELD_TYPES[key]
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        raise UserError(f"{source}: '{key}' must be a {kind}, not {value!r}")
    return float(value) if kind == "float" else value


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML file of settings; unknown keys and wrong types are user errors."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid TOML ({e})") from None
    out = {}
    for key, value in raw.items():
        if key not in FIELD_TYPES:
            known = ", ".join(FIELD_TYPES)
            raise UserError(f"{p}: unknown setting '{key}' (known: {known})")
        out[key] = _check_type(key, value, str(p))
    return out


def validate(settings: Settings) -> Settings:
    """Range checks that types alone cannot express."""
    for key, choices in CHOICES.items():
        if getattr(settings, key) not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}, not {getattr(settings, key)!r}")
    positive = (
        "hidden_size",
        "layers",
        "embed_size",
        "seq_len",
        "batch_size",
        "eval_every",
        "eval_streams",
        "log_every",
    )
    for key in positive:
        if getattr(settings, key) < 1:
            raise UserError(f"{key} must be at least 1, not {getattr(settings, key)}")
    for key in ("max_steps", "warmup_steps", "patience", "eval_chars", "val_blocks"):
        if getattr(settings, key) < 0:
            raise UserError(f"{key} must be 0 or more, not {getattr(settings, key)}")
    for key in ("dropout", "weight_drop", "ema_decay"):
        if not 0.0 <= getattr(settings, key) < 1.0:
            raise UserError(f"{key} must be in [0, 1), not {getattr(settings, key)}")
    if not settings.val_file and not 0.0 < settings.val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), not {settings.val_fraction}")
    for key in ("lr", "min_lr", "weight_decay", "grad_clip", "max_time"):
        v = getattr(settings, key)
        if not math.isfinite(v) or v < 0:
            raise UserError(f"{key} must be a finite number >= 0, not {v}")
    if settings.extend_vocab and not settings.init_from:
        raise UserError(
            "extend_vocab (--extend-vocab) needs init_from (--init-from CKPT): it extends that checkpoint's vocabulary"
        )
    if settings.lr == 0:
        raise UserError("lr must be greater than 0")
    check_seed(settings.seed, "seed")
    if settings.fit_candidates:
        check_fit_candidates(settings.fit_candidates)
    return settings


def check_fit_candidates(names: str) -> None:
    """Every name in the comma-separated list is a candidate of fit_candidates.json, or UserError."""
    known = {c["name"] for c in json.loads(FIT_CANDIDATES_FILE.read_text())["candidates"]}
    unknown = [n.strip() for n in names.split(",") if n.strip() and n.strip() not in known]
    if unknown:
        raise UserError(
            f"fit_candidates: {', '.join(unknown)} not in {FIT_CANDIDATES_FILE.name} "
            f"(known: {', '.join(sorted(known))})"
        )


def resolve(config_file: str | Path | None, flags: dict[str, Any], base: dict[str, Any] | None = None) -> Settings:
    """Defaults (or base, a resumed run's settings), then the config file, then the flags given (None = not given)."""
    values: dict[str, Any] = {
        k: _check_type(k, v, "the checkpoint's settings") for k, v in (base or {}).items() if k in FIELD_TYPES
    }
    if config_file:
        values.update(load_config(config_file))
    values.update({k: _check_type(k, v, "command line") for k, v in flags.items() if v is not None})
    if flags.get("hidden_size") is not None or flags.get("layers") is not None:
        values["fit_to_machine"] = False  # a size given on the command line is the size to train
    return validate(Settings(**values))


def updated(settings: Settings, values: dict[str, Any], source: str) -> Settings:
    """The settings with `values` (named by `source` in an error) in place of theirs, checked as resolve checks."""
    checked = {k: _check_type(k, v, source) for k, v in values.items()}
    return validate(replace(settings, **checked))


def to_toml(values: dict[str, Any]) -> str:
    """Write a flat dict of str/int/float/bool as TOML (the resolved settings of a run)."""
    lines = []
    for key, v in values.items():
        if isinstance(v, bool):
            lines.append(f"{key} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{key} = {v!r}")
        elif isinstance(v, str):
            lines.append(f'{key} = "{_escape(v)}"')
        else:
            raise TypeError(f"cannot write {key}={v!r} as TOML")
    return "\n".join(lines) + "\n"


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
