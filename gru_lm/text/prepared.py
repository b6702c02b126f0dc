"""Streaming corpus encoding: a text file to a compact id array and its vocabulary (`gru-lm prepare`).

The text is read in chunks (text.iter_text), so neither `train` nor `gru-lm prepare` ever holds
the whole text as a Python string: the largest thing in memory is
the id array itself (1 byte per character where the vocabulary has at most 256 characters), and
`prepare` writes even that chunk by chunk. Two passes: the first finds the characters (and the
hash of the text), the second encodes with a lookup table indexed by code point.

A prepared folder holds ids.bin (the ids, little-endian uint8/uint16/uint32) and vocab.json
(the characters, the dtype, the length and the text's hash); `train` memory-maps ids.bin.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gru_lm.errors import UserError
from gru_lm.text.reading import check_readable, iter_text

FORMAT = 1
IDS, META = "ids.bin", "vocab.json"
_MAX_CP = 0x110000
_BAR_BYTES = 32 << 20  # smaller files encode in well under a second: no bar


def storage_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    for dt in (np.uint8, np.uint16):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    return np.dtype(np.uint32)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


@dataclass
class Scan:
    """What the first pass learns: the characters (sorted by code point), the length, the hash."""

    chars: str
    n: int
    sha256: str  # of the text as UTF-8 (evaluate.text_sha256 of the whole text)


def scan(path: str | os.PathLike, bar: tqdm | None = None) -> Scan:
    seen = np.zeros(_MAX_CP, dtype=bool)
    h, n = hashlib.sha256(), 0
    for text in iter_text(path, bar=bar):
        seen[_code_points(text)] = True
        h.update(text.encode("utf-8"))
        n += len(text)
    return Scan("".join(map(chr, np.flatnonzero(seen))), n, h.hexdigest())


def lookup_table(chars: str, dtype: np.dtype) -> np.ndarray:
    """Code point -> id for the characters of the vocabulary (0 elsewhere; scan saw every character)."""
    lut = np.zeros(_MAX_CP, dtype=dtype)
    lut[_code_points(chars)] = np.arange(len(chars), dtype=dtype)
    return lut


def encode_chunks(path: str | os.PathLike, sc: Scan, bar: tqdm | None = None) -> Iterator[np.ndarray]:
    """The ids of the file's text, chunk by chunk (second pass); UserError if the file changed since the first."""
    lut = lookup_table(sc.chars, storage_dtype(len(sc.chars)))
    known = np.zeros(_MAX_CP, dtype=bool)
    known[_code_points(sc.chars)] = True
    n = 0
    for text in iter_text(path, bar=bar):
        cps = _code_points(text)
        n += len(cps)
        if n > sc.n or not known[cps].all():
            raise UserError(f"{path}: changed while it was being read; encode it again")
        yield lut[cps]
    if n != sc.n:
        raise UserError(f"{path}: changed while it was being read; encode it again")


def _bar(path: Path, passes: int, show: bool) -> tqdm:
    """A progress bar over the bytes of both passes, for files big enough to take a while."""
    check_readable(path)  # before any bar is drawn: a mistake is one line
    size = path.stat().st_size
    return tqdm(
        total=size * passes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not show or size < _BAR_BYTES,
        desc=f"encoding {path.name}",
        dynamic_ncols=True,
        leave=False,
    )


def encode_file(path: str | os.PathLike, progress: bool = False) -> tuple[Scan, np.ndarray]:
    """The whole file as an in-memory id array over the characters of the whole file (train's small-file path)."""
    p = Path(path)
    with _bar(p, 2, progress) as bar:
        sc = scan(p, bar)
        ids = np.empty(sc.n, dtype=storage_dtype(len(sc.chars)))
        pos = 0
        for part in encode_chunks(p, sc, bar):
            ids[pos : pos + len(part)] = part
            pos += len(part)
    return sc, ids


def _fsync_replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_corpus(path: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Encode a text file into out_dir (ids.bin + vocab.json), streaming; returns the metadata written.

    ids.bin goes through plain writes (not a writable memory map), so neither the page cache nor
    resident memory of this process grows with the corpus. vocab.json is written last and marks
    the folder complete.
    """
    p, out = Path(path), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    with _bar(p, 2, progress) as bar:
        sc = scan(p, bar)
        dtype = storage_dtype(len(sc.chars))
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / META).unlink(missing_ok=True)  # an older preparation in this folder is invalid from here on
            tmp = out / f".{IDS}.tmp"
            written = 0
            try:
                with open(tmp, "wb") as f:
                    for part in encode_chunks(p, sc, bar):
                        f.write(part.astype(dtype.newbyteorder("<"), copy=False).tobytes())
                        written += len(part)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:  # a changed file, a full disk, Ctrl-C: no half-written ids stay behind
                tmp.unlink(missing_ok=True)
                raise
            _fsync_replace(tmp, out / IDS)
            meta = {
                "format": FORMAT,
                "chars": sc.chars,
                "dtype": dtype.name,
                "n_chars": written,
                "text_sha256": sc.sha256,
                "source": str(p.resolve()),
                "source_bytes": p.stat().st_size,
            }
            tmp = out / f".{META}.tmp"
            tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
            _fsync_replace(tmp, out / META)
        except OSError as e:
            raise UserError(f"{e.filename or out}: could not write the prepared corpus ({e.strerror or e})") from None
    return meta


def is_prepared(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / META).is_file()


@dataclass
class Prepared:
    folder: Path
    chars: str
    ids: np.ndarray  # a memory map of ids.bin
    sha256: str


def load_prepared(folder: str | os.PathLike) -> Prepared:
    """Memory-map a prepared folder (pages are read from disk as training reaches them)."""
    d = Path(folder)
    try:
        meta = json.loads((d / META).read_text(encoding="utf-8"))
        chars, n, dtype = meta["chars"], int(meta["n_chars"]), np.dtype(meta["dtype"]).newbyteorder("<")
        sha = meta["text_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{d / META}: not a readable prepared corpus ({e}); run gru-lm prepare again") from None
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{d / META}: prepared by another version of gru-lm (format {meta.get('format')}); run gru-lm prepare again"
        )
    ids_path = d / IDS
    size = ids_path.stat().st_size if ids_path.is_file() else -1
    if size != n * dtype.itemsize or n < 1:
        raise UserError(
            f"{ids_path}: holds {max(size, 0):,} bytes, not the {n * dtype.itemsize:,} that vocab.json "
            "announces; run gru-lm prepare again"
        )
    if len(chars) < 1 or storage_dtype(len(chars)).itemsize != dtype.itemsize:
        raise UserError(f"{d / META}: its vocabulary does not match its dtype; run gru-lm prepare again")
    ids = np.memmap(ids_path, dtype=dtype, mode="c", shape=(n,))  # copy-on-write: never written, and torch takes it
    return Prepared(d, chars, ids, sha)
