"""One differential case end to end: build RAM, run the reference, run BT, compare.

Flags the SDM leaves undefined are masked from the comparison (flags.py). A run
can also *consume* one: branch on it, push it, trap on it (into). Unicorn's
value for an undefined flag depends on where its translation blocks start (its
lazy flags are specialised per block), and the TC moves block boundaries by
construction, so from that instruction on the two runs may rightly differ in
anything derived from the flag. Such a case is compared in full first; when
the states differ, it is compared again up to the first consuming
instruction, which both sides then meet as an `int3`: everything the code did
before it must still match exactly.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field, replace

from bt_vmm.selfcheck import flags, layout as L
from bt_vmm.selfcheck.btside import new_machine, run_bt
from bt_vmm.selfcheck.case import Case, CaseSpec
from bt_vmm.selfcheck.generate import SCRATCH_PORT, UNCLAIMED_PORTS, AssemblyError, realize
from bt_vmm.selfcheck.observe import Difference, State, compare, side_by_side
from bt_vmm.selfcheck.reference import run_reference

INT3 = b"\xcc"


@dataclass
class Outcome:
    case: Case
    ref: State
    bt: State
    undef: int
    diffs: list[Difference] = field(default_factory=list)
    consumer: int | None = None      # address of an instruction that consumed an undefined flag
    cut: bool = False                # the case was compared up to the consumer only

    @property
    def inconclusive(self) -> str | None:
        """Why the two runs cannot be compared, when both stopped at something
        outside the harness's model: memory outside RAM (the reference has none
        mapped, bt_vmm stops), or an excluded feature (EFLAGS.TF single-step)."""
        r, b, c = self.ref, self.bt, self.case
        if c.tu_insns is None:
            return None      # generated cases never leave the model: everything counts
        # Real code run from a random state can do what generated code never does.
        if r.end == "error" and b.end == "error" and any(
                k in b.detail for k in ("nonexistent physical memory", "monitor region")):
            return "memory outside RAM"
        if r.end == "error" and "UNMAPPED" in r.detail:
            return "memory the reference does not map (device MMIO)"
        if b.end == "error" and any(k in b.detail for k in (
                "not virtualized", "which this CPU does not report", "single-step trap")):
            return "a feature bt_vmm does not virtualize yet (README)"
        lo = c.code_addr
        if r.mem and r.mem[lo:lo + len(c.code)] != c.code:
            return "the TU stored into its own bytes (prefetch semantics differ by design)"
        if r.crs and b.crs and r.crs[3] != b.crs[3] and not (r.crs[3] ^ b.crs[3]) & 0x7FF:
            return "CR4 bits beyond the virtual CPU's (unicorn drops some of them, bt_vmm keeps them)"
        if r.end == "fault" and "triple fault" in b.detail:
            return "a fault whose delivery faults (e.g. paging enabled on garbage tables): the reference does not deliver"
        if r.end == "fault" and (r.tables[0] not in (L.GDT_A, L.GDT_B) or r.tables[2] not in (L.IDT_A, L.IDT_B)
                                 or r.tables[1] != L.GDT_LIMIT or r.tables[3] != 0x7FF):
            return "a fault delivered through tables the TU loaded (the reference does not deliver)"
        if b.end == "fault" and b.vector == 13 and b.where is not None:
            off = b.where - c.code_addr
            if c.code[off:off + 2] in (b"\x0f\x30", b"\x0f\x32"):
                return "rdmsr/wrmsr of an MSR unicorn does not model (no #GP there)"
        if b"\x0f\x31" in c.code or b"\x0f\x01\xf9" in c.code:
            return "rdtsc (time-dependent)"
        return None

    @property
    def diverged(self) -> bool:
        return bool(self.diffs) and self.inconclusive is None

    @property
    def end(self) -> str:
        """How the case ended (for the summary): end / fault / halt / next / exit."""
        return self.ref.end

    def report(self) -> str:
        """The case as assembly with both final states side by side."""
        c = self.case
        lines = [f"category {c.category}" + (f" ({c.label})" if c.label else "")
                 + f", code at {c.code_addr:#x}, profile {c.profile}"]
        if self.cut:
            lines.append(f"compared up to {self.consumer:#x}, the first instruction that consumed a flag "
                         f"the SDM leaves undefined (an int3 there now)")
        i = c.init
        lines.append("initial state: " + " ".join(f"{n}={v:#x}" for n, v in zip(
            ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"), i.gprs)))
        lines.append(f"  eflags={i.eflags:#x} cr0={'boot' if i.cr0 is None else hex(i.cr0)} cr4={i.cr4:#x} "
                     f"fpcw={i.fpcw:#x} mxcsr={i.mxcsr:#x} fs={i.fs:#x} gs={i.gs:#x} data_seed={i.data_seed}")
        marks = {}
        if self.ref.end == "fault" and self.ref.where is not None:
            marks[self.ref.where] = f"<- reference: vector {self.ref.vector}"
        if self.bt.end == "fault" and self.bt.where is not None:
            marks[self.bt.where] = (marks.get(self.bt.where, "") + f" <- bt: vector {self.bt.vector}").strip()
        lines.append("code:")
        lines += ["  " + x for x in c.listing(marks)]
        lines.append("final states:")
        lines += ["  " + x for x in side_by_side(self.ref, self.bt, self.undef, self.diffs)]
        return "\n".join(lines)


def ram_for(case: Case) -> bytearray:
    return L.ram_image(case.code_addr, case.code, case.init.data_seed, case.pointers, case.extra) \
        if case.ram_size == L.RAM_SIZE else _big_ram(case)


def _big_ram(case: Case) -> bytearray:
    ram = bytearray(case.ram_size)
    small = L.ram_image(case.code_addr, b"", case.init.data_seed, case.pointers)
    ram[:len(small)] = small
    for addr, blob in case.extra:
        ram[addr:addr + len(blob)] = blob
    ram[case.code_addr:case.code_addr + len(case.code)] = case.code
    return ram


def run_case(case: Case) -> Outcome:
    out = _run_both(case)
    consumer = out.consumer
    if consumer is not None and out.diffs:
        cut = _cut_at(case, consumer)
        if cut is not None:
            out = _run_both(cut)
            out.consumer, out.cut = consumer, True
    return out


def _run_both(case: Case) -> Outcome:
    ram = bytes(ram_for(case))
    m = new_machine(case, SCRATCH_PORT)
    for port in UNCLAIMED_PORTS:
        if m.bus._owners.get(port) is not None:       # the generator relies on it being free
            raise RuntimeError(f"port {port:#x} is claimed by a device: update the generator")
    power_on = m.devices_state()
    ref = run_reference(case, ram, m.bus)
    # Both runs start from the same devices: a reset is not enough (a master
    # reset keeps the UART's divisor latch, which the reference may have written).
    m.bus.reset()
    m.restore_devices(power_on)
    try:
        bt, _ = run_bt(case, ram, m)
    except Exception as e:      # a monitor bug is a divergence too, with its traceback
        bt = State("bt", end="error", detail=f"bt raised {type(e).__name__}: {e}\n{traceback.format_exc()}")
    undef, consumer = flags.analyze([_insn_bytes(ref.mem or ram, a) for a in ref.trace])
    return Outcome(case, ref, bt, undef, compare(ref, bt, undef),
                   ref.trace[consumer] if consumer is not None else None)


def _cut_at(case: Case, addr: int) -> Case | None:
    """The case with an int3 in place of the instruction at `addr` (None when
    that is not in the case's code)."""
    off = addr - case.code_addr
    if not 0 <= off < len(case.code):
        return None
    return replace(case, code=case.code[:off] + INT3 + case.code[off + 1:])


def _insn_bytes(mem: bytes, addr: int) -> bytes:
    return bytes(mem[addr:addr + 15])


def run_spec(spec: CaseSpec) -> Outcome | None:
    """Realize and run a generated case (None when it does not assemble)."""
    try:
        case = realize(spec)
    except AssemblyError:
        return None
    return run_case(case)
