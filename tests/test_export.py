"""`gru-lm export`: the one-step ONNX graph run in onnxruntime against the model (every cell kind), its contract
and metadata, its loss against `gru-lm perplexity`; the static page's probabilities and text in headless Chromium;
what the command refuses."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import math
import re
import subprocess
import threading
from html import unescape
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from gru_lm.export import web
from gru_lm.export.onnx_graph import graph_bytes
from gru_lm.export.weights import from_checkpoint, from_model
from gru_lm.generation.sample import generate
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.text.vocab import Vocab

from .conftest import CLI_ENV, ROOT, headless_chromium, needs_chromium, run_main

SHAKESPEARE = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
VOCAB = Vocab.from_text(SHAKESPEARE)
#: The text the graphs step over: past the first 20,000 characters that the `corpus` fixture (and so the
#: trained_run fixture) trains on, so it is held out for that model too.
HELD_OUT = SHAKESPEARE[20_000:21_500]
#: GRU reset-before and reset-after, LSTM, RNN; one and several layers.
KINDS = {
    "gru-before-2": ("gru", False, 2),
    "gru-after-2": ("gru", True, 2),
    "lstm-2": ("lstm", False, 2),
    "rnn-3": ("rnn", False, 3),
    "gru-before-1": ("gru", False, 1),
    "lstm-1": ("lstm", False, 1),
}


def tiny_model(cell: str, reset_after: bool, layers: int, seed: int = 0, hidden: int = 12) -> CharModel:
    """A tiny model with random weights; the biases are moved off torch's small uniform range, so that each
    weight matters to the logits."""
    torch.manual_seed(seed)
    cfg = ModelConfig(len(VOCAB), cell, hidden_size=hidden, layers=layers, embed_size=5, reset_after=reset_after)
    model = CharModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.fixture
def cli(monkeypatch, capsys):
    """`gru-lm ARGS` in this process: (exit code, stdout, stderr)."""
    return functools.partial(run_main, monkeypatch, capsys)


def save_ckpt(path: Path, model: CharModel, **extra) -> Path:
    checkpoint.save(
        path, {"model_config": model.cfg.to_dict(), "vocab": VOCAB.chars, "model": model.state_dict(), **extra}
    )
    return path


def session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_graph(sess: ort.InferenceSession, ids: np.ndarray) -> np.ndarray:
    """Step the graph over ids (T×B) from a zero state, feeding each step's state to the next: T×B×V logits."""
    names = [i.name for i in sess.get_inputs()][1:]
    H = sess.get_inputs()[1].shape[1]
    state = {n: np.zeros((ids.shape[1], H), np.float32) for n in names}
    out = []
    for t in range(ids.shape[0]):
        logits, *new = sess.run(None, {"ids": ids[t], **state})
        state = dict(zip(names, new))
        out.append(logits)
    return np.stack(out)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.mark.parametrize("kind", KINDS)
def test_the_graph_steps_as_the_model_over_real_text(kind):
    model = tiny_model(*KINDS[kind])
    sess = session(graph_bytes(from_model(model, VOCAB.chars)))
    ids = VOCAB.encode(HELD_OUT[:600])[0].long()
    streams = torch.stack([ids[:200], ids[200:400], ids[400:600]], dim=1)  # T×B: three streams at once
    with torch.inference_mode():
        expected, _ = model(streams)
    got = run_graph(sess, streams.numpy())
    assert got.dtype == np.float32 and got.shape == tuple(expected.shape)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)


def test_the_contract_inputs_outputs_and_metadata():
    for kind, (cell, reset_after, layers) in KINDS.items():
        m = onnx.load_from_string(graph_bytes(from_model(tiny_model(cell, reset_after, layers), VOCAB.chars)))
        parts = ["h", "c"] if cell == "lstm" else ["h"]
        states = [f"{p}{k}" for k in range(layers) for p in parts]
        assert [i.name for i in m.graph.input] == ["ids", *states], kind
        assert [o.name for o in m.graph.output] == ["logits", *(f"{s}_next" for s in states)], kind
        elem = {i.name: i.type.tensor_type.elem_type for i in [*m.graph.input, *m.graph.output]}
        assert elem["ids"] == onnx.TensorProto.INT64 and {elem[s] for s in states} == {onnx.TensorProto.FLOAT}
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
        assert dims["ids"] == ["batch"] and all(dims[s] == ["batch", 12] for s in states)
        meta = {p.key: p.value for p in m.metadata_props}
        assert json.loads(meta["vocab"]) == list(VOCAB.chars)
        assert meta["cell"] == cell and json.loads(meta["reset_after"]) == (cell == "gru" and reset_after)
        assert [json.loads(meta[k]) for k in ("layers", "hidden_size", "embed_size", "vocab_size")] == [
            layers,
            12,
            5,
            len(VOCAB),
        ]
        assert json.loads(meta["state"]) == states
        assert m.opset_import[0].version == 17
        onnx.checker.check_model(m, full_check=True)


