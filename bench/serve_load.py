"""Many writers at once: `gru-lm serve` under load on loopback, this server and another measured in one run.

    python bench/serve_load.py                          # this checkout's server, 1, 8, 32 and 128 clients
    git worktree add /tmp/serve-old 8d95183             # the server before continuous batching
    python bench/serve_load.py --old /tmp/serve-old     # ... and that one, in the same run
    python bench/serve_load.py --url http://127.0.0.1:8000/   # a server already running (any)

Each level starts `clients` threads at once; each asks for `--requests` continuations one after the
other (GET /generate, `--length` characters of a GRU, prime "ROMEO:", temperature 0.8, seed per
request) and reads the Server-Sent Events as they come. Per answer: the status, the time to the first
character and to the whole answer (the `done` event), the characters received. Per level: all characters
per second (characters of complete answers over the level's wall time), p50 and p99 of both times, and
how many answers were 200 and complete, 503 with Retry-After, or anything else. Everything is bounded:
loopback only, `clients × requests` requests a level, each with a socket timeout, and a level starts
no request after `--max-seconds`.

A server is started from a command with {port} in it (`--server`, `--old-server`), waited for (GET /
answers), measured at every level, then stopped with SIGINT. By default the command is
`python -m gru_lm serve CKPT --port {port}` from this checkout, and with --old DIR the same command
with PYTHONPATH=DIR and its own TORCH_EXTENSIONS_DIR (DIR/.torch_ext: the two checkouts' kernels differ).
Without --ckpt an untrained GRU of --hidden × --layers with Tiny Shakespeare's characters is written to a
temporary folder: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.summary import ResultFile, serve_load
from gru_lm.machine.cpu import cpu_family_model, cpu_summary


@dataclass
class Answer:
    status: int
    first: float | None  # seconds to the first character
    whole: float | None  # seconds to the done event (complete answers only)
    chars: int
    retry_after: bool = False


def ask(host: str, port: int, query: dict, timeout: float) -> Answer:
    """One GET /generate, read event by event."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/generate?" + urlencode(query))
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read()
            return Answer(resp.status, None, None, 0, resp.getheader("Retry-After") is not None)
        first, chars, event = None, 0, "message"
        while line := resp.fp.readline():
            if line.startswith(b"event: "):
                event = line[7:].strip().decode()
            elif line.startswith(b"data: "):
                if event == "done":
                    return Answer(200, first, time.perf_counter() - t0, chars)
                if event != "message":
                    break
                chars += len(json.loads(line[6:]))  # an event may carry several characters (the old server's did)
                first = first if first is not None else time.perf_counter() - t0
            elif line == b"\n":
                event = "message"
        return Answer(200, first, None, chars)  # ended without its done event: incomplete
    except (OSError, http.client.HTTPException):
        return Answer(0, None, None, 0)
    finally:
        conn.close()


def level(host: str, port: int, clients: int, requests: int, length: int, max_seconds: float) -> dict:
    """`clients` clients at once, each `requests` requests in turn; the level's figures."""
    answers: list[Answer] = []
    lock, start = threading.Lock(), threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(c: int) -> None:
        start.wait()
        for r in range(requests):
            if time.perf_counter() > deadline[0]:
                return
            q = {"model": 0, "prime": "ROMEO:", "length": length, "temperature": 0.8, "seed": c * requests + r}
            a = ask(host, port, q, timeout=max_seconds)
            with lock:
                answers.append(a)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + max_seconds
    start.wait()
    for t in threads:
        t.join(max_seconds * 2 + 60)
    wall = time.perf_counter() - t0
    ok = [a for a in answers if a.status == 200 and a.whole is not None and a.chars == length]
    firsts = sorted(a.first for a in answers if a.first is not None)
    wholes = sorted(a.whole for a in ok if a.whole is not None)
    return {
        "clients": clients,
        "answers": len(answers),
        "complete": len(ok),
        "busy_503": sum(a.status == 503 and a.retry_after for a in answers),
        "other": len(answers) - len(ok) - sum(a.status == 503 and a.retry_after for a in answers),
        "chars_per_s": sum(a.chars for a in ok) / wall,
        "first_p50": pct(firsts, 50),
        "first_p99": pct(firsts, 99),
        "whole_p50": pct(wholes, 50),
        "whole_p99": pct(wholes, 99),
        "whole_max": wholes[-1] if wholes else None,
        "wall_s": wall,
    }


