"""Everything device-specific lives here: picking the device and the RNG state to save with it."""

from __future__ import annotations

import torch

from gru_lm.errors import UserError
from gru_lm.machine.cpu import has_bfloat16_units


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device that is absent is a user error.

    Under torchrun each process of a host takes the CUDA device of its LOCAL_RANK.
    """
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (try --device cpu)")
    if name == "mps" and not has_mps:
        raise UserError("--device mps: no Apple MPS device is available here (try --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device must be auto, cpu, cuda or mps, not {name!r}")
    if name == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} of this host has no CUDA device: it has {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def pick_autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The dtype of autocast for --dtype (None: plain float32); bfloat16 where the device has it.

    Under autocast the matrix products of the input projections and the read-out run in bfloat16, and
    the recurrent window (cells.py, window.py) gives its products bfloat16 operands too; the states,
    gates, loss, gradients and weights stay float32.
    """
    if name == "auto":  # bfloat16 where it measured faster: a CPU with bfloat16 units
        return torch.bfloat16 if device.type == "cpu" and has_bfloat16_units() else None
    if name == "float32":
        return None
    if name != "bfloat16":
        raise UserError(f"--dtype must be float32, bfloat16 or auto, not {name!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype bfloat16: this CUDA device has no bfloat16; use --dtype float32")
    if device.type == "mps":
        raise UserError("--dtype bfloat16 is not supported on mps here; use --dtype float32")
    return torch.bfloat16


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
