"""Where an export writes: the checks that come before anything is written, and the writes themselves.

An export never replaces a checkpoint (the one it reads, or any other: a torch checkpoint is a zip archive,
an export's files never are), never writes into a folder that holds other things unless told to
(--overwrite), and replaces each of its files atomically, so a failure leaves the old file or the new one.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from gru_lm.errors import UserError
from gru_lm.model.checkpoint import atomic_write


def _refuse_checkpoint(path: Path, ckpt: Path) -> None:
    """UserError where path is the checkpoint being exported, or holds another archive (a checkpoint)."""
    if path.exists() and ckpt.exists() and os.path.samefile(path, ckpt):
        raise UserError(f"{path}: is the checkpoint being exported; give another path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file")
    if path.exists() and zipfile.is_zipfile(path):
        raise UserError(f"{path}: holds an archive (a checkpoint?), which an export never replaces")


def check_file(path: Path, ckpt: Path, overwrite: bool) -> None:
    """One file to write (--onnx): absent, or replaceable with --overwrite."""
    _refuse_checkpoint(path, ckpt)
    if path.exists() and not overwrite:
        raise UserError(f"{path}: already exists; pass --overwrite to replace it")


def check_folder(folder: Path, names: list[str], ckpt: Path, overwrite: bool) -> None:
    """A folder to write the files `names` into (--web): absent or empty, or, with --overwrite, one whose files
    of those names may be replaced (anything else in it is left alone)."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise UserError(f"{folder}: is not empty; pass --overwrite to replace the export's files in it")
        for name in names:
            _refuse_checkpoint(folder / name, ckpt)


def write(path: Path, data: bytes) -> None:
    """Write data to path atomically, creating its folder; a failure is a UserError naming the path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise UserError(f"{path}: could not write ({e.strerror or e})") from None
