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
