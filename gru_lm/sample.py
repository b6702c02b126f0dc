"""Generating text from a trained model: prime, temperature (0 = greedy), top-k, top-p, seed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checkpoint
from .cells import GRU, gru_step, rnn_step
from .config import check_seed
from .data import Vocab
from .errors import UserError


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
    return _generate(model, vocab, prime, length, temperature, top_k, top_p, generator)


def check_prime(vocab: Vocab, prime: str) -> None:
    if not prime:
        raise UserError("the prime must not be empty")
    bad = vocab.unknown(prime)
    if bad:
        raise UserError(f"the prime has characters the model has never seen: {bad!r}")


class Stepper:
    """One character at a time through a trained model, without autograd.

    The first layer's input projection embed(c) W_ih + b_ih is precomputed for every character of
    the vocabulary (a V×G·H table), so each step costs the recurrent matrix-vector products, the
    gate arithmetic of cells.py and the read-out.
    """

    def __init__(self, model) -> None:
        rnn = model.rnn
        self.gru, self.reset_after = isinstance(rnn, GRU), getattr(rnn, "reset_after", False)
        # the weights as stored: for one character at a time F.linear ran as fast or faster with them than
        # with a transposed copy (docs/performance.md)
        self.layers = [rnn.layer_weights(k) for k in range(rnn.num_layers)]
        w_ih, _, b_ih, _ = self.layers[0]
        self.table = F.linear(model.embed.weight, w_ih, b_ih)
        self.head_w, self.head_b = model.head.weight, model.head.bias

    def __call__(self, ids: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """ids: B (long), h: L×B×H -> (logits B×V, new state L×B×H)."""
        x, states = None, []
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            gi = self.table[ids] if k == 0 else F.linear(x, w_ih, b_ih)
            if self.gru:
                x = gru_step(gi, h[k], w_hh, b_hh, self.reset_after)
            else:
                x = rnn_step(gi, h[k], w_hh, b_hh)
            states.append(x)
        return F.linear(x, self.head_w, self.head_b), torch.stack(states)


def pick(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator) -> int:
    """The next character: argmax at temperature 0, else a draw from the filtered softmax.

    The draw inverts the cumulative distribution with one uniform number from `generator`
    (the same distribution as torch.multinomial, at a fraction of its cost for one draw).
    """
    if temperature == 0:
        return int(logits.argmax())
    # shift by the maximum first, so that a tiny temperature cannot overflow to inf - inf = NaN
    probs = filter_logits((logits - logits.max()) / temperature, top_k, top_p).softmax(-1).cpu()
    cdf = probs.double().cumsum(0)
    u = torch.rand(1, generator=generator, dtype=torch.float64) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u)), len(probs) - 1)


@torch.inference_mode()
def _generate(model, vocab: Vocab, prime: str, length: int, temperature: float, top_k, top_p, generator) -> Iterator[str]:
    model.eval()
    device = next(model.parameters()).device
    ids, _ = vocab.encode(prime)
    ids = ids.long().to(device)
    h = model.init_state(1, device)
    if len(ids) > 1:
        _, h = model(ids[:-1].view(-1, 1), h)
    step = Stepper(model)
    last = ids[-1:]
    for _ in range(length):
        logits, h = step(last, h)
        nxt = pick(logits[0].float(), temperature, top_k, top_p, generator)
        last = torch.tensor([nxt], device=device)
        yield vocab.chars[nxt]


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


def prepare(ckpt: str | Path, prime: str | None, length: int, temperature: float, top_k: int | None,
            top_p: float | None, num_samples: int, seed: int | None) -> SampleRequest:
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
    """Each sample, its prime first, separated by a blank line, written as it is generated."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(req.num_samples):
        write(("\n\n" if i else "") + req.prime)
        for ch in generate(req.model, req.vocab, req.prime, req.length, req.temperature, req.top_k, req.top_p, gen):
            write(ch)
    write("\n")
