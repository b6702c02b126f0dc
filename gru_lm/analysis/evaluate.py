"""Loss, perplexity and bits per character of a model on a text (`gru-lm perplexity`, and validation in training)."""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gru_lm.errors import UserError
from gru_lm.model import checkpoint
from gru_lm.text.corpus import ids_of, validation_ids
from gru_lm.text.vocab import Vocab


def pieces(bounds: list[int], num_streams: int) -> tuple[Tensor, Tensor]:
    """(start, how many positions to score) of each piece the blocks are cut into, as two tensors.

    The blocks, of the lengths in bounds, lie end to end; a block of m characters scores its last m - 1,
    each given the ones before it in the block. Each block is cut into about num_streams / len(bounds)
    contiguous pieces (at least one), so that many streams run side by side.
    """
    per_block = max(1, num_streams // max(len(bounds), 1))
    starts, counts, at = [], [], 0
    for m in bounds:
        n = m - 1
        if n >= 1:
            k = min(per_block, n)
            L = math.ceil(n / k)
            for j in range(0, n, L):
                starts.append(at + j)
                counts.append(min(L, n - j))
        at += m
    return torch.tensor(starts, dtype=torch.long), torch.tensor(counts, dtype=torch.long)


@torch.no_grad()
def nll(
    model,
    ids: Tensor,
    num_streams: int = 1,
    chunk: int = 256,
    device: torch.device | str = "cpu",
    bounds: list[int] | None = None,
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of the characters of ids after the first of each block, and how many
    characters that is.

    bounds are the lengths of the blocks that ids holds end to end (one block, all of ids, when None).
    Each block is cut into contiguous pieces (see pieces); each piece starts from a zero state and carries it
    through all of its characters. One stream for one block is the exact definition: every character given all
    the characters before it. More streams run faster with a small error at each piece's start.
    """
    starts, counts = pieces(bounds if bounds is not None else [len(ids)], num_streams)
    n = int(counts.sum())
    if n < 1:
        return 0.0, 0
    was_training = model.training
    model.eval()
    h, total = None, 0.0
    longest = int(counts.max())
    for t in range(0, longest, chunk):  # int64 ids one chunk at a time: never 1.6 GB of them
        offset = torch.arange(t, min(t + chunk, longest)).unsqueeze(1)
        pad = offset >= counts
        pos = (offset + starts).masked_fill_(pad, 0)
        x = ids[pos].long().masked_fill_(pad, 0).to(device)
        y = ids[pos + 1].long().masked_fill_(pad, -100).to(device)
        logits, h = model(x, h)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100, reduction="sum"))
    model.train(was_training)
    return total, n


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Score:
    """How well a model predicts a text: mean loss in nats per character, its perplexity (e^loss) and bits per
    character (loss / ln 2), over `chars` predicted characters."""

    loss: float
    perplexity: float
    bits_per_char: float
    chars: int

    def __str__(self) -> str:
        return (
            f"loss {self.loss:.4f} nats/char, perplexity {self.perplexity:.3f}, "
            f"{self.bits_per_char:.4f} bits/char over {self.chars:,} characters"
        )


def score(model, ids: Tensor, bounds: list[int] | None = None, label: str = "the text", device="cpu") -> Score:
    """The exact score of ids (each block of `bounds` from a fresh state, every character given all before it)."""
    total, n = nll(model, ids, num_streams=1, device=device, bounds=bounds)
    if n == 0:
        raise UserError(f"{label}: needs at least two characters of the model's vocabulary to score")
    loss = total / n
    return Score(loss, math.exp(loss), loss / math.log(2), n)


def measure_all(ckpts: list[Path], file: str | Path | None) -> list[dict]:
    """measure() for each checkpoint, with a note on stderr for the characters each one's vocabulary lacks."""
    rows = []
    for ck in ckpts:
        rows.append(row := measure(ck, file))
        if row["unknown"]:
            print(
                f"note: {row['file']}: {row['unknown']} characters outside the vocabulary of {ck} were left out: "
                f"{row['unknown_chars'][:40]!r}",
                file=sys.stderr,
            )
    return rows


def measure(ckpt_path: str | Path, file: str | Path | None = None, device: str = "cpu") -> dict:
    """Score one checkpoint on a file or prepared folder (or on its own validation split): one row of the perplexity
    table."""
    state = checkpoint.load(ckpt_path)
    model = checkpoint.build_model(state, ckpt_path).to(device)
    vocab = Vocab(state["vocab"])
    if file:
        ids, unknown, unknown_chars = ids_of(file, vocab)
        label, bounds = str(file), [len(ids)]
    else:
        label, ids, bounds, unknown, unknown_chars = validation_ids(state.get("data") or {}, vocab)
    result = score(model, ids, bounds, label, device)
    return {
        "checkpoint": str(ckpt_path),
        "file": label,
        "cell": model.cfg.label(),
        "params": model.num_params(),
        "chars": result.chars,
        "loss": result.loss,
        "perplexity": result.perplexity,
        "bpc": result.bits_per_char,
        "unknown": unknown,
        "unknown_chars": unknown_chars,
    }
