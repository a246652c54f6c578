"""The app as bench.visit_parts serves it: every worker's ``visits.Recorder`` cut short
after the part that BENCH_VISIT_PART names ("dropped": the hand-off empties the queue
and sends nothing; "dev-null": it frames the hits and writes them, the same way, to a
stand-in writer whose pipe is /dev/null; unset: the app as it is). Nothing in the app's
own code changes."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, cast

import visits
from application import application
from bench.visit_parts import PART_VARIABLE

if TYPE_CHECKING:
    import subprocess  # nosec B404: the type of what the stand-in replaces

__all__ = ["application"]


def dropped(self: visits.Recorder, deadline: float | None = None) -> bool:
    """``Recorder._hand_off`` with nowhere to send: the queue is emptied, and its hits
    are counted as handed off (so that none is logged as dropped)."""
    self._next_hand_off = time.monotonic() + self.handoff_seconds
    self._handed += len(self._hits)
    self._hits.clear()
    return True


class NullWriter:
    """A stand-in for a visit writer: no process; what is written to it goes to
    /dev/null. It has exited once its pipe is closed, as a writer does."""

    pid = 0
    returncode = 0

    def __init__(self) -> None:
        self.stdin = open(os.devnull, "wb")  # Recorder._end closes both
        self.stdout = open(os.devnull, "rb")

    def poll(self) -> int | None:
        return 0 if self.stdin.closed else None


def null_writer(self: visits.Recorder) -> subprocess.Popen[bytes]:
    """``Recorder._running_writer`` that starts no writer: one NullWriter a worker."""
    if self._writer is None:
        self._writer = cast("subprocess.Popen[bytes]", NullWriter())
    return self._writer


PART = os.environ.get(PART_VARIABLE, "")
if PART == "dropped":
    visits.Recorder._hand_off = dropped  # type: ignore[method-assign]
elif PART == "dev-null":
    visits.Recorder._running_writer = null_writer  # type: ignore[method-assign]
elif PART:
    raise SystemExit(f"{PART_VARIABLE}={PART!r}: say 'dropped' or 'dev-null'")
