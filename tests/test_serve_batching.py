"""`gru-lm serve` under load: batched rows equal to rows alone, the same seed the same text among many
requests, the busy answer, disconnects that free their stream, bursts, and a clean stop on SIGTERM."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import torch

from gru_lm.analysis.inspect_trace import trace, trace_many
from gru_lm.analysis.inspect_view import colour_indexes
from gru_lm.generation import serve_engine
from gru_lm.generation.sample import compiled_sampler, generate
from gru_lm.generation.serve import Limits
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig

from .conftest import CLI_ENV
from .test_serve import VOCAB, events, get, running, stream, tiny_ckpt


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("serve_batching")
    return [tiny_ckpt(d / "gru.pt", "gru", 0), tiny_ckpt(d / "lstm.pt", "lstm", 1)]


@pytest.fixture
def slow_steps(monkeypatch):
    """Each batched step takes 20 ms more, so a stream of a tiny model is still generating when the test acts."""
    advance = serve_engine._Batch.advance

    def slowly(self, chars):
        time.sleep(0.02)
        return advance(self, chars)

    monkeypatch.setattr(serve_engine._Batch, "advance", slowly)


@pytest.mark.parametrize("cell,hidden,layers", [("gru", 64, 2), ("gru", 48, 1), ("lstm", 32, 1), ("rnn", 40, 2)])
def test_a_row_of_the_batched_sampler_does_not_depend_on_the_others(cell, hidden, layers):
    torch.manual_seed(0)
    cfg = ModelConfig(len(VOCAB), cell, hidden_size=hidden, layers=layers, embed_size=8)
    if cell == "gru" and layers == 1:
        cfg = ModelConfig(len(VOCAB), cell, hidden_size=hidden, layers=layers, embed_size=8, reset_after=True)
    model = CharModel(cfg).eval()
    if compiled_sampler(model) is None:
        pytest.skip("no compiled sampler here")
    N, chars = 11, 24  # rows of the micro-kernel in blocks of 4 and 3 left over
    state = torch.randn(layers, N, model.state_width)
    last = torch.randint(len(VOCAB), (N,))
    u = torch.rand(chars, N, dtype=torch.float64)
    temps, top_ps = [0.5 + 0.1 * i for i in range(N)], [1.0, 0.9, 0.5] * 3 + [1.0, 0.7]
    together, s_all = compiled_sampler(model).run_each(last, state.clone(), u, temps, [0] * N, top_ps), state.clone()
    compiled_sampler(model).run_each(last, s_all, u, temps, [0] * N, top_ps)
    for i in range(N):  # each row alone, then among another company (rows 0..i reversed)
        s1 = state[:, i : i + 1].clone().contiguous()
        alone = compiled_sampler(model).run(last[i : i + 1], s1, u[:, i : i + 1].contiguous(), temps[i], 0, top_ps[i])
        assert torch.equal(alone[:, 0], together[:, i]) and torch.equal(s1[:, 0], s_all[:, i])
        rows = list(range(i, -1, -1))
        s2 = state[:, rows].clone().contiguous()
        other = compiled_sampler(model).run_each(
            last[rows],
            s2,
            u[:, rows].contiguous(),
            [temps[r] for r in rows],
            [0] * len(rows),
            [top_ps[r] for r in rows],
        )
        assert torch.equal(other[:, 0], together[:, i]) and torch.equal(s2[:, 0], s_all[:, i])


def test_a_batched_trace_is_each_texts_trace(ckpts):
    model = checkpoint.build_model(checkpoint.load(ckpts[0]))
    texts = ["ROMEO: O", "To be, or not to be", "A"]
    for tr, text in zip(trace_many(model, VOCAB, texts), texts):
        alone = trace(model, VOCAB, text)
        assert len(tr.surprise) == len(text) and tr.text == text
        assert torch.allclose(tr.surprise[1:], alone.surprise[1:], atol=1e-5) and torch.allclose(
            tr.z, alone.z, atol=1e-6
        )


def test_the_same_seed_gives_the_same_text_among_many_requests(ckpts):
    """Requests of two models, each with its own settings and length, joining and leaving the batch at
    different steps: every text is sample.generate's for its seed, as it is alone."""
    asks = [
        {"model": i % 2, "prime": p, "length": n, "seed": s, "temperature": t, "top_p": q}
        for i, (p, n, s, t, q) in enumerate(
            [
                ("ROMEO:", 300, 1, 0.8, 1),
                ("ROMEO:", 57, 2, 1.0, 0.9),
                ("To be", 300, 1, 0.8, 1),
                ("ROMEO:", 123, 1, 0.8, 1),
                ("O", 16, 9, 0.0, 1),
                ("Tis", 250, 3, 1.3, 0.5),
                ("ROMEO: O", 1, 4, 0.9, 1),
                ("A lie", 201, 5, 0.7, 0.95),
            ]
            * 2
        )
    ]
    models = [checkpoint.build_model(checkpoint.load(p)) for p in ckpts]
    expected = [
        "".join(
            generate(
                models[a["model"]],
                VOCAB,
                a["prime"],
                a["length"],
                a["temperature"],
                None,
                a["top_p"],
                torch.Generator().manual_seed(a["seed"]),
            )
        )
        for a in asks
    ]
    got: list = [None] * len(asks)
    with running(ckpts, Limits(max_streams=6, max_queue=64, step_chars=8)) as srv:
        start = threading.Barrier(len(asks))

        def ask(i: int) -> None:
            start.wait()
            got[i] = stream(srv, **asks[i])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert [text for text, _ in got] == expected and len(set(expected)) > len(asks) // 2 - 2
    for a, (text, done) in zip(asks, got):  # the colours, from batched traces, are inspect's of the text alone
        tr = trace(models[a["model"]], VOCAB, a["prime"] + text)
        assert done["colours"]["surprise"]["index"] == colour_indexes(tr.surprise[len(a["prime"]) :], "surprise")


