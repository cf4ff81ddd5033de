"""Where things live in the guest-physical and linear address spaces.

The monitor region sits at the top of the linear address space, as in the
original VMware Workstation: guest kernels almost never use the last 4 MiB, and
one page-directory entry covers it in every shadow address space.
"""

MON_BASE = 0xFFC00000          # linear (and unicorn-physical) base of the monitor region
MON_SIZE = 0x00400000          # 4 MiB: one PDE
MIN_GUEST_MEM = 1 << 20        # 1 MiB: below this no multiboot kernel fits
MAX_GUEST_MEM = 0xC0000000     # 3 GiB: keeps RAM clear of the PCI hole and the monitor
PAGE_SIZE = 0x1000
OPEN_BUS = 0xCFFFF000           # unicorn-physical page behind unbacked guest-physical addresses (pc.py)

# The guest-physical memory plan every loader follows, and the BIOS-style
# memory map (Multiboot mmap, Linux e820) that describes it to the guest.
LOW_FLOOR = 0x1000             # the real-mode IVT/BDA page: never loaded
LOW_TOP = 0x9FC00              # 639 KiB: conventional memory ends at the EBDA
HOLE_LO, HOLE_HI = 0xA0000, 0x100000     # VGA memory, option and system ROMs
BIOS_AREA = 0xE0000            # firmware tables (machine/firmware.py) up to 1 MiB
HIGH_MEM = 0x100000
MAP_USABLE = 1                 # the type codes Multiboot's mmap and e820 share
MAP_RESERVED = 2


def memory_map(mem_size: int) -> list[tuple[int, int, int]]:
    """(base, length, type) of every range the guest may or may not use."""
    entries = [
        (0, LOW_TOP, MAP_USABLE),
        (LOW_TOP, HOLE_LO - LOW_TOP, MAP_RESERVED),
        (BIOS_AREA, HIGH_MEM - BIOS_AREA, MAP_RESERVED),
    ]
    if mem_size > HIGH_MEM:
        entries.append((HIGH_MEM, mem_size - HIGH_MEM, MAP_USABLE))
    return entries
