"""Disassembly for profiles: guest instructions and TC code, with capstone."""

from __future__ import annotations

from functools import lru_cache

import capstone

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def guest_text(raw: bytes, addr: int) -> tuple[str, str]:
    """(mnemonic, operands) of one guest instruction."""
    return _one(bytes(raw), addr)


@lru_cache(maxsize=65536)
def _one(raw: bytes, addr: int) -> tuple[str, str]:
    for _, _, mnemonic, op_str in _md.disasm_lite(raw, addr, 1):
        return mnemonic, op_str
    return "(bad)", raw.hex()


def tc_insns(code: bytes, base: int, start: int, end: int) -> list[tuple[int, int, str, str]]:
    """(address, size, mnemonic, operands) of the TC instructions in [start, end)
    of a CCF whose code starts at `base`; undecodable bytes become `.byte`."""
    out = []
    off, stop = start - base, end - base
    while off < stop:
        for addr, size, mnemonic, op_str in _md.disasm_lite(code[off:stop], base + off):
            out.append((addr, size, mnemonic, op_str))
            off += size
        if off < stop:                 # capstone stops at bytes it cannot decode
            out.append((base + off, 1, ".byte", f"{code[off]:#04x}"))
            off += 1
    return out
