"""Shared fixtures: a short corpus, the smoke settings and one tiny trained run (made once per session)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gru_lm.config import resolve  # noqa: E402
from gru_lm.train import train  # noqa: E402

SMOKE = str(ROOT / "configs" / "smoke.toml")
CLI_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def gru_lm(*args, cwd=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run the command line as a user does: `python -m gru_lm ARGS` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "gru_lm", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=CLI_ENV, timeout=timeout, **kw)


def assert_user_error(r: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2 and exactly one line on stderr, `gru-lm: error: ...` holding every word; no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gru-lm: error:"), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The first 20,000 characters of Tiny Shakespeare: enough for a few epochs of a tiny model."""
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000]
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def smoke():
    """The settings of configs/smoke.toml, with optional overrides."""

    def make(**overrides):
        return resolve(ROOT / "configs" / "smoke.toml", overrides)

    return make


@pytest.fixture(scope="session")
def trained_run(corpus, tmp_path_factory) -> Path:
    """A tiny GRU trained for 60 steps; tests must not modify it (copy it first)."""
    out = tmp_path_factory.mktemp("run") / "gru"
    train(corpus, resolve(ROOT / "configs" / "smoke.toml", {"max_steps": 60, "eval_every": 30}), out, progress=False)
    return out
