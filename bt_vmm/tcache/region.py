"""Layout of the monitor region: the monitor's data, tables and the translation cache.

The region is MON_SIZE bytes of host memory that unicorn sees at physical
MON_BASE and that every shadow address space maps at one 4 MiB-aligned
linear address, the
region's *placement* (MON_BASE to start with, the top of the address space as
in the original VMware Workstation). When the guest wants that linear range
for itself, the monitor moves the region to a range the guest does not use
(Placement, and engines/bt.py `_move_monitor`).
Its PDE is a *user* page while guest kernel code runs from the TC, and CR4.SMAP
is on with EFLAGS.AC clear: any guest instruction that touches the region
faults (SDM vol. 3, 4.6.1 "Determination of Access Rights"), while the TC's own
accesses are bracketed by `stac`/`clac`. Guest RAM is mapped supervisor-only.
Unicorn does not check segment limits, so VMware's segment truncation is not
available here; SMAP gives the same guarantee with paging alone.

The TC addresses monitor data through GS, whose base is the placement: the guest's
GS is virtual (kept by the vCPU) and swapped in only around instructions that
use it.
"""

from __future__ import annotations

from bt_vmm.machine.layout import MON_BASE, MON_PDES, MON_SIZE

# --- the data page (offsets from GS base) -----------------------------------
S_EAX = 0x000        # scratch: guest EAX while a rewrite sequence borrows it
S_ECX = 0x004        # scratch: guest ECX while a lookup borrows it
S_TARGET = 0x008     # guest PC being looked up (ret / indirect branch)
S_FLAGS = 0x00C      # lahf/seto save of the arithmetic flags
VIF = 0x010          # virtual EFLAGS.IF: 0 or 0x200
VIOPL = 0x014        # virtual EFLAGS.IOPL bits: 0 .. 0x3000
VAC = 0x018          # virtual EFLAGS.AC: 0 or 0x40000 (real AC stays clear)
PENDING = 0x01C      # nonzero when an external interrupt waits for IF=1
VCS = 0x020          # guest CS selector (what `mov r, cs` / `push cs` see)
VGS = 0x024          # guest GS selector (loaded into GS around gs: accesses)
BUDGET = 0x028       # --max-insns: guest instructions left (signed)
MON_GS_SEL = 0x02C   # the monitor's GS selector, reloaded after a GS swap
N_LOOKUPS = 0x030    # u64: indirect lookups performed inside the TC
DATA_SIZE = 0x1000

# --- tables ------------------------------------------------------------------
LTABLE = 0x001000            # guest PC & 0xFFFF -> TC address (4 bytes each)
LTABLE_ENTRIES = 0x10000
SHADOW_GDT = 0x041000        # 8192 descriptors: guest slots + monitor slots at the top
SHADOW_GDT_SIZE = 0x10000
COUNTERS = 0x060000          # u64 execution counter per CCF (up to 0x160000)
COUNTER_SLOTS = 0x20000      # CCFs per TC generation: a Linux boot translates ~20,000 TUs
PREEMPT_BOUNDS = 0x1FF000    # page of its own: the bounds the TC's `bound` preemption checks test;
                             # the one page the kernel view maps supervisor and read-only, so the
                             # TC tests it with no AC toggling
TC_BASE = 0x200000           # translated code, to the end of the region
TC_END = MON_SIZE
# The smallest TC `--tc-size` accepts: the shared lookup code plus one CCF of
# the largest kind (64 rewritten popfd come to about 8.6 KiB), with room to spare.
TC_MIN_SIZE = 0x4000

# Monitor descriptors occupy the last GDT slots; guest selectors up to index
# 8189 are available to the guest.
MON_CS_INDEX = 8190
MON_GS_INDEX = 8191
MON_CS_SEL = MON_CS_INDEX << 3
MON_GS_SEL_VALUE = MON_GS_INDEX << 3
FIRST_MONITOR_GDT_INDEX = MON_CS_INDEX


def phys(offset: int) -> int:
    """Unicorn-physical address of a monitor-region offset (for mem_read and
    mem_write, which take physical addresses): it never moves."""
    return MON_BASE + offset


class Placement:
    """Where the monitor region sits in the linear address space right now.
    One per machine: the shadow MMU maps it there, the TC is translated for
    it, and the monitor's GS and GDTR bases follow it."""

    def __init__(self, base: int = MON_BASE) -> None:
        self.base = base

    def lin(self, offset: int) -> int:
        """Linear address of a monitor-region offset."""
        return self.base + offset

    @property
    def pde(self) -> int:
        """The first guest page-directory index the region occupies."""
        return self.base >> 22

    @property
    def pdes(self) -> range:
        """The guest page-directory indices the region occupies."""
        return range(self.base >> 22, (self.base >> 22) + MON_PDES)

    def guest_ranges(self) -> list[tuple[int, int]]:
        """The linear ranges [begin, end] outside the region (for hooks)."""
        return [(lo, hi) for lo, hi in ((0, self.base - 1), (self.base + MON_SIZE, 0xFFFFFFFF))
                if lo <= hi]
