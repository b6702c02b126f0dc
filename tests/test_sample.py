"""Sampling: seeds, greedy decoding, top-k and top-p filtering, prime checks, the compiled sampler against the model."""

from __future__ import annotations

import pytest
import torch

from gru_lm.errors import UserError
from gru_lm.generation import sample
from gru_lm.generation.sample import Stepper, Streams, check_options, filter_logits, generate, pick
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.text.vocab import Vocab


@pytest.fixture(scope="module")
def model_vocab(trained_run):
    state = checkpoint.load(trained_run / "best.pt")
    return checkpoint.build_model(state), Vocab(state["vocab"])


def _text(model, vocab, **kw):
    seed = kw.pop("seed", 0)
    return "".join(
        generate(
            model,
            vocab,
            kw.pop("prime", "ROMEO:"),
            kw.pop("length", 60),
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )
    )


def test_same_seed_same_text(model_vocab):
    m, v = model_vocab
    a, b, c = _text(m, v, seed=1), _text(m, v, seed=1), _text(m, v, seed=2)
    assert a == b != c and len(a) == 60 and set(a) <= set(v.chars)


def test_greedy_is_deterministic_and_equals_top_k_1(model_vocab):
    m, v = model_vocab
    greedy = _text(m, v, temperature=0, seed=1)
    assert greedy == _text(m, v, temperature=0, seed=2)
    assert greedy == _text(m, v, temperature=1.0, top_k=1, seed=3)


def test_greedy_follows_the_model_argmax(model_vocab):
    m, v = model_vocab
    out = _text(m, v, prime="AB", length=1, temperature=0)
    ids = v.encode("AB")[0].long().view(-1, 1)
    logits, _ = m(ids)
    assert out == v.chars[int(logits[-1, 0].argmax())]


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = lambda lg: torch.isfinite(lg).tolist()  # noqa: E731
    assert kept(filter_logits(logits, 2, None)) == [True, True, False, False]
    assert kept(filter_logits(logits, None, 0.5)) == [True, False, False, False]
    assert kept(filter_logits(logits, None, 0.79)) == [True, True, False, False]
    assert kept(filter_logits(logits, None, 0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits, None, 1.0)) == [True] * 4
    shuffled = logits[[2, 0, 3, 1]]
    assert kept(filter_logits(shuffled, None, 0.79)) == [False, True, False, True]


def test_top_p_sampling_only_uses_the_nucleus(model_vocab):
    m, v = model_vocab
    text = _text(m, v, length=200, top_p=0.05, seed=4)
    assert text == _text(m, v, length=200, temperature=0, seed=5)  # a tiny nucleus is the argmax alone


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_k": 0}, "top-k"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
        ({"length": -1}, "length"),
    ],
)
def test_bad_options(kw, words):
    args = {"temperature": 1.0, "top_k": None, "top_p": None, "length": 10, **kw}
    with pytest.raises(UserError, match=words):
        check_options(**args)


def test_prime_outside_the_vocabulary_is_refused_before_output(model_vocab):
    m, v = model_vocab
    with pytest.raises(UserError, match="never seen"):
        generate(m, v, "ROMEO: ☃", 10)


