"""The i386 registers as gdb numbers and lays them out, and the target
description (`target.xml`) that tells gdb so.

gdb's i386 architecture wants the feature "org.gnu.gdb.i386.core" (general
registers, EIP, EFLAGS, the six segment registers and the x87 unit) and
takes "org.gnu.gdb.i386.sse" (XMM0-7, MXCSR). Register numbers run through
both features in order; a `g` packet is every register, little-endian, in
that order. The values are the guest's: its EIP and EFLAGS (virtual IF and
IOPL included), its CS and GS, its x87 stack in stack order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str
    feature: str
    group: str | None = None


_CORE = "org.gnu.gdb.i386.core"
_SSE = "org.gnu.gdb.i386.sse"
GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")

REGISTERS: tuple[Reg, ...] = (
    *(Reg(n, 32, "data_ptr" if n in ("esp", "ebp") else "int32", _CORE) for n in GPRS),
    Reg("eip", 32, "code_ptr", _CORE),
    Reg("eflags", 32, "i386_eflags", _CORE),
    *(Reg(n, 32, "int32", _CORE) for n in SEGMENTS),
    *(Reg(f"st{i}", 80, "i387_ext", _CORE) for i in range(8)),
    *(Reg(n, 32, "int", _CORE, "float") for n in X87_CONTROL),
    *(Reg(f"xmm{i}", 128, "uint128", _SSE, "vector") for i in range(8)),
    Reg("mxcsr", 32, "int", _SSE, "vector"),
)
BY_NAME = {r.name: i for i, r in enumerate(REGISTERS)}

_EFLAGS_BITS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
                (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"),
                (19, "VIF"), (20, "VIP"), (21, "ID"))


def target_xml() -> str:
    """The target description gdb reads with qXfer:features:read."""
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
             "<target>", "  <architecture>i386</architecture>"]
    for feature in (_CORE, _SSE):
        lines.append(f'  <feature name="{feature}">')
        if feature == _CORE:
            lines.append('    <flags id="i386_eflags" size="4">')
            lines += [f'      <field name="{n}" start="{b}" end="{b}"/>' for b, n in _EFLAGS_BITS]
            lines.append("    </flags>")
        for regnum, r in enumerate(REGISTERS):
            if r.feature == feature:
                group = f' group="{r.group}"' if r.group else ""
                lines.append(f'    <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" '
                             f'regnum="{regnum}"{group}/>')
        lines.append("  </feature>")
    lines.append("</target>")
    return "\n".join(lines) + "\n"


def values(target) -> list[int | tuple[int, int]]:
    """Every register's value, in gdb's order (x87 registers as (mantissa, sign+exponent))."""
    regs = target.registers()
    fpu = target.fpu()
    out: list[int | tuple[int, int]] = [regs[n] for n in GPRS + ("eip", "eflags") + SEGMENTS]
    out += fpu["st"]
    out += [fpu[n] for n in X87_CONTROL]
    out += fpu["xmm"]
    out.append(fpu["mxcsr"])
    return out


def encode(reg: Reg, value: int | tuple[int, int]) -> bytes:
    if reg.bits == 80:
        mantissa, exponent = value
        return struct.pack("<QH", mantissa, exponent)
    return int(value).to_bytes(reg.bits // 8, "little")


def decode(reg: Reg, raw: bytes) -> int | tuple[int, int]:
    if reg.bits == 80:
        return struct.unpack("<QH", raw)
    return int.from_bytes(raw, "little")


def encode_all(target) -> bytes:
    return b"".join(encode(r, v) for r, v in zip(REGISTERS, values(target)))
