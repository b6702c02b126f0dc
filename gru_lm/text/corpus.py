"""The ids a run trains and validates on, from a text file (encoded in memory) or a prepared folder (memory-mapped).

A run records where its data came from (the file, the text's SHA-256, where validation starts), so
`gru-lm perplexity` can find a checkpoint's validation split again with `validation_ids`, through the
same code that cut it for training.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from gru_lm.errors import UserError
from gru_lm.text.batches import check_train_length, validation_start
from gru_lm.text.prepared import encode_file, is_prepared, load_prepared, storage_dtype
from gru_lm.text.reading import read_text
from gru_lm.text.vocab import Vocab

_CHUNK = 1 << 24  # ids remapped at a time


class SplitSettings(Protocol):
    """What load_corpus reads of a run's settings (training.settings.Settings has them all)."""

    val_file: str
    val_fraction: float
    batch_size: int
    seq_len: int


@dataclass
class Corpus:
    vocab: Vocab
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    source: dict  # where the ids came from; the checkpoint keeps it as "data"


@dataclass
class Encoded:
    """A whole text as ids over its own characters (sorted by code point)."""

    chars: str
    ids: np.ndarray
    sha256: str
    prepared: bool


def read_ids(path: str | Path, progress: bool = False) -> Encoded:
    """A prepared folder, memory-mapped, or a text file, encoded in memory (streaming)."""
    if is_prepared(path):
        pr = load_prepared(path)
        return Encoded(pr.chars, pr.ids, pr.sha256, True)
    scan, ids = encode_file(path, progress)
    return Encoded(scan.chars, ids, scan.sha256, False)


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


def known_ids(ids: np.ndarray, chars: str, vocab: Vocab) -> tuple[torch.Tensor, int, str]:
    """ids over `chars` as ids over vocab, the characters vocab lacks left out: (ids, how many, which)."""
    mapped, missing = remap(ids, chars, vocab)
    if missing is None:
        return torch.from_numpy(mapped), 0, ""
    return torch.from_numpy(mapped[~missing]), int(missing.sum()), chars_of(ids[missing], chars)


def chars_of(ids: np.ndarray, chars: str) -> str:
    """The distinct characters that ids stand for, in code-point order."""
    return "".join(chars[int(i)] for i in np.unique(ids))


def ids_of(path: str | Path, vocab: Vocab) -> tuple[torch.Tensor, int, str]:
    """A text file's or prepared folder's ids over vocab, unknown characters left out: (ids, dropped, which)."""
    if is_prepared(path):
        pr = load_prepared(path)
        return known_ids(pr.ids, pr.chars, vocab)
    text = read_text(path)
    ids, dropped = vocab.encode(text, drop_unknown=True)
    return ids, dropped, vocab.unknown(text) if dropped else ""


def unseen_counts(ids: np.ndarray, chars: str) -> dict[str, int]:
    """How often each character that ids stand for occurs, in code-point order."""
    distinct, counts = np.unique(ids, return_counts=True)
    return {chars[int(i)]: int(n) for i, n in zip(distinct, counts)}


def describe_counts(counts: dict[str, int], most: int = 20) -> str:
    """'“' ×105, '”' ×104, ...: the most frequent first, at most `most` of them (one line)."""
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{c!r} ×{n:,}" for c, n in ranked[:most])
    return shown + (f" and {len(ranked) - most} more" if len(ranked) > most else "")


def _training_vocab(enc: Encoded, cut: int) -> Vocab:
    """A text file's vocabulary is the characters of its training part; a prepared folder's, all of its own."""
    if enc.prepared:
        return Vocab(enc.chars)
    counts = np.zeros(len(enc.chars), dtype=np.int64)
    for i in range(0, cut, _CHUNK):  # in chunks: bincount makes an int64 copy of what it counts
        counts += np.bincount(enc.ids[i : min(i + _CHUNK, cut)], minlength=len(enc.chars))
    return Vocab("".join(c for c, k in zip(enc.chars, counts) if k))


