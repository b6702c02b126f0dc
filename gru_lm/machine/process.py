"""Ending this process without the interpreter's teardown, where that teardown can crash it."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn


def exit_without_teardown(code: int) -> NoReturn:
    """Flush stdout and stderr, then exit with os._exit: no atexit handlers, no finalisers, no thread teardown.

    Two kinds of process need it. A server whose request threads (daemons) may still be generating inside
    torch after Ctrl-C: the teardown stops such a thread where it stands, and stopped inside C++ code it
    aborts the whole process ("terminate called without an active exception"). And a process that joined a
    gloo process group, which now and then aborts the same way at interpreter exit after
    destroy_process_group (docs/scaling.md). Callers have closed every file of theirs by then, so nothing but
    the standard streams is left to write.
    """
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or the reader went away
            f.flush()
    os._exit(code)
