"""Shared fixtures: a short corpus, the smoke settings and one tiny trained run (made once per session)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gru_lm.training.settings import resolve
from gru_lm.training.train import train

SMOKE = str(ROOT / "configs" / "smoke.toml")
#: The page tests need Debian's chromium; CI installs it (.ci/run), so there a missing browser fails them.
needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"), reason="chromium is not installed (CI installs it)"
)
CLI_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def headless_chromium(profile: Path, *flags: str) -> list[str]:
    """The command line of a headless Chromium that asks nothing of the network, with its own profile folder."""
    quiet = ["--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update"]
    return [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        *quiet,
        "--disable-sync",
        f"--user-data-dir={profile}",
        *flags,
    ]


def gru_lm(*args, cwd=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run the command line as a user does: `python -m gru_lm ARGS` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "gru_lm", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=CLI_ENV,
        timeout=timeout,
        **kw,
    )


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`gru-lm ARGS` in this process (the same main() as the console script): fast for many bad inputs.
    Returns the exit code, stdout and stderr."""
    from gru_lm.cli.main import main

    monkeypatch.setattr(sys, "argv", ["gru-lm", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def assert_user_error(r: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2 and exactly one line on stderr, `gru-lm: error: ...` holding every word; no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gru-lm: error:"), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


_SERVER = r"""
import json, os, sys, traceback
import gru_lm.cli.main, gru_lm.training.train, gru_lm.model.kernels  # imported once; nothing else runs before fork
gru_lm.model.kernels.compiled()  # loads the built kernels (a shared library: no thread is started)
os.write(1, b"ready\n")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            same = req["err"] == req["out"]
            err = out if same else os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.chdir(req["cwd"])
            sys.argv = ["gru-lm", *req["args"]]
            gru_lm.cli.main.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.write(1, f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(1, f"{status}\n".encode())
"""


class WarmCLI:
    """Starts `gru-lm ARGS` processes forked from a warm interpreter; one at a time, or two (see start)."""

    def __init__(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=CLI_ENV
        )
        assert self._line(120) == "ready"

    def _line(self, timeout: float) -> str:
        """One line from the server, read byte by byte so nothing waits unseen in a buffer."""
        assert self.server.stdout is not None
        out, fd, deadline = b"", self.server.stdout.fileno(), time.monotonic() + timeout
        while not out.endswith(b"\n"):
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("the warm gru-lm server did not answer")
            ch = os.read(fd, 1)
            assert ch, "the warm gru-lm server died"
            out += ch
        return out.decode().strip()

    def start(self, *args, cwd: Path, log: Path, err: Path | None = None) -> int:
        """Fork a child running `gru-lm ARGS`, its stdout (and stderr, unless err) to log; returns a pidfd for it
        (signals through it cannot hit a reused pid)."""
        req = {"args": [str(a) for a in args], "cwd": str(cwd), "out": str(log), "err": str(err or log)}
        assert self.server.stdin is not None
        self.server.stdin.write((json.dumps(req) + "\n").encode())
        self.server.stdin.flush()
        pid = int(self._line(60))
        return os.pidfd_open(pid)

    def running(self) -> bool:
        """Whether the child has not ended yet (the server reports its status only once it has reaped it)."""
        assert self.server.stdout is not None
        return not select.select([self.server.stdout.fileno()], [], [], 0)[0]

    def signal(self, pidfd: int, sig: int) -> None:
        signal.pidfd_send_signal(pidfd, sig)

    def wait(self, pidfd: int, timeout: float = 120) -> int:
        """The child's exit code (-9 when killed by SIGKILL)."""
        status = int(self._line(timeout))
        os.close(pidfd)
        return os.waitstatus_to_exitcode(status)

    def run(self, *args, cwd: Path, tmp: Path) -> subprocess.CompletedProcess:
        """`gru-lm ARGS` in a fresh (forked) process, to the end, as gru_lm() runs it: code, stdout, stderr."""
        out, err = tmp / f"out{id(args)}.log", tmp / f"err{id(args)}.log"
        code = self.wait(self.start(*args, cwd=cwd, log=out, err=err))
        result = subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())
        out.unlink()
        err.unlink()
        return result

    def close(self) -> None:
        assert self.server.stdin is not None
        self.server.stdin.close()
        self.server.wait(timeout=30)


@pytest.fixture(scope="session")
def warm():
    """A warm gru-lm command line that forks each command as a fresh process (see WarmCLI)."""
    cli = WarmCLI()
    yield cli
    cli.close()


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
