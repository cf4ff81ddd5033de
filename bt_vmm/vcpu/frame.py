"""The guest's general registers during one exit: one batch read, one batch write."""

from __future__ import annotations

from unicorn import x86_const as X

from bt_vmm.vcpu.regs import GPR_NAMES, GPRS, Regs

FRAME_REGS = GPRS + (X.UC_X86_REG_EIP, X.UC_X86_REG_EFLAGS)
EIP_I = 8
EFLAGS_I = 9


class Frame:
    __slots__ = ("r", "_regs")

    def __init__(self, regs: Regs) -> None:
        self._regs = regs
        self.r = regs.read_many(FRAME_REGS)

    def get(self, name: str) -> int:
        return self.r[GPR_NAMES.index(name)]

    def set(self, name: str, value: int) -> None:
        self.r[GPR_NAMES.index(name)] = value & 0xFFFFFFFF

    @property
    def esp(self) -> int:
        return self.r[4]

    @esp.setter
    def esp(self, v: int) -> None:
        self.r[4] = v & 0xFFFFFFFF

    @property
    def eip(self) -> int:
        """The TC address unicorn is at (never a guest EIP)."""
        return self.r[EIP_I]

    @eip.setter
    def eip(self, v: int) -> None:
        self.r[EIP_I] = v

    @property
    def eflags(self) -> int:
        """The real EFLAGS: arithmetic flags are the guest's, IF/IOPL/AC are not."""
        return self.r[EFLAGS_I]

    @eflags.setter
    def eflags(self, v: int) -> None:
        self.r[EFLAGS_I] = v

    def commit(self) -> None:
        self._regs.write_many(FRAME_REGS, self.r)

    def dump(self) -> str:
        parts = [f"{n}={v:08x}" for n, v in zip(GPR_NAMES, self.r)]
        return " ".join(parts) + f" eflags={self.r[EFLAGS_I]:08x}"
