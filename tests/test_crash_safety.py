"""Crash safety: SIGKILL at random moments (checkpoint writes included), Ctrl-C, two trainings at once.

Twenty kills cost twenty process starts, and a fresh `python -m gru_lm` spends seconds importing
torch before it does anything; so the processes killed here are forked from one warm interpreter
(conftest.WarmCLI): each child runs the real command line, `gru_lm.cli.main.main()` with its argv, from
the first line of the CLI, and is killed with a real SIGKILL. The final resume and the second of two concurrent
trainings are fresh `python -m gru_lm` processes, as a user runs them.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from gru_lm.model import checkpoint
from gru_lm.training.train import train

from .conftest import SMOKE, WarmCLI, assert_user_error, gru_lm

pytestmark = pytest.mark.slow  # each test here starts and kills real training processes


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
        pidfd = warm.start(
            "train", corpus, "--out", run, *flags, "--resume" if resume else "--overwrite", cwd=tmp_path, log=log
        )
        mode = ("starting", "mid-write", "training")[kill % 3]
        if mode == "starting":  # anywhere from parsing the flags to the first steps (a few at most)
            at = time.monotonic() + rng.uniform(0.0, 0.3)
            _wait_for(
                lambda at=at, saved=saved: time.monotonic() >= at or _last_step(run / "metrics.jsonl") >= saved + 4,
                "the moment to kill",
                warm,
            )
        elif mode == "mid-write":  # the instant a checkpoint's temporary file exists
            _wait_for(
                lambda old=old_temps: any(
                    n.startswith((".last.pt.", ".best.pt.")) for n in set(_temp_files(run)) - old
                ),
                "a checkpoint write",
                warm,
            )
        else:  # a few steps in, then a random instant
            target = saved + rng.randint(1, 4)
            _wait_for(
                lambda target=target: _last_step(run / "metrics.jsonl") >= target, f"step {target}", warm, poll=0.005
            )
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
    resumed = warm.start(
        "train",
        corpus,
        "--out",
        out,
        "--resume",
        "--max-steps",
        step + 3,
        "-q",
        cwd=tmp_path,
        log=tmp_path / "resume.log",
    )
    assert warm.wait(resumed) == 0, (tmp_path / "resume.log").read_text()
    assert checkpoint.load(out / "last.pt")["step"] == step + 3
