"""A differential case: the code, where it sits, and the state both sides start from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import capstone

from bt_vmm.selfcheck import layout as L

# Engine-option profiles a case runs the BT side with (all must behave alike).
PROFILES = ("plain", "count", "budget", "small-tc")

GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


@dataclass(frozen=True)
class Init:
    """The state both sides start from (the guest's view of it)."""
    gprs: tuple[int, ...] = (0, 0, 0, 0, L.STACK_TOP, 0, 0, 0)
    eflags: int = 0x2              # including the virtualized IF, IOPL and AC
    cr0: int | None = None         # None: the machine's boot value (PE|ET)
    cr4: int = 0x600               # OSFXSR | OSXMMEXCPT: SSE usable
    fpcw: int = 0x37F
    mxcsr: int = 0x1F80
    fs: int = L.SEL_DATA           # initial FS and GS selectors
    gs: int = L.SEL_DATA
    data_seed: int = 0             # initial contents of the data area (0: zeros) and the window's PTEs
    paging: bool = False           # CR0.PG with CR3 at layout.PD


@dataclass(frozen=True)
class ItemSpec:
    """One generated item: a kind and the seed its details are drawn from."""
    kind: str
    seed: int


@dataclass(frozen=True)
class CaseSpec:
    """A generated case, in the form the shrinker works on."""
    category: str
    items: tuple[ItemSpec, ...]
    init: Init = Init()
    code_offset: int = 0           # where the code starts in its page
    profile: str = "plain"

    def with_(self, **kw) -> "CaseSpec":
        return replace(self, **kw)


@dataclass
class Case:
    """A case ready to run: bytes at an address, an initial state, how it ends."""
    category: str
    code: bytes
    code_addr: int
    init: Init
    profile: str = "plain"
    end: int | None = None         # sequence cases: both sides stop before this address
    tu_insns: int | None = None    # TU cases: run exactly one translation unit
    ram_size: int = L.RAM_SIZE
    extra: list[tuple[int, bytes]] = field(default_factory=list)   # more initial RAM (kernels)
    pointers: bool = False         # data area and stack hold pointer-like dwords
    source: list[str] = field(default_factory=list)   # the generator's assembly text
    spec: CaseSpec | None = None
    label: str = ""

    @property
    def entry(self) -> int:
        return self.code_addr

    def listing(self, marks: dict[int, str] | None = None) -> list[str]:
        """The code as assembly, from its bytes (what both sides really ran)."""
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
        out = []
        off = 0
        end = len(self.code)
        while off < end:
            insn = next(md.disasm(self.code[off:off + 15], self.code_addr + off, 1), None)
            addr = self.code_addr + off
            if insn is None:
                out.append(f"{addr:08x}  {self.code[off]:02x}{'':20} (bad)")
                off += 1
                continue
            text = f"{insn.mnemonic} {insn.op_str}".strip()
            note = (marks or {}).get(addr, "")
            if self.end is not None and addr == self.end:
                note = (note + " <- end of case").strip()
            out.append(f"{addr:08x}  {insn.bytes.hex():<20} {text:<44} {note}".rstrip())
            off += insn.size
        return out
