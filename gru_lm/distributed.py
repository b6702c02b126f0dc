"""Data-parallel training over several processes (started by torchrun): who this process is, and
the few collectives the training loop needs. With one process every function here is a no-op.

Each process trains its own slice of the B streams (so truncated BPTT stays contiguous per
stream), DistributedDataParallel averages the gradients, and rank 0 alone writes checkpoints and
metrics. Decisions that end or shape a step (the clock, Ctrl-C, the validation loss) are agreed
on by all processes, so they all take the same steps with the same learning rate.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from .errors import UserError

T = TypeVar("T")

_joined = False  # this process joined a process group (exit_process ends it without the teardown)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def from_env() -> Dist:
    """The process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    try:
        return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None


def init(d: Dist, device: torch.device) -> None:
    """Join the process group: nccl between CUDA devices, gloo on CPU."""
    if not d.on or dist.is_initialized():
        return
    global _joined
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    _joined = True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a process that joined a process group now, skipping the interpreter's teardown.

    With torch 2.13 and gloo, a process that exits soon after destroy_process_group aborts now and
    then at interpreter shutdown ("terminate called without an active exception", after all its work
    is done: 1 run in 51 of `train --nproc 2` here, 3 in 40 of a minimal gloo script; none with a
    1 s pause after the destroy, so apparently a gloo thread still winding down). By the time the CLI
    exits every file of the run is closed, so os._exit loses nothing. A process that never joined a
    group returns and exits the usual way.
    """
    if not _joined:
        return
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):  # closed, or the reader went away
            pass
    os._exit(code)


def streams(batch_size: int, d: Dist) -> slice:
    """The streams (columns of a T×B window) this process trains: a contiguous, disjoint share."""
    if batch_size % d.world:
        raise UserError(f"batch size {batch_size} does not split evenly over {d.world} processes; "
                        f"use a multiple of {d.world}")
    per = batch_size // d.world
    return slice(d.rank * per, (d.rank + 1) * per)


def agree(d: Dist, fn: Callable[[], T]) -> T | None:
    """Run fn on rank 0 and tell every process whether it raised UserError (then all raise it).

    For the checks only rank 0 makes (the output folder), so a mistake ends every process with
    the same one line instead of leaving the others waiting.
    """
    result, message = None, None
    if d.main:
        try:
            result = fn()
        except (UserError, OSError) as e:
            if not d.on:  # one process: the caller's own handling, unchanged
                raise
            message = str(e) if isinstance(e, UserError) else f"{e.filename or 'the run folder'}: {e.strerror or e}"
    if d.on:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise UserError(message)
    return result


def max_of(d: Dist, values: list[float], device: torch.device) -> list[float]:
    """The largest of each value over all processes (the clock; a stop asked for by any of them)."""
    if not d.on:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def mean_of(d: Dist, value: float, device: torch.device) -> float:
    if not d.on:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / d.world


def from_main(d: Dist, value: float, device: torch.device) -> float:
    """Rank 0's value on every process (the validation loss only rank 0 computes)."""
    if not d.on:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t)


def gather_streams(d: Dist, h: torch.Tensor) -> torch.Tensor:
    """The L×(B/N)×H states of all processes as one L×B×H state, in stream order."""
    if not d.on:
        return h
    parts = [torch.empty_like(h) for _ in range(d.world)]
    dist.all_gather(parts, h.contiguous())
    return torch.cat(parts, dim=1)


def gather_objects(d: Dist, obj: T) -> list[T]:
    if not d.on:
        return [obj]
    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.on:
        dist.barrier()


def spawn(nproc: int, args: list[str]) -> int:
    """Run `python -m gru_lm ARGS` as nproc processes of one job on this host; returns the exit code.

    What `torchrun --standalone` does, without its tracebacks: rank 0 talks to the terminal, the
    others' stderr is kept and shown only when one of them fails and rank 0 had nothing to say.
    If a process fails, the others get a few seconds to notice, then are stopped. Ctrl-C reaches
    every process (they share the terminal), and a SIGTERM is passed on: each saves, and the exit code is 130.
    """
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logs = [None] + [tempfile.TemporaryFile("w+") for _ in range(1, nproc)]
    procs: list[subprocess.Popen] = []
    # a SIGTERM to this launcher (kill, timeout, a job scheduler) reaches every process: each saves
    was = signal.signal(signal.SIGTERM, lambda signum, frame: [p.send_signal(signum) for p in procs if p.poll() is None])
    for r in range(nproc):
        procs.append(subprocess.Popen([sys.executable, "-m", "gru_lm", *args], stderr=logs[r],
                                      env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}))
    failed_at = None
    try:
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > 10:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
    except KeyboardInterrupt:  # every process got the same Ctrl-C: let them save and stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for p in procs:
            p.wait()
    codes = [p.wait() for p in procs]
    signal.signal(signal.SIGTERM, was)
    if all(c == 0 for c in codes):
        return 0
    if codes[0] in (2, 130):  # rank 0 has said what happened (one line) or saved after Ctrl-C
        return codes[0]
    for r, c in enumerate(codes[1:], start=1):  # a process that failed on its own
        if c in (0, -signal.SIGKILL):
            continue
        logs[r].seek(0)
        lines = [ln for ln in logs[r].read().splitlines() if ln.strip()]
        mine = [ln for ln in lines if ln.startswith("gru-lm: error:")]
        print(mine[-1] if mine else f"gru-lm: error: training process {r} failed (exit code {c}): "
              f"{lines[-1] if lines else 'no message'}", file=sys.stderr)
        return 2 if c == 2 else 1
    return codes[0] if codes[0] > 0 else 1
