"""The operations `bt-vmm bench` measures, and the names they go by.

Nanobenchmarks (after Adams & Agesen, ASPLOS 2006) and the bench guest's two
programs run in the bench guest (guests/bench/), each as a tight loop between
marker lines; forkwait and boot run the test OS (guests/testos/).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    id: str            # the bench guest's name for it (and the JSON key)
    label: str         # the table's name for it
    kind: str          # "nano" or "macro"
    guest: str         # "bench" or "testos"
    unit: str          # what one operation is
    user: bool         # runs in ring 3 (baselines unull/uempty) rather than ring 0 (null/empty)
    native: bool       # can run in bare unicorn without a monitor
    description: str


OPS: tuple[Op, ...] = (
    Op("syscall", "syscall", "nano", "bench", "round trip", True, False,
       "null system call from ring 3: int 0x80, the kernel's fast path irets straight back"),
    Op("in", "in", "nano", "bench", "in", False, False,
       "inb from port 0x61 (PIT port B), a device the monitor emulates"),
    Op("tprwr", "tprwr", "nano", "bench", "write", False, False,
       "store to the local APIC task-priority register (MMIO 0xFEE00080): the 32-bit cr8wr"),
    Op("clisti", "cli/sti", "nano", "bench", "pair", False, True,
       "cli; sti (no interrupt pending)"),
    Op("pushfpopf", "pushf/popf", "nano", "bench", "pair", False, True,
       "pushf; popf"),
    Op("callret", "call/ret", "nano", "bench", "pair", False, True,
       "near call to a function that only returns"),
    Op("pgfault", "pgfault", "nano", "bench", "fault", False, False,
       "read of a not-present page: a true #PF, handled by the guest (which skips the read)"),
    Op("divzero", "divzero", "nano", "bench", "fault", False, False,
       "div by zero: a #DE, handled by the guest (which skips the div)"),
    Op("ptemod", "ptemod", "nano", "bench", "store", False, False,
       "store to a PTE in a live page table (traced by a shadow-paging monitor)"),
    Op("cr3", "cr3", "nano", "bench", "switch", False, False,
       "mov to cr3: switch between two page directories mapping the same kernel"),
    Op("compute", "compute", "macro", "bench", "iteration", True, True,
       "compute-bound ring-3 program: one 16-word mix step (mul, xor, rotate, loads, stores)"),
    Op("sysheavy", "sysheavy", "macro", "bench", "iteration", True, False,
       "syscall-heavy ring-3 program: fill 64 bytes, then 3 system calls (copy in, copy out, getpid)"),
    Op("forkwait", "forkwait", "macro", "testos", "child", True, False,
       "test OS shell `forkwait N`: fork a child that exits, wait for it (copy-on-write fork)"),
    Op("boot", "boot", "macro", "testos", "boot", False, False,
       "test OS from the multiboot entry to its shell prompt (self-tests included, forkwait=20)"),
)

BY_ID: dict[str, Op] = {op.id: op for op in OPS}

#: The bench guest's baseline loops: (no iterations, empty loop) for ring 0 and ring 3.
BASELINES = {False: ("null", "empty"), True: ("unull", "uempty")}
BASELINE_IDS = ("null", "empty", "unull", "uempty")

#: What the bench guest's loop returns, when the harness knows it in advance.
RETURNS_N = {"syscall", "in", "tprwr", "clisti", "pushfpopf", "callret", "pgfault", "divzero", "cr3"}
PTEMOD_RESULT = 0x41   # ptemod ends by reading frame A's first byte, 'A'


def _key(name: str) -> str:
    return name.strip().lower().replace("/", "").replace("-", "").replace("_", "")


def resolve(names: str | list[str] | None) -> list[Op]:
    """Operations by id or label (`cli/sti` or `clisti`), in catalog order.
    Raises ValueError naming an unknown one."""
    if names is None:
        return list(OPS)
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    keys = {_key(op.id): op for op in OPS} | {_key(op.label): op for op in OPS}
    wanted = set()
    for name in names:
        if not name.strip():
            continue
        op = keys.get(_key(name))
        if op is None:
            known = ", ".join(op.label for op in OPS)
            raise ValueError(f"unknown operation '{name.strip()}' (known: {known})")
        wanted.add(op.id)
    if not wanted:
        raise ValueError("no operation named")
    return [op for op in OPS if op.id in wanted]
