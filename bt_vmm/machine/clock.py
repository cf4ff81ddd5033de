"""The machine's time base: what the timers, the RTC and the ACPI PM timer count.

Devices are paced by the host clock, but a guest must not see the time it
spends stopped: in a debugger, or between a snapshot and its restore. So the
devices read a guest clock that is the host's monotonic clock minus the time
the machine was not running. While it is paused the clock stands still; a
restore sets it to the time the snapshot was taken. Deadlines cross between
the two bases at the machine (the engine's watchdog sleeps in host time).

The RTC's calendar follows the same clock from the wall-clock time the machine
was created (`wall`), so a restored guest's date goes on from the snapshot's.
"""

from __future__ import annotations

import time


class GuestClock:
    def __init__(self) -> None:
        self._offset = time.monotonic()       # host monotonic time at guest time 0
        self._paused_at: float | None = None  # guest time while paused
        self._wall_epoch = time.time()        # wall-clock seconds at guest time 0

    def __call__(self) -> float:
        """Guest seconds (monotonic; 0 when the machine was created)."""
        if self._paused_at is not None:
            return self._paused_at
        return time.monotonic() - self._offset

    def wall(self) -> float:
        """The guest's wall-clock time (seconds since the epoch, UTC) for the RTC."""
        return self._wall_epoch + self()

    def guest(self, host: float) -> float:
        """Guest time at host monotonic time `host` (while paused: the time it stands at)."""
        if self._paused_at is not None:
            return self._paused_at
        return host - self._offset

    def host(self, guest: float) -> float:
        """Host monotonic time at which guest time `guest` comes (while paused:
        as if the clock ran on from now, so that a watchdog sleeping until
        then does not wake at once for ever)."""
        if self._paused_at is not None:
            return time.monotonic() + guest - self._paused_at
        return guest + self._offset

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._offset = time.monotonic() - self._paused_at
            self._paused_at = None

    # --- snapshots ----------------------------------------------------------------
    def state(self) -> dict:
        return {"now": self(), "wall_epoch": self._wall_epoch}

    def restore(self, state: dict) -> None:
        """Continue from the saved guest time (the gap is never seen)."""
        now = float(state["now"])
        self._wall_epoch = float(state["wall_epoch"])
        if self._paused_at is not None:
            self._paused_at = now
        else:
            self._offset = time.monotonic() - now
