"""The character language model: embedding -> stacked recurrent layers -> linear read-out.

The state a model carries from one window to the next is one tensor, L×B×H for the GRU and the RNN
and L×B×2H for the LSTM (h and c side by side), so that the training loop, the checkpoints and the
data-parallel code handle every cell alike (streams on dimension 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from gru_lm.model.cells import GRU, LSTM, RNN, TableRows, dropout
from gru_lm.model.readout import linear_cross_entropy


@dataclass
class ModelConfig:
    vocab_size: int
    cell: str = "gru"
    hidden_size: int = 256
    layers: int = 1
    embed_size: int = 64
    dropout: float = 0.0
    reset_after: bool = False
    weight_drop: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        """How tables name the cell: gru, gru (reset-after), lstm or rnn."""
        return self.cell + (" (reset-after)" if self.cell == "gru" and self.reset_after else "")


class CharModel(nn.Module):
    """Predicts the next character at every position of a time-major window (T×B of ids)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size)
        if cfg.cell == "gru":
            self.rnn: GRU | LSTM | RNN = GRU(
                cfg.embed_size,
                cfg.hidden_size,
                cfg.layers,
                dropout=cfg.dropout,
                reset_after=cfg.reset_after,
                weight_drop=cfg.weight_drop,
            )
        elif cfg.cell in ("lstm", "rnn"):
            cls = LSTM if cfg.cell == "lstm" else RNN
            self.rnn = cls(
                cfg.embed_size, cfg.hidden_size, cfg.layers, dropout=cfg.dropout, weight_drop=cfg.weight_drop
            )
        else:
            raise ValueError(f"unknown cell {cfg.cell!r}")
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    @property
    def state_width(self) -> int:
        """Features of the carried state per layer and stream: H, or 2H for the LSTM's (h, c)."""
        return self.cfg.hidden_size * (2 if self.cfg.cell == "lstm" else 1)

    def init_state(self, batch_size: int, device=None) -> Tensor:
        return self.head.weight.new_zeros(self.cfg.layers, batch_size, self.state_width, device=device)

    def forward(self, ids: Tensor, h: Tensor | None = None, targets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """ids: T×B (long), h: L×B×H (L×B×2H for the LSTM) -> (logits T×B×V, new state of the same shape).

        With targets (T×B, long; -100 for a position to leave out) it returns (the mean cross-entropy, new
        state) instead, through the fused read-out (readout.py), which never makes the T·B×V logits: what
        training calls, through a DistributedDataParallel wrapper too (DDP needs its forward called).
        """
        out, new = self._features(ids, h)
        if targets is None:
            return self.head(out), new
        loss = linear_cross_entropy(out.flatten(0, 1), self.head.weight, self.head.bias, targets.flatten())
        return loss, new

    def loss(self, ids: Tensor, targets: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mean cross-entropy of predicting targets, new state): the same as cross_entropy of forward's logits
        (float32), computed without them."""
        return self(ids, h, targets)

    def _features(self, ids: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        """What the read-out reads (the last layer's outputs after dropout, T×B×H) and the new state."""
        x, first_gi = stack_inputs(self.embed, self.rnn, ids)
        if self.cfg.cell == "lstm":
            out, (h_n, c_n) = self.rnn(x, None if h is None else h.chunk(2, dim=-1), first_gi=first_gi)
            new = torch.cat([h_n, c_n], dim=-1)
        else:
            out, new = self.rnn(x, h, first_gi=first_gi)
        return dropout(out, self.cfg.dropout, self.training), new

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def stack_inputs(embed: nn.Embedding, rnn: nn.Module, ids: Tensor) -> tuple[Tensor | None, TableRows | None]:
    """What a recurrent stack reads for ids (T×B): (the embedded ids, None), or, when the stack has an
    input_table (our cells) and the alphabet has fewer characters than the window has positions, (None, the
    table of the projected embedding with the ids): the first layer's input projection of each position is
    its character's row of the table, so a window costs V products instead of T·B, the windows read the rows
    in place, and the table's gradient is the sum of its positions' gradients (the sampler reads the same
    table)."""
    table = getattr(rnn, "input_table", None)
    if table is not None and table_pays(embed.num_embeddings, ids.numel()):
        return None, TableRows(table(embed.weight), ids)
    return embed(ids), None


def table_pays(vocab_size: int, positions: int) -> bool:
    """Whether a window of `positions` ids reads its first layer's projections from the table: when projecting
    the alphabet's vocab_size rows is fewer products than projecting every position."""
    return vocab_size < positions
