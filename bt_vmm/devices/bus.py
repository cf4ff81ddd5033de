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


class BytePorts:
    """For devices whose registers are bytes at consecutive ports (the PC's
    ISA chips): a wider access is split into byte accesses, low port first, as
    the bus cycles would be, and counted. Subclasses give _read_byte/_write_byte."""

    wide_accesses = 0

    def _read_byte(self, port: int) -> int:
        raise NotImplementedError

    def _write_byte(self, port: int, value: int) -> None:
        raise NotImplementedError

    def io_read(self, port: int, size: int) -> int:
        if size != 1:
            self.wide_accesses += 1
        value = 0
        for i in range(size):
            value |= self._read_byte(port + i) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        if size != 1:
            self.wide_accesses += 1
        for i in range(size):
            self._write_byte(port + i, (value >> (8 * i)) & 0xFF)


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
