"""The character language model: embedding -> stacked recurrent layers -> linear read-out."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from .cells import GRU, RNN, dropout


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
        """How tables name the cell: gru, gru (reset-after) or rnn."""
        return self.cell + (" (reset-after)" if self.cell == "gru" and self.reset_after else "")


class CharModel(nn.Module):
    """Predicts the next character at every position of a time-major window (T×B of ids)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size)
        if cfg.cell == "gru":
            self.rnn: nn.Module = GRU(
                cfg.embed_size, cfg.hidden_size, cfg.layers, dropout=cfg.dropout, reset_after=cfg.reset_after,
                weight_drop=cfg.weight_drop,
            )
        elif cfg.cell == "rnn":
            self.rnn = RNN(cfg.embed_size, cfg.hidden_size, cfg.layers, dropout=cfg.dropout, weight_drop=cfg.weight_drop)
        else:
            raise ValueError(f"unknown cell {cfg.cell!r}")
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def init_state(self, batch_size: int, device=None) -> Tensor:
        return self.head.weight.new_zeros(self.cfg.layers, batch_size, self.cfg.hidden_size, device=device)

    def forward(self, ids: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """ids: T×B (long), h: L×B×H -> (logits T×B×V, new state L×B×H)."""
        out, h = self.rnn(self.embed(ids), h)
        return self.head(dropout(out, self.cfg.dropout, self.training)), h

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
