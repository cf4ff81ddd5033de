"""QEMU's isa-debug-exit: a port that ends the run with a status of the guest's choosing.

Test kernels written for `qemu -device isa-debug-exit,iobase=0xf4,iosize=4` report
their result by writing a value V here; QEMU exits with status (V << 1) | 1, so
a guest can never fake a clean exit (0). The same rule applies here, truncated
to 8 bits because that is all of a process status the host shell sees.
"""

from __future__ import annotations

from ..errors import GuestExit

PORT_COUNT = 4  # iosize=4: a write to any of the four ports exits


class DebugExit:
    """The debug-exit port: any write raises GuestExit, reads float high."""

    def __init__(self, port: int = 0xF4) -> None:
        self.base = port
        self.reads = 0  # reads: the device has nothing to return but all ones

    def io_read(self, port: int, size: int) -> int:
        # Nothing to read back (QEMU returns all ones too); a probe, or a bug.
        self.reads += 1
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        # The guest is done: QEMU uses the whole written value, whatever the size.
        status = ((value << 1) | 1) & 0xFF
        raise GuestExit(status, f"guest wrote {value:#x} to the debug-exit port")

    def reset(self) -> None:
        """Nothing to reset: the device has no state."""
