"""gru-lm: character-level language models with a GRU (and a plain RNN baseline) written from their equations.

From Python (docs/api.md):

    import gru_lm
    run = gru_lm.train("data/tinyshakespeare.txt", max_time=60)
    print(run.model.sample(prime="ROMEO:", length=200, seed=1))
    model = gru_lm.load(run.folder / "best.pt")

and the cells themselves: gru_lm.GRU, LSTM, RNN and GRUCell, LSTMCell, RNNCell (torch.nn's names and layouts).
The names are loaded on first use, so `import gru_lm` (and the command line) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "gru_lm.api",
    "load": "gru_lm.api",
    "Model": "gru_lm.api",
    "Run": "gru_lm.api",
    "UserError": "gru_lm.errors",
    "GRU": "gru_lm.model.cells",
    "LSTM": "gru_lm.model.cells",
    "RNN": "gru_lm.model.cells",
    "GRUCell": "gru_lm.model.cells",
    "LSTMCell": "gru_lm.model.cells",
    "RNNCell": "gru_lm.model.cells",
}
__all__ = ["GRU", "LSTM", "RNN", "GRUCell", "LSTMCell", "Model", "RNNCell", "Run", "UserError", "load", "train"]

if TYPE_CHECKING:
    from gru_lm.api import Model, Run, load, train
    from gru_lm.errors import UserError
    from gru_lm.model.cells import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gru_lm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
