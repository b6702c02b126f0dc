"""An exponential moving average of the weights (Polyak averaging), for evaluation and inference.

Late in a run Adam's steps keep the weights wandering around a minimum: the validation loss read
at one evaluation moves by ~0.01 from the next. The average of the recent weights sits nearer the
middle of that wandering, for one lerp per parameter per step. The training run evaluates the
average, and saves it as the checkpoint's model (what best.pt, `sample` and `perplexity` use);
the optimiser's own weights travel beside it in last.pt, so that --resume continues exactly.
"""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class WeightAverage(Generic[M]):
    """A copy of model whose parameters follow avg ← decay·avg + (1 − decay)·weights, once per step."""

    def __init__(self, model: M, decay: float) -> None:
        self.decay = decay
        self.model: M = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self._pairs = list(zip(self.model.parameters(), model.parameters()))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights just updated by optimiser step number `step` (counting from 0).

        The decay starts small, (1 + step) / (10 + step), so that the average is not dominated by
        the random initial weights in a short run (the warm-up of TensorFlow's ExponentialMovingAverage).
        """
        weight = 1.0 - min(self.decay, (1 + step) / (10 + step))
        for avg, p in self._pairs:
            avg.lerp_(p, weight)