def test_the_export_carries_the_weights_the_checkpoint_samples_with(tmp_path, cli):
    """A run that averages its weights keeps the average in 'model' (what sampling reads) and the optimiser's
    weights in 'train_model': the export is the average's."""
    averaged, trained = tiny_model("gru", False, 1, seed=1), tiny_model("gru", False, 1, seed=2)
    ckpt = save_ckpt(tmp_path / "avg.pt", averaged, train_model=trained.state_dict())
    code, _, err = cli("export", ckpt, "--onnx", tmp_path / "avg.onnx")
    assert code == 0, err
    ids = VOCAB.encode(HELD_OUT[:50])[0].long().view(-1, 1)
    got = run_graph(session((tmp_path / "avg.onnx").read_bytes()), ids.numpy())
    with torch.inference_mode():
        np.testing.assert_allclose(got, averaged(ids)[0].numpy(), atol=1e-4, rtol=0)
        assert not np.allclose(got, trained(ids)[0].numpy(), atol=1e-2)


@pytest.mark.parametrize("kind", ["gru-before-2", "gru-after-2", "lstm-2", "rnn-3"])
def test_the_graphs_loss_over_held_out_text_is_gru_lm_perplexitys(kind, tmp_path, cli):
    ckpt = save_ckpt(tmp_path / "m.pt", tiny_model(*KINDS[kind]))
    _graph_loss_equals_perplexity(cli, ckpt, tmp_path)


def test_a_trained_runs_graph_loss_is_gru_lm_perplexitys(trained_run, tmp_path, cli):
    _graph_loss_equals_perplexity(cli, trained_run / "best.pt", tmp_path)


def _graph_loss_equals_perplexity(cli, ckpt: Path, tmp_path: Path) -> None:
    text = tmp_path / "held_out.txt"
    text.write_text(HELD_OUT, encoding="utf-8")
    code, out, err = cli("perplexity", ckpt, "--file", text, "--json")
    assert code == 0, err
    expected = json.loads(out)[0]
    code, _, err = cli("export", ckpt, "--onnx", tmp_path / "m.onnx", "--overwrite")
    assert code == 0, err
    sess = session((tmp_path / "m.onnx").read_bytes())
    vocab = json.loads(sess.get_modelmeta().custom_metadata_map["vocab"])
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = np.array([index[c] for c in HELD_OUT if c in index], dtype=np.int64)
    logp = log_softmax(run_graph(sess, ids[:-1, None])[:, 0])
    loss = -float(logp[np.arange(len(ids) - 1), ids[1:]].mean())
    assert len(ids) - 1 == expected["chars"]
    assert abs(loss - expected["loss"]) < 1e-3, (loss, expected["loss"])


# --- what the command refuses -------------------------------------------------------------------------------


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save_ckpt(tmp_path / "m.pt", tiny_model("gru", False, 1))


