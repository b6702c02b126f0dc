"""Crash safety: SIGKILL at random moments (checkpoint writes included), Ctrl-C, two trainings at once.

Twenty kills cost twenty process starts, and a fresh `python -m gru_lm` spends seconds importing
torch before it does anything; so the processes killed here are forked from one interpreter that
has imported gru_lm (and torch) once and done nothing else: each child runs the real command line,
`gru_lm.cli.main()` with its argv, from the first line of the CLI, and is killed with a real
SIGKILL. The final resume and the second of two concurrent trainings are fresh `python -m gru_lm`
processes, as a user runs them.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gru_lm import checkpoint
from gru_lm.train import train

from .conftest import CLI_ENV, SMOKE, assert_user_error, gru_lm

_SERVER = r"""
import json, os, sys, traceback
import gru_lm.cli, gru_lm.train  # what a training imports, imported once; nothing else runs before fork
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
            log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.chdir(req["cwd"])
            sys.argv = ["gru-lm", *req["args"]]
            gru_lm.cli.main()
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
        self.server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, env=CLI_ENV)
        assert self._line(120) == "ready"

    def _line(self, timeout: float) -> str:
        """One line from the server, read byte by byte so nothing waits unseen in a buffer."""
        out, fd, deadline = b"", self.server.stdout.fileno(), time.monotonic() + timeout
        while not out.endswith(b"\n"):
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("the warm gru-lm server did not answer")
            ch = os.read(fd, 1)
            assert ch, "the warm gru-lm server died"
            out += ch
        return out.decode().strip()

    def start(self, *args, cwd: Path, log: Path) -> int:
        """Fork a child running `gru-lm ARGS`; returns a pidfd for it (signals through it cannot hit a reused pid)."""
        req = {"args": [str(a) for a in args], "cwd": str(cwd), "log": str(log)}
        self.server.stdin.write((json.dumps(req) + "\n").encode())
        self.server.stdin.flush()
        pid = int(self._line(60))
        return os.pidfd_open(pid)

    def running(self) -> bool:
        """Whether the child has not ended yet (the server reports its status only once it has reaped it)."""
        return not select.select([self.server.stdout.fileno()], [], [], 0)[0]

    def signal(self, pidfd: int, sig: int) -> None:
        signal.pidfd_send_signal(pidfd, sig)

    def wait(self, pidfd: int, timeout: float = 120) -> int:
        """The child's exit code (-9 when killed by SIGKILL)."""
        status = int(self._line(timeout))
        os.close(pidfd)
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


@pytest.fixture(scope="module")
def warm():
    cli = WarmCLI()
    yield cli
    cli.close()


def _wait_for(condition, what: str, warm: WarmCLI, timeout: float = 60, poll: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert warm.running(), f"the training ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def _last_step(metrics: Path) -> int:
    try:
        lines = metrics.read_bytes().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, ValueError):
        return 0


def _losses(run: Path) -> list[tuple]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in rows]


