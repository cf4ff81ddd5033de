"""Workarounds for unicorn 2.1.4 exception state that no API exposes.

Unicorn never resets the CPU's `old_exception` after it hands an exception to
the INTR hook (unicorn issue #578), so the next contributory fault is reported
as a double fault and the one after as a silent triple fault. It also keeps the
fault's error code only in its CPU state. Both live in the context blob that
uc_context_save copies; their offsets are found once at start-up by provoking a
known #GP in a scratch engine and diffing saved contexts, so no offset is
hard-wired to one build.
"""

from __future__ import annotations

import ctypes
import functools
import struct

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc
from unicorn.unicorn_py3.unicorn import uclib
from unicorn import x86_const as X

from bt_vmm.vcpu.descriptors import FLAT_CODE, FLAT_DATA, Descriptor

_PROBE_SELECTOR = 0x1238   # beyond the probe GDT's limit: #GP(0x1238)


@functools.lru_cache(maxsize=1)
def exception_offsets() -> tuple[int, int]:
    """(offset of error_code, offset of old_exception) in a saved context."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    gdt = bytes(8) + FLAT_CODE.pack() + FLAT_DATA.pack()
    uc.mem_write(0x3000, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x3000, len(gdt) - 1, 0))
    uc.reg_write(X.UC_X86_REG_CR0, 1)
    uc.reg_write(X.UC_X86_REG_CS, 8)
    uc.reg_write(X.UC_X86_REG_DS, 16)
    uc.reg_write(X.UC_X86_REG_SS, 16)
    # mov ds, [0x2000] ; hlt  -- the selector comes from memory so that no
    # general register holds the value being searched for
    uc.mem_write(0x2000, struct.pack("<H", _PROBE_SELECTOR))
    code = b"\x8e\x1d\x00\x20\x00\x00\xf4"
    uc.mem_write(0x1000, code)
    before = bytes(uc.context_save())
    seen: list[bytes] = []

    def hook(uc: Uc, intno: int, _ud: object) -> None:
        seen.append(bytes(uc.context_save()))
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, hook)
    uc.emu_start(0x1000, 0x1000 + len(code))
    after = seen[0]
    err_off = old_off = None
    for off in range(0, len(before) - 3, 4):
        b = struct.unpack_from("<i", before, off)[0]
        a = struct.unpack_from("<i", after, off)[0]
        if err_off is None and b == 0 and a == _PROBE_SELECTOR:
            err_off = off
        if old_off is None and b == -1 and a == 13:
            old_off = off
    if err_off is None or old_off is None:
        raise RuntimeError("cannot locate unicorn's exception state in its saved context")
    return err_off, old_off


class FaultState:
    """Reads the pending fault's error code and clears unicorn's stale old_exception."""

    def __init__(self, uc: Uc) -> None:
        self._uc = uc
        self._err_off, self._old_off = exception_offsets()
        self._ctx = uc.context_save()
        self._ptr = ctypes.cast(self._ctx.context, ctypes.c_void_p).value

    def reset(self) -> None:
        """Clear a stale old_exception. Needed after uc_mem_protect as well: it
        invalidates translated blocks by translating the *physical* page as a
        linear address, and a page fault in that walk is remembered."""
        h = self._uc._uch
        uclib.uc_context_save(h, self._ctx.context)
        ctypes.c_int32.from_address(self._ptr + self._old_off).value = -1
        uclib.uc_context_restore(h, self._ctx.context)

    def error_code_and_reset(self) -> int:
        """Call inside the INTR hook for a fault: returns its error code and re-arms
        unicorn so the next fault is not mistaken for a double fault."""
        h = self._uc._uch
        uclib.uc_context_save(h, self._ctx.context)
        err = ctypes.c_int32.from_address(self._ptr + self._err_off).value & 0xFFFF
        ctypes.c_int32.from_address(self._ptr + self._old_off).value = -1
        uclib.uc_context_restore(h, self._ctx.context)
        return err


@functools.lru_cache(maxsize=1)
def hflags_offset() -> int:
    """Offset of the CPU's hidden-flags word (whose low two bits are the CPL)
    in a saved context, found by diffing a CPL0 and a CPL3 context of a probe
    engine that differ in nothing else a program can see."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    user_code = Descriptor(0, 0xFFFFFFFF, 0xFB, 0xC).pack()
    user_data = Descriptor(0, 0xFFFFFFFF, 0xF3, 0xC).pack()
    gdt = bytes(8) + FLAT_CODE.pack() + FLAT_DATA.pack() + user_code + user_data
    uc.mem_write(0x3000, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x3000, len(gdt) - 1, 0))
    uc.reg_write(X.UC_X86_REG_CR0, 1)
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    uc.reg_write(X.UC_X86_REG_SS, 0x10)
    for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
        uc.reg_write(reg, 0x23)
    # push ss=0x23, esp, eflags, cs=0x1b, eip=0x2000 ; iretd  -> CPL3 at 0x2000
    code = (b"\x6a\x23\x68\x00\x90\x00\x00\x6a\x02\x6a\x1b\x68\x00\x20\x00\x00\xcf")
    uc.mem_write(0x1000, code)
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    uc.reg_write(X.UC_X86_REG_EIP, 0x1000)
    cpl0 = bytes(uc.context_save())
    uc.emu_start(0x1000, 0x2000)
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    uc.reg_write(X.UC_X86_REG_EIP, 0x1000)
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
    cpl3 = bytes(uc.context_save())
    for off in range(0, len(cpl0) - 3, 4):
        a = struct.unpack_from("<I", cpl0, off)[0]
        b = struct.unpack_from("<I", cpl3, off)[0]
        if a ^ b == 3 and a & 3 == 0:
            return off
    raise RuntimeError("cannot locate unicorn's hidden flags in its saved context")


class CplSwitch:
    """Moves unicorn between CPL0 (the TC) and CPL3 (direct execution).

    Unicorn only changes privilege inside instructions; from the host a
    segment write at CPL3 may not load a kernel selector and vice versa. So
    the CPL bits of the hidden flags are set in the saved context and the
    segment registers are loaded afterwards, with the architectural checks of
    the new level (about 3 us).
    """

    def __init__(self, uc: Uc) -> None:
        self._uc = uc
        self._off = hflags_offset()
        self._ctx = uc.context_save()
        self._ptr = ctypes.cast(self._ctx.context, ctypes.c_void_p).value

    def set_cpl(self, cpl: int) -> None:
        h = self._uc._uch
        uclib.uc_context_save(h, self._ctx.context)
        word = ctypes.c_uint32.from_address(self._ptr + self._off)
        word.value = (word.value & ~3) | cpl
        uclib.uc_context_restore(h, self._ctx.context)
