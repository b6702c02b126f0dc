"""Where a training run is: the counters, the carried hidden state and the partial sums of the log.

Together with the weights, the optimiser and the RNG states, this is what a checkpoint holds so
that `--resume` continues a run exactly. The names are the checkpoint's keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class RunState:
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # passes over the training text
    window: int = 0  # the next window of this epoch
    chars: int = 0  # characters trained on, by all processes
    elapsed_s: float = 0.0  # wall time of the run before this process took it up (a resumed run's earlier parts)
    val_loss: float = math.nan  # the latest validation loss
    best_val_loss: float = math.inf
    loss_sum: float = 0.0  # training losses since the last metrics line, and how many
    loss_n: int = 0
    stale_evals: int = 0  # evaluations in a row without a new best (for --patience)
    hidden: Tensor | None = None  # this process's streams' state, carried from window to window

    def advance(self, chars: int, windows_in_epoch: int, loss: float) -> None:
        """Count one step of `chars` characters; a finished epoch starts the next at window 0."""
        self.step += 1
        self.chars += chars
        self.window += 1
        if self.window >= windows_in_epoch:
            self.epoch, self.window = self.epoch + 1, 0
        self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1

    def take_mean_loss(self) -> float:
        """The mean training loss since the last metrics line, starting the next sum."""
        mean = self.loss_sum / self.loss_n
        self.loss_sum, self.loss_n = 0.0, 0
        return mean

    def record_evaluation(self, val_loss: float) -> bool:
        """Take a validation loss; returns whether it is a new best."""
        improved = val_loss < self.best_val_loss
        self.val_loss, self.best_val_loss = val_loss, min(self.best_val_loss, val_loss)
        self.stale_evals = 0 if improved else self.stale_evals + 1
        return improved

    def to_checkpoint(self, elapsed_s: float, loss_sum: float, hidden: Tensor) -> dict:
        """The checkpoint's entries (elapsed_s, loss_sum and hidden as the caller agreed them across processes)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(elapsed_s=elapsed_s, loss_sum=loss_sum, hidden=hidden)
        return out

    @classmethod
    def from_checkpoint(cls, state: dict, streams: slice, device: torch.device) -> RunState:
        """The state saved in a checkpoint, with this process's share of the carried hidden state."""
        keys = {f.name for f in fields(cls)} - {"hidden"}
        run = cls(**{k: state[k] for k in keys})
        run.hidden = state["hidden"][:, streams].to(device)
        return run
