"""The compiled window kernels (csrc/window_kernels.cpp), built on first use with the machine's compiler.

The build takes about half a minute once per machine (torch caches it under ~/.cache/torch_extensions);
where it fails (no compiler, no ninja) window.py runs the same algorithm as Python loops. Set
GRU_LM_KERNELS=python to force the Python path.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "window_kernels.cpp"


def _cpu_tag() -> str:
    """The build uses -march=native: key the cached build by the processor, so a home folder moved to
    another machine rebuilds instead of running instructions that machine lacks."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor() or platform.machine()
    return hashlib.sha256(flags.encode()).hexdigest()[:10]


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

        return load(f"gru_lm_kernels_{_cpu_tag()}", [str(SOURCE)], extra_cflags=["-O3", "-march=native"], verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: the Python path does the same work
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"note: compiled kernels unavailable ({first[:160]}); using the slower Python path", file=sys.stderr)
        return None


def backend() -> str:
    return "compiled" if compiled() is not None else "python"
