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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from .errors import UserError

T = TypeVar("T")


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
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


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
        except UserError as e:
            message = str(e)
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
