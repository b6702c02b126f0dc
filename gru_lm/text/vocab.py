"""The character vocabulary: the characters a model knows, and text to ids and back."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gru_lm.text.prepared import storage_dtype

_CHUNK = 1 << 20  # characters encoded at a time, so encoding never holds 8 bytes per character of the corpus


def _storage_dtype(vocab_size: int) -> torch.dtype:
    """1 byte per character where the vocabulary fits, else 2 or 4 (as prepared corpora store them)."""
    return {1: torch.uint8, 2: torch.uint16, 4: torch.uint32}[storage_dtype(vocab_size).itemsize]


@dataclass(frozen=True)
class Vocab:
    """The characters a model knows; id = position in `chars`.

    A vocabulary built from a text is sorted by code point; one extended for fine-tuning
    (--extend-vocab) keeps its old characters where they were and adds the new ones at the end.
    """

    chars: str

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def _sorted_codes(self) -> tuple[Tensor, Tensor]:
        """The code points in ascending order, and the id of each (the identity for a sorted vocabulary)."""
        codes = torch.tensor([ord(c) for c in self.chars], dtype=torch.int32)
        return torch.sort(codes)

    def unknown(self, text: str) -> str:
        """The distinct characters of text that are not in the vocabulary, in order of appearance."""
        known = set(self.chars)
        return "".join(dict.fromkeys(c for c in text if c not in known))

    def encode(self, text: str, drop_unknown: bool = False) -> tuple[Tensor, int]:
        """Text -> compact 1-D id tensor, and the number of unknown characters dropped.

        Unknown characters raise ValueError unless drop_unknown is set. Works in chunks of
        code points (searchsorted over the sorted code points), never a Python list per character.
        """
        codes, order = self._sorted_codes()
        dtype = _storage_dtype(len(self))
        parts, dropped = [], 0
        for start in range(0, len(text), _CHUNK):
            piece = text[start : start + _CHUNK]
            cps = torch.frombuffer(bytearray(piece.encode("utf-32-le")), dtype=torch.int32)
            idx = torch.searchsorted(codes, cps).clamp_(max=len(codes) - 1)
            ok = codes[idx] == cps
            if not bool(ok.all()):
                if not drop_unknown:
                    bad = self.unknown(piece)
                    raise ValueError(f"characters not in the vocabulary: {bad!r}")
                dropped += int((~ok).sum())
                idx = idx[ok]
            parts.append(order[idx].to(dtype))
        ids = torch.cat(parts) if parts else torch.empty(0, dtype=dtype)
        return ids, dropped

    def decode(self, ids) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)
