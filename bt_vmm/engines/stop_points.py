"""Stop points: precise asynchronous stops of guest code that unicorn runs as is.

Guest code that runs untranslated (user code under both engines, the kernel
under trap-and-emulate) has no preemption checks of its own, so a timer
thread must make unicorn stop it. Calling `uc_emu_stop` from that thread is
not precise in unicorn 2.1.4 (issue #1355): when the stop request lands while
a block runs, the next block's exit check leaves the loop without writing the
block's start address back to EIP, so the monitor sees the registers after a
block with the EIP before it and would run the block twice (reproduced by the
bench guest's compute loop).

A stop requested from inside a block hook is precise: the hook runs with EIP
at the block's start and before any of its instructions. So the timer thread
only raises a flag, and a block hook whose callback is a few native
instructions stops emulation at the next block start once the flag is up.
The callback is machine code generated here (no compiler needed, and no
Python on the path: a Python block hook would cost about a microsecond per
block); on hosts other than x86-64 it is a ctypes callback doing the same.
"""

from __future__ import annotations

import ctypes
import mmap
import platform

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

_HOOK_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


def _native_code(code: bytes) -> tuple[mmap.mmap, int]:
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    return page, ctypes.addressof(ctypes.c_char.from_buffer(page))


def _native_callback(emu_stop: int) -> tuple[mmap.mmap, int]:
    """x86-64 System V code for `void cb(uc, address, size, int32_t *flag)`:
    return unless *flag, else tail-call uc_emu_stop(uc) (uc is still in rdi)."""
    return _native_code(b"\x8b\x01"                       # mov eax, [rcx]
                        b"\x85\xc0"                       # test eax, eax
                        b"\x75\x01"                       # jnz stop
                        b"\xc3"                           # ret
                        b"\x48\xb8" + emu_stop.to_bytes(8, "little") +   # stop: movabs rax, uc_emu_stop
                        b"\xff\xe0")                      # jmp rax


def _on_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


class StopPoints:
    """A block hook over guest linear ranges [begin, end] that stops
    emulation at the next block start once `request()` was called (from any
    thread). The monitor calls `clear()` when it has handled the stop."""

    def __init__(self, uc, ranges: list[tuple[int, int]]) -> None:
        self._uc = uc
        self.flag = ctypes.c_int32(0)
        self._keep: object
        if _on_x86_64():
            self._keep, addr = _native_callback(ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value)
            callback = ctypes.c_void_p(addr)
        else:
            flag = self.flag

            def check(uch, _address, _size, _ud) -> None:
                if flag.value:
                    uclib.uc_emu_stop(uch)
            self._keep = _HOOK_CB(check)
            callback = ctypes.cast(self._keep, ctypes.c_void_p)
        self._callback = callback
        self._hooks: list[uc_hook_h] = []
        self.move(ranges)

    def move(self, ranges: list[tuple[int, int]]) -> None:
        """Cover these ranges instead (the monitor region moved); unicorn's
        compiled blocks must be flushed for the change to take effect."""
        for hook in self._hooks:
            uclib.uc_hook_del(self._uc._uch, hook)
        self._hooks = []
        for begin, end in ranges:
            hook = uc_hook_h()
            err = uclib.uc_hook_add(self._uc._uch, ctypes.byref(hook), UC_HOOK_BLOCK, self._callback,
                                    ctypes.c_void_p(ctypes.addressof(self.flag)),
                                    ctypes.c_uint64(begin), ctypes.c_uint64(end))
            if err:
                raise RuntimeError(f"uc_hook_add (stop points) failed: {err}")
            self._hooks.append(hook)

    def request(self) -> None:
        self.flag.value = 1

    def clear(self) -> None:
        self.flag.value = 0


class ExactEip:
    """A code hook on every instruction that does nothing, natively: unicorn
    then writes EIP back before each instruction. Without one, EIP inside a
    memory hook (and after emu_stop there) is only as recent as the last
    instruction unicorn happened to sync it for -- often the block's start,
    with the block's earlier instructions already done (measured here on the
    test OS). The debugger keeps one installed while watchpoints are set
    (engines/debug.py); it costs a native call per instruction."""

    def __init__(self, uc) -> None:
        self._uc = uc
        if _on_x86_64():
            self._keep, addr = _native_code(b"\xc3")            # ret
            callback = ctypes.c_void_p(addr)
        else:
            self._keep = _HOOK_CB(lambda uch, _address, _size, _ud: None)
            callback = ctypes.cast(self._keep, ctypes.c_void_p)
        self._hook = uc_hook_h()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(self._hook), UC_HOOK_CODE, callback, None,
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise RuntimeError(f"uc_hook_add (exact EIP) failed: {err}")
        uc.ctl_flush_tb()          # compiled blocks lack the hook (unicorn #2200)

    def remove(self) -> None:
        uclib.uc_hook_del(self._uc._uch, self._hook)
        self._uc.ctl_flush_tb()
