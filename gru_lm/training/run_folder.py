"""A run folder: claiming it (one training at a time), its checks, and leaving no trace of a failed start.

A run folder holds last.pt, best.pt, metrics.jsonl and config.toml. Every file is replaced
atomically (checkpoint.atomic_write); a training holds DIR/.lock while it writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path

from gru_lm.errors import UserError
from gru_lm.model import checkpoint

#: Temporary files of checkpoint.atomic_write (".last.pt.k3j_x2.tmp") that a killed process leaves behind.
_STALE_TMP = re.compile(r"^\.(last\.pt|best\.pt|metrics\.jsonl|config\.toml)\..+\.tmp$")


@contextlib.contextmanager
def run_lock(out_dir: Path):
    """Hold an exclusive lock on out_dir/.lock so two trainings cannot write the same folder."""
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out_dir}: another training is writing to this folder") from None
        yield
    finally:
        os.close(fd)


def make_out_dir(out_dir: Path) -> list[Path]:
    """Create the run folder and its missing parents; returns the folders created here, deepest first.

    The list is what a failed run removes again (see remove_if_unused), so a mistake leaves no
    empty runs/ folder behind.
    """
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_if_unused(out_dir, created)
        raise UserError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        remove_if_unused(out_dir, created)
        raise UserError(f"{out_dir}: the output folder is not writable")
    return created


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """--resume needs a last.pt; without it, a folder that holds a run is only replaced with --overwrite."""
    last = out_dir / "last.pt"
    if resume and not last.exists():
        raise UserError(f"{last}: no checkpoint to resume from; train without --resume first")
    if not resume and last.exists() and not overwrite:
        raise UserError(
            f"{out_dir}: already holds a run; use --resume to continue it, --overwrite to replace it, or another --out"
        )


def claim(out_dir: Path, resume: bool, overwrite: bool, stack: contextlib.ExitStack) -> list[Path]:
    """Make the folder, take its lock for the life of `stack`, check it, and clear stale temporary files.

    The lock comes first, so a second training into the folder is told so whatever its flags.
    Returns the folders created (for remove_if_unused); a failed check removes them itself.
    """
    created = make_out_dir(out_dir)
    try:
        stack.enter_context(run_lock(out_dir))
        check_out_dir(out_dir, resume, overwrite)
    except UserError:
        remove_if_unused(out_dir, created)
        raise
    for p in out_dir.iterdir():
        if _STALE_TMP.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
    return created


def remove_if_unused(out_dir: Path, created: list[Path]) -> None:
    """A run that failed before writing anything leaves no folder behind (nor the parents it made)."""
    if not created:
        return
    try:
        if out_dir.is_dir():
            if {p.name for p in out_dir.iterdir()} - {".lock"}:
                return
            (out_dir / ".lock").unlink(missing_ok=True)
        for d in created:  # deepest first; stops at the first folder something else has written into
            d.rmdir()
    except OSError:
        pass


def start_files(out_dir: Path, config_text: str, resumed_step: int | None) -> None:
    """Write config.toml; on resume, trim metrics.jsonl back to the checkpoint's step, else clear the old run."""
    checkpoint.atomic_write(out_dir / "config.toml", lambda f: f.write(config_text.encode()))
    if resumed_step is not None:
        trim_metrics(out_dir / "metrics.jsonl", resumed_step)
        return
    for name in ("metrics.jsonl", "last.pt", "best.pt"):  # nothing of an earlier run may be resumed or mixed in
        (out_dir / name).unlink(missing_ok=True)


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines written after the checkpoint, so the log reads as one run.

    A torn last line (a write cut short by a full disk or a crash) is dropped too.
    """
    if not path.exists():
        return
    keep = []
    for ln in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(ln)
    checkpoint.atomic_write(path, lambda f: f.write("".join(k + "\n" for k in keep).encode()))


def default_out_dir(file: Path, config: Path | None, cell: str | None) -> Path:
    """runs/<config name> with --config, else runs/<file name>_<cell>."""
    return Path("runs") / (config.stem if config else f"{file.stem}_{cell or 'gru'}")
