"""Generating text from a trained model: prime, temperature (0 = greedy), top-k, top-p, seed; N streams at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gru_lm.errors import UserError, check_seed
from gru_lm.model import checkpoint
from gru_lm.model.cells import gru_step, lstm_step, rnn_step
from gru_lm.model.kernels import compiled
from gru_lm.text.vocab import Vocab


def check_options(temperature: float, top_k: int | None, top_p: float | None, length: int) -> None:
    if not temperature >= 0:
        raise UserError(f"--temperature must be 0 (greedy) or more, not {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], not {top_p}")
    if length < 0:
        raise UserError(f"--length must be 0 or more, not {length}")


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Keep the top_k most likely characters, then the smallest set whose probability reaches top_p."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a character when the ones more likely than it already reach top_p
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def default_prime(vocab: Vocab) -> str:
    return "\n" if "\n" in vocab.chars else vocab.chars[0]


def generate(
    model,
    vocab: Vocab,
    prime: str,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """Yield `length` new characters one at a time, after reading the prime through the model.

    The prime is checked here, before the first character is asked for, so a bad prime fails
    before anything is printed.
    """
    check_prime(vocab, prime)
    return (part[0] for part in _generate(model, vocab, prime, length, temperature, top_k, top_p, generator))


def check_prime(vocab: Vocab, prime: str) -> None:
    if not prime:
        raise UserError("the prime must not be empty")
    bad = vocab.unknown(prime)
    if bad:
        raise UserError(f"the prime has characters the model has never seen: {bad!r}")


class Stepper:
    """One character at a time through a trained model with torch operations (the fallback of Streams).

    The first layer's input projection embed(c) W_ih + b_ih is precomputed for every character of
    the vocabulary (a V×G·H table), so each step costs the recurrent matrix-vector products, the
    gate arithmetic of cells.py and the read-out.
    """

    def __init__(self, model) -> None:
        rnn = model.rnn
        self.cell, self.reset_after = model.cfg.cell, getattr(rnn, "reset_after", False)
        self.layers = [rnn.layer_weights(k) for k in range(rnn.num_layers)]
        self.table = rnn.input_table(model.embed.weight)
        self.head_w, self.head_b = model.head.weight, model.head.bias

    def __call__(self, ids: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """ids: B (long), h: L×B×W (the model's carried state) -> (logits B×V, new state L×B×W)."""
        x, states = self.table[ids], []  # the first layer's input projection, looked up
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            gi = x if k == 0 else F.linear(x, w_ih, b_ih)
            if self.cell == "gru":
                x = state = gru_step(gi, h[k], w_hh, b_hh, self.reset_after)
            elif self.cell == "lstm":
                h_k, c_k = h[k].chunk(2, dim=-1)
                x, c = lstm_step(gi, (h_k, c_k), w_hh, b_hh)
                state = torch.cat([x, c], dim=-1)
            else:
                x = state = rnn_step(gi, h[k], w_hh, b_hh)
            states.append(state)
        return F.linear(x, self.head_w, self.head_b), torch.stack(states)


@torch.inference_mode()
def read_prime(model, prime_ids: Tensor, streams: int, device: torch.device | str = "cpu") -> Tensor:
    """The state of `streams` streams after the model's own forward over all of the prime but its last
    character (which the first step reads): L×N×W, contiguous, since the compiled sampler writes the
    streams' state back into it. Every generating path starts here, so a seed's text depends on nothing else."""
    state = model.init_state(streams, device)
    if len(prime_ids) > 1:
        _, state = model(prime_ids[:-1].view(-1, 1).expand(-1, streams).to(device), state)
    return state.contiguous()


class Streams:
    """N streams of text generated together from one model: the compiled sampler (csrc/sampler.cpp)
    where it can run the model, else Stepper and pick, which draw from the same distribution.

    The prime is read through the model's own forward, as in training, so both paths start from the
    same state.
    """

    def __init__(self, model, prime_ids: Tensor, streams: int) -> None:
        self.model = model.eval()
        device = next(model.parameters()).device
        self.state = read_prime(model, prime_ids, streams, device)
        self.last = prime_ids[-1:].expand(streams).clone().to(device)
        self.compiled = compiled_sampler(model)
        self.stepper: Stepper | None = None if self.compiled else Stepper(model)

    @torch.inference_mode()
    def next(self, uniforms: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
        """The next len(uniforms) characters of every stream (chars×N ids), one uniform draw each."""
        if self.compiled is not None:
            ids = self.compiled.run(self.last, self.state, uniforms, temperature, top_k or 0, top_p or 1.0)
        else:
            ids = torch.empty(uniforms.shape, dtype=torch.long)
            assert self.stepper is not None
            for t in range(len(uniforms)):
                logits, self.state = self.stepper(self.last, self.state)
                ids[t] = torch.tensor(
                    [pick(lg.float(), temperature, top_k, top_p, u) for lg, u in zip(logits, uniforms[t])]
                )
                self.last = ids[t].to(self.last.device)
        self.last = ids[-1].clone().to(self.last.device)
        return ids

    @torch.inference_mode()
    def logits(self) -> Tensor:
        """The next character's logits of every stream (N×V), moving the streams on by their last character."""
        if self.compiled is not None:
            return self.compiled.logits(self.last, self.state)
        assert self.stepper is not None
        logits, self.state = self.stepper(self.last, self.state)
        return logits


def compiled_sampler(model):
    """The compiled sampler of model's weights, or None where it cannot run them (no compiled kernels,
    no AVX2, a GPU, a hidden size that is not a multiple of 8)."""
    k = compiled()
    p = next(model.parameters())
    H = model.cfg.hidden_size
    if k is None or not hasattr(k, "Sampler") or p.device.type != "cpu" or p.dtype != torch.float32 or H % 8:
        return None
    rnn, cell = model.rnn, model.cfg.cell
    kind = ("gru_after" if rnn.reset_after else "gru_before") if cell == "gru" else cell
    layers = [rnn.layer_weights(k) for k in range(rnn.num_layers)]
    zeros = torch.zeros(rnn.gates * H)
    w_ih, w_hh, b_ih, b_hh = ([lw[i] if lw[i] is not None else zeros for lw in layers] for i in range(4))
    with torch.no_grad():
        return k.Sampler(
            kind,
            rnn.input_table(model.embed.weight),
            [w.detach() for w in w_ih],
            [w.detach() for w in w_hh],
            [b.detach() for b in b_ih],
            [b.detach() for b in b_hh],
            model.head.weight.detach(),
            model.head.bias.detach(),
        )


def pick(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, u) -> int:
    """The next character: argmax at temperature 0, else a draw from the filtered softmax.

    The draw inverts the cumulative distribution with the uniform number u in [0, 1) (the same
    distribution as torch.multinomial, at a fraction of its cost for one draw).
    """
    if temperature == 0:
        return int(logits.argmax())
    # shift by the maximum first, so that a tiny temperature cannot overflow to inf - inf = NaN
    probs = filter_logits((logits - logits.max()) / temperature, top_k, top_p).softmax(-1).cpu()
    cdf = probs.double().cumsum(0)
    target = torch.tensor([float(u)], dtype=torch.float64) * cdf[-1]
    return min(int(torch.searchsorted(cdf, target)), len(probs) - 1)


def _chunks(length: int) -> Iterator[int]:
    """Characters per call of the sampler: small at first, so the first ones show at once, then larger."""
    size = 4
    while length > 0:
        yield min(size, length)
        length -= size
        size = min(size * 2, 256)


def _generate(
    model, vocab: Vocab, prime: str, length: int, temperature: float, top_k, top_p, generator, streams: int = 1
) -> Iterator[list[str]]:
    """The characters of every stream, a chunk at a time: lists of N strings."""
    streams_ = Streams(model, vocab.encode(prime)[0].long(), streams)
    for n in _chunks(length):
        uniforms = torch.rand(n, streams, generator=generator, dtype=torch.float64)
        ids = streams_.next(uniforms, temperature, top_k, top_p).t()
        yield ["".join(vocab.chars[i] for i in row.tolist()) for row in ids]


@dataclass
class SampleRequest:
    """What `gru-lm sample` was asked for, checked before anything is printed."""

    model: object
    vocab: Vocab
    prime: str
    length: int
    temperature: float
    top_k: int | None
    top_p: float | None
    num_samples: int


def sample_request(
    ckpt: str | Path,
    prime: str | None,
    length: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    num_samples: int,
    seed: int | None,
) -> SampleRequest:
    """Check every option and load the checkpoint: a mistake fails here, before any output."""
    check_options(temperature, top_k, top_p, length)
    if num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, not {num_samples}")
    if seed is not None:
        check_seed(seed)
    state = checkpoint.load(ckpt)
    model, vocab = checkpoint.build_model(state, ckpt), Vocab(state["vocab"])
    prime = prime or default_prime(vocab)
    try:
        check_prime(vocab, prime)
    except UserError as e:
        raise UserError(f"{ckpt}: {e}") from None
    return SampleRequest(model, vocab, prime, length, temperature, top_k, top_p, num_samples)


def write_samples(req: SampleRequest, seed: int, write: Callable[[str], None]) -> None:
    """Each sample, its prime first, separated by a blank line. The samples are generated together, as
    streams of one batch; the first is written as it is generated, the others once it is done."""
    gen = torch.Generator().manual_seed(seed)
    rest = [""] * (req.num_samples - 1)
    write(req.prime)
    for part in _generate(
        req.model, req.vocab, req.prime, req.length, req.temperature, req.top_k, req.top_p, gen, req.num_samples
    ):
        write(part[0])
        rest = [r + p for r, p in zip(rest, part[1:])]
    for text in rest:
        write("\n\n" + req.prime + text)
    write("\n")


def sample_text(
    model,
    vocab: Vocab,
    prime: str | None = None,
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> str:
    """One sample as `gru-lm sample` writes it, prime first, as a string (without the command's last newline):
    the same options, the same checks and, for the same seed, the same text."""
    check_options(temperature, top_k, top_p, length)
    check_seed(seed)
    prime = prime or default_prime(vocab)
    check_prime(vocab, prime)
    parts: list[str] = []
    write_samples(SampleRequest(model, vocab, prime, length, temperature, top_k, top_p, 1), seed, parts.append)
    return "".join(parts).removesuffix("\n")
