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
from gru_lm.text.batches import (
    auto_val_blocks,
    check_train_length,
    first_of_each,
    training_ranges,
    validation_ranges,
)
from gru_lm.text.prepared import encode_file, is_prepared, load_prepared, storage_dtype
from gru_lm.text.reading import read_text
from gru_lm.text.vocab import Vocab

_CHUNK = 1 << 24  # ids remapped at a time


class SplitSettings(Protocol):
    """What load_corpus reads of a run's settings (training.settings.Settings has them all)."""

    val_file: str
    val_fraction: float
    val_blocks: int
    batch_size: int
    seq_len: int


@dataclass
class Corpus:
    vocab: Vocab
    train_ids: torch.Tensor
    val_ids: torch.Tensor  # the validation blocks laid end to end
    val_bounds: list[int]  # the length of each block in val_ids: each is scored from a fresh state
    source: dict  # where the ids came from; the checkpoint keeps it as "data"

    def validation_sample(self, max_chars: int) -> tuple[torch.Tensor, list[int]]:
        """At most about max_chars validation ids (0: all), the first share of every block: (ids, block lengths)."""
        ranges = first_of_each(self.val_bounds, max_chars)
        if all(b - a == m for (a, b), m in zip(ranges, self.val_bounds)):
            return self.val_ids, self.val_bounds
        return torch.cat([self.val_ids[a:b] for a, b in ranges]), [b - a for a, b in ranges]


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


def _gather(ids: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """ids[a:b] of every range, laid end to end (the same array, uncopied, for one range that is all of it)."""
    if len(ranges) == 1:
        return ids[ranges[0][0] : ranges[0][1]]
    return np.concatenate([ids[a:b] for a, b in ranges]) if ranges else ids[:0]


def _training_ids(
    enc: Encoded, train: np.ndarray, vocab: Vocab | None, extend_vocab: bool, file: str | Path
) -> tuple[Vocab, np.ndarray]:
    """The run's vocabulary and the training part's ids over it (see load_corpus)."""
    vocab = vocab or Vocab(enc.chars)
    train_ids, missing = remap(train, enc.chars, vocab)
    if missing is None:
        return vocab, train_ids
    new = unseen_counts(train[missing], enc.chars)
    if not extend_vocab:
        raise UserError(
            f"{file}: the training text has characters the checkpoint's model has never seen: "
            f"{describe_counts(new)}; pass --extend-vocab to add them to its vocabulary"
        )
    vocab = Vocab(vocab.chars + "".join(new))  # the old ids stay; the new characters follow, in code-point order
    return vocab, remap(train, enc.chars, vocab)[0]


def _split(n: int, settings: SplitSettings) -> list[tuple[int, int]]:
    """The validation ranges of a text of n ids under the run's settings (val_blocks 0: by the text's size)."""
    blocks = settings.val_blocks or auto_val_blocks(n, settings.val_fraction)
    return validation_ranges(n, settings.val_fraction, blocks)


def _blocks_of(
    ids: np.ndarray, chars: str, vocab: Vocab, ranges: list[tuple[int, int]]
) -> tuple[torch.Tensor, list[int], int, str]:
    """The validation ranges' ids over vocab, end to end, unknown characters left out: (ids, block lengths,
    dropped, which)."""
    parts, bounds, dropped, which = [], [], 0, ""
    for a, b in ranges:
        part, lost, what = known_ids(ids[a:b], chars, vocab)
        parts.append(part)
        bounds.append(len(part))
        dropped, which = dropped + lost, "".join(sorted(set(which + what)))
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), bounds, dropped, which


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
    source: dict = {"train_file": str(Path(file).resolve()), "text_sha256": enc.sha256, "val_file": ""}
    if enc.prepared:
        source["prepared"] = True
    if check_source is not None:
        check_source(source)
    n = len(enc.ids)
    if settings.val_file:
        ranges: list[tuple[int, int]] = []
        source["val_file"] = str(Path(settings.val_file).resolve())
    else:
        ranges = _split(n, settings)
        source["val_start"], source["val_ranges"] = ranges[0][0], [list(r) for r in ranges]
        if sum(b - a for a, b in ranges) < 2:
            raise UserError(f"{file}: the validation split has fewer than 2 characters; raise --val-fraction")
    train = _gather(enc.ids, training_ranges(n, ranges))
    check_train_length(len(train), settings.batch_size, settings.seq_len, str(file))
    vocab, train_ids = _training_ids(enc, train, vocab, extend_vocab, file)
    if settings.val_file:
        val_ids, dropped, _ = ids_of(settings.val_file, vocab)
        bounds = [len(val_ids)]
    else:
        val_ids, bounds, dropped, _ = _blocks_of(enc.ids, enc.chars, vocab, ranges)
    if len(val_ids) < 2:
        raise UserError(
            f"{settings.val_file or file}: the validation text has fewer than 2 characters that occur in the "
            "training text"
        )
    if dropped:
        print(f"note: {dropped} validation characters outside the vocabulary are left out of val_loss", file=sys.stderr)
    return Corpus(vocab, torch.from_numpy(train_ids), val_ids, bounds, source)


def validation_ids(source: dict, vocab: Vocab) -> tuple[str, torch.Tensor, list[int], int, str]:
    """The validation split a checkpoint was trained with, read again from disk: (label, ids, block lengths,
    dropped, which).

    source is the checkpoint's record of its data; the file must still hold the same text.
    """
    if source.get("val_file"):
        ids, dropped, which = ids_of(source["val_file"], vocab)
        return source["val_file"], ids, [len(ids)], dropped, which
    path = source.get("train_file")
    if not path:
        raise UserError("the checkpoint records no validation data; pass --file")
    if not Path(path).exists():
        raise UserError(f"{path}: the training file recorded in the checkpoint is gone; pass --file")
    enc = read_ids(path)
    if enc.sha256 != source.get("text_sha256"):
        again = "prepared from another text" if enc.prepared else "changed"
        raise UserError(f"{path}: {again} since the checkpoint was trained; pass --file")
    ranges = [(int(a), int(b)) for a, b in source.get("val_ranges", [(source["val_start"], len(enc.ids))])]
    return (f"{path} [validation split]", *_blocks_of(enc.ids, enc.chars, vocab, ranges))
