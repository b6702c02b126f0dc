"""The ids a run trains and validates on, from a text file (encoded in memory) or a prepared folder (memory-mapped)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Settings
from .data import Vocab, check_train_length, read_text, validation_start
from .errors import UserError
from .prepare import encode_file, is_prepared, load_prepared, storage_dtype

_CHUNK = 1 << 24  # ids remapped at a time


@dataclass
class Corpus:
    vocab: Vocab
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    record: dict  # what the checkpoint keeps so `perplexity` can find the validation split again


def remap(ids: np.ndarray, chars: str, vocab: Vocab) -> tuple[np.ndarray, np.ndarray | None]:
    """ids over `chars` -> ids over `vocab` and a mask of the ids `vocab` lacks (None when it lacks none).

    The same array comes back when the two vocabularies are the same (no copy of a large corpus).
    """
    if chars == vocab.chars:
        return ids, None
    index = {c: i for i, c in enumerate(vocab.chars)}
    table = np.array([index.get(c, -1) for c in chars], dtype=np.int64)
    dtype = storage_dtype(len(vocab))
    out, missing = np.empty(len(ids), dtype=dtype), np.zeros(len(ids), dtype=bool)
    for i in range(0, len(ids), _CHUNK):
        part = table[ids[i : i + _CHUNK]]
        missing[i : i + _CHUNK] = part < 0
        out[i : i + _CHUNK] = np.maximum(part, 0)
    return out, (missing if missing.any() else None)


def ids_of(path: str | Path, vocab: Vocab) -> tuple[torch.Tensor, int, str]:
    """A text file's or prepared folder's ids over vocab, unknown characters left out: (ids, dropped, which)."""
    if is_prepared(path):
        pr = load_prepared(path)
        ids, missing = remap(pr.ids, pr.chars, vocab)
        return drop_missing(ids, missing, pr.chars, pr.ids)
    text = read_text(path)
    ids, dropped = vocab.encode(text, drop_unknown=True)
    return ids, dropped, vocab.unknown(text) if dropped else ""


def drop_missing(ids: np.ndarray, missing: np.ndarray | None, chars: str, original: np.ndarray) -> tuple[torch.Tensor, int, str]:
    """Leave out the ids a vocabulary lacks: (kept ids, how many were left out, which characters they were)."""
    if missing is None:
        return torch.from_numpy(ids), 0, ""
    return torch.from_numpy(ids[~missing]), int(missing.sum()), _chars_of(original[missing], chars)


def _chars_of(ids: np.ndarray, chars: str) -> str:
    """The distinct characters that ids stand for, in code-point order."""
    return "".join(chars[int(i)] for i in np.unique(ids))


def load_corpus(file: str | Path, s: Settings, vocab: Vocab | None = None, progress: bool = False) -> Corpus:
    """Training and validation ids of a run, its vocabulary (vocab on resume) and the record of where they came from.

    A text file is encoded in memory, streaming; the vocabulary is the characters of its training
    part and validation characters outside it are left out. A prepared folder is memory-mapped and
    keeps the vocabulary of the whole text it was prepared from.
    """
    prepared = is_prepared(file)
    if prepared:
        pr = load_prepared(file)
        chars, ids, sha = pr.chars, pr.ids, pr.sha256
    else:
        sc, ids = encode_file(file, progress)
        chars, sha = sc.chars, sc.sha256
    record = {"train_file": str(Path(file).resolve()), "text_sha256": sha, "val_file": "", "val_start": 0}
    if prepared:
        record["prepared"] = True
    n = len(ids)
    if s.val_file:
        cut = n
        record["val_file"] = str(Path(s.val_file).resolve())
    else:
        cut = record["val_start"] = validation_start(n, s.val_fraction)
    if not s.val_file and n - cut < 2:
        raise UserError(f"{file}: the validation split has {n - cut} characters; it needs at least 2")
    check_train_length(cut, s.batch_size, s.seq_len, str(file))
    if vocab is None:
        if prepared:
            vocab = Vocab(chars)
        else:
            counts = sum(np.bincount(ids[i : min(i + _CHUNK, cut)], minlength=len(chars))  # chunks: bincount
                         for i in range(0, cut, _CHUNK))  # makes an int64 copy of what it counts
            vocab = Vocab("".join(c for c, k in zip(chars, counts) if k))
    train_ids, missing = remap(ids[:cut], chars, vocab)
    if missing is not None:
        bad = _chars_of(ids[:cut][missing], chars)
        raise UserError(f"{file}: characters not in the vocabulary: {bad!r} (the checkpoint's vocabulary was built from another text)")
    if s.val_file:
        val_ids, dropped, _ = ids_of(s.val_file, vocab)
    else:
        val_part, missing = remap(ids[cut:], chars, vocab)
        val_ids, dropped, _ = drop_missing(val_part, missing, chars, ids[cut:])
    if len(val_ids) < 2:
        raise UserError(f"{s.val_file or file}: the validation text has fewer than 2 characters that occur in the training text")
    if dropped:
        print(f"note: {dropped} validation characters not seen in training are left out of val_loss", file=sys.stderr)
    return Corpus(vocab, torch.from_numpy(train_ids), val_ids, record)
