"""The app as bench.visit_parts serves it: every worker's ``visits.Recorder`` cut short
after the part that BENCH_VISIT_PART names ("dropped": the hand-off empties the queue
and sends nothing; "dev-null": it frames the hits and writes them to /dev/null; unset:
the app as it is). Nothing in the app's own code changes."""
from __future__ import annotations

import os

import visits
from application import application
from bench.visit_parts import PART_VARIABLE

__all__ = ["application"]


def dropped(self: visits.Recorder, deadline: float | None = None) -> None:
    """``Recorder._hand_off`` with nowhere to send: the queue is emptied, and its hits
    are counted as handed off (so that none is logged as dropped)."""
    self._handed += len(self._hits)
    self._hits.clear()


def to_dev_null(self: visits.Recorder, frame: bytes, deadline: float | None = None
                ) -> None:
    """``Recorder._send`` to /dev/null: each frame is written, and no writer starts."""
    with open(os.devnull, "wb") as sink:
        sink.write(frame)


PART = os.environ.get(PART_VARIABLE, "")
if PART == "dropped":
    visits.Recorder._hand_off = dropped  # type: ignore[method-assign]
elif PART == "dev-null":
    visits.Recorder._send = to_dev_null  # type: ignore[method-assign]
elif PART:
    raise SystemExit(f"{PART_VARIABLE}={PART!r}: say 'dropped' or 'dev-null'")
