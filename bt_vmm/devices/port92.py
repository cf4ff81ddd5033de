"""System Control Port A (0x92), the PS/2 "fast A20 and reset" port.

Bit 1 gates address line 20 and bit 0 resets the processor on a 0-to-1
transition; both are faster than going through the keyboard controller, which
is why boot loaders and kernels use this port first. The other bits (security
lock, activity lights) have nothing behind them and are only stored: the
register reads back as written.

The memory system here has no A20 mask, so `a20` is information for the
machine (which on a PC ORs it with the keyboard controller's A20 bit). The
run starts with A20 on, as the boot loader leaves it.
"""

from __future__ import annotations

from typing import Callable

from bt_vmm.devices.state import DeviceState

PORT = 0x92
PORTS = ((PORT, 1),)

P92_FAST_RESET = 0x01  # a 0->1 transition resets the processor
P92_A20 = 0x02  # A20 gate: 1 = address line 20 passes through
P92_SECURITY_LOCK = 0x08  # CMOS password lock latch (stored only)
P92_ACTIVITY_LIGHTS = 0xC0  # hard disk activity lights (stored only)
POWER_ON_VALUE = P92_A20  # the loader has enabled A20; the reset bit is clear


class Port92(DeviceState):
    """Port 0x92: fast A20 gate and fast reset."""

    # Snapshot state (devices/state.py): the register.
    STATE = ("value",)

    def __init__(self, on_reset: Callable[[], None] | None = None) -> None:
        self._on_reset = on_reset
        self.value = POWER_ON_VALUE  # the register, as the guest reads it back

        # Counters.
        self.resets = 0  # fast resets requested
        self.wide_accesses = 0  # 16/32-bit accesses: only the first byte is decoded

        self.reset()

    @property
    def a20(self) -> bool:
        """Bit 1: the A20 gate."""
        return bool(self.value & P92_A20)

    def io_read(self, port: int, size: int) -> int:
        # A20 code reads the port to change one bit and write the rest back.
        if size != 1:
            self.wide_accesses += 1
        return self.value | ((1 << (8 * size)) - 1) & ~0xFF

    def io_write(self, port: int, size: int, value: int) -> None:
        # Fast A20 (set bit 1) or fast reset (set bit 0).
        if size != 1:
            self.wide_accesses += 1
        old = self.value
        self.value = value & 0xFF
        if self.value & P92_FAST_RESET and not old & P92_FAST_RESET:
            self.resets += 1
            if self._on_reset is not None:
                self._on_reset()

    def reset(self) -> None:
        """Machine reset: the reset bit clears (so the next 0->1 resets again), A20 on."""
        self.value = POWER_ON_VALUE
