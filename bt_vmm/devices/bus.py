"""The I/O port bus: routes guest `in`/`out` to the device that owns the port.

Devices are plain objects with `io_read(port, size)` / `io_write(port, size,
value)` and `reset()`; they know nothing of the CPU. Ports nobody owns behave as
on a PC with nothing decoding them: reads float high (all ones), writes vanish;
both are counted so that a guest poking at missing hardware is visible.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol


class PortDevice(Protocol):
    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...
    def reset(self) -> None: ...


class PortBus:
    def __init__(self) -> None:
        self._owners: dict[int, PortDevice] = {}
        self.unclaimed_reads: Counter[int] = Counter()
        self.unclaimed_writes: Counter[int] = Counter()

    def register(self, first: int, count: int, device: PortDevice) -> None:
        for port in range(first, first + count):
            if port in self._owners:
                raise ValueError(f"I/O port {port:#x} already claimed")
            self._owners[port] = device

    def read(self, port: int, size: int) -> int:
        dev = self._owners.get(port)
        if dev is None:
            self.unclaimed_reads[port] += 1
            return (1 << (8 * size)) - 1
        return dev.io_read(port, size) & ((1 << (8 * size)) - 1)

    def write(self, port: int, size: int, value: int) -> None:
        dev = self._owners.get(port)
        if dev is None:
            self.unclaimed_writes[port] += 1
            return
        dev.io_write(port, size, value & ((1 << (8 * size)) - 1))

    def reset(self) -> None:
        for dev in set(self._owners.values()):
            dev.reset()
