"""Pacing by the host clock: the alarm that gives the monitor control when a
timer deadline passes.

The devices keep their deadlines on the host's monotonic clock (PIT, RTC,
LAPIC timer, --timeout); the monitor arms the alarm with the earliest one
before it lets the guest run, and the alarm raises the preemption request at
that time. The request is a couple of memory stores (the engine's `request`
callback): the TC's checks at loop back-edges and indirect lookups see it, and
so do the stop points of code unicorn runs as is (engines/stop_points.py);
either way the monitor gets control at a guest instruction boundary. A halted
guest sleeps until the alarm (or host input) wakes it. A request that goes
unanswered (the deadline stays where it was) is repeated every millisecond.

`Alarm` is the thread that does this. With --hosted inproc the engine runs one
itself. With the host world in its own process, the host world runs it and
the VMM world's `HostAlarm` publishes the deadline in the shared memory's
control page (shared_memory.SharedDeadline), where the alarm reads it each
time it wakes. A later deadline needs nothing more: the alarm wakes at the
earlier one, reads the new one and sleeps again. Only an earlier one crosses
a world switch ("alarm"), to wake the alarm so it reads it; a periodic timer
never does. The alarm's requests reach the VMM world as "alarm" events.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

REQUEST_REPEAT = 1e-3       # an unanswered request is repeated this often (seconds)


class Alarm:
    """One long-lived thread: `request()` when the deadline passes, then every
    REQUEST_REPEAT seconds for as long as the deadline stays the same.

    The deadline is what `arm` set, or, given `source`, what `source()`
    returns each time the thread wakes (`poke` wakes it to look)."""

    def __init__(self, request: Callable[[], None],
                 source: Callable[[], float | None] | None = None) -> None:
        self._request = request
        self._source = source
        self._cv = threading.Condition()
        self._armed: float | None = None
        self._fired_for: float | None = None     # the deadline the last request was for
        self._repeat_at = 0.0
        self._alive = True
        self._thread = threading.Thread(target=self._loop, name="bt-vmm-alarm", daemon=True)
        self._thread.start()

    def arm(self, deadline: float | None) -> None:
        """Fire at `deadline` (time.monotonic()), or never (None)."""
        with self._cv:
            self._armed = deadline
            self._cv.notify()

    def wake(self) -> None:
        """Fire now (host input), and repeat until re-armed."""
        self.arm(0.0)

    def poke(self) -> None:
        """The source's deadline moved earlier: look again."""
        with self._cv:
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._alive = False
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                if not self._alive:
                    return
                deadline = self._source() if self._source is not None else self._armed
                if deadline is None:
                    self._cv.wait()
                    continue
                due = self._repeat_at if deadline == self._fired_for else deadline
                delay = due - time.monotonic()
                if delay > 0:
                    self._cv.wait(delay)
                    continue
                self._fired_for = deadline
                self._repeat_at = time.monotonic() + REQUEST_REPEAT
            self._request()


class HostAlarm:
    """The VMM world's handle on the host world's Alarm (see the module's
    docstring): publishes the deadline in shared memory, crosses only when it
    moved earlier; the firings arrive as events, which call `request`."""

    def __init__(self, switch, deadline, request: Callable[[], None]) -> None:
        self._switch = switch
        self._deadline = deadline          # shared_memory.SharedDeadline
        self.request = request
        self._published = math.inf

    def arm(self, deadline: float | None) -> None:
        value = math.inf if deadline is None else deadline
        if value == self._published:
            return
        self._deadline.store(deadline)
        earlier = value < self._published
        self._published = value
        if earlier:
            self._switch.call("alarm")

    def wake(self) -> None:
        self.request()

    def close(self) -> None:
        self._deadline.store(None)
