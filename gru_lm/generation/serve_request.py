"""What a /generate request of `gru-lm serve` may ask for, checked: the served checkpoints and the limits.

A request never names a file: it chooses a checkpoint by its index in the list given on the command
line. What it may not ask for (unknown characters, a length over the limit, a bad number, an unknown
index, a parameter given twice) is refused with a 4xx and one line saying why.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel
from gru_lm.text.vocab import Vocab

MAX_LENGTH = 2000  # characters one request may ask for
MAX_PRIME = 4000  # characters of prime one request may send
PARAMETERS = ("model", "prime", "length", "temperature", "top_p", "seed")


@dataclass
class Served:
    """One checkpoint of the command line: its model (only read), vocabulary and a name for the page."""

    name: str
    model: CharModel
    vocab: Vocab

    @property
    def cell(self) -> str:
        return self.model.cfg.label()


@dataclass
class Request:
    """A checked /generate request."""

    model: int
    prime: str
    length: int
    temperature: float
    top_p: float | None
    seed: int


class Refused(Exception):
    """A request the server will not run: an HTTP status, the one line that says why and, for a busy
    server (503), the seconds after which to try again."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def load_models(paths: list[Path]) -> list[Served]:
    """Every checkpoint given, loaded once; a missing or corrupt one is a UserError."""
    served = []
    for path in paths:
        state = checkpoint.load(path)
        model = checkpoint.build_model(state, path)
        model.requires_grad_(False)
        model.eval()
        served.append(
            Served(f"{path.parent.name}/{path.name}" if path.parent.name else path.name, model, Vocab(state["vocab"]))
        )
    return served


# ---- what a request may ask for ------------------------------------------------------------------


def parse_request(query_string: str, models: list[Served]) -> Request:
    """A /generate request's parameters (its query string, still percent-encoded), checked; Refused (with
    its status) for anything out of bounds."""
    query = parse_qs(query_string, keep_blank_values=True)
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise Refused(400, f"unknown parameter {unknown[0][:40]!r} (known: {', '.join(PARAMETERS)})")
    index = _model_index(_one(query, "model") or "0", len(models))
    prime = _one(query, "prime") or ""
    if not prime:
        raise Refused(400, "the prime is empty: write something for the model to continue")
    if len(prime) > MAX_PRIME:
        raise Refused(413, f"the prime has {len(prime):,} characters; at most {MAX_PRIME:,} are taken")
    if bad := models[index].vocab.unknown(prime):
        raise Refused(400, f"the prime has characters {models[index].name} has never seen: {bad[:40]!r}")
    length = _number(query, "length", int, 200)
    if not 1 <= length <= MAX_LENGTH:
        raise Refused(400, f"length must be from 1 to {MAX_LENGTH}, not {length}")
    temperature = _number(query, "temperature", float, 1.0)
    if temperature < 0:
        raise Refused(400, f"temperature must be 0 (the most likely character) or more, not {temperature}")
    top_p = _number(query, "top_p", float, None)
    if top_p is not None and not 0 < top_p <= 1:
        raise Refused(400, f"top_p must be in (0, 1], not {top_p}")
    seed = _number(query, "seed", int, None)
    if seed is not None and not 0 <= seed < 2**63:
        raise Refused(400, f"seed must be in [0, 2^63), not {seed}")
    return Request(index, prime, length, temperature, top_p, random.randrange(2**31 - 1) if seed is None else seed)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values and len(values) > 1:
        raise Refused(400, f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def _model_index(text: str, count: int) -> int:
    """A checkpoint's index in the command line's list: digits only, never a path."""
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise Refused(
            400,
            f"model must be the index of a checkpoint (0 to {count - 1}), not {text[:60]!r}: "
            "the server opens only the checkpoints it was started with",
        )
    if int(text) >= count:
        raise Refused(404, f"no checkpoint {int(text)}: this server has {count} (0 to {count - 1})")
    return int(text)


def _number(query: dict[str, list[str]], name: str, kind: type, default: float | None):
    """The parameter as an int or a finite float; default when absent or empty."""
    text = _one(query, name)
    if text is None or text.strip() == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise Refused(
            400, f"{name} must be {'a whole number' if kind is int else 'a number'}, not {text[:40]!r}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise Refused(400, f"{name} must be a finite number, not {text[:40]!r}")
    return value