def _one_line(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gru-lm: error:") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_neither_or_both_targets_is_one_line(ckpt, tmp_path, cli):
    _one_line(*cli("export", ckpt)[::2], "--onnx", "--web")
    _one_line(*cli("export", ckpt, "--onnx", tmp_path / "a.onnx", "--web", tmp_path / "w")[::2], "one of")
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("content, words", [(None, "no such checkpoint"), (b"not a zip", "not a readable")])
def test_a_bad_checkpoint_is_one_line_and_writes_nothing(tmp_path, content, words, cli):
    bad = tmp_path / "bad.pt"
    if content is not None:
        bad.write_bytes(content)
    for target in (["--onnx", tmp_path / "x.onnx"], ["--web", tmp_path / "site"]):
        _one_line(*cli("export", bad, *target)[::2], str(bad), words)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad.pt"] if content else [])


def test_a_foreign_checkpoint_is_one_line(tmp_path, cli):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    _one_line(*cli("export", foreign, "--onnx", tmp_path / "x.onnx")[::2], "not a gru-lm checkpoint")


def test_a_path_that_cannot_be_written_is_one_line(ckpt, tmp_path, cli):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _one_line(*cli("export", ckpt, "--onnx", blocker / "m.onnx")[::2], "could not write")
    _one_line(*cli("export", ckpt, "--web", blocker / "site")[::2], "could not write")
    _one_line(*cli("export", ckpt, "--web", blocker)[::2], "not a folder")
    _one_line(*cli("export", ckpt, "--onnx", tmp_path)[::2], "is a folder")


def test_an_existing_file_needs_overwrite_and_a_checkpoint_is_never_replaced(ckpt, tmp_path, cli):
    before = ckpt.read_bytes()
    _one_line(*cli("export", ckpt, "--onnx", ckpt, "--overwrite")[::2], "is the checkpoint being exported")
    other = save_ckpt(tmp_path / "other.pt", tiny_model("rnn", False, 1))
    other_bytes = other.read_bytes()
    _one_line(*cli("export", ckpt, "--onnx", other, "--overwrite")[::2], "never replaces")
    _one_line(*cli("export", ckpt, "--onnx", other)[::2], "never replaces")
    assert ckpt.read_bytes() == before and other.read_bytes() == other_bytes
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    _one_line(*cli("export", ckpt, "--onnx", target)[::2], "already exists", "--overwrite")
    assert target.read_bytes() == b"old"
    code, _, err = cli("export", ckpt, "--onnx", target, "--overwrite")
    assert code == 0 and "wrote" in err and onnx.load(str(target)).graph.name == "gru_lm_step"


def test_a_non_empty_folder_needs_overwrite_which_replaces_only_the_exports_files(ckpt, tmp_path, cli):
    site = tmp_path / "site"
    site.mkdir()
    (site / "notes.txt").write_text("mine")
    _one_line(*cli("export", ckpt, "--web", site)[::2], "not empty", "--overwrite")
    assert sorted(p.name for p in site.iterdir()) == ["notes.txt"]
    code, _, err = cli("export", ckpt, "--web", site, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in site.iterdir()) == sorted([*web.FILES, "notes.txt"])
    assert (site / "notes.txt").read_text() == "mine"
    (site / "model.js").unlink()
    (site / "model.js").write_bytes(ckpt.read_bytes())  # a checkpoint under one of the export's names
    _one_line(*cli("export", ckpt, "--web", site, "--overwrite")[::2], "never replaces")


def test_the_command_line_exports_in_a_fresh_process(ckpt, tmp_path):
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "gru_lm", "export", str(ckpt), "--onnx", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=120,
    )
    assert r.returncode == 0 and r.stderr.startswith("wrote") and (tmp_path / "m.onnx").stat().st_size > 1000


def test_export_never_loads_training():
    import sys

    code = "import sys, gru_lm.export.request, gru_lm.export.onnx_graph; print('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=CLI_ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not [m for m in r.stdout.split() if m.startswith(("gru_lm.training", "gru_lm.generation"))]


# --- the static page --------------------------------------------------------------------------------------------