def _training_ids(
    enc: Encoded, cut: int, vocab: Vocab | None, extend_vocab: bool, file: str | Path
) -> tuple[Vocab, np.ndarray]:
    """The run's vocabulary and the training part's ids over it (see load_corpus)."""
    vocab = vocab or _training_vocab(enc, cut)
    train_ids, missing = remap(enc.ids[:cut], enc.chars, vocab)
    if missing is None:
        return vocab, train_ids
    new = unseen_counts(enc.ids[:cut][missing], enc.chars)
    if not extend_vocab:
        raise UserError(
            f"{file}: the training text has characters the checkpoint's model has never seen: "
            f"{describe_counts(new)}; pass --extend-vocab to add them to its vocabulary"
        )
    vocab = Vocab(vocab.chars + "".join(new))  # the old ids stay; the new characters follow, in code-point order
    return vocab, remap(enc.ids[:cut], enc.chars, vocab)[0]


def load_corpus(
    file: str | Path,
    settings: SplitSettings,
    vocab: Vocab | None = None,
    progress: bool = False,
    extend_vocab: bool = False,
    check_source: Callable[[dict], None] | None = None,
) -> Corpus:
    """Training and validation ids of a run, its vocabulary and the record of where they came from.

    vocab is the vocabulary of the checkpoint a run resumes or starts from (--init-from); without
    it, the training text's own characters make it. Training characters outside a given vocabulary
    are an error, or with extend_vocab are added at its end; validation characters outside the
    vocabulary are left out (with a note). check_source(source) runs as soon as the text is read
    (resume checks there that it is the run's own text).
    """
    enc = read_ids(file, progress)
    source = {"train_file": str(Path(file).resolve()), "text_sha256": enc.sha256, "val_file": "", "val_start": 0}
    if enc.prepared:
        source["prepared"] = True
    if check_source is not None:
        check_source(source)
    n = len(enc.ids)
    if settings.val_file:
        cut = n
        source["val_file"] = str(Path(settings.val_file).resolve())
    else:
        cut = source["val_start"] = validation_start(n, settings.val_fraction)
        if n - cut < 2:
            raise UserError(f"{file}: the validation split has {n - cut} characters; it needs at least 2")
    check_train_length(cut, settings.batch_size, settings.seq_len, str(file))
    vocab, train_ids = _training_ids(enc, cut, vocab, extend_vocab, file)
    if settings.val_file:
        val_ids, dropped, _ = ids_of(settings.val_file, vocab)
    else:
        val_ids, dropped, _ = known_ids(enc.ids[cut:], enc.chars, vocab)
    if len(val_ids) < 2:
        raise UserError(
            f"{settings.val_file or file}: the validation text has fewer than 2 characters that occur in the "
            "training text"
        )
    if dropped:
        print(f"note: {dropped} validation characters not seen in training are left out of val_loss", file=sys.stderr)
    return Corpus(vocab, torch.from_numpy(train_ids), val_ids, source)


def validation_ids(source: dict, vocab: Vocab) -> tuple[str, torch.Tensor, int, str]:
    """The validation split a checkpoint was trained with, read again from disk: (label, ids, dropped, which).

    source is the checkpoint's record of its data; the file must still hold the same text.
    """
    if source.get("val_file"):
        return (source["val_file"], *ids_of(source["val_file"], vocab))
    path = source.get("train_file")
    if not path:
        raise UserError("the checkpoint records no validation data; pass --file")
    if not Path(path).exists():
        raise UserError(f"{path}: the training file recorded in the checkpoint is gone; pass --file")
    enc = read_ids(path)
    if enc.sha256 != source.get("text_sha256"):
        again = "prepared from another text" if enc.prepared else "changed"
        raise UserError(f"{path}: {again} since the checkpoint was trained; pass --file")
    return (f"{path} [validation split]", *known_ids(enc.ids[source["val_start"] :], enc.chars, vocab))
