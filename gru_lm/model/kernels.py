"""The compiled window kernels (csrc/), built on first use with the machine's compiler.

The build takes about a minute once per machine (torch caches it under ~/.cache/torch_extensions). It
targets an instruction-set level, not the build machine itself: x86-64-v4 (AVX-512) or x86-64-v3 (AVX2,
FMA) where the CPU has it, so a cached build keyed by that level runs on any CPU of the level; the
kernels pick the team micro-kernels (AVX-512 or AVX2 wide) or the BLAS path at run time
(csrc/dispatch.h). Where the build fails (no compiler, no ninja) window.py runs the same algorithm as
Python loops. GRU_LM_KERNELS=python forces the Python path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

from gru_lm.machine.cpu import build_target

CSRC = Path(__file__).with_name("csrc")
SOURCES = [
    CSRC / name for name in ("window_kernels.cpp", "recurrent_team.cpp", "products.cpp", "sampler.cpp", "dropout.cpp")
]


@functools.cache
def compiled():
    """The compiled module, or None when it cannot be had here (say why once on stderr)."""
    if os.environ.get("GRU_LM_KERNELS", "").lower() == "python":
        return None
    try:
        try:
            import ninja  # the pip package puts a ninja binary beside it; cpp_extension looks on PATH

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
        from torch.utils.cpp_extension import load

        target = build_target()
        # -fno-trapping-math lets gcc vectorise the element-wise passes (their clamps are compares);
        # OpenMP is what torch's parallel_for runs on: without it the teams of threads run serially
        # (Linux, where torch's own libgomp is the one the module binds to)
        # at x86-64-v4 gcc still vectorises those passes 256 bits wide unless told otherwise
        flags = ["-O3", "-fno-trapping-math", "-fno-math-errno"] + ([f"-march={target}"] if target else [])
        flags += ["-mprefer-vector-width=512"] if target == "x86-64-v4" else []
        openmp = ["-fopenmp"] if platform.system() == "Linux" else []
        name = "gru_lm_kernels_" + (target or platform.machine()).replace("-", "_")
        return load(
            name,
            [str(p) for p in SOURCES],
            extra_cflags=flags + openmp,
            extra_ldflags=openmp,
            extra_include_paths=[str(CSRC)],
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, a failed build: the Python path does the same work
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"note: compiled kernels unavailable ({first[:160]}); using the slower Python path", file=sys.stderr)
        return None


def backend() -> str:
    """What runs a float32 window here: "avx512", "avx2" or "blas" (compiled), or "python"."""
    k = compiled()
    return k.preferred_kernels() if k is not None else "python"


def available() -> list[str]:
    """Every path a float32 window can take here, widest first: those of "avx512", "avx2" and "blas"
    that the compiled module has on this CPU, then "python". Benchmarks set GRU_LM_KERNELS to each."""
    k = compiled()
    if k is None:
        return ["python"]
    found = []
    for name in ("avx512", "avx2", "blas"):
        with forcing(name):
            if k.preferred_kernels() == name:
                found.append(name)
    return [*found, "python"]


def available_bfloat16() -> list[str]:
    """The paths a window with bfloat16 operands can take here, as GRU_LM_KERNELS selects them: "avx512" (the
    bfloat16 team kernels, where the CPU has AVX-512 BF16) and "blas"; empty without the compiled module."""
    k = compiled()
    if k is None:
        return []
    with forcing("avx512"):
        team = k.preferred_bfloat16_kernels() == "avx512_bf16"
    return ["avx512", "blas"] if team else ["blas"]


def products() -> str:
    """The library of the float32 products outside the recurrent loop here (csrc/products.h): "onednn" or
    "mkl" (torch.mm's), or "torch" without the compiled module."""
    k = compiled()
    return k.float_products() if k is not None else "torch"


@contextlib.contextmanager
def forcing(name: str, variable: str = "GRU_LM_KERNELS") -> Iterator[None]:
    """The variable (GRU_LM_KERNELS, or GRU_LM_PRODUCTS) set to `name` inside the block, and as it was (or
    unset) after it."""
    before = os.environ.get(variable)
    os.environ[variable] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
