"""What an export needs of a checkpoint: its weights as float32 arrays, per layer in torch's layout, and the
description (cell, sizes, vocabulary) that every exported file carries beside them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gru_lm import __version__
from gru_lm.model import checkpoint


@dataclass(frozen=True)
class Layer:
    """One recurrent layer's weights as torch lays them out (gates stacked on the rows: r, z, n for the GRU,
    i, f, g, o for the LSTM). A layer trained without biases gets zeros, which compute the same."""

    w_ih: np.ndarray  # G·H × I
    w_hh: np.ndarray  # G·H × H
    b_ih: np.ndarray  # G·H
    b_hh: np.ndarray  # G·H


@dataclass(frozen=True)
class StepWeights:
    """Everything one step of the model reads: embedding, recurrent layers, read-out; float32 throughout."""

    cell: str  # "gru", "lstm" or "rnn"
    reset_after: bool  # the GRU's form: the reset gate after the product h W_hn + b_hn (torch.nn.GRU's)
    vocab: str  # the characters, in id order
    embed: np.ndarray  # V × E
    layers: list[Layer]
    head_w: np.ndarray  # V × H
    head_b: np.ndarray  # V

    @property
    def hidden_size(self) -> int:
        return int(self.layers[0].w_hh.shape[1])

    @property
    def state_parts(self) -> tuple[str, ...]:
        """The tensors each layer carries from one step to the next: h, and c for the LSTM."""
        return ("h", "c") if self.cell == "lstm" else ("h",)

    def state_names(self) -> list[str]:
        """The state tensors in the order every export lists them: layer by layer, h before c (h0, c0, h1, ...)."""
        return [f"{part}{k}" for k in range(len(self.layers)) for part in self.state_parts]

    def description(self) -> dict[str, object]:
        """The model's description as plain values: cell, sizes, the vocabulary as a list of characters."""
        return {
            "cell": self.cell,
            "reset_after": self.reset_after,
            "layers": len(self.layers),
            "hidden_size": self.hidden_size,
            "embed_size": int(self.embed.shape[1]),
            "vocab_size": len(self.vocab),
            "vocab": list(self.vocab),
            "state": self.state_names(),
            "producer": f"gru-lm {__version__}",
        }


def _array(t: torch.Tensor | None, like: torch.Tensor) -> np.ndarray:
    if t is None:
        return np.zeros(like.shape[0], dtype=np.float32)
    return t.detach().to(torch.float32).cpu().numpy().copy()


def from_model(model, vocab: str) -> StepWeights:
    """The step weights of a CharModel (the weights it samples with: a checkpoint's averaged ones where the run
    averaged, since checkpoint.build_model loads those)."""
    rnn, cfg = model.rnn, model.cfg
    layers = []
    for k in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = rnn.layer_weights(k)
        layers.append(Layer(_array(w_ih, w_ih), _array(w_hh, w_hh), _array(b_ih, w_ih), _array(b_hh, w_hh)))
    return StepWeights(
        cell=cfg.cell,
        reset_after=bool(cfg.cell == "gru" and cfg.reset_after),
        vocab=vocab,
        embed=_array(model.embed.weight, model.embed.weight),
        layers=layers,
        head_w=_array(model.head.weight, model.head.weight),
        head_b=_array(model.head.bias, model.head.weight),
    )


def from_checkpoint(path: str | Path) -> StepWeights:
    """The step weights of a checkpoint file; a missing, corrupt or foreign one is a UserError naming it."""
    state = checkpoint.load(path)
    return from_model(checkpoint.build_model(state, path), state["vocab"])