def _temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) if run.exists() else []


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_a_checkpoint_and_resume_is_exact(warm, corpus, smoke, tmp_path):
    """20 kills -9 of one training, each at a random moment: while it starts, while it trains, or the
    instant a checkpoint's temporary file appears (mid-write). After every kill last.pt and best.pt
    load and last.pt never goes back; each new process resumes (or starts afresh if no last.pt
    exists yet). The run, finished with a fresh `python -m gru_lm --resume`, then has the same
    losses, step for step, and the same weights as a run that was never interrupted."""
    steps, every = 100, 2
    flags = ["--config", SMOKE, "--max-steps", steps, "--eval-every", every, "--val-fraction", 0.02, "-q"]
    reference = tmp_path / "reference"
    train(corpus, smoke(max_steps=steps, eval_every=every, val_fraction=0.02), reference, progress=False)

    run, log = tmp_path / "run", tmp_path / "killed.log"
    rng = random.Random(1337)
    saved, mid_write = 0, 0
    for kill in range(20):
        resume, old_temps = (run / "last.pt").exists(), set(_temp_files(run))
        pidfd = warm.start("train", corpus, "--out", run, *flags, "--resume" if resume else "--overwrite",
                           cwd=tmp_path, log=log)
        mode = ("starting", "mid-write", "training")[kill % 3]
        if mode == "starting":  # anywhere from parsing the flags to the first steps (a few at most)
            at = time.monotonic() + rng.uniform(0.0, 0.3)
            _wait_for(lambda: time.monotonic() >= at or _last_step(run / "metrics.jsonl") >= saved + 4,
                      "the moment to kill", warm)
        elif mode == "mid-write":  # the instant a checkpoint's temporary file exists
            _wait_for(lambda: any(n.startswith((".last.pt.", ".best.pt.")) for n in set(_temp_files(run)) - old_temps),
                      "a checkpoint write", warm)
        else:  # a few steps in, then a random instant
            target = saved + rng.randint(1, 4)
            _wait_for(lambda: _last_step(run / "metrics.jsonl") >= target, f"step {target}", warm, poll=0.005)
            time.sleep(rng.uniform(0.0, 0.05))
        assert warm.running(), "the training finished before it could be killed"
        warm.signal(pidfd, signal.SIGKILL)
        assert warm.wait(pidfd) == -signal.SIGKILL
        mid_write += bool(set(_temp_files(run)) - old_temps)  # this process was killed in the middle of a write
        if (run / "last.pt").exists():
            state = checkpoint.load(run / "last.pt")
            assert state["step"] >= saved and state["step"] % every == 0, (kill, mode, state["step"], saved)
            saved = state["step"]
            # best.pt is written just before last.pt: at most one evaluation ahead of it, and never
            # worse than the best validation loss last.pt remembers (or resuming could not restore it)
            best = checkpoint.load(run / "best.pt")
            assert best["step"] <= saved + every and best["val_loss"] <= state["best_val_loss"], (kill, mode)
        else:
            assert saved == 0, "last.pt disappeared"
    assert 0 < saved < steps and mid_write >= 1, (saved, mid_write)

    r = gru_lm("train", corpus, "--out", run, *flags, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _temp_files(run) == []  # what the kills left was cleaned up, and never taken for a checkpoint
    assert _losses(run) == _losses(reference)  # every step's train loss and every val loss, bit for bit
    for name in ("last.pt", "best.pt"):
        a, b = checkpoint.load(reference / name), checkpoint.load(run / name)
        assert a["step"] == b["step"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_second_training_is_refused_and_ctrl_c_saves_and_exits_130(warm, corpus, tmp_path, sig):
    """One training runs (no budget: it stops on Ctrl-C). A second one into the same folder, the same
    command typed again, is refused at once by the lock; the first is not disturbed. Ctrl-C then
    saves last.pt and exits 130, and --resume continues from it. So does SIGTERM (`kill`, `timeout`, job
    schedulers), even sent twice: some schedulers signal every process of a job (only a second Ctrl-C aborts)."""
    out, log = tmp_path / "run", tmp_path / "first.log"
    cmd = ["train", corpus, "--config", SMOKE, "--out", out, "--max-steps", 0, "--max-time", 0, "--eval-every", 5, "-q"]
    first = warm.start(*cmd, cwd=tmp_path, log=log)
    try:
        _wait_for(lambda: (out / "last.pt").exists(), "the first checkpoint", warm, poll=0.02)
        second = gru_lm(*cmd, cwd=tmp_path)
        assert_user_error(second, str(out), "another training is writing to this folder")
        assert warm.running()
        for _ in range(2 if sig == signal.SIGTERM else 1):
            warm.signal(first, sig)
        assert warm.wait(first) == 130, log.read_text()
    except BaseException:
        if warm.running():
            warm.signal(first, signal.SIGKILL)
            warm.wait(first)
        raise
    err = log.read_text()
    assert "interrupted at step" in err and "Traceback" not in err
    step = checkpoint.load(out / "last.pt")["step"]
    assert step >= 5 and f"interrupted at step {step};" in err
    assert [r[0] for r in _losses(out)] == list(range(1, step + 1))
    resumed = warm.start("train", corpus, "--out", out, "--resume", "--max-steps", step + 3, "-q",
                         cwd=tmp_path, log=tmp_path / "resume.log")
    assert warm.wait(resumed) == 0, (tmp_path / "resume.log").read_text()
    assert checkpoint.load(out / "last.pt")["step"] == step + 3
