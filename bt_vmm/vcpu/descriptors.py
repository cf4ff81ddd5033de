"""Segment and gate descriptors as the architecture lays them out (SDM vol. 3, 3.4.5 and 6.11)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Access-byte bits
ACC_ACCESSED = 0x01
ACC_RW = 0x02          # readable code / writable data
ACC_DC = 0x04          # conforming code / expand-down data
ACC_CODE = 0x08
ACC_S = 0x10           # code/data (1) vs system (0)
ACC_PRESENT = 0x80

# System descriptor and gate types (S = 0)
GATE_TASK = 0x5
GATE_INT16 = 0x6
GATE_TRAP16 = 0x7
GATE_INT32 = 0xE
GATE_TRAP32 = 0xF


@dataclass(frozen=True)
class Descriptor:
    base: int
    limit: int          # byte granular, after applying G
    access: int         # the access byte (type, S, DPL, P)
    flags: int          # the high nibble: G, D/B, L, AVL

    @property
    def present(self) -> bool:
        return bool(self.access & ACC_PRESENT)

    @property
    def dpl(self) -> int:
        return (self.access >> 5) & 3

    @property
    def is_system(self) -> bool:
        return not self.access & ACC_S

    @property
    def is_code(self) -> bool:
        return bool(self.access & ACC_S and self.access & ACC_CODE)

    @property
    def is_data(self) -> bool:
        return bool(self.access & ACC_S and not self.access & ACC_CODE)

    @property
    def readable(self) -> bool:
        return self.is_data or bool(self.access & ACC_RW)

    @property
    def writable(self) -> bool:
        return self.is_data and bool(self.access & ACC_RW)

    @property
    def conforming(self) -> bool:
        return self.is_code and bool(self.access & ACC_DC)

    @property
    def big(self) -> bool:
        """D/B: 32-bit code or stack."""
        return bool(self.flags & 0x4)

    @classmethod
    def unpack(cls, raw: bytes) -> "Descriptor":
        lo, hi = struct.unpack("<II", raw)
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0x000F0000)
        flags = (hi >> 20) & 0xF
        if flags & 0x8:
            limit = (limit << 12) | 0xFFF
        return cls(base, limit, (hi >> 8) & 0xFF, flags)

    def pack(self) -> bytes:
        limit = self.limit
        flags = self.flags
        if limit > 0xFFFFF:
            flags |= 0x8
        if flags & 0x8:
            limit >>= 12
        lo = (limit & 0xFFFF) | ((self.base & 0xFFFF) << 16)
        hi = (((self.base >> 16) & 0xFF) | (self.access << 8) | (limit & 0xF0000)
              | (flags << 20) | (self.base & 0xFF000000))
        return struct.pack("<II", lo, hi)


FLAT_CODE = Descriptor(0, 0xFFFFFFFF, 0x9B, 0xC)   # present, DPL0, exec/read, accessed, 32-bit
FLAT_DATA = Descriptor(0, 0xFFFFFFFF, 0x93, 0xC)   # present, DPL0, read/write, accessed


@dataclass(frozen=True)
class Gate:
    selector: int
    offset: int
    kind: int       # GATE_* type
    dpl: int
    present: bool

    @classmethod
    def unpack(cls, raw: bytes) -> "Gate":
        lo, hi = struct.unpack("<II", raw)
        offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
        return cls((lo >> 16) & 0xFFFF, offset, (hi >> 8) & 0x1F, (hi >> 13) & 3, bool(hi & 0x8000))
