"""What the guest could observe at the end of a case, and how two such states compare.

Both sides are reduced to the same `State`: how the run ended (the end
address, a fault with its vector, error code, EIP and CR2, a `hlt`, the next
TU's PC, a device exit), the general registers, EFLAGS (with the flags the
last writer left undefined masked), the segment selectors, the control,
debug and descriptor-table registers the guest can read, the SYSENTER MSRs,
the x87/MMX/SSE register file, and all of guest RAM. For a fault the BT side
is read at the guest's handler, from the frame it pushed; the reference side
is read in unicorn's INTR hook, and the same frame is written into its RAM
image so that the stack contents compare byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field


RF = 0x10000
SEG_NAMES = ("cs", "ds", "es", "fs", "gs", "ss")
GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


@dataclass
class State:
    side: str
    end: str = "error"                 # end | fault | halt | next | exit | error
    where: int | None = None           # end address, fault EIP, hlt address, next PC
    vector: int | None = None
    error_code: int | None = None
    status: int | None = None          # device exit status
    detail: str = ""
    gprs: tuple[int, ...] = ()
    eflags: int = 0
    segs: tuple[int, ...] = ()
    crs: tuple[int, ...] = ()          # cr0, cr2, cr3, cr4
    drs: tuple[int, ...] = ()          # dr0-dr3, dr6, dr7
    tables: tuple[int, ...] = ()       # gdtr base/limit, idtr base/limit, ldtr, tr
    msrs: tuple[int, ...] = ()         # SYSENTER_CS/ESP/EIP
    fpu: tuple = ()                    # fpcw, fpsw, fptag, st0-st7
    sse: tuple = ()                    # mxcsr, xmm0-xmm7
    mem: bytes = b""
    frame: tuple[int, int] | None = None   # (address, size) of the exception frame in mem
    trace: list[int] = field(default_factory=list)   # reference only: executed instruction addresses


@dataclass
class Difference:
    field: str
    ref: str
    bt: str


def _hex(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:#010x}" if v > 0xFFFF else f"{v:#x}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_hex(x) for x in v) + ")"
    return str(v)


def _flags_str(v: int) -> str:
    names = [(0x800, "OF"), (0x400, "DF"), (0x200, "IF"), (0x100, "TF"), (0x80, "SF"), (0x40, "ZF"),
             (0x10, "AF"), (0x4, "PF"), (0x1, "CF"), (0x40000, "AC"), (0x200000, "ID"), (0x4000, "NT")]
    s = " ".join(n for bit, n in names if v & bit)
    iopl = (v >> 12) & 3
    return f"{v:#010x} [{s}{' IOPL=%d' % iopl if iopl else ''}]"


def rows(s: State, undef: int) -> list[tuple[str, object, str]]:
    """(name, comparable value, display) for every compared field but memory."""
    out: list[tuple[str, object, str]] = []
    end = (s.end, s.where, s.vector, s.error_code, s.status)
    disp = s.end
    if s.where is not None:
        disp += f" at {s.where:#x}"
    if s.vector is not None:
        disp += f" vector {s.vector}"
    if s.error_code is not None:
        disp += f" error {s.error_code:#x}"
    if s.status is not None:
        disp += f" status {s.status}"
    if s.end == "error":
        disp += f": {s.detail}"
        end = (s.end, s.detail)
    out.append(("end", end, disp))
    if s.end == "error":
        return out
    for name, v in zip(GPR_NAMES, s.gprs):
        out.append((name, v, f"{v:#010x}"))
    mask = ~(undef | RF) & 0xFFFFFFFF
    out.append(("eflags", s.eflags & mask, _flags_str(s.eflags)))
    for name, v in zip(SEG_NAMES, s.segs):
        out.append((name, v, f"{v:#06x}"))
    for name, v in zip(("cr0", "cr2", "cr3", "cr4"), s.crs):
        out.append((name, v, f"{v:#010x}"))
    for name, v in zip(("dr0", "dr1", "dr2", "dr3", "dr6", "dr7"), s.drs):
        out.append((name, v, f"{v:#010x}"))
    for name, v in zip(("gdtr.base", "gdtr.limit", "idtr.base", "idtr.limit", "ldtr", "tr"), s.tables):
        out.append((name, v, _hex(v)))
    for name, v in zip(("sysenter_cs", "sysenter_esp", "sysenter_eip"), s.msrs):
        out.append((name, v, _hex(v)))
    for name, v in zip(("fpcw", "fpsw", "fptag") + tuple(f"st{i}" for i in range(8)), s.fpu):
        out.append((name, v, _hex(v)))
    for name, v in zip(("mxcsr",) + tuple(f"xmm{i}" for i in range(8)), s.sse):
        out.append((name, v, f"{v:#x}"))
    return out


def _masked_mem(s: State, undef: int) -> bytes:
    """RAM with the undefined flags of a pushed EFLAGS image cleared."""
    if s.frame is None:
        return s.mem
    addr, size = s.frame
    slot = addr + size - 4            # EFLAGS is the highest word of the frame
    if not 0 <= slot <= len(s.mem) - 4:
        return s.mem
    v = struct.unpack_from("<I", s.mem, slot)[0] & ~(undef | RF)
    return s.mem[:slot] + struct.pack("<I", v) + s.mem[slot + 4:]


def mem_ranges(a: bytes, b: bytes, limit: int = 8) -> list[tuple[int, int]]:
    """[lo, hi) ranges where a and b differ (at most `limit`, merged across 16-byte gaps)."""
    out: list[tuple[int, int]] = []
    n = min(len(a), len(b))
    step = 4096
    for base in range(0, n, step):
        if a[base:base + step] == b[base:base + step]:
            continue
        i = base
        end = min(base + step, n)
        while i < end:
            if a[i] != b[i]:
                j = i
                while j < end and (a[j] != b[j] or a[j:j + 16] != b[j:j + 16]):
                    j += 1
                if out and i - out[-1][1] <= 16:
                    out[-1] = (out[-1][0], j)
                else:
                    out.append((i, j))
                if len(out) > limit:
                    return out[:limit]
                i = j
            else:
                i += 1
    if len(a) != len(b):
        out.append((n, max(len(a), len(b))))
    return out


def compare(ref: State, bt: State, undef: int) -> list[Difference]:
    diffs = []
    rr = rows(ref, undef)
    br = dict((n, (v, d)) for n, v, d in rows(bt, undef))
    for name, v, d in rr:
        bv, bd = br.get(name, (None, "-"))
        if v != bv:
            diffs.append(Difference(name, d, bd))
    if ref.end != "error" and bt.end != "error":
        ma, mb = _masked_mem(ref, undef), _masked_mem(bt, undef)
        if ma != mb:
            for lo, hi in mem_ranges(ma, mb):
                hi = min(hi, lo + 32)
                diffs.append(Difference(f"mem[{lo:#x}:{hi:#x}]", ma[lo:hi].hex(), mb[lo:hi].hex()))
    return diffs


def side_by_side(ref: State, bt: State, undef: int, diffs: list[Difference]) -> list[str]:
    """Both final states as a two-column table; differing rows are marked."""
    differing = {d.field for d in diffs}
    rr = rows(ref, undef)
    br = {n: d for n, _, d in rows(bt, undef)}
    w = max([len(d) for _, _, d in rr] + [9])
    w = min(w, 60)
    lines = [f"{'':14} {'reference (unicorn)':<{w}}  bt_vmm", f"{'':14} {'-' * w}  {'-' * 20}"]
    for name, _, d in rr:
        mark = "  <<" if name in differing else ""
        lines.append(f"{name:>14} {d:<{w}}  {br.get(name, '-')}{mark}")
    for d in diffs:
        if d.field.startswith("mem["):
            lines.append(f"{d.field:>14} ref {d.ref}")
            lines.append(f"{'':>14} bt  {d.bt}  <<")
    if undef:
        lines.append(f"{'':14} (undefined flags masked: {undef:#x}; RF ignored)")
    return lines