def test_a_busy_server_answers_503_with_retry_after_and_one_line(ckpts, slow_steps):
    with running(ckpts, Limits(max_streams=1, max_queue=1)) as srv:
        host, port = srv.server_address
        held = [http.client.HTTPConnection(host, port, timeout=30) for _ in range(2)]
        for conn in held:
            conn.request("GET", "/generate?prime=ROMEO:&length=2000")
        first = held[0].getresponse()
        assert first.status == 200 and first.read(20)
        deadline = time.monotonic() + 10
        while srv.engine.load() != (1, 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.engine.load() == (1, 1)  # one generating, one waiting: both limits reached
        status, headers, body = get(srv, "/generate?prime=ROMEO:&length=10")
        assert status == 503 and int(headers["Retry-After"]) >= 1, (status, body)
        assert body.count("\n") == 1 and "busy" in body and "1 requests generating and 1 waiting" in body, body
        for conn in held:
            conn.close()
        deadline = time.monotonic() + 10
        while srv.engine.load() != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.engine.load() == (0, 0)  # both freed (the waiting one from the queue)
        assert len(stream(srv, prime="ROMEO:", length=10)[0]) == 10


def test_a_client_that_leaves_mid_stream_frees_its_stream_at_once(ckpts, slow_steps):
    with running(ckpts, Limits(max_streams=1, max_queue=0)) as srv:
        host, port = srv.server_address
        sock = socket.create_connection((host, port), timeout=30)
        sock.sendall(b"GET /generate?prime=ROMEO:&length=2000&seed=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        seen = b""
        while b"data: " not in seen:  # the headers, then the first characters: generating
            seen += sock.recv(4096)
        assert srv.engine.load() == (1, 0)
        sock.close()
        t0 = time.monotonic()
        while srv.engine.load() != (0, 0) and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        assert srv.engine.load() == (0, 0) and time.monotonic() - t0 < 1.0  # within a few steps, not at the end
        text, _ = stream(srv, prime="ROMEO:", length=40, seed=1)  # the place is free again
        assert len(text) == 40


def test_a_burst_beyond_the_limits_gets_200s_complete_or_503s_with_retry_after(ckpts, slow_steps):
    clients, answers = 64, []
    with running(ckpts, Limits(max_streams=8, max_queue=8)) as srv:
        start = threading.Barrier(clients)

        def ask(i: int) -> None:
            start.wait()
            status, headers, body = get(srv, "/generate?" + urlencode({"prime": "ROMEO:", "length": 100, "seed": i}))
            answers.append((status, headers.get("Retry-After"), body))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(answers) == clients
    ok = [body for status, _, body in answers if status == 200]
    busy = [(after, body) for status, after, body in answers if status == 503]
    assert len(ok) + len(busy) == clients and len(ok) >= 16 and busy  # the limits held, and served their fill
    assert all(len("".join(d for n, d in events(b) if n == "message")) == 100 and '"done"' not in b for b in ok)
    assert all(events(b)[-1][0] == "done" for b in ok)
    assert all(after and int(after) >= 1 and body.count("\n") == 1 for after, body in busy)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_streams_cleanly_and_exits_0(ckpts, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gru_lm", "serve", *map(str, ckpts), "--port", "0", "--max-streams", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
    )
    try:
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline())
        assert url, proc.stderr.read()
        port = int(url.group(1))
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
        for conn in conns:  # two generating, two waiting
            conn.request("GET", "/generate?prime=ROMEO:&length=2000")
        replies = [conn.getresponse() for conn in conns]
        proc.send_signal(sig)
        bodies = [r.read().decode() for r in replies]  # each response ends (no reset, no hang)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and err == "stopped\n", err
    assert all(r.status == 200 for r in replies)
    for body in bodies:
        last = events(body)[-1]
        assert last[0] == "done" or last == ("error", "the server is stopping"), body[-200:]
