"""What processor this is: its model name and instruction-set level, for the kernels' build and every figure.

Read from /proc/cpuinfo (Linux); elsewhere the model is the platform's name and the level "baseline".
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

#: The x86-64-v3 level (Haswell, Zen 1 and later): what the AVX2 micro-kernels are built for.
_V3 = {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"}
#: The x86-64-v4 level (Skylake-SP, Zen 4 and later): AVX-512 F, BW, CD, DQ and VL, for the AVX-512 ones.
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
_V2 = {"sse4_2", "ssse3", "popcnt", "cx16"}


@functools.cache
def _cpuinfo() -> dict[str, str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for ln in lines:
        key, _, value = ln.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_family_model() -> str:
    """The CPU's generation as /proc/cpuinfo numbers it ("family 6 model 207"; "" if unknown), which a
    hypervisor shows even where it hides the model name."""
    info = _cpuinfo()
    if "cpu family" not in info or "model" not in info:
        return ""
    return f"family {info['cpu family']} model {info['model']}"


def isa_level() -> str:
    """The widest vector or matrix units this CPU has, as figures name them: AMX, AVX-512, AVX2 or baseline."""
    flags = cpu_flags()
    if "amx_tile" in flags:
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags and "fma" in flags:
        return "AVX2"
    return "baseline"


def has_bfloat16_units() -> bool:
    """Intel AMX or AVX-512 BF16: bfloat16 matrix products in hardware, where mixed precision trains faster."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def build_target() -> str:
    """The -march level the compiled kernels are built for: x86-64-v4 where AVX-512 exists, x86-64-v3
    where AVX2 and FMA do, x86-64-v2 or x86-64 below that; "" off x86. A level, not this CPU, so one
    build runs on every CPU of the level. GRU_LM_ASSUME_AVX2 builds for x86-64-v3 on any x86 CPU."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    flags = cpu_flags()
    if os.environ.get("GRU_LM_ASSUME_AVX2"):
        return "x86-64-v3"
    if flags >= _V4:
        return "x86-64-v4"
    if flags >= _V3:
        return "x86-64-v3"
    return "x86-64-v2" if flags >= _V2 else "x86-64"


def cpu_summary() -> str:
    """One line for a benchmark's header: the CPU, its level, and the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()} ({isa_level()}), {cores} cores"


def trained_on(device: str = "cpu", bfloat16: bool = False) -> str:
    """One line naming where a figure was measured, as checkpoints and reports record it:
    the processor and its ISA level (or the GPU), the dtype of the products and torch's version."""
    import torch

    where = f"{cpu_model()} ({isa_level()})"
    if device == "cuda" and torch.cuda.is_available():
        where = torch.cuda.get_device_name()
    elif device == "mps":
        where = f"{platform.machine()} with MPS"
    return f"{where}, {'bfloat16' if bfloat16 else 'float32'}, torch {torch.__version__}"