def decode_model_js(text: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The description and the tensors model.js carries, read back as the page reads them."""
    m = re.fullmatch(r"(?s)//[^\n]*\nglobalThis\.GRU_LM_MODEL = (\{.*\});\n", text)
    assert m, text[:200]
    spec = json.loads(m.group(1))
    floats = np.frombuffer(base64.b64decode(spec["data"]), dtype="<f4")
    tensors = {}
    for name, t in spec["tensors"].items():
        size = math.prod(t["shape"])
        tensors[name] = floats[t["offset"] : t["offset"] + size].reshape(t["shape"])
    return spec["meta"], tensors


def test_model_js_holds_the_weights_and_the_description(tmp_path):
    model = tiny_model("lstm", False, 2)
    weights = from_model(model, VOCAB.chars)
    meta, tensors = decode_model_js(web.model_js(weights))
    assert meta["vocab"] == list(VOCAB.chars) and meta["cell"] == "lstm" and meta["layers"] == 2
    for name, t in web.page_tensors(weights).items():
        np.testing.assert_array_equal(tensors[name], t)
    with torch.no_grad():  # the folded table is the first layer's input projection of every character
        w_ih, _, b_ih, _ = model.rnn.layer_weights(0)
        table = torch.nn.functional.linear(model.embed.weight, w_ih, b_ih)
    np.testing.assert_allclose(tensors["table"], table.numpy(), atol=1e-6)
    assert set(tensors) == {"table", "w_hh0", "b_hh0", "w_ih1", "b_ih1", "w_hh1", "b_hh1", "head_w", "head_b"}


def chromium_dom(url: str, tmp_path: Path, budget_ms: int = 10_000) -> str:
    """The page's DOM after its scripts ran (and, with virtual time, after its streaming finished)."""
    cmd = headless_chromium(tmp_path / "profile", f"--virtual-time-budget={budget_ms}", "--dump-dom", url)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def element_text(dom: str, id_: str) -> str:
    m = re.search(rf'<(\w+) id="{id_}"[^>]*>(.*?)</\1>', dom, re.S)
    assert m, dom[-3000:]
    return unescape(m.group(2))


def page_state(dom: str) -> str:
    m = re.search(r'id="stats" data-state="(\w+)"', dom)
    return m.group(1) if m else ""


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, tuple[Path, CharModel]]:
    """One exported page per cell kind, each with the model it was exported from."""
    root = tmp_path_factory.mktemp("sites")
    out = {}
    for kind in ("gru-before-2", "gru-after-2", "lstm-2", "rnn-3", "gru-384"):
        # and the size the page's speed is measured at (docs/performance.md), 1 × 384
        model = tiny_model("gru", False, 1, hidden=384) if kind == "gru-384" else tiny_model(*KINDS[kind])
        ckpt = save_ckpt(root / f"{kind}.pt", model)
        for name, data in web.folder_files(from_checkpoint(ckpt)).items():
            (root / kind).mkdir(exist_ok=True)
            (root / kind / name).write_bytes(data)
        out[kind] = (root / kind, model)
    return out


@needs_chromium
@pytest.mark.parametrize("kind", ["gru-before-2", "gru-after-2", "lstm-2", "rnn-3", "gru-384"])
def test_the_pages_probabilities_are_the_models(sites, kind, tmp_path):
    site, model = sites[kind]
    prime = "ROMEO:\nBut soft, what light through yonder window breaks?"
    dom = chromium_dom((site / "index.html").as_uri() + "?probe=1&prime=" + _quote(prime), tmp_path)
    got = np.array(json.loads(element_text(dom, "probe")))
    with torch.inference_mode():
        logits, _ = model(VOCAB.encode(prime)[0].long().view(-1, 1))
    expected = logits[:, 0].double().softmax(-1).numpy()
    assert got.shape == expected.shape == (len(prime), len(VOCAB))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


@needs_chromium
def test_the_page_writes_the_continuation_and_the_seed_repeats_it_over_http(sites, tmp_path):
    site, _ = sites["gru-before-2"]
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        texts = []
        for seed in (1, 1, 2):
            dom = chromium_dom(f"{base}?prime=ROMEO:&length=200&seed={seed}&autostart=1", tmp_path)
            assert page_state(dom) == "done", dom[-2000:]
            texts.append(element_text(dom, "output"))
    finally:
        server.shutdown()
        server.server_close()
    assert texts[0] == texts[1] != texts[2]
    assert all(len(t) == 200 and set(t) <= set(VOCAB.chars) for t in texts)
    assert element_text(dom, "prime-shown") == "ROMEO:"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@needs_chromium
def test_the_pages_greedy_text_is_the_models_and_a_tiny_top_p_is_greedy(sites, tmp_path):
    site, model = sites["lstm-2"]
    greedy = "".join(generate(model, VOCAB, "ROMEO:", 80, temperature=0))
    page = (site / "index.html").as_uri()
    for query in ("temperature=0", "top_p=0.001&temperature=0.9"):
        dom = chromium_dom(f"{page}?prime=ROMEO:&length=80&seed=3&autostart=1&{query}", tmp_path)
        assert element_text(dom, "output") == greedy, query


@needs_chromium
def test_the_page_says_what_is_wrong_with_its_options(sites, tmp_path):
    site, _ = sites["rnn-3"]
    page = (site / "index.html").as_uri()
    for query, words in (
        ("prime=%E2%82%AC", "never seen"),
        ("prime=A&top_p=0", "top-p"),
        ("prime=A&length=-1", "length"),
    ):
        dom = chromium_dom(f"{page}?{query}&autostart=1", tmp_path)
        assert words in element_text(dom, "error") and page_state(dom) == "error", query
        assert element_text(dom, "output") == ""
