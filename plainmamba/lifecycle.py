"""Tie the processes of a launched run to the process that started them (Linux).

``tools/lazyconfig_train_net.py`` marks itself as the parent of a run; each rank it spawns, and
each data-loader worker a rank spawns, calls :func:`tie_to_parent` as it starts. Linux then kills
the child (``PR_SET_PDEATHSIG``) the moment its parent dies, however the parent dies (``kill -9``
included), so no rank trains on as an orphan and no worker outlives its rank. On other systems
these functions do nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Optional

__all__ = ["PARENT_PID_ENV", "mark_as_parent", "tie_to_parent"]

# Spawned children inherit the environment: this names the process each one is tied to.
PARENT_PID_ENV = "PLAINMAMBA_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_tied_to: Optional[int] = None


def mark_as_parent() -> None:
    """Make the processes this one starts from now on tie themselves to it."""
    os.environ[PARENT_PID_ENV] = str(os.getpid())


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def tie_to_parent() -> bool:
    """In a child of a :func:`mark_as_parent` process: be killed (SIGKILL) when it dies.

    Exits at once if the parent is already gone. Then marks this process as the parent of its
    own children. Returns False (and does nothing) outside such a child, e.g. in a single-process
    run. Safe to call again, which re-arms the signal: ``torch.multiprocessing`` replaces it with
    SIGINT in every rank it starts, and a rank in a C++ call or a blocked collective would not
    act on that for a long time.
    """
    global _tied_to
    if _tied_to is None:
        value = os.environ.get(PARENT_PID_ENV, "")
        if not value.isdigit() or int(value) == os.getpid():
            return False
        _tied_to = int(value)
    if not _set_parent_death_signal(signal.SIGKILL):
        return False
    # The parent may have died before the signal was armed; then it will never come.
    if os.getppid() != _tied_to:
        os._exit(1)
    mark_as_parent()
    return True
