"""Named failure points that tests arm to crash the handler at a chosen step.

Nothing arms a point in a deployed function: the registry is per process and
only :func:`arm` fills it.
"""

from __future__ import annotations

import threading
from collections import Counter

POINTS = (
    "after_read_update",
    "after_accept",
    "after_claim_close",
    "after_write_model",
    "after_register",
    "after_move_pointer",
    "before_mark_published",
)

_armed: Counter[str] = Counter()
_lock = threading.Lock()


class InjectedFault(RuntimeError):
    """A crash raised on purpose at a named failure point."""


def arm(point: str, times: int = 1) -> None:
    """Make the next ``times`` passes through ``point`` raise :class:`InjectedFault`."""
    if point not in POINTS:
        raise ValueError(f"unknown failure point {point!r}: expected one of {POINTS}")
    with _lock:
        _armed[point] += times


def disarm_all() -> None:
    """Clear every armed failure point."""
    with _lock:
        _armed.clear()


def check(point: str) -> None:
    """Raise :class:`InjectedFault` if ``point`` is armed, consuming one arming."""
    with _lock:
        if _armed[point] <= 0:
            return
        _armed[point] -= 1
    raise InjectedFault(f"injected crash at {point}")
