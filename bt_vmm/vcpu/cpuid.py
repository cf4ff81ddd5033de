"""The CPU the guest sees: a plain i686-class processor chosen by the monitor.

CPUID is a sensitive instruction: unicorn's own answer describes the host-side
model the monitor needs (SMAP, for the monitor region), not the guest's CPU. The
guest gets a stable answer of its own, with no hypervisor bit: bt_vmm aims to be
invisible. Features are limited to what the monitor virtualizes.
"""

from __future__ import annotations

import struct

# CPUID.1:EDX feature bits (SDM vol. 2A, Table 3-11)
FPU, VME, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC = (1 << i for i in range(10))
SEP, MTRR, PGE, MCA, CMOV, PAT = 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16
CLFSH, MMX, FXSR, SSE, SSE2 = 1 << 19, 1 << 23, 1 << 24, 1 << 25, 1 << 26

EDX_FEATURES = FPU | DE | PSE | TSC | MSR | CX8 | APIC | SEP | PGE | CMOV | MMX | FXSR | SSE | SSE2
ECX_FEATURES = 1 << 0        # SSE3
VENDOR = b"GenuineIntel"
BRAND = b"bt_vmm virtual i686 CPU".ljust(48, b"\0")
SIGNATURE_TUPLE = (6, 13, 8)            # family, model, stepping: a Pentium M class part
SIGNATURE = (SIGNATURE_TUPLE[0] << 8) | (SIGNATURE_TUPLE[1] << 4) | SIGNATURE_TUPLE[2]
MAX_BASIC = 1
MAX_EXTENDED = 0x80000004


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """(EAX, EBX, ECX, EDX) for a leaf."""
    if leaf == 0:
        b, d, c = struct.unpack("<III", VENDOR)
        return MAX_BASIC, b, c, d
    if leaf == 1:
        return SIGNATURE, 0x00010800, ECX_FEATURES, EDX_FEATURES   # 1 logical CPU, CLFLUSH line 64
    if leaf == 0x80000000:
        return MAX_EXTENDED, 0, 0, 0
    if 0x80000002 <= leaf <= 0x80000004:
        i = (leaf - 0x80000002) * 16
        return struct.unpack("<IIII", BRAND[i:i + 16])
    if leaf > MAX_EXTENDED or MAX_BASIC < leaf < 0x80000000:
        # Intel: out-of-range leaves return the highest basic leaf's data.
        return cpuid(MAX_BASIC)
    return 0, 0, 0, 0