@pytest.mark.parametrize(
    "cfg",
    [
        {"cell": "gru", "layers": 2},
        {"cell": "gru", "reset_after": True},
        {"cell": "lstm", "layers": 2},
        {"cell": "rnn", "layers": 2},
    ],
)
def test_stepper_equals_the_model_over_a_window(cfg):
    torch.manual_seed(0)
    model = CharModel(ModelConfig(vocab_size=11, hidden_size=12, embed_size=5, **cfg)).eval()
    ids = torch.randint(0, 11, (9, 3))
    logits, h_end = model(ids)
    step, h = Stepper(model), model.init_state(3)
    with torch.no_grad():
        for t in range(9):
            lg, h = step(ids[t], h)
            torch.testing.assert_close(lg, logits[t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_end, atol=1e-5, rtol=1e-5)


def test_a_tiny_temperature_is_nearly_greedy(model_vocab):
    m, v = model_vocab
    assert _text(m, v, temperature=1e-30, seed=3) == _text(m, v, temperature=0)


CELLS = [
    {"cell": "gru", "layers": 2},
    {"cell": "gru", "reset_after": True},
    {"cell": "lstm", "layers": 2},
    {"cell": "rnn", "layers": 2},
]


@pytest.mark.parametrize("hidden", [16, 24], ids=["hidden-16", "hidden-24"])
@pytest.mark.parametrize("cfg", CELLS, ids=["gru-before", "gru-after", "lstm", "rnn"])
@pytest.mark.parametrize("compiled", ["avx512", "avx2", False], ids=["compiled-avx512", "compiled-avx2", "torch"])
def test_the_sampler_gives_the_models_next_character_logits(cfg, compiled, hidden, monkeypatch):
    """Streams (the compiled sampler at either vector width, or its torch fallback) reading characters
    one at a time gives the logits of the model's own forward over the whole window, for every stream.
    A hidden size of 24 ends in half an AVX-512 vector."""
    if not compiled:
        monkeypatch.setattr(sample, "compiled_sampler", lambda model: None)
    else:
        monkeypatch.setenv("GRU_LM_KERNELS", compiled)
        kernels = sample.compiled()
        if kernels is None or kernels.preferred_kernels() != compiled:
            pytest.skip(f"no {compiled} kernels here")
    torch.manual_seed(0)
    model = CharModel(ModelConfig(vocab_size=11, hidden_size=hidden, embed_size=5, **cfg)).eval()
    ids = torch.randint(0, 11, (7, 3))
    with torch.no_grad():
        expected, _ = model(ids)
    streams = Streams(model, ids[:1, 0], 3)
    if compiled and streams.compiled is None:
        pytest.skip("no compiled sampler here (no compiler or no AVX2)")
    for t in range(7):
        streams.last = ids[t].clone()
        torch.testing.assert_close(streams.logits(), expected[t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, None, None), (0.7, 3, None), (1.3, None, 0.8), (1.0, 4, 0.6), (0.0, None, None)]
)
def test_the_compiled_draw_is_pick(temperature, top_k, top_p):
    """For the same logits and the same uniform number, the compiled sampler draws the character that
    sample.pick draws: the same distribution, temperature, top-k and top-p rules."""
    torch.manual_seed(1)
    model = CharModel(ModelConfig(vocab_size=13, hidden_size=16, embed_size=5)).eval()
    streams = Streams(model, torch.tensor([3]), 64)
    if streams.compiled is None:
        pytest.skip("no compiled sampler here (no compiler or no AVX2)")
    streams.state = torch.randn_like(streams.state).contiguous()  # 64 different next-character distributions
    state = streams.state.clone()
    uniforms = torch.rand(1, 64, dtype=torch.float64)
    drawn = streams.next(uniforms, temperature, top_k, top_p)[0]
    streams.state, streams.last = state, torch.full((64,), 3)
    logits = streams.logits()
    expected = [pick(lg, temperature, top_k, top_p, u) for lg, u in zip(logits, uniforms[0])]
    assert drawn.tolist() == expected


def test_streams_generated_together_are_the_streams_generated_alone():
    torch.manual_seed(2)
    model = CharModel(ModelConfig(vocab_size=9, hidden_size=24, embed_size=5, cell="lstm")).eval()
    prime = torch.tensor([1, 4, 2])
    uniforms = torch.rand(20, 4, dtype=torch.float64)
    together = Streams(model, prime, 4).next(uniforms, 0.9, None, 0.95)
    alone = [Streams(model, prime, 1).next(uniforms[:, s : s + 1], 0.9, None, 0.95)[:, 0] for s in range(4)]
    assert torch.equal(together, torch.stack(alone, dim=1))
    assert len({tuple(together[:, s].tolist()) for s in range(4)}) > 1  # the streams do differ


@pytest.mark.parametrize("streams", [1, 3], ids=["one-stream", "three-streams"])
@pytest.mark.parametrize("cfg", CELLS, ids=["gru-before", "gru-after", "lstm", "rnn"])
def test_a_team_of_two_samples_what_the_torch_loop_samples(cfg, streams, monkeypatch):
    """With a hidden size that splits over two threads, the compiled sampler draws, character after character,
    what the torch loop draws from the model's logits with the same uniform numbers (with one stream every
    thread draws it, with three the threads share the draws), and leaves the same state after chunks of odd
    and even lengths, from which both give the same next logits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(3)
        model = CharModel(ModelConfig(vocab_size=11, hidden_size=128, embed_size=5, **cfg)).eval()
        prime = torch.tensor([1, 4, 2])
        fast = Streams(model, prime, streams)
        if fast.compiled is None:
            pytest.skip("no compiled sampler here (no compiler or no AVX2)")
        assert fast.compiled.parts() == 2
        monkeypatch.setattr(sample, "compiled_sampler", lambda model: None)
        slow = Streams(model, prime, streams)
        drawn = []
        for chunk in (1, 3, 5, 31):
            uniforms = torch.rand(chunk, streams, dtype=torch.float64)
            ids = fast.next(uniforms, 1.0, None, None)
            assert torch.equal(ids, slow.next(uniforms, 1.0, None, None))
            torch.testing.assert_close(fast.state, slow.state, atol=1e-5, rtol=1e-5)
            drawn += ids.flatten().tolist()
        torch.testing.assert_close(fast.logits(), slow.logits(), atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)
    assert len(set(drawn)) > 3  # a real draw, not one character over and over
