"""Starting the processes of a data-parallel job on this host (`train --nproc N`), and ending them.

spawn() does what `torchrun --standalone` does, with one-line errors instead of tracebacks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gru_lm.errors import UserError
from gru_lm.machine.distributed import Dist, from_env, streams


def spawn(nproc: int, args: list[str]) -> int:
    """Run `python -m gru_lm ARGS` as nproc processes of one job on this host; returns the exit code.

    What `torchrun --standalone` does, without its tracebacks: rank 0 talks to the terminal, the
    others' stderr is kept and shown only when one of them fails and rank 0 had nothing to say.
    If a process fails, the others get a few seconds to notice, then are stopped. Ctrl-C reaches
    every process (they share the terminal), and a SIGTERM is passed on: each saves, and the exit
    code is 130.
    """
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
    }
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logs = [None] + [tempfile.TemporaryFile("w+") for _ in range(1, nproc)]  # noqa: SIM115 (open for the whole job)
    procs: list[subprocess.Popen] = []

    # a SIGTERM to this launcher (kill, timeout, a job scheduler) reaches every process: each saves
    def pass_on(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    was = signal.signal(signal.SIGTERM, pass_on)
    for r in range(nproc):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gru_lm", *args],
                stderr=logs[r],
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            )
        )
    codes = _wait_for(procs)
    signal.signal(signal.SIGTERM, was)
    return _job_exit_code(codes, logs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(procs: list[subprocess.Popen], grace_s: float = 10.0) -> list[int]:
    """Wait for every process; once one has failed, stop the rest after grace_s. Returns the exit codes."""
    failed_at = None
    try:
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
    except KeyboardInterrupt:  # every process got the same Ctrl-C: let them save and stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for p in procs:
            p.wait()
    return [p.wait() for p in procs]


def _job_exit_code(codes: list[int], logs: list) -> int:
    """0 when all succeeded; rank 0's code when it has spoken; else the first failure's line, repeated."""
    if all(c == 0 for c in codes):
        return 0
    if codes[0] in (2, 130):  # rank 0 has said what happened (one line) or saved after Ctrl-C
        return codes[0]
    for r, c in enumerate(codes[1:], start=1):  # a process that failed on its own
        if c in (0, -signal.SIGKILL):
            continue
        logs[r].seek(0)
        lines = [ln for ln in logs[r].read().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("gru-lm: error:")]
        print(
            errors[-1]
            if errors
            else f"gru-lm: error: training process {r} failed (exit code {c}): {lines[-1] if lines else 'no message'}",
            file=sys.stderr,
        )
        return 2 if c == 2 else 1
    return codes[0] if codes[0] > 0 else 1


def check_nproc(nproc: int) -> None:
    """--nproc itself: at least 1, and not inside a job that torchrun started (UserError)."""
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, not {nproc}")
    if from_env().parallel:
        raise UserError("--nproc inside torchrun: give the number of processes to torchrun only")


def check_job(nproc: int, file: Path, batch_size: int) -> None:
    """What the job's processes would find wrong at once: the batch's split over them, the file (UserError)."""
    streams(batch_size, Dist(0, nproc))
    if not file.exists():
        raise UserError(f"{file}: no such file")


def without_nproc(args: list[str]) -> list[str]:
    """The command line again, less --nproc and its value: what each process of the job runs."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out
