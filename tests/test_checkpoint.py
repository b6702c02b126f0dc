"""Checkpoints: weights_only round trip, atomic writes, refusing corrupt, foreign and unsafe files."""

from __future__ import annotations

import errno
import os
import pickle

import pytest
import torch

from gru_lm.errors import UserError
from gru_lm.model import checkpoint


def test_round_trip_is_weights_only(tmp_path):
    state = {"model_config": {"vocab_size": 3}, "vocab": "abc", "model": {"w": torch.arange(4.0)}, "step": 7}
    checkpoint.save(tmp_path / "c.pt", state)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["format"] == "gru-lm" and raw["version"] == checkpoint.VERSION
    back = checkpoint.load(tmp_path / "c.pt")
    assert back["step"] == 7 and torch.equal(back["model"]["w"], torch.arange(4.0))


def test_trained_checkpoint_holds_everything_for_resume(trained_run):
    state = torch.load(trained_run / "last.pt", weights_only=True)
    for key in (
        "format",
        "version",
        "model_config",
        "settings",
        "vocab",
        "model",
        "optimizer",
        "step",
        "epoch",
        "window",
        "chars",
        "elapsed_s",
        "best_val_loss",
        "rng",
        "hidden",
        "data",
    ):
        assert key in state, key


class _FullDisk:
    """A file whose writes fail with ENOSPC once 1000 bytes are on it, as on a full disk."""

    def __init__(self, f) -> None:
        self.f, self.n = f, 0

    def write(self, data) -> int:
        if self.n + len(data) > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.n += len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """The real torch.save on a disk that fills up: it turns the OSError into a RuntimeError
    ("unexpected pos ..."); save() must still report the disk and keep the previous file."""
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"model_config": {"a": 1}, "vocab": "a", "model": {"w": torch.zeros(1)}, "step": 1})
    before = path.read_bytes()
    fdopen = os.fdopen
    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: _FullDisk(fdopen(fd, mode)))
    with pytest.raises(
        UserError, match=r"c.pt: could not write checkpoint \(No space left on device\); the previous one is kept"
    ):
        checkpoint.save(path, {"model_config": {"a": 1}, "vocab": "a", "model": {"w": torch.zeros(1000)}, "step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_truncated_foreign_and_future_checkpoints_are_refused(trained_run, tmp_path):
    data = (trained_run / "last.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        checkpoint.load(tmp_path / "trunc.pt")
    rot = bytearray(data)
    rot[len(data) // 2] ^= 0x01  # one flipped bit inside a tensor: the archive still opens, the CRC-32 tells
    (tmp_path / "rot.pt").write_bytes(bytes(rot))
    with pytest.raises(
        UserError, match=r"rot.pt: not a readable checkpoint \(corrupt: checksum mismatch in archive/data/"
    ):
        checkpoint.load(tmp_path / "rot.pt")
    with pytest.raises(UserError, match="is a directory"):
        checkpoint.load(tmp_path)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a gru-lm checkpoint"):
        checkpoint.load(tmp_path / "foreign.pt")
    state = torch.load(trained_run / "last.pt", weights_only=True)
    state["version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(UserError, match="version 99 is not supported"):
        checkpoint.load(tmp_path / "future.pt")


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "gru-lm", "version": 1, "model": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused"):
        checkpoint.load(tmp_path / "evil.pt")
    assert not marker.exists()
    # and the marker does appear when the same file is loaded unsafely: the test can fail
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(UserError):
        checkpoint.load(tmp_path / "evil.pkl")
    assert not os.path.exists(marker)
