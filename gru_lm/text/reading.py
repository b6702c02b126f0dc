"""Reading a text file as text: UTF-8 (a BOM dropped), or UTF-16/UTF-32 with a byte-order mark.

The file is decoded in chunks through an incremental decoder, so a corpus of hundreds of megabytes
is never one Python string. Every way a file can fail to be text (missing, a folder, empty, binary,
not valid in its encoding) is a UserError naming the file, with the byte offset where it applies.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from gru_lm.errors import UserError

CHUNK_BYTES = 1 << 22  # 4 MB of bytes read and decoded at a time (up to 16 MB as code points)


def check_readable(p: Path) -> None:
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, not a text file")


def _encoding(head: bytes) -> tuple[str, str, int]:
    """(codec, its name in messages, bytes of the mark to skip) from the first 4 bytes of a file."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: FF FE 00 00 starts both
        return "utf-32", "UTF-32", 0
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", "UTF-16", 0
    if head.startswith(codecs.BOM_UTF8):  # dropped here, so that error offsets count from the file's start
        return "utf-8", "UTF-8", len(codecs.BOM_UTF8)
    return "utf-8", "UTF-8", 0


def iter_text(path: str | os.PathLike, chunk_bytes: int | None = None, bar: tqdm | None = None) -> Iterator[str]:
    """The text of a file, chunk by chunk: UTF-8 (BOM dropped), or UTF-16/UTF-32 with a BOM.

    Raises UserError for a missing, empty, binary or undecodable file (the byte offset is exact).
    """
    p = Path(path)
    check_readable(p)
    try:
        f = open(p, "rb")  # noqa: SIM115 (opened apart from `with` so that only this failure is "cannot read")
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None
    with f:
        enc, name, offset = _encoding(f.read(4))
        f.seek(offset)
        chars = 0
        for text in _decode(p, f, enc, name, offset, chunk_bytes or CHUNK_BYTES, bar):
            chars += len(text)
            yield text
    if not chars:
        raise UserError(f"{p}: is empty")


def _decode(p: Path, f, enc: str, name: str, offset: int, chunk_bytes: int, bar: tqdm | None) -> Iterator[str]:
    """Decode f from `offset` in chunks; a NUL or an invalid byte is a UserError (with its offset in UTF-8)."""
    dec = codecs.getincrementaldecoder(enc)()
    while True:
        try:
            raw = f.read(chunk_bytes)
        except OSError as e:
            raise UserError(f"{p}: cannot read ({e.strerror})") from None
        if enc == "utf-8" and b"\x00" in raw:
            raise UserError(f"{p}: looks like a binary file (it contains NUL bytes), not UTF-8 text")
        pending = len(dec.getstate()[0])
        try:
            text = dec.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            if enc == "utf-8":
                raise UserError(
                    f"{p}: is not UTF-8 text (invalid byte at offset {offset - pending + e.start})"
                ) from None
            raise UserError(f"{p}: starts with a {name} byte-order mark but is not valid {name}") from None
        if "\x00" in text:  # a binary file that happens to start like a UTF-16/32 byte-order mark
            raise UserError(f"{p}: looks like a binary file (it contains NUL characters), not text")
        offset += len(raw)
        if bar is not None:
            bar.update(len(raw))
        if text:
            yield text
        if not raw:
            return


def read_text(path: str | os.PathLike) -> str:
    """The whole text of a small file (a prime, a validation file, `perplexity --file`), with the same checks."""
    return "".join(iter_text(path))
