"""Exec a cluster child in its own session, tied to the supervisor's life.

``python -m mmo.process.launch PROGRAM ARGS...`` puts itself in a new session
(so a Ctrl-C at the terminal reaches only the supervisor, which then stops every
child once, in order), asks Linux to send it SIGTERM if the supervisor dies
(so no child outlives a killed supervisor), and execs PROGRAM. No shell.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    """Detach from the terminal's process group, arm the parent-death signal, exec."""
    if not argv:
        raise SystemExit("usage: python -m mmo.process.launch PROGRAM [ARGS...]")
    parent = os.getppid()
    os.setsid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the signal was armed
            raise SystemExit(1)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
