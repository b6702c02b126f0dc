"""Continuing a run from its last.pt: loading it once, and the checks that make the continuation exact."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gru_lm.errors import UserError
from gru_lm.model import checkpoint
from gru_lm.training.init_from import StartPoint, fresh_settings
from gru_lm.training.settings import Settings, resolve

#: Settings a resumed run must share with the run it continues (they shape the model, data or RNG).
LOCKED_ON_RESUME = (
    "cell",
    "reset_after",
    "hidden_size",
    "layers",
    "embed_size",
    "batch_size",
    "seq_len",
    "val_fraction",
    "val_blocks",
    "val_file",
    "eval_chars",
    "seed",
    "init_from",
    "extend_vocab",
)

#: What a checkpoint must hold, beyond the model, to continue a run from it exactly.
RESUME_KEYS = (
    "settings",
    "optimizer",
    "step",
    "epoch",
    "window",
    "chars",
    "elapsed_s",
    "val_loss",
    "best_val_loss",
    "rng",
    "hidden",
    "data",
)


@dataclass
class ResumePoint:
    """A run's last.pt, loaded and checked, with the identity of the file it was read from."""

    path: Path
    state: dict[str, Any]
    signature: tuple[int, int, int]  # (inode, size, mtime): a later write replaces the file and changes it

    @property
    def world_size(self) -> int:
        return self.state.get("world_size", 1)


def check_resumable(state: dict, path: Path) -> dict:
    """A checkpoint holds everything needed to continue a run exactly, or UserError."""
    for key in RESUME_KEYS:
        if key not in state:
            raise UserError(f"{path}: cannot resume from this checkpoint: it holds no '{key}'")
    if not isinstance(state["settings"], dict) or not isinstance(state["data"], dict):
        raise UserError(f"{path}: cannot resume from this checkpoint: its settings are corrupt")
    if state["settings"].get("ema_decay") and not isinstance(state.get("train_model"), dict):
        raise UserError(
            f"{path}: cannot resume from this checkpoint: it holds no 'train_model' (the weights "
            "behind its average; best.pt leaves them out)"
        )
    return state


def _signature(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def load(out_dir: Path) -> ResumePoint:
    """The run's last.pt, checked to hold everything an exact continuation needs."""
    path = Path(out_dir) / "last.pt"
    if not path.exists():
        raise UserError(f"{path}: no checkpoint to resume from; train without --resume first")
    signature = _signature(path)
    return ResumePoint(path, check_resumable(checkpoint.load(path), path), signature)


def resume_settings(point: ResumePoint, config_file: str | Path | None, flags: dict[str, Any]) -> Settings:
    """The run's own settings, then the config file and flags given; those that shape the run must not change."""
    settings = resolve(config_file, flags, point.state["settings"])
    was = resolve(None, {}, point.state["settings"])  # (settings newer than the run read as what it ran with)
    for key in LOCKED_ON_RESUME:
        if getattr(was, key) != getattr(settings, key):
            raise UserError(
                f"--resume: {key} is {getattr(was, key)!r} in {point.path}; "
                f"it cannot change to {getattr(settings, key)!r}"
            )
    return settings


def run_settings(
    out_dir: Path, resume: bool, config_file: str | Path | None, flags: dict[str, Any]
) -> tuple[ResumePoint | None, Settings, StartPoint | None]:
    """What `gru-lm train` runs with: the last.pt it resumes (with --resume, where there is one), the settings,
    and the checkpoint a new run starts from (init_from.fresh_settings)."""
    point = load(out_dir) if resume and (Path(out_dir) / "last.pt").exists() else None
    if point:
        return point, resume_settings(point, config_file, flags), None
    return None, *fresh_settings(config_file, flags)


def check_processes(point: ResumePoint, world: int) -> None:
    if point.world_size != world:
        raise UserError(
            f"{point.path}: was trained by {point.world_size} processes; resume it with the same number, not {world}"
        )


def check_unchanged(point: ResumePoint) -> None:
    """Under the run's lock: the last.pt read before the lock is still the one on disk."""
    if not point.path.exists() or _signature(point.path) != point.signature:
        raise UserError(
            f"{point.path}: was rewritten while this run started (another training?); run the command again"
        )


def check_same_text(point: ResumePoint, source: dict, file: str | Path) -> None:
    if point.state["data"]["text_sha256"] != source["text_sha256"]:
        raise UserError(f"{file}: is not the text the run in {point.path.parent} was trained on")
