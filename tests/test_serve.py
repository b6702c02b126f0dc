"""`gru-lm serve`: the page, the stream, what the server refuses, requests side by side, and the page in Chromium."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import torch

from gru_lm.analysis.inspect_trace import trace
from gru_lm.analysis.inspect_view import PALETTE, colour_indexes
from gru_lm.generation.sample import generate
from gru_lm.generation.serve import MAX_LENGTH, MAX_PRIME, Limits, Server, open_server
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.text.vocab import Vocab

from .conftest import CLI_ENV, headless_chromium, needs_chromium, run_main

VOCAB = Vocab("\n !',.:;?ABEILMORTUabcdefghiklmnoprstuwy")


def tiny_ckpt(path: Path, cell: str, seed: int) -> Path:
    """A tiny untrained model saved as a checkpoint (what serve needs of one: config, vocabulary, weights)."""
    torch.manual_seed(seed)
    model = CharModel(ModelConfig(len(VOCAB), cell, hidden_size=8, layers=2, embed_size=4))
    checkpoint.save(path, {"model_config": model.cfg.to_dict(), "vocab": VOCAB.chars, "model": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("serve")
    return [tiny_ckpt(d / "gru.pt", "gru", 0), tiny_ckpt(d / "rnn.pt", "rnn", 1)]


@contextmanager
def running(ckpts: list[Path], limits: Limits | None = None) -> Iterator[Server]:
    """A server on a free port, answering from a thread of this process until the block ends."""
    srv = open_server(ckpts, "127.0.0.1", 0, limits)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop()
        thread.join(30)
        srv.socket.close()
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def server(ckpts):
    with running(ckpts) as srv:
        yield srv


def get(server, target: str) -> tuple[int, Message, str]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read().decode()  # headers: case-insensitive
    finally:
        conn.close()


def events(body: str) -> list[tuple[str, Any]]:
    """Server-Sent Events as (name, JSON data), in order."""
    out = []
    for block in body.split("\n\n"):
        if block:
            name = re.search(r"^event: (.*)$", block, re.M)
            data = re.search(r"^data: (.*)$", block, re.M)
            assert data is not None, block
            out.append((name.group(1) if name else "message", json.loads(data.group(1))))
    return out


def stream(server, **params) -> tuple[str, dict]:
    """A generation: the characters as streamed, and the done event."""
    status, headers, body = get(server, "/generate?" + urlencode(params))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream"), body
    evs = events(body)
    assert [name for name, _ in evs] == ["message"] * (len(evs) - 1) + ["done"]
    return "".join(data for _, data in evs[:-1]), evs[-1][1]


def test_the_page_loads_and_needs_nothing_from_the_network(server, ckpts):
    status, headers, page = get(server, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "http://" not in page and "https://" not in page and not re.search(r"<(link|img|iframe)\b|\bsrc=", page)
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))
    assert [m["name"] for m in data["models"]] == [f"{p.parent.name}/{p.name}" for p in ckpts]
    assert data["palette"] == [list(c) for c in PALETTE]  # the colours travel as data; the script looks them up
    script = page.rsplit("<script>", 1)[1]
    assert not re.search(r"#[0-9a-fA-F]{3,6}\b|rgb\(", script)  # and computes none


def test_a_generation_streams_its_characters_and_the_same_seed_repeats_it(server, ckpts):
    text, done = stream(server, model=0, prime="ROMEO:", length=80, temperature=0.9, seed=5)
    assert len(text) == 80 and set(text) <= set(VOCAB.chars) and done["text"] == text and done["seed"] == 5
    model = checkpoint.build_model(checkpoint.load(ckpts[0]))
    expected = "".join(generate(model, VOCAB, "ROMEO:", 80, 0.9, None, None, torch.Generator().manual_seed(5)))
    assert text == expected  # sample.generate, with the request's own generator
    assert stream(server, model=0, prime="ROMEO:", length=80, temperature=0.9, seed=5)[0] == text
    assert stream(server, model=0, prime="ROMEO:", length=80, temperature=0.9, seed=6)[0] != text


def test_the_colours_are_inspects_over_prime_and_continuation(server, ckpts):
    text, done = stream(server, model=0, prime="ROMEO: O", length=40, seed=2, top_p=0.9)
    model = checkpoint.build_model(checkpoint.load(ckpts[0]))
    tr = trace(model, VOCAB, "ROMEO: O" + text)
    assert set(done["colours"]) == {"z", "r", "change", "surprise"}
    assert done["colours"]["surprise"]["index"] == colour_indexes(tr.surprise[8:], "surprise")
    assert done["colours"]["z"]["index"] == colour_indexes(tr.z.mean(-1)[8:], "z")
    assert done["colours"]["z"]["label"] == "mean update gate z"
    _, rnn = stream(server, model=1, prime="ROMEO:", length=10, seed=2)
    assert set(rnn["colours"]) == {"change", "surprise"}  # a plain RNN has no gates


def test_requests_at_the_same_time_each_get_their_own_stream(server):
    asks = [
        {"model": i % 2, "prime": p, "length": 300, "seed": s}
        for i, (p, s) in enumerate([("ROMEO:", 1), ("ROMEO:", 2), ("To be", 1), ("ROMEO:", 1)])
    ]
    alone = [stream(server, **a)[0] for a in asks]
    together, start = [None] * len(asks), threading.Barrier(len(asks))

    def ask(i: int) -> None:
        start.wait()
        together[i] = stream(server, **asks[i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == alone and len(set(alone)) == len(alone)


@pytest.mark.parametrize(
    "params,status,words",
    [
        ({"prime": "ROMEO: ☃ é"}, 400, ["never seen", "'☃é'"]),
        ({"prime": ""}, 400, ["prime is empty"]),
        ({"prime": "a" * (MAX_PRIME + 1)}, 413, ["at most"]),
        ({"prime": "ROMEO:", "length": MAX_LENGTH + 1}, 400, ["length must be from 1 to"]),
        ({"prime": "ROMEO:", "length": 0}, 400, ["length must be from 1 to"]),
        ({"prime": "ROMEO:", "length": "ten"}, 400, ["length must be a whole number", "'ten'"]),
        ({"prime": "ROMEO:", "temperature": -0.5}, 400, ["temperature must be 0", "-0.5"]),
        ({"prime": "ROMEO:", "temperature": "hot"}, 400, ["temperature must be a number", "'hot'"]),
        ({"prime": "ROMEO:", "temperature": "nan"}, 400, ["temperature must be a finite number"]),
        ({"prime": "ROMEO:", "top_p": 0}, 400, ["top_p must be in (0, 1]"]),
        ({"prime": "ROMEO:", "top_p": 1.5}, 400, ["top_p must be in (0, 1]"]),
        ({"prime": "ROMEO:", "seed": -1}, 400, ["seed must be in"]),
        ({"prime": "ROMEO:", "model": 2}, 404, ["no checkpoint 2", "has 2"]),
        ({"prime": "ROMEO:", "model": "../runs/gru/best.pt"}, 400, ["model must be the index", "only the checkpoints"]),
        ({"prime": "ROMEO:", "model": "/etc/passwd"}, 400, ["model must be the index"]),
        ({"prime": "ROMEO:", "path": "x.pt"}, 400, ["unknown parameter 'path'"]),
    ],
)
def test_what_the_server_refuses(server, params, status, words):
    got, headers, body = get(server, "/generate?" + urlencode(params))
    assert got == status and headers["Content-Type"].startswith("text/plain"), (got, body)
    assert body.count("\n") == 1 and all(w in body for w in words), body


def test_no_request_opens_a_file(server, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a request made the server open a file")

    monkeypatch.setattr("gru_lm.model.checkpoint.load", refuse)
    monkeypatch.setattr("gru_lm.model.checkpoint.torch.load", refuse)
    assert get(server, "/generate?prime=ROMEO:&model=..%2Fgru.pt")[0] == 400
    assert get(server, "/generate?prime=ROMEO:&model=1&model=0")[0] == 400  # (given twice)
    assert len(stream(server, prime="ROMEO:", model=1, length=5)[0]) == 5
    assert get(server, "/gru.pt")[0] == 404 and get(server, "/../serve0/gru.pt")[0] == 404


def test_cli_mistakes_are_one_line(ckpts, tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, words in (
            (["serve", tmp_path / "missing.pt"], "no such checkpoint"),
            (["serve", ckpts[0], tmp_path / "notes.pt"], "not a readable checkpoint"),
            (["serve", ckpts[0], "--port", port], f"cannot listen on 127.0.0.1:{port}"),
            (["serve", ckpts[0], "--port", 70000], "--port must be from 0 to 65535"),
        ):
            code, _, err = run_main(monkeypatch, capsys, *args)
            assert code == 2 and err.count("\n") == 1 and err.startswith("gru-lm: error:") and words in err, err


def test_cli_serves_until_ctrl_c_even_in_the_middle_of_streams(ckpts):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gru_lm", "serve", *map(str, ckpts), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert url, line + proc.stderr.read()
        conns = [http.client.HTTPConnection("127.0.0.1", int(url.group(1)), timeout=30) for _ in range(3)]
        for i, conn in enumerate(conns):
            conn.request("GET", f"/generate?prime=ROMEO:&length={MAX_LENGTH}&model={i % 2}")
        streams = [conn.getresponse() for conn in conns]
        assert all(s.status == 200 and s.read(100) for s in streams)  # each one generating, and not yet read
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and err == "stopped\n", err  # no traceback, no abort of a thread inside torch


@needs_chromium
def test_the_page_continues_a_prime_in_headless_chromium(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/?" + urlencode(
        {"prime": "ROMEO:", "auto": 1, "length": 60, "seed": 4, "temperature": 0.9, "top_p": 1, "by": "surprise"}
    )
    base = headless_chromium(tmp_path / "profile", "--virtual-time-budget=5000")
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-state="done"' in dom.stdout, dom.stdout[-3000:]
    spans = re.findall(r'<span class="g" style="background: ([^;]*);[^"]*">(.*?)</span>', dom.stdout, re.S)
    expected, _ = stream(server, prime="ROMEO:", length=60, seed=4, temperature=0.9)
    assert "".join(ch for _, ch in spans).replace("&amp;", "&") == expected  # what the page shows, coloured
    assert len({bg for bg, _ in spans}) > 3
    png = tmp_path / "page.png"
    shot = subprocess.run(
        [*base, f"--screenshot={png}", "--window-size=1100,700", url], capture_output=True, text=True, timeout=120
    )
    assert shot.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
