"""The shadow address space for a guest running with paging off.

Guest RAM is identity-mapped supervisor-only (4 MiB pages where RAM covers the
whole page, 4 KiB pages for a partial tail); linear addresses above RAM stay
unmapped. The monitor region's single PDE is a user page: with CR4.SMAP and
EFLAGS.AC clear, guest code running from the TC at CPL0 cannot touch it.
"""

from __future__ import annotations

import struct

from unicorn import Uc

from bt_vmm.machine.layout import MON_BASE, PAGE_SIZE
from bt_vmm.tcache import region as R

P, RW, US, PS = 0x1, 0x2, 0x4, 0x80
BIG = 0x400000


def build_flat_shadow(uc: Uc, ram_size: int) -> int:
    """Write the identity shadow into the monitor region; returns the CR3 value."""
    pd = [0] * 1024
    pd_addr = R.lin(R.SHADOW_PT)
    tail_pt = pd_addr + PAGE_SIZE
    full = ram_size // BIG
    for i in range(full):
        pd[i] = (i * BIG) | P | RW | PS
    if ram_size % BIG:
        pages = (ram_size % BIG) // PAGE_SIZE
        base = full * BIG
        pt = [(base + j * PAGE_SIZE) | P | RW for j in range(pages)] + [0] * (1024 - pages)
        uc.mem_write(tail_pt, struct.pack("<1024I", *pt))
        pd[full] = tail_pt | P | RW
    pd[MON_BASE >> 22] = MON_BASE | P | RW | US | PS
    uc.mem_write(pd_addr, struct.pack("<1024I", *pd))
    return pd_addr
