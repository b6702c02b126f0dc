"""The most likely continuation of a prime, by beam search (`gru-lm sample --beam K`).

A beam is a continuation with its log-probability log p = Σ_t log p(c_t | prime, c_<t). The K beams
run through the model's forward as one batch of K streams, each with its own carried state. At each
step every beam is extended by every character of the vocabulary and the K best of the K×V
continuations are kept. K = 1 is greedy decoding; a K of at least V^length keeps every
continuation, and the search is exact.

With a stop character, a continuation that reaches it is finished: it is set aside with its score
and the others go on. The answer is the best of the finished and the full-length ones. Since they
have different lengths, and every character lowers log p, the score can be normalised by length:
log p / n^α (α = --length-norm; 0 ranks by plain log p, 1 by the mean log p per character). Without
a stop character every continuation has the same length and α does not change which one wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gru_lm.errors import UserError
from gru_lm.generation.sample import check_prime
from gru_lm.text.vocab import Vocab

MAX_BEAMS = 4096
ESCAPES = {"\\n": "\n", "\\t": "\t"}


@dataclass
class Continuation:
    text: str
    logp: float  # natural log of its probability given the prime
    score: float  # logp / len(text) ** length_norm


def score(logp: float, n: int, length_norm: float) -> float:
    return logp / n**length_norm if n else logp


def check_options(beams: int | None, length_norm: float, stop: str | None, sampling: dict[str, object]) -> None:
    """--beam's own options, and no sampling option beside it (sampling: flag -> value, None when not given)."""
    if beams is None:
        if length_norm != 0 or stop is not None:
            raise UserError("--length-norm and --stop belong to --beam; give --beam K too")
        return
    if not 1 <= beams <= MAX_BEAMS:
        raise UserError(f"--beam must be from 1 to {MAX_BEAMS}, not {beams}")
    if not (math.isfinite(length_norm) and length_norm >= 0):
        raise UserError(f"--length-norm must be 0 or more, not {length_norm}")
    given = [flag for flag, value in sampling.items() if value is not None]
    if given:
        raise UserError(
            f"--beam finds the most likely continuation, with no randomness: it takes no "
            f"{', '.join(given)} (those choose how to sample)"
        )


def stop_id(vocab: Vocab, stop: str | None) -> int | None:
    """The id of the stop character (\\n and \\t as typed stand for a newline and a tab), or UserError."""
    if stop is None:
        return None
    char = ESCAPES.get(stop, stop)
    if len(char) != 1:
        raise UserError(f"--stop must be one character (or \\n, \\t), not {stop!r}")
    if char not in vocab.chars:
        raise UserError(f"--stop {stop!r}: the model has never seen this character")
    return vocab.chars.index(char)


@torch.inference_mode()
def search(
    model, vocab: Vocab, prime: str, length: int, beams: int, length_norm: float = 0.0, stop: str | None = None
) -> Continuation:
    """The best continuation of prime, of `length` characters or fewer ending at stop (see the module)."""
    check_prime(vocab, prime)
    end = stop_id(vocab, stop)
    model.eval()
    device = next(model.parameters()).device
    ids = vocab.encode(prime)[0].long().to(device)
    h = model.init_state(1, device)
    if len(ids) > 1:
        _, h = model(ids[:-1].view(-1, 1), h)
    last, seqs, logp = ids[-1:], ids.new_empty(1, 0), torch.zeros(1, dtype=torch.float64, device=device)
    finished: list[Continuation] = []
    for _n in range(1, length + 1):
        logits, h = model(last.view(1, -1), h)  # one step of every beam: 1×B×V
        beam, char, logp = _best(logp[:, None] + torch.log_softmax(logits[0].double(), -1), beams)
        seqs, h = torch.cat([seqs[beam], char[:, None]], 1), h[:, beam]
        if end is not None:
            done = char == end
            finished += [_continuation(vocab, s, lp, length_norm) for s, lp in zip(seqs[done], logp[done])]
            seqs, h, logp, char = seqs[~done], h[:, ~done], logp[~done], char[~done]
            if len(char) == 0:
                break
        last = char
    full = [_continuation(vocab, s, lp, length_norm) for s, lp in zip(seqs, logp)]
    return max(finished + full, key=lambda c: c.score)


def _best(candidates: Tensor, beams: int) -> tuple[Tensor, Tensor, Tensor]:
    """The `beams` best of B×V candidate log-probabilities: (the beam each extends, its new character, its log p)."""
    V = candidates.shape[1]
    top = candidates.flatten().topk(min(beams, candidates.numel()))
    return top.indices // V, top.indices % V, top.values


def _continuation(vocab: Vocab, ids: Tensor, logp: Tensor, length_norm: float) -> Continuation:
    return Continuation(vocab.decode(ids), float(logp), score(float(logp), len(ids), length_norm))


def describe(best: Continuation, beams: int) -> str:
    """The line `sample --beam` prints on stderr about what it found."""
    n = len(best.text)
    per = f", {best.logp / n:.4f} per character" if n else ""
    return f"beam search with {beams} beam(s): {n} characters, log p = {best.logp:.4f}{per}; score {best.score:.4f}"
