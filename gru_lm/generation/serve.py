"""A local web page to write with a model (`gru-lm serve CKPT...`): type, and the model continues your text.

The HTTP layer is Starlette on Uvicorn (asyncio, one event loop): streaming responses, a client's
disconnect seen at once (the response's task is cancelled), a listen backlog that holds bursts, and a
graceful shutdown on Ctrl-C or SIGTERM. Two addresses:

    GET /           the page (serve_page.html), the checkpoints and the colour palette written into it as data
    GET /generate   ?model=I&prime=TEXT&length=N&temperature=T&top_p=P&seed=S: a continuation of TEXT,
                    streamed as Server-Sent Events, one event per character, then a `done` event with the
                    whole text, the seed and its colours (palette indexes of inspect's quantities)

The generation itself is serve_engine's: every request's stream advances with the others in one
batched step of the compiled sampler; the event loop only checks requests (serve_request) and moves
the engine's characters to the clients, a step's characters of a stream in one write. Beyond the
engine's limits a request gets a 503 with Retry-After and one line saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gru_lm.analysis.inspect_trace import LABELS
from gru_lm.analysis.inspect_view import PALETTE
from gru_lm.errors import UserError
from gru_lm.generation.serve_engine import Engine, Event, Job, Limits
from gru_lm.generation.serve_request import (
    MAX_LENGTH,
    MAX_PRIME,
    Refused,
    Served,
    load_models,
    parse_request,
)

__all__ = ["MAX_LENGTH", "MAX_PRIME", "Limits", "Server", "open_server", "serve_until_interrupted"]

BACKLOG = 2048  # connections the kernel holds before they are accepted: a burst waits, it is not dropped
MAX_HEADER_BYTES = 64 * 1024  # a request line and headers: room for a prime of MAX_PRIME percent-encoded characters


def build_app(models: list[Served], engine: Engine) -> Starlette:
    """The two addresses over the engine; the engine runs while the app does (its lifespan)."""
    html = page(models)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def notify(events: list[tuple[object, Event]]) -> None:  # from the engine's thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is left to tell
                loop.call_soon_threadsafe(_deliver, events)

        engine.start(notify)
        try:
            yield
        finally:
            engine.stop()

    async def home(request: HttpRequest) -> Response:
        return HTMLResponse(html)

    async def generate(request: HttpRequest) -> Response:
        try:
            req = parse_request(request.scope["query_string"].decode("latin-1"), models)
            inbox: asyncio.Queue[Event] = asyncio.Queue()
            job = engine.submit(req, inbox)
        except Refused as e:
            headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
            return PlainTextResponse(f"{e}\n", e.status, headers=headers)
        return StreamingResponse(
            _stream(engine, job, inbox), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    async def elsewhere(request: HttpRequest, exc: Exception) -> Response:
        return PlainTextResponse(f"nothing at {request.url.path[:60]!r}: / is the page, /generate the stream\n", 404)

    async def not_get(request: HttpRequest, exc: Exception) -> Response:
        line = f"{request.method[:20]!r} is not served here: only GET\n"
        return PlainTextResponse(line, 405, headers={"Allow": "GET"})

    async def failed(request: HttpRequest, exc: Exception) -> Response:
        return PlainTextResponse(f"the server failed: {type(exc).__name__}\n", 500)

    routes = [Route("/", home), Route("/generate", generate)]
    return Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={404: elsewhere, 405: not_get, Exception: failed}
    )


def _deliver(events: list[tuple[object, Event]]) -> None:
    """On the event loop: each event into its stream's inbox (the engine addresses jobs by their inbox)."""
    for inbox, event in events:
        assert isinstance(inbox, asyncio.Queue)
        inbox.put_nowait(event)


async def _stream(engine: Engine, job: Job, inbox: asyncio.Queue[Event]) -> AsyncIterator[str]:
    """The Server-Sent Events of one job: what has arrived is written at once, as one chunk. When the
    client goes away, Starlette cancels this generator and the job is cancelled with it."""
    try:
        while True:
            events = [await inbox.get()]
            while not inbox.empty():
                events.append(inbox.get_nowait())
            chunk, last = "", False
            for kind, data in events:
                chunk += "".join(_sse(kind, data))
                last = last or kind != "text"
            yield chunk
            if last:
                return
    finally:
        engine.cancel(job)


def _sse(kind: str, data: object) -> Iterator[str]:
    if kind == "text":
        assert isinstance(data, str)
        yield from (f"data: {json.dumps(ch)}\n\n" for ch in data)
    else:
        yield f"event: {'done' if kind == 'done' else 'error'}\ndata: {json.dumps(data)}\n\n"


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


class _OneLine(logging.Formatter):
    """Log records as one line each: the message and, for an exception, its type and first line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"gru-lm serve: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line += f" ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        return line


def _quiet_logs() -> None:
    """Uvicorn's and our loggers print errors only, one line each, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gru_lm.serve"):
        log = logging.getLogger(name)
        log.handlers, log.propagate = [handler], False
        log.setLevel(logging.ERROR)


class _Uvicorn(uvicorn.Server):
    """Uvicorn's server with our signal handling: Ctrl-C or SIGTERM stops accepting, ends every stream
    (the engine sends each an end event, so responses complete), and returns; the signal is not raised
    again afterwards, so the process exits 0."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame: object) -> None:
        self.should_exit = True
        threading.Thread(target=self.engine.stop, daemon=True).start()  # not inside a signal handler

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


class Server:
    """The listening socket, the engine and the HTTP server over them."""

    def __init__(self, sock: socket.socket, models: list[Served], limits: Limits) -> None:
        self.socket, self.models = sock, models
        self.engine = Engine(models, limits)
        config = uvicorn.Config(
            build_app(models, self.engine),
            http="h11",
            lifespan="on",
            log_config=None,
            access_log=False,
            backlog=BACKLOG,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=10,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            limit_concurrency=limits.max_streams + limits.max_queue + 512,  # connections, a last safety net
        )
        self._http = _Uvicorn(config, self.engine)

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def serve(self) -> None:
        """Answer requests until stop(), Ctrl-C or SIGTERM (the last two when called in the main thread)."""
        _quiet_logs()
        asyncio.run(self._http.serve(sockets=[self.socket]))

    def stop(self) -> None:
        """From another thread: end the streams and stop (serve() returns)."""
        self._http.should_exit = True
        self.engine.stop()


def open_server(paths: list[Path], host: str, port: int, limits: Limits | None = None) -> Server:
    """Load the checkpoints and listen; a bad checkpoint, port, address or limit is a UserError."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, not {port}")
    limits = limits or Limits()
    if limits.max_streams < 1 or limits.max_queue < 0:
        raise UserError(
            "--max-streams must be 1 or more and --max-queue 0 or more, "
            f"not {limits.max_streams} and {limits.max_queue}"
        )
    models = load_models(paths)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    if not is_local(host):
        print(f"note: listening on {host}: whoever can reach this machine can use the page", file=sys.stderr)
    return Server(sock, models, limits)


def is_local(host: str) -> bool:
    """Whether host is this machine alone (a loopback address)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_until_interrupted(server: Server) -> None:
    """Answer requests until Ctrl-C or SIGTERM: stop accepting, end the streams in flight, close."""
    try:
        server.serve()
    finally:
        server.socket.close()
