"""shadow_mmu: the page tables unicorn really walks, and traces on guest pages.

Unicorn always runs with paging on, on page tables the monitor builds in the
monitor region. While the guest has paging off, the shadow is an identity map
of guest RAM; the guest's own page tables (and hidden/true fault handling) come
with guest paging support.
"""

from bt_vmm.shadow_mmu.flat import build_flat_shadow
from bt_vmm.shadow_mmu.traces import CodeTraces

__all__ = ["build_flat_shadow", "CodeTraces"]
