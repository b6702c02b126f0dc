"""Data-parallel training over several processes (started by torchrun or launcher.spawn): who this
process is, and the few collectives the training loop needs. With one process every function here
is a no-op.

Each process trains its own slice of the B streams (so truncated BPTT stays contiguous per
stream), DistributedDataParallel averages the gradients, and rank 0 alone writes checkpoints and
metrics. Decisions that end or shape a step (the clock, Ctrl-C, the validation loss) are agreed
on by all processes, so they all take the same steps with the same learning rate.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from gru_lm.errors import UserError
from gru_lm.machine.process import exit_without_teardown

T = TypeVar("T")

_joined = False  # this process joined a process group (end_joined_process ends it without the teardown)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """More than one process trains this run."""
        return self.world > 1


def from_env() -> Dist:
    """The process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    try:
        return Dist(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None


def init(job: Dist, device: torch.device) -> None:
    """Join the process group: nccl between CUDA devices, gloo on CPU."""
    if not job.parallel or dist.is_initialized():
        return
    global _joined
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    _joined = True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def joined() -> bool:
    """Whether this process ever joined a process group."""
    return _joined


def end_joined_process(code: int) -> None:
    """End a process that joined a process group now, without the interpreter's teardown (see
    process.exit_without_teardown); a process that never joined one returns and exits the usual way."""
    if joined():
        exit_without_teardown(code)


def streams(batch_size: int, job: Dist) -> slice:
    """The streams (columns of a T×B window) this process trains: a contiguous, disjoint share."""
    if batch_size % job.world:
        raise UserError(
            f"batch size {batch_size} does not split evenly over {job.world} processes; use a multiple of {job.world}"
        )
    per = batch_size // job.world
    return slice(job.rank * per, (job.rank + 1) * per)


def agree(job: Dist, fn: Callable[[], T]) -> T | None:
    """Run fn on rank 0 and tell every process whether it raised UserError (then all raise it).

    For the checks only rank 0 makes (the output folder), so a mistake ends every process with
    the same one line instead of leaving the others waiting.
    """
    result, message = None, None
    if job.main:
        try:
            result = fn()
        except (UserError, OSError) as e:
            if not job.parallel:  # one process: the caller's own handling, unchanged
                raise
            message = str(e) if isinstance(e, UserError) else f"{e.filename or 'the run folder'}: {e.strerror or e}"
    if job.parallel:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise UserError(message)
    return result


def max_of(job: Dist, values: list[float], device: torch.device) -> list[float]:
    """The largest of each value over all processes (the clock; a stop asked for by any of them)."""
    if not job.parallel:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def mean_of(job: Dist, value: float, device: torch.device) -> float:
    if not job.parallel:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / job.world


def from_main(job: Dist, value: float, device: torch.device) -> float:
    """Rank 0's value on every process (the validation loss only rank 0 computes)."""
    if not job.parallel:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t)


def from_main_object(job: Dist, obj: T) -> T:
    """Rank 0's object (picklable) on every process."""
    if not job.parallel:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_streams(job: Dist, h: torch.Tensor) -> torch.Tensor:
    """The L×(B/N)×H states of all processes as one L×B×H state, in stream order."""
    if not job.parallel:
        return h
    parts = [torch.empty_like(h) for _ in range(job.world)]
    dist.all_gather(parts, h.contiguous())
    return torch.cat(parts, dim=1)


def gather_objects(job: Dist, obj: T) -> list[T]:
    if not job.parallel:
        return [obj]
    out: list = [None] * job.world
    dist.all_gather_object(out, obj)
    return out


def barrier(job: Dist) -> None:
    if job.parallel:
        dist.barrier()
