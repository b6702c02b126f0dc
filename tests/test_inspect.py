"""`gru-lm inspect`: the gates traced are the cell equations (gates.py), the page is self-contained (gates_view.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from gru_lm.analysis.inspect_trace import Trace, text_features, top_units, trace
from gru_lm.analysis.inspect_view import PALETTE, render_html, render_terminal
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.text.vocab import Vocab

from .conftest import ROOT, headless_chromium, needs_chromium, run_main

TEXT = 'THIS is <b> & "bold"\nOh, ha!\n'
VOCAB = "".join(sorted(set(TEXT)))  # sorted by code point, as the training vocabulary is


def tiny_model(
    cell: str = "gru", reset_after: bool = False, layers: int = 1, seed: int = 0, hidden: int = 6
) -> CharModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=len(VOCAB), cell=cell, hidden_size=hidden, layers=layers, embed_size=4, reset_after=reset_after
    )
    return CharModel(cfg).eval()


def tiny_ckpt(path: Path, **kw) -> Path:
    model = tiny_model(**kw)
    checkpoint.save(path, {"model_config": model.cfg.to_dict(), "vocab": VOCAB, "model": model.state_dict()})
    return path


def manual_gru(xs: torch.Tensor, w_ih, w_hh, b_ih, b_hh, reset_after: bool):
    """The cell equations written out straight, one step at a time, in float64."""
    w_ih, w_hh, b_ih, b_hh = (t.detach().double() for t in (w_ih, w_hh, b_ih, b_hh))
    H = w_hh.shape[1]
    W_ir, W_iz, W_in = w_ih[:H], w_ih[H : 2 * H], w_ih[2 * H :]
    W_hr, W_hz, W_hn = w_hh[:H], w_hh[H : 2 * H], w_hh[2 * H :]
    b_ir, b_iz, b_in = b_ih[:H], b_ih[H : 2 * H], b_ih[2 * H :]
    b_hr, b_hz, b_hn = b_hh[:H], b_hh[H : 2 * H], b_hh[2 * H :]
    h = torch.zeros(H, dtype=torch.float64)
    hs, zs, rs = [], [], []
    for x in xs.double():
        r = torch.sigmoid(W_ir @ x + b_ir + W_hr @ h + b_hr)
        z = torch.sigmoid(W_iz @ x + b_iz + W_hz @ h + b_hz)
        if reset_after:
            n = torch.tanh(W_in @ x + b_in + r * (W_hn @ h + b_hn))
        else:
            n = torch.tanh(W_in @ x + b_in + W_hn @ (r * h) + b_hn)
        h = z * h + (1 - z) * n
        hs.append(h)
        zs.append(z)
        rs.append(r)
    return torch.stack(hs), torch.stack(zs), torch.stack(rs)


@pytest.mark.parametrize("layers,layer", [(1, -1), (2, 0), (2, 1)])
@pytest.mark.parametrize("reset_after", [False, True])
def test_gates_match_the_cell_equations(reset_after, layers, layer):
    model = tiny_model(reset_after=reset_after, layers=layers)
    vocab = Vocab(VOCAB)
    tr = trace(model, vocab, TEXT, layer=layer)
    xs = model.embed(vocab.encode(TEXT)[0].long()).detach()
    for k in range(layer % layers + 1):
        hs, zs, rs = manual_gru(xs, *model.rnn.layer_weights(k), reset_after)
        xs = hs
    assert tr.cell == "gru" and tr.layer == layer % layers
    assert tr.z.shape == tr.r.shape == tr.h.shape == (len(TEXT), 6)
    torch.testing.assert_close(tr.z.double(), zs, atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.r.double(), rs, atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.h.double(), hs, atol=1e-5, rtol=0)
    prev = torch.cat([torch.zeros(1, 6, dtype=torch.float64), hs[:-1]])
    torch.testing.assert_close(tr.change.double(), (hs - prev).abs().mean(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layers,layer", [(1, -1), (2, 0), (2, 1)])
def test_lstm_gates_and_cell_state_match_the_equations(layers, layer):
    model = tiny_model(cell="lstm", layers=layers, hidden=8)
    vocab = Vocab(VOCAB)
    tr = trace(model, vocab, TEXT, layer=layer)
    xs = model.embed(vocab.encode(TEXT)[0].long()).detach().double()
    for k in range(layer % layers + 1):
        w_ih, w_hh, b_ih, b_hh = (t.detach().double() for t in model.rnn.layer_weights(k))
        H = w_hh.shape[1]
        h, c = torch.zeros(H, dtype=torch.float64), torch.zeros(H, dtype=torch.float64)
        hs, cs, gates = [], [], {"i": [], "f": [], "o": []}
        for x in xs:
            a = w_ih @ x + b_ih + w_hh @ h + b_hh
            i, f, g, o = (
                torch.sigmoid(a[:H]),
                torch.sigmoid(a[H : 2 * H]),
                torch.tanh(a[2 * H : 3 * H]),
                torch.sigmoid(a[3 * H :]),
            )
            c = f * c + i * g
            h = o * torch.tanh(c)
            hs.append(h), cs.append(c), gates["i"].append(i), gates["f"].append(f), gates["o"].append(o)
        xs = torch.stack(hs)
    assert tr.cell == "lstm" and set(tr.gates) == {"i", "f", "o"} and tr.z is None
    for name, series in gates.items():
        torch.testing.assert_close(tr.gates[name].double(), torch.stack(series), atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.c.double(), torch.stack(cs), atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.h.double(), xs, atol=1e-5, rtol=0)
    assert tr.units is tr.c  # --unit and --top-units follow the cell state, as Karpathy et al. did
    torch.testing.assert_close(tr.values("unit", 3), tr.c[:, 3])
    with pytest.raises(Exception, match="LSTM has i, f, o"):
        tr.values("z")


@pytest.mark.parametrize("cell,layers", [("gru", 1), ("gru", 2), ("lstm", 2), ("rnn", 2)])
def test_surprise_is_minus_log_softmax_of_the_model_forward(cell, layers):
    model = tiny_model(cell=cell, layers=layers)
    vocab = Vocab(VOCAB)
    tr = trace(model, vocab, TEXT)
    ids = vocab.encode(TEXT)[0].long()
    with torch.no_grad():
        logits, _ = model(ids.view(-1, 1))
    expected = -torch.log_softmax(logits[:-1, 0], -1).gather(1, ids[1:, None])[:, 0]
    assert math.isnan(tr.surprise[0])  # nothing predicts the first character
    torch.testing.assert_close(tr.surprise[1:], expected, atol=1e-5, rtol=0)


def test_rnn_has_no_gates_but_state_change_and_surprise():
    model = tiny_model(cell="rnn", layers=2)
    tr = trace(model, Vocab(VOCAB), TEXT)
    assert tr.cell == "rnn" and tr.z is None and tr.r is None
    with torch.no_grad():
        out, _ = model.rnn(model.embed(Vocab(VOCAB).encode(TEXT)[0].long()).unsqueeze(1))
    h = out[:, 0]
    torch.testing.assert_close(tr.h, h, atol=1e-6, rtol=0)
    torch.testing.assert_close(tr.change, (h - torch.cat([torch.zeros(1, 6), h[:-1]])).abs().mean(-1))
    assert tr.surprise[1:].isfinite().all()
    with pytest.raises(Exception, match="no gates"):
        tr.values("z")


def test_trace_refuses_unknown_characters_and_missing_layers():
    model, vocab = tiny_model(), Vocab(VOCAB)
    with pytest.raises(Exception, match="never seen"):
        trace(model, vocab, "héllo")
    with pytest.raises(Exception, match="layer"):
        trace(model, vocab, "hi", layer=1)


def test_text_features_and_top_units_find_a_planted_unit():
    text = 'ab "Cd"\nef\n'
    f = text_features(text)
    assert f["inside double quotes"].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert f["position in line"].tolist() == [1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 0]
    assert f["just read a newline"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1]
    assert f["uppercase"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    torch.manual_seed(0)
    h = torch.rand(len(text), 8) * 0.1
    h[:, 5] = -0.05 * f["position in line"]  # unit 5 counts down along the line
    tr = Trace(text, "rnn", 0, h, torch.zeros(len(text)), torch.zeros(len(text)))
    best_unit, r = top_units(tr, k=3)["position in line"][0]
    assert best_unit == 5 and r == pytest.approx(-1.0)
    assert top_units(Trace("abc", "rnn", 0, h[:3], torch.zeros(3), torch.zeros(3)))["uppercase"] is None


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.spans, self.urls, self.text = 0, list[str](), list[str]()
        self._in_char = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.urls.append(a[key])
        if tag == "link":
            self.urls.append("link")
        if tag == "span" and "c" in (a.get("class") or "").split():
            self.spans += 1
            self._in_char += 1

    def handle_endtag(self, tag):
        if tag == "span" and self._in_char:
            self._in_char -= 1

    def handle_data(self, data):
        if self._in_char:
            self.text.append(data)


@pytest.mark.parametrize(
    "cell,by,unit",
    [("gru", "z", None), ("gru", "unit", 3), ("lstm", "f", None), ("lstm", "unit", 2), ("rnn", "surprise", None)],
)
def test_html_page_is_self_contained_and_escaped(cell, by, unit):
    tr = trace(tiny_model(cell=cell), Vocab(VOCAB), TEXT)
    page = render_html(tr, by, unit, title="t <&>", meta="m")
    p = _Page()
    p.feed(page)
    p.close()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert p.urls == [] and "http://" not in page and "https://" not in page and "@import" not in page
    assert p.spans == len(TEXT)  # one span per character
    assert "".join(p.text) == TEXT.replace("\n", "↵\n")  # the text comes back, newlines drawn as ↵
    body = page.split("<body>")[1]
    assert ">&lt;</span>" in body and ">&amp;</span>" in body and "<b>" not in body  # '<' and '&' escaped
    assert "title=" in page and ('data-z="' in page) == (cell == "gru") and ('data-f="' in page) == (cell == "lstm")
    assert render_terminal(tr, by, unit).plain == TEXT.replace("\n", "↵\n")
    # the page's script only looks colours up: the palette and every quantity's indexes travel as data
    colours = json.loads(page.split('id="colours">')[1].split("</script>")[0])
    assert colours["palette"] == [list(c) for c in PALETTE] and "#" not in _JS_OF(page).replace("#text", "").replace(
        "#info", ""
    )
    assert all(len(ix) == len(TEXT) and all(0 <= i < len(PALETTE) for i in ix) for ix in colours["index"].values())
    assert (by in colours["index"]) and (("unit" in colours["index"]) == (unit is not None))


def _JS_OF(page: str) -> str:
    return page.rsplit("<script>", 1)[1].split("</script>")[0]


def gru_lm(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gru_lm", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


@pytest.mark.slow
def test_cli_inspect_smoke(tmp_path):
    ck = tiny_ckpt(tmp_path / "m.pt", layers=2)
    page = tmp_path / "page.html"
    r = gru_lm("inspect", ck, "--text", TEXT, "--html", page, "--layer", 0)
    assert r.returncode == 0, r.stderr
    assert "mean update gate z" in r.stdout and "means by the character read" in r.stdout
    assert page.is_file() and page.read_text(encoding="utf-8").count('class="c"') == len(TEXT)
    bad = gru_lm("inspect", ck, "--text", "héllo")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("gru-lm: error:") and "never seen" in bad.stderr


def test_cli_inspect_file_unit_and_top_units(tmp_path, monkeypatch, capsys):
    ck = tiny_ckpt(tmp_path / "m.pt")
    f = tmp_path / "t.txt"
    f.write_text(TEXT * 3 + "é", encoding="utf-8")
    code, out, err = run_main(monkeypatch, capsys, "inspect", ck, "--file", f, "--unit", 2, "--start", -40)
    assert code == 0 and "activation of unit 2" in out and "left out" in err  # 'é' dropped with a note
    code, out, err = run_main(monkeypatch, capsys, "inspect", ck, "--file", f, "--top-units")
    assert code == 0 and "position in line" in out and "uppercase" in out


@pytest.mark.parametrize(
    "args,words",
    [
        (["--text", "hi", "--file", "x.txt"], "exactly one of"),
        ([], "exactly one of"),
        (["--text", "hi", "--length", 0], "--length"),
        (["--text", "hi", "--unit", 6], "--unit"),
        (["--text", "hi", "--unit", -1], "--unit"),
        (["--text", "hi", "--layer", 3], "--layer"),
        (["--text", "hi", "--color-by", "colour"], "--color-by"),
        (["--text", "hi", "--color-by", "unit"], "--unit"),
        (["--text", ""], "empty"),
        (["--text", "hi", "--start", 5], "--start"),
        (["--file", "missing.txt"], "no such file"),
    ],
)
def test_cli_inspect_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, words):
    ck = tiny_ckpt(tmp_path / "m.pt")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "inspect", ck, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gru-lm: error:"), err
    assert words in lines[0], lines[0]


def test_cli_inspect_rnn_has_no_gates_and_missing_checkpoint(tmp_path, monkeypatch, capsys):
    ck = tiny_ckpt(tmp_path / "rnn.pt", cell="rnn")
    code, _, err = run_main(monkeypatch, capsys, "inspect", ck, "--text", "hi", "--color-by", "r")
    assert code == 2 and "no gates" in err
    code, out, _ = run_main(monkeypatch, capsys, "inspect", ck, "--text", "hi")  # defaults to change
    assert code == 0 and "state change" in out
    code, _, err = run_main(monkeypatch, capsys, "inspect", tmp_path / "nope.pt", "--text", "hi")
    assert code == 2 and "no such checkpoint" in err


@needs_chromium
def test_html_page_opens_in_headless_chromium(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(render_html(trace(tiny_model(), Vocab(VOCAB), TEXT * 4), "z"), encoding="utf-8")
    png = tmp_path / "shot.png"
    cmd = headless_chromium(tmp_path / "profile", f"--screenshot={png}", "--window-size=800,600", page.as_uri())
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
