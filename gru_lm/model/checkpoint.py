"""Checkpoints: one weights_only-loadable file, written atomically."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, cast

import torch

from gru_lm.errors import UserError
from gru_lm.model import checkpoint_migration

FORMAT = "gru-lm"
VERSION = checkpoint_migration.CURRENT


def atomic_write(path: str | Path, write) -> None:
    """Call write(file) on a temporary file in the same folder, fsync it, then os.replace it over path.

    A process killed at any moment leaves either the old file or the new one, never a mix.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; the file should read like any other the user writes
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class _KeepWriteError:
    """A file wrapper that remembers the OSError of a failed write.

    torch.save turns a failed write (disk full, file too large) into a RuntimeError such as
    "unexpected pos 768 vs 662"; this lets save() report the real cause instead.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self.f: IO[bytes] = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(state: dict[str, Any], f) -> None:
    w = _KeepWriteError(f)
    try:
        torch.save(state, cast(IO[bytes], w))  # torch.save needs only write and flush
    except RuntimeError:
        if w.error is not None:
            raise w.error from None
        raise


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Save a checkpoint dict (tensors and plain values only) atomically, stamped with format and version.

    A failed write (disk full, no permission) is a UserError and leaves the previous file as it was.
    """
    state = {"format": FORMAT, "version": VERSION, **state}
    try:
        atomic_write(path, lambda f: _torch_save(state, f))
    except OSError as e:
        raise UserError(f"{path}: could not write checkpoint ({e.strerror or e}); the previous one is kept") from None


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True (never runs code from the file), or raise UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such checkpoint")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, not a checkpoint")
    try:  # torch.save writes a zip archive; anything else is not ours
        with zipfile.ZipFile(p) as z:
            damaged = z.testzip()  # reads every member and checks its CRC-32, which torch.load does not
    except Exception:  # whatever parsing a hostile or truncated file raises: it is not a readable archive
        raise UserError(f"{p}: not a readable checkpoint (corrupt or truncated: not a torch zip archive)") from None
    if damaged is not None:
        raise UserError(f"{p}: not a readable checkpoint (corrupt: checksum mismatch in {damaged})")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{p}: refused: it holds objects other than tensors and plain values (loading it could run code)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, KeyError) as e:
        raise UserError(f"{p}: not a readable checkpoint (corrupt or truncated: {type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{p}: not a gru-lm checkpoint")
    if state.get("version") not in checkpoint_migration.supported_versions():
        known = ", ".join(map(str, sorted(checkpoint_migration.supported_versions())))
        raise UserError(
            f"{p}: checkpoint format version {state.get('version')!r} is not supported (this gru-lm reads {known})"
        )
    for key, kind in (("model_config", dict), ("vocab", str), ("model", dict)):
        if key not in state:
            raise UserError(f"{p}: checkpoint is incomplete (no '{key}')")
        if not isinstance(state[key], kind) or not state[key]:
            raise UserError(f"{p}: checkpoint is corrupt ('{key}' is not a non-empty {kind.__name__})")
    return checkpoint_migration.upgrade(state)


def build_model(state: dict[str, Any], source: str | Path = "checkpoint"):
    """The CharModel a checkpoint describes, with its weights loaded, in eval mode.

    source names the file in the error message when the weights do not fit the settings.
    """
    from gru_lm.model.char_model import CharModel, ModelConfig

    try:
        model = CharModel(ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        if model.cfg.vocab_size != len(state["vocab"]):
            raise ValueError(f"{len(state['vocab'])} characters in the vocabulary, {model.cfg.vocab_size} in the model")
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        msg = " ".join(str(e).split())[:200]  # one line, however long torch's message
        raise UserError(f"{source}: does not describe a valid model ({type(e).__name__}: {msg})") from None
    return model.eval()