def pct(xs: list[float], p: float) -> float | None:
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Started:
    """A server from a command with {port} in it, on loopback, until the block ends (then SIGINT)."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(  # in the checkout's folder: `python -m` puts the working folder first on sys.path
            shlex.split(command.format(port=self.port)),
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def __enter__(self) -> Started:
        deadline = time.monotonic() + 300  # a first start may build the compiled kernels
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"the server exited: {self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else ''}"
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.5)
        raise SystemExit("the server did not answer within 300 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def untrained_checkpoint(folder: Path, hidden: int, layers: int) -> Path:
    import torch

    from gru_lm.model import checkpoint
    from gru_lm.model.char_model import CharModel, ModelConfig

    chars = "".join(sorted(set((ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8"))))
    torch.manual_seed(0)
    model = CharModel(ModelConfig(len(chars), "gru", hidden_size=hidden, layers=layers))
    path = folder / "gru.pt"
    checkpoint.save(path, {"model_config": model.cfg.to_dict(), "vocab": chars, "model": model.state_dict()})
    return path


def table(rows: list[dict]) -> str:
    def s(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    out = [
        "| server | clients | 200 complete / answers | 503 + Retry-After | other | all chars/s "
        "| first char p50 / p99 (s) | whole answer p50 / p99 / max (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['server']} | {r['clients']} | {r['complete']} / {r['answers']} | {r['busy_503']} | {r['other']} "
            f"| {r['chars_per_s']:,.0f} | {s(r['first_p50'])} / {s(r['first_p99'])} "
            f"| {s(r['whole_p50'])} / {s(r['whole_p99'])} / {s(r['whole_max'])} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,8,32,128", help="levels: clients at once (comma-separated)")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after the other")
    ap.add_argument("--length", type=int, default=300, help="characters per request")
    ap.add_argument("--max-seconds", type=float, default=180, help="no request starts later in a level")
    ap.add_argument("--ckpt", type=Path, help="checkpoint to serve (default: an untrained GRU)")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--url", help="measure a server already running at this loopback URL instead")
    ap.add_argument("--server", default="{python} -m gru_lm serve {ckpt} --port {port}")
    ap.add_argument("--old", type=Path, help="a checkout of the previous server, measured too")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    rows = []
    if args.url:
        u = urlsplit(args.url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--url must be a loopback address: this benchmark loads only this machine")
        for c in levels:
            rows.append(
                {"server": args.url, **level(u.hostname, u.port or 80, c, args.requests, args.length, args.max_seconds)}
            )
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = args.ckpt or untrained_checkpoint(Path(tmp), args.hidden, args.layers)
            command = args.server.replace("{python}", sys.executable).replace("{ckpt}", str(ckpt))
            servers = [("this checkout", command, {**os.environ, "PYTHONPATH": str(ROOT)}, ROOT)]
            if args.old:
                old_env = {**os.environ, "PYTHONPATH": str(args.old.resolve())}
                old_env["TORCH_EXTENSIONS_DIR"] = str(args.old.resolve() / ".torch_ext")
                servers.append((f"previous ({args.old})", command, old_env, args.old.resolve()))
            for name, cmd, env, cwd in servers:
                with Started(cmd, env, cwd) as srv:
                    for c in levels:
                        r = level("127.0.0.1", srv.port, c, args.requests, args.length, args.max_seconds)
                        rows.append({"server": name, **r})
                        print(f"{name}, {c} clients: {r['chars_per_s']:,.0f} chars/s", file=sys.stderr, flush=True)
    figures = {"cpu": cpu_summary(), "cpuid": cpu_family_model(), "rows": rows}
    print(f"{figures['cpu']}; {args.length} characters per request, {args.requests} requests per client\n")
    print(table(rows))
    if {32, 128} <= set(levels) and not args.url:
        print("\n" + serve_load([ResultFile("this run", figures)]))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
