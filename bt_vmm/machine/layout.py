"""Where things live in the guest-physical and linear address spaces.

The monitor region starts at the top of the linear address space, as in the
original VMware Workstation, and moves when the guest wants that range
(tcache/region.py). It covers whole page-directory entries (MON_PDES of 4 MiB).
"""

MON_PDES = 2                   # guest page-directory entries the monitor region takes
MON_SIZE = MON_PDES << 22      # 8 MiB: data, tables and a 7 MiB TC (Linux's boot needs ~4 MiB)
MON_BASE = (1 << 32) - MON_SIZE   # unicorn-physical base, and the linear placement to start with
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
