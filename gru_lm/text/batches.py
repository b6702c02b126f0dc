"""The validation split and the batcher of truncated backpropagation through time."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from gru_lm.errors import UserError

#: The validation blocks a text's size gets when val_blocks is 0 (auto): about this many characters each ...
AUTO_BLOCK_CHARS = 4_000
#: ... and at most this many blocks.
MAX_AUTO_BLOCKS = 100


def auto_val_blocks(n: int, val_fraction: float) -> int:
    """How many validation blocks a text of n characters gets by default: blocks of a few thousand characters,
    long enough that the fresh state each starts from costs little, and at most MAX_AUTO_BLOCKS of them."""
    return max(1, min(MAX_AUTO_BLOCKS, int(n * val_fraction) // AUTO_BLOCK_CHARS))


def validation_ranges(n: int, val_fraction: float, blocks: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of n characters kept for validation: `blocks` blocks spread over the text.

    The text is cut into `blocks` equal shares and the last val_fraction of each share is validation,
    so every part of the text (each book of a collection, each file of a code base) is in both splits
    in proportion, and no position is in both. With one block it is the last val_fraction of the text,
    cut at int(n * (1 - f)) as nanoGPT's: Tiny Shakespeare keeps its last 111,540 characters.
    """
    edges = [n * i // blocks for i in range(blocks + 1)]
    return [(lo + int((hi - lo) * (1.0 - val_fraction)), hi) for lo, hi in pairwise(edges) if hi > lo]


def training_ranges(n: int, validation: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The [start, end) ranges of n characters that the validation ranges leave for training."""
    out, at = [], 0
    for lo, hi in validation:
        if lo > at:
            out.append((at, lo))
        at = hi
    if at < n:
        out.append((at, n))
    return out


def split_validation(text: str, val_fraction: float, blocks: int = 1) -> tuple[str, list[str]]:
    """(training text, validation blocks) of a text: the training parts joined, each validation block apart."""
    val = validation_ranges(len(text), val_fraction, blocks)
    return "".join(text[a:b] for a, b in training_ranges(len(text), val)), [text[a:b] for a, b in val]


def first_of_each(bounds: list[int], max_chars: int) -> list[tuple[int, int]]:
    """[start, end) of the first max_chars characters of blocks of the given lengths laid end to end, taken
    evenly: the first share of every block (all of them when max_chars is 0 or covers them)."""
    total = sum(bounds)
    share = len(bounds) and -(-max_chars // len(bounds))  # ceil
    out, at = [], 0
    for m in bounds:
        out.append((at, at + (m if not max_chars or max_chars >= total else min(m, share))))
        at += m
    return out


def min_train_chars(batch_size: int, seq_len: int) -> int:
    """The fewest training characters that give every one of the B streams one window plus its target."""
    return batch_size * (seq_len + 1)


def check_train_length(n: int, batch_size: int, seq_len: int, name: str = "the training text") -> None:
    need = min_train_chars(batch_size, seq_len)
    if n < need:
        raise UserError(
            f"{name} has {n:,} training characters, fewer than the {need:,} that batch size "
            f"{batch_size} and window {seq_len} need; lower --batch-size or --seq-len"
        )


@dataclass
class StreamBatcher:
    """Cuts the training ids into B contiguous streams and serves windows of T characters.

    Epoch e starts the streams at offset o_e in [0, T) drawn from (seed, e), so the position
    in the data is just (epoch, window) and resuming needs no RNG state. Window k of an epoch is
    x = streams[:, kT : kT+T], y = streams[:, kT+1 : kT+T+1] (time-major when served); windows never
    cross a stream boundary, and the hidden state of stream b carries from window k to k+1.
    """

    data: Tensor
    batch_size: int
    seq_len: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_train_length(len(self.data), self.batch_size, self.seq_len)

    def offset(self, epoch: int) -> int:
        slack = len(self.data) - min_train_chars(self.batch_size, self.seq_len)
        high = min(self.seq_len - 1, slack)
        if epoch == 0 or high <= 0:
            return 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(torch.randint(0, high + 1, (1,), generator=g))

    def _streams(self, epoch: int) -> Tensor:
        o = self.offset(epoch)
        L = (len(self.data) - o) // self.batch_size
        return self.data[o : o + self.batch_size * L].view(self.batch_size, L)

    def windows(self, epoch: int) -> int:
        """Number of windows in epoch (the same for every epoch up to the offset)."""
        return (self._streams(epoch).shape[1] - 1) // self.seq_len

    def get(self, epoch: int, k: int) -> tuple[Tensor, Tensor]:
        """Window k of epoch as (x, y), each T×B long."""
        s, T = self._streams(epoch), self.seq_len
        chunk = s[:, k * T : k * T + T + 1].long()
        return chunk[:, :-1].t(), chunk[:, 1:].t()
