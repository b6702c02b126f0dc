"""gru-lm: character-level language models with a GRU (and a plain RNN baseline) written from their equations."""

__version__ = "0.1.0"
