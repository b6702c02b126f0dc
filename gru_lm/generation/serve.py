"""A local web page to write with a model (`gru-lm serve CKPT...`): type, and the model continues your text.

The server is the standard library's ThreadingHTTPServer (a thread per request) with two addresses:

    GET /           the page (serve_page.html), the checkpoints and the colour palette written into it as data
    GET /generate   ?model=I&prime=TEXT&length=N&temperature=T&top_p=P&seed=S: a continuation of TEXT,
                    streamed as Server-Sent Events, one event per character as sample.generate makes it,
                    then a `done` event with the whole text, the seed and its colours

The colours are inspect_trace.trace run over prime + continuation: for each quantity it measures (surprise,
the mean update gate z, ...), the palette index of each generated character, from inspect_view as
`inspect` computes them. The page only looks them up in the palette.

Every request generates with its own state and random generator; the models are loaded once and
only read, so requests run side by side. A request never names a file: it chooses a checkpoint by
its index in the list given on the command line. What it may not ask for (unknown characters, a
length over the limit, a bad number, an unknown index) is refused with a 4xx and one line saying why.
"""

from __future__ import annotations

import ipaddress
import json
import math
import random
import re
import socket
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import torch

from gru_lm.analysis.inspect_trace import LABELS, trace
from gru_lm.analysis.inspect_view import PALETTE, colour_indexes, legend_scale, quantity_series
from gru_lm.errors import UserError
from gru_lm.generation.sample import generate
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
    """A request the server will not run: an HTTP status and the one line that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def load_models(paths: list[Path]) -> list[Served]:
    """Every checkpoint given, loaded once; a missing or corrupt one is a UserError."""
    served = []
    for path in paths:
        state = checkpoint.load(path)
        model = checkpoint.build_model(state, path)
        model.requires_grad_(False)
        served.append(
            Served(f"{path.parent.name}/{path.name}" if path.parent.name else path.name, model, Vocab(state["vocab"]))
        )
    return served


# ---- what a request may ask for ------------------------------------------------------------------


def parse_request(target: str, models: list[Served]) -> Request:
    """A /generate request's parameters, checked; Refused (with its status) for anything out of bounds."""
    query = parse_qs(urlsplit(target).query, keep_blank_values=True)
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


# ---- generating and colouring ---------------------------------------------------------------------


def continuation(served: Served, req: Request):
    """The characters of the continuation, one at a time, from the request's own generator and state."""
    gen = torch.Generator().manual_seed(req.seed)
    return generate(served.model, served.vocab, req.prime, req.length, req.temperature, None, req.top_p, gen)


def colours(served: Served, prime: str, text: str) -> dict[str, dict]:
    """For each quantity inspect_trace.trace measures, the palette index of each character of text (read after prime).

    The scale of each (inspect_view.colour_range) spans the generated characters, as inspect's spans its text.
    """
    tr = trace(served.model, served.vocab, prime + text)
    out = {}
    for name, values in quantity_series(tr, None).items():
        part = values[len(prime) :]
        out[name] = {"label": LABELS[name], "index": colour_indexes(part, name), **legend_scale(part, name)}
    return out


# ---- the server ---------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """GET / (the page) and GET /generate (the stream); nothing else."""

    server: Server

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/":
            self._reply(200, self.server.page, "text/html")
        elif path == "/generate":
            self._generate()
        else:
            self._reply(404, f"nothing at {path[:60]!r}: / is the page, /generate the stream\n")

    def _generate(self) -> None:
        try:
            req = parse_request(self.path, self.server.models)
        except Refused as e:
            self._reply(e.status, f"{e}\n")
            return
        served = self.server.models[req.model]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        text = []
        try:
            for ch in continuation(served, req):
                text.append(ch)
                self._event(json.dumps(ch))
            done = {"text": "".join(text), "seed": req.seed, "colours": colours(served, req.prime, "".join(text))}
            self._event(json.dumps(done), "done")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away, or asked for another continuation

    def _event(self, data: str, name: str | None = None) -> None:
        self.wfile.write(((f"event: {name}\n" if name else "") + f"data: {data}\n\n").encode())

    def _reply(self, status: int, body: str, kind: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        pass  # no line per request on the terminal


class Server(ThreadingHTTPServer):
    """The HTTP server with the models it serves and its page; a daemon thread per request."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], models: list[Served]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.models, self.page = models, page(models)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def page(models: list[Served]) -> str:
    """serve_page.html with what its script needs written in: the checkpoints, the palette, the limits."""
    data = {
        "models": [{"name": m.name, "cell": m.cell} for m in models],
        "palette": PALETTE,
        "labels": {k: LABELS[k] for k in ("surprise", "z", "r", "change")},
        "limits": {"length": MAX_LENGTH, "prime": MAX_PRIME},
    }
    html = resources.files("gru_lm.generation").joinpath("serve_page.html").read_text(encoding="utf-8")
    return html.replace("null /*DATA*/", json.dumps(data).replace("<", "\\u003c"))


def open_server(paths: list[Path], host: str, port: int) -> Server:
    """Load the checkpoints and listen; a bad checkpoint, port or address is a UserError."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, not {port}")
    models = load_models(paths)
    try:
        server = Server((host, port), models)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    if not is_local(host):
        print(f"note: listening on {host}: whoever can reach this machine can use the page", file=sys.stderr)
    return server


def is_local(host: str) -> bool:
    """Whether host is this machine alone (a loopback address)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_until_interrupted(server: Server) -> None:
    """Answer requests until Ctrl-C (or SIGINT), then close the socket; streams in flight end with the process."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
