"""The validation split and the batcher of truncated backpropagation through time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gru_lm.errors import UserError


def split_validation(text: str, val_fraction: float) -> tuple[str, str, int]:
    """Last val_fraction of the characters is validation; returns (train, val, index where val starts).

    The cut is int(n * (1 - f)), as nanoGPT's: Tiny Shakespeare keeps its last 111,540 characters.
    """
    cut = validation_start(len(text), val_fraction)
    return text[:cut], text[cut:], cut


def validation_start(n: int, val_fraction: float) -> int:
    """Where the validation split of n characters (or ids) starts."""
    return int(n * (1.0 - val_fraction))


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
