"""Register access to unicorn without the binding's per-call overhead.

The binding's reg_read/reg_write cost 4-7 us each; the C entry points called
directly through ctypes with preallocated buffers cost about a quarter of that,
and batches amortise the crossing further. Every exit pays for these, so they
are the one place register traffic goes through.
"""

from __future__ import annotations

import ctypes
from typing import Sequence

from unicorn import Uc
from unicorn.unicorn_py3.unicorn import uclib
from unicorn import x86_const as X

GPRS = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX,
        X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI)
GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


class Regs:
    def __init__(self, uc: Uc) -> None:
        self._h = uc._uch
        self._one = ctypes.c_uint64()
        self._one_ref = ctypes.byref(self._one)
        self._batches: dict[tuple[int, ...], tuple] = {}

    def read(self, reg: int) -> int:
        self._one.value = 0
        if uclib.uc_reg_read(self._h, reg, self._one_ref):
            raise RuntimeError(f"uc_reg_read({reg}) failed")
        return self._one.value & 0xFFFFFFFF

    def write(self, reg: int, value: int) -> None:
        self._one.value = value & 0xFFFFFFFF
        err = uclib.uc_reg_write(self._h, reg, self._one_ref)
        if err:
            raise RuntimeError(f"uc_reg_write({reg}, {value:#x}) failed: error {err}")

    def _batch(self, regs: tuple[int, ...]) -> tuple:
        b = self._batches.get(regs)
        if b is None:
            n = len(regs)
            vals = (ctypes.c_uint64 * n)()
            ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(vals) + 8 * i for i in range(n)))
            b = ((ctypes.c_int * n)(*regs), vals, ptrs, n)
            self._batches[regs] = b
        return b

    def read_many(self, regs: tuple[int, ...]) -> list[int]:
        ids, vals, ptrs, n = self._batch(regs)
        ctypes.memset(vals, 0, 8 * n)
        if uclib.uc_reg_read_batch(self._h, ids, ptrs, n):
            raise RuntimeError("uc_reg_read_batch failed")
        return [v & 0xFFFFFFFF for v in vals]

    def write_many(self, regs: tuple[int, ...], values: Sequence[int]) -> None:
        ids, vals, ptrs, n = self._batch(regs)
        for i, v in enumerate(values):
            vals[i] = v & 0xFFFFFFFF
        if uclib.uc_reg_write_batch(self._h, ids, ptrs, n):
            raise RuntimeError("uc_reg_write_batch failed")
