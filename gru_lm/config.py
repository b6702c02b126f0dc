"""Training settings: built-in defaults < TOML config file < command-line flags (SPEC §3)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import UserError


@dataclass
class Settings:
    """Everything a training run needs; field names are the TOML keys and the flags (with - for _)."""

    # model
    cell: str = "gru"
    reset_after: bool = False
    hidden_size: int = 256
    layers: int = 1
    embed_size: int = 64
    dropout: float = 0.0
    weight_drop: float = 0.0  # DropConnect on the recurrent weights, one mask per window
    # data
    seq_len: int = 64
    batch_size: int = 32
    val_fraction: float = 0.1
    val_file: str = ""
    # optimisation
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # budget and bookkeeping (0 means no limit)
    max_steps: int = 0
    max_time: float = 300.0
    eval_every: int = 200
    eval_streams: int = 32
    eval_chars: int = 1_000_000  # validation during training reads at most this many characters (0: all)
    patience: int = 0  # stop after this many evaluations without a better validation loss (0: never)
    ema_decay: float = 0.0  # evaluate and save an exponential moving average of the weights (0: off)
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"
    dtype: str = "float32"  # bfloat16: mixed precision (bfloat16 operands for every product); auto: bfloat16
    # on a CPU with bfloat16 units (AMX, AVX-512 BF16), else float32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELD_TYPES = {f.name: f.type for f in fields(Settings)}
_CHOICES = {"cell": ("gru", "rnn"), "device": ("auto", "cpu", "cuda", "mps"), "dtype": ("float32", "bfloat16", "auto")}


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


def validate(s: Settings) -> Settings:
    """Range checks that types alone cannot express."""
    for key, choices in _CHOICES.items():
        if getattr(s, key) not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}, not {getattr(s, key)!r}")
    positive = ("hidden_size", "layers", "embed_size", "seq_len", "batch_size", "eval_every", "eval_streams", "log_every")
    for key in positive:
        if getattr(s, key) < 1:
            raise UserError(f"{key} must be at least 1, not {getattr(s, key)}")
    for key in ("max_steps", "warmup_steps", "patience", "eval_chars"):
        if getattr(s, key) < 0:
            raise UserError(f"{key} must be 0 or more, not {getattr(s, key)}")
    for key in ("dropout", "weight_drop", "ema_decay"):
        if not 0.0 <= getattr(s, key) < 1.0:
            raise UserError(f"{key} must be in [0, 1), not {getattr(s, key)}")
    if not s.val_file and not 0.0 < s.val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), not {s.val_fraction}")
    for key in ("lr", "min_lr", "weight_decay", "grad_clip", "max_time"):
        v = getattr(s, key)
        if not math.isfinite(v) or v < 0:
            raise UserError(f"{key} must be a finite number >= 0, not {v}")
    if s.lr == 0:
        raise UserError("lr must be greater than 0")
    if not 0 <= s.seed < 2**63:
        raise UserError(f"seed must be in [0, 2^63), not {s.seed}")
    return s


def resolve(config_file: str | Path | None, flags: dict[str, Any], base: dict[str, Any] | None = None) -> Settings:
    """Defaults (or base, a resumed run's settings), then the config file, then the flags given (None = not given)."""
    values: dict[str, Any] = {k: _check_type(k, v, "the checkpoint's settings") for k, v in (base or {}).items()
                              if k in FIELD_TYPES}
    if base is not None and "eval_chars" not in base:
        values["eval_chars"] = 0  # runs from before --eval-chars validated on the whole split
    if config_file:
        values.update(load_config(config_file))
    values.update({k: _check_type(k, v, "command line") for k, v in flags.items() if v is not None})
    return validate(Settings(**values))


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
