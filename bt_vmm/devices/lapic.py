"""The local APIC of a uniprocessor P6-family CPU (xAPIC, version 0x14), after SDM vol. 3 ch. 10.

The register page sits at 0xFEE00000. Every register is 32 bits wide at the
start of a 16-byte slot; the other 12 bytes of a slot read as zero and ignore
writes. The CPU core is not here: the machine asks `has_interrupt()` when the
guest can take an interrupt, calls `acknowledge()` for the vector (the INTA
cycle), and delivers it. Interrupt sources call `accept()` (the IOAPIC, the
timer, self-IPIs); `on_eoi` tells the IOAPIC when a level-triggered vector is
done so it can clear Remote IRR.

This is the only APIC on the bus, so IPIs either target this APIC (self, all
including self, or a destination that matches it) and are delivered locally,
or target nobody and are counted. INIT, SIPI, NMI and SMI IPIs are counted and
dropped: there is no second processor to start.

The timer counts down at bus_hz / divider from a host clock: the current count
is computed when read, and expiries are raised by `tick(now)`, which the
machine calls once `next_deadline()` has passed. TSC-deadline mode is not
offered (CPUID does not advertise it); a guest selecting it has a stopped timer.

Global disable (IA32_APIC_BASE bit 11 clear) makes the APIC vanish: nothing is
delivered through it, the PIC reaches the CPU directly, and enabling it again
brings it back in its power-up state (SDM 10.4.3). Software disable (SVR bit 8
clear) keeps IRR/ISR but delivers nothing and forces every LVT entry masked.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

from bt_vmm.devices.state import DeviceState

BASE = 0xFEE00000  # the default physical address of the register page
PAGE_SIZE = 0x1000  # the APIC decodes one 4 KiB page

# --- Register offsets within the page (SDM table 10-1). ---
ID = 0x020  # local APIC ID, bits 24-31
VERSION = 0x030  # read only: version and max LVT entry
TPR = 0x080  # task priority
APR = 0x090  # read only: arbitration priority (meaningless with one CPU: 0)
PPR = 0x0A0  # read only: processor priority, from TPR and ISR
EOI = 0x0B0  # write only: end of interrupt
RRD = 0x0C0  # read only: remote read (not supported on xAPIC: 0)
LDR = 0x0D0  # logical destination, bits 24-31
DFR = 0x0E0  # destination format: flat (0xF) or cluster (0x0) in bits 28-31
SVR = 0x0F0  # spurious interrupt vector and software enable
ISR_BASE = 0x100  # read only: in-service register, 8 x 32 bits up to 0x170
TMR_BASE = 0x180  # read only: trigger mode register, 8 x 32 bits up to 0x1F0
IRR_BASE = 0x200  # read only: interrupt request register, 8 x 32 bits up to 0x270
ESR = 0x280  # error status: a write latches the errors seen since the last write
LVT_CMCI = 0x2F0  # LVT corrected machine-check interrupt
ICR_LOW = 0x300  # interrupt command, low half: a write sends the IPI
ICR_HIGH = 0x310  # interrupt command, high half: destination in bits 24-31
LVT_TIMER = 0x320  # LVT timer
LVT_THERMAL = 0x330  # LVT thermal sensor
LVT_PERF = 0x340  # LVT performance monitoring counters
LVT_LINT0 = 0x350  # LVT LINT0 pin (the PIC's INTR on a PC)
LVT_LINT1 = 0x360  # LVT LINT1 pin (NMI on a PC)
LVT_ERROR = 0x370  # LVT error
TIMER_INITIAL = 0x380  # timer initial count: a write (re)starts the timer
TIMER_CURRENT = 0x390  # read only: timer current count
TIMER_DIVIDE = 0x3E0  # timer divide configuration
REGISTER_SPAN = 8 * 0x10  # ISR, TMR and IRR are eight 16-byte slots each

# --- VERSION. ---
APIC_VERSION = 0x14  # an integrated (P6 family) xAPIC
MAX_LVT = 5  # LVT entries minus one: timer, thermal, perf, LINT0, LINT1, error
VERSION_VALUE = MAX_LVT << 16 | APIC_VERSION  # 0x00050014; bit 24 clear: no EOI suppression

# --- ID, LDR, DFR. ---
ID_SHIFT = 24  # the APIC ID is bits 24-31
ID_MASK = 0xFF000000  # writable bits of ID and LDR
DFR_MODEL_MASK = 0xF0000000  # writable bits of DFR; bits 0-27 read as ones
DFR_FLAT = 0xF  # DFR model: flat (LDR is an 8-bit mask of logical IDs)
DFR_CLUSTER = 0x0  # DFR model: cluster (high nibble cluster, low nibble mask)

# --- TPR/PPR. ---
PRIORITY_CLASS = 0xF0  # a priority's class is its high nibble

# --- SVR. ---
SVR_VECTOR = 0x0FF  # spurious-interrupt vector
SVR_ENABLE = 0x100  # APIC software enable
SVR_FOCUS_DISABLE = 0x200  # focus processor checking (no effect with one CPU)
SVR_WRITABLE = SVR_VECTOR | SVR_ENABLE | SVR_FOCUS_DISABLE
SVR_RESET = 0x0FF  # power-up: vector 0xFF, software disabled

# --- ESR bits. ---
ESR_SEND_ILLEGAL_VECTOR = 0x20  # an IPI was sent with a vector below 16
ESR_RECEIVE_ILLEGAL_VECTOR = 0x40  # an interrupt with a vector below 16 arrived
ESR_ILLEGAL_REGISTER = 0x80  # a reserved register was accessed

# --- LVT fields (shared by every LVT entry; not all fields exist in all). ---
LVT_VECTOR = 0x000FF  # vector delivered
LVT_DELIVERY_MODE = 0x00700  # fixed, SMI, NMI, INIT, ExtINT (not timer/error)
LVT_DELIVERY_STATUS = 0x01000  # read only: send pending (never: delivery is instant)
LVT_POLARITY_LOW = 0x02000  # LINT only: pin active low
LVT_REMOTE_IRR = 0x04000  # LINT only, read only: level interrupt in service
LVT_LEVEL = 0x08000  # LINT only: level triggered
LVT_MASKED = 0x10000  # interrupt masked
LVT_TIMER_MODE = 0x60000  # timer only: one-shot, periodic, TSC-deadline
LVT_RESET = LVT_MASKED  # power-up and software disable: everything masked
DELIVERY_SHIFT = 8
DELIVERY_FIXED = 0  # LVT/ICR delivery modes, in bits 8-10
DELIVERY_LOWEST = 1  # ICR only: lowest priority
DELIVERY_SMI = 2
DELIVERY_NMI = 4
DELIVERY_INIT = 5
DELIVERY_STARTUP = 6  # ICR only: start-up IPI (SIPI)
DELIVERY_EXTINT = 7  # LVT LINT only: the 8259A supplies the vector
TIMER_ONE_SHOT = 0 << 17
TIMER_PERIODIC = 1 << 17
TIMER_TSC_DEADLINE = 2 << 17
# Writable bits of each LVT entry.
LVT_WRITABLE = {
    LVT_CMCI: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_MASKED,
    LVT_TIMER: LVT_VECTOR | LVT_MASKED | LVT_TIMER_MODE,
    LVT_THERMAL: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_MASKED,
    LVT_PERF: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_MASKED,
    LVT_LINT0: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_POLARITY_LOW | LVT_LEVEL | LVT_MASKED,
    LVT_LINT1: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_POLARITY_LOW | LVT_LEVEL | LVT_MASKED,
    LVT_ERROR: LVT_VECTOR | LVT_MASKED,
}

# --- ICR fields. ---
ICR_VECTOR = 0x000FF  # vector for fixed/lowest-priority IPIs, page number for SIPI
ICR_DELIVERY_MODE = 0x00700  # see DELIVERY_*
ICR_LOGICAL = 0x00800  # destination mode: logical (set) or physical
ICR_DELIVERY_STATUS = 0x01000  # read only: send pending (never)
ICR_ASSERT = 0x04000  # level: assert (INIT level de-assert has it clear)
ICR_LEVEL = 0x08000  # trigger mode: level
ICR_SHORTHAND = 0xC0000  # destination shorthand
ICR_LOW_WRITABLE = 0x000CCFFF
SHORTHAND_SHIFT = 18
SHORTHAND_NONE = 0  # use the destination field
SHORTHAND_SELF = 1  # this APIC only
SHORTHAND_ALL = 2  # all APICs including this one
SHORTHAND_OTHERS = 3  # all APICs but this one (there are none)
ICR_HIGH_WRITABLE = 0xFF000000  # destination field, bits 56-63 of the ICR
BROADCAST = 0xFF  # physical destination that every xAPIC accepts
IPI_KINDS = {
    DELIVERY_FIXED: "fixed",
    DELIVERY_LOWEST: "lowest-priority",
    DELIVERY_SMI: "SMI",
    DELIVERY_NMI: "NMI",
    DELIVERY_INIT: "INIT",
    DELIVERY_STARTUP: "SIPI",
}

# --- Timer divide configuration (bits 0, 1 and 3). ---
DIVIDE_WRITABLE = 0x0B
# Divider by the value of bits 3,1,0 packed into 3 bits: 2, 4, ... 128, then 1.
DIVIDERS = (2, 4, 8, 16, 32, 64, 128, 1)
COUNT_SLACK = 1e-6  # fraction of a count treated as float rounding error
MAX_LATE_TICKS = 4  # periodic expiries delivered late before the rest are dropped

# --- IA32_APIC_BASE MSR (0x1B). ---
MSR_APIC_BASE = 0x1B
MSR_BSP = 0x100  # bit 8: this is the bootstrap processor (read only)
MSR_ENABLE = 0x800  # bit 11: APIC global enable
MSR_BASE_MASK = 0xFFFFF000  # bits 12-31: the register page's physical address

VECTOR_COUNT = 256
FIRST_LEGAL_VECTOR = 16  # vectors 0-15 are reserved: an APIC reports them as illegal


class LocalApic(DeviceState):
    """The bootstrap processor's local APIC, with its timer running from `clock`."""

    # Snapshot state (devices/state.py): registers, and the timer's next expiry (guest clock).
    STATE = ("base", "enabled", "id", "tpr", "ldr", "dfr", "svr", "irr", "isr", "tmr", "esr",
             "esr_pending", "icr_low", "icr_high", "lvt", "timer_initial", "timer_divide",
             "_timer_next", "_tick_seconds")

    def __init__(self, clock: Callable[[], float], apic_id: int = 0, bus_hz: float = 100e6) -> None:
        self._clock = clock
        self.apic_id_at_reset = apic_id & 0xFF
        self.bus_hz = bus_hz
        self.on_eoi: Callable[[int], None] | None = None  # level-triggered vector finished

        # IA32_APIC_BASE.
        self.base = BASE
        self.enabled = True  # global enable, MSR bit 11

        # Registers.
        self.id = 0
        self.tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.svr = SVR_RESET
        self.irr = 0  # 256-bit masks, bit n for vector n
        self.isr = 0
        self.tmr = 0
        self.esr = 0  # the value the guest reads
        self.esr_pending = 0  # errors since the last ESR write
        self.icr_low = 0
        self.icr_high = 0
        self.lvt: dict[int, int] = {}
        self.timer_initial = 0
        self.timer_divide = 0

        # The timer.
        self._timer_next: float | None = None  # clock time of the next expiry
        self._tick_seconds = DIVIDERS[0] / bus_hz  # one count at the current divider

        # Counters.
        self.timer_fires = 0  # timer expiries delivered (or masked)
        self.lost_ticks = 0  # periodic expiries dropped after MAX_LATE_TICKS late ones
        self.masked_expiries = 0  # expiries with the LVT timer masked or the APIC disabled
        self.tsc_deadline_requests = 0  # LVT timer writes selecting the absent TSC-deadline mode
        self.ipis_ignored: Counter[str] = Counter()  # IPIs that reach no processor, by kind
        self.self_ipis = 0  # fixed IPIs delivered to this APIC
        self.spurious_eois = 0  # EOI writes with nothing in service
        self.spurious_acks = 0  # acknowledge() with nothing deliverable
        self.illegal_vectors = 0  # interrupts with a vector below 16, refused
        self.dropped_while_disabled = 0  # interrupts sent while the APIC was globally disabled
        self.reserved_accesses = 0  # reads/writes of offsets that hold no register
        self.readonly_writes = 0  # writes to read-only registers
        self.partial_accesses = 0  # accesses narrower than 32 bits (served from the dword)
        self.relocations = 0  # IA32_APIC_BASE writes moving the page (recorded, not honoured)

        self.reset()

    # --- Reset and IA32_APIC_BASE. ---

    def reset(self) -> None:
        """RESET: power-up state, globally enabled at BASE as the BSP, software disabled."""
        self.base = BASE
        self.enabled = True
        self._power_up()

    def _power_up(self) -> None:
        self.id = self.apic_id_at_reset << ID_SHIFT
        self.tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.svr = SVR_RESET
        self.irr = 0
        self.isr = 0
        self.tmr = 0
        self.esr = 0
        self.esr_pending = 0
        self.icr_low = 0
        self.icr_high = 0
        self.lvt = {reg: LVT_RESET for reg in LVT_WRITABLE}
        self.timer_initial = 0
        self.timer_divide = 0
        self._tick_seconds = DIVIDERS[0] / self.bus_hz
        self._timer_next = None

    @property
    def apic_base_msr(self) -> int:
        """IA32_APIC_BASE as RDMSR returns it."""
        return self.base | MSR_BSP | (MSR_ENABLE if self.enabled else 0)

    @apic_base_msr.setter
    def apic_base_msr(self, value: int) -> None:
        """WRMSR IA32_APIC_BASE: global enable/disable; BSP is read only."""
        base = value & MSR_BASE_MASK
        if base != self.base:
            # The machine maps the page at BASE only: the new address is recorded, not decoded.
            self.relocations += 1
            self.base = base
        enable = bool(value & MSR_ENABLE)
        if self.enabled and not enable:
            # Global disable: the APIC is gone until re-enabled, in its power-up state.
            self._power_up()
        self.enabled = enable

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    # --- Interrupt flow (the machine's side). ---

    def accept(self, vector: int, level: bool = False) -> None:
        """An interrupt message arrives for this APIC: it waits in IRR."""
        vector &= 0xFF
        if not self.enabled:
            self.dropped_while_disabled += 1  # a globally disabled APIC is not on the bus
            return
        if vector < FIRST_LEGAL_VECTOR:
            self.illegal_vectors += 1
            self._error(ESR_RECEIVE_ILLEGAL_VECTOR)
            return
        bit = 1 << vector
        self.irr |= bit
        # The TMR records the trigger mode of the interrupt accepted into IRR.
        if level:
            self.tmr |= bit
        else:
            self.tmr &= ~bit

    def has_interrupt(self) -> bool:
        """Is there a vector in IRR whose priority class beats the processor priority?"""
        if not self.irr or not self.enabled or not self.svr & SVR_ENABLE:
            return False
        return (self.irr.bit_length() - 1) & PRIORITY_CLASS > self.ppr & PRIORITY_CLASS

    def acknowledge(self) -> int:
        """The INTA cycle: the highest deliverable vector moves from IRR to ISR."""
        if not self.has_interrupt():
            # The interrupt went away (or was masked by TPR) between INTR and INTA.
            self.spurious_acks += 1
            return self.svr & SVR_VECTOR
        vector = self.irr.bit_length() - 1
        bit = 1 << vector
        self.irr &= ~bit
        self.isr |= bit
        return vector

    def lint0_extint(self) -> bool:
        """Does the PIC's INTR reach the CPU (virtual-wire mode, or no working APIC)?"""
        if not self.enabled or not self.svr & SVR_ENABLE:
            return True
        lint0 = self.lvt[LVT_LINT0]
        return not lint0 & LVT_MASKED and _delivery_mode(lint0) == DELIVERY_EXTINT

    def lint1_nmi(self) -> bool:
        """Does the LINT1 pin (the PC's NMI line) deliver an NMI?"""
        if not self.enabled or not self.svr & SVR_ENABLE:
            return True
        lint1 = self.lvt[LVT_LINT1]
        return not lint1 & LVT_MASKED and _delivery_mode(lint1) == DELIVERY_NMI

    def matches_destination(self, destination: int, logical: bool) -> bool:
        """Does an interrupt message addressed to `destination` reach this APIC?"""
        destination &= 0xFF
        if not logical:
            return destination in (self.id >> ID_SHIFT, BROADCAST)
        logical_id = self.ldr >> ID_SHIFT
        if self.dfr >> 28 == DFR_FLAT:
            return bool(destination & logical_id)
        # Cluster model: the high nibbles name the cluster, the low nibbles are a member mask.
        if destination >> 4 == 0xF:
            return bool(destination & logical_id & 0xF)  # broadcast to all clusters
        return destination >> 4 == logical_id >> 4 and bool(destination & logical_id & 0xF)

    @property
    def ppr(self) -> int:
        """Processor priority (SDM 10.8.3.1): TPR, or the in-service class if higher."""
        isrv = self.isr.bit_length() - 1 if self.isr else 0
        if self.tpr & PRIORITY_CLASS >= isrv & PRIORITY_CLASS:
            return self.tpr
        return isrv & PRIORITY_CLASS

    # --- The timer (the machine's side). ---

    def next_deadline(self) -> float | None:
        """Clock time of the next timer expiry, or None if the timer is stopped."""
        return self._timer_next

    def tick(self, now: float) -> None:
        """Raise the timer expiries due by `now`."""
        due = self._timer_next
        if due is None or now < due:
            return
        if self.lvt[LVT_TIMER] & LVT_TIMER_MODE != TIMER_PERIODIC:
            # One-shot: the count reached zero and stays there.
            self._timer_next = None
            self._expire()
            return
        period = self._period()
        late = 0
        while due <= now:
            if late == MAX_LATE_TICKS:
                # Too far behind: drop the rest and stay in phase with the count.
                lost = int((now - due) // period) + 1
                self.lost_ticks += lost
                due += lost * period
                break
            self._expire()
            due += period
            late += 1
        self._timer_next = due

    def current_count(self) -> int:
        """The timer's current count at this moment."""
        if self._timer_next is None:
            return 0
        ticks_left = (self._timer_next - self._clock()) / self._tick_seconds
        if ticks_left > 0:
            # Rounding slack: a count that is within a hair of an integer has reached it.
            return min(self.timer_initial, math.ceil(ticks_left - COUNT_SLACK))
        if self.lvt[LVT_TIMER] & LVT_TIMER_MODE != TIMER_PERIODIC:
            return 0  # one-shot expiry not yet processed
        # Periodic expiries not yet processed: the count has already reloaded.
        into_period = int(-ticks_left) % self.timer_initial
        return self.timer_initial - into_period

    def _period(self) -> float:
        return self.timer_initial * self._tick_seconds

    def _expire(self) -> None:
        self.timer_fires += 1
        lvt = self.lvt[LVT_TIMER]
        if lvt & LVT_MASKED or not self.enabled or not self.svr & SVR_ENABLE:
            self.masked_expiries += 1
            return
        self.accept(lvt & LVT_VECTOR)

    # --- Guest side. ---

    def mmio_read(self, offset: int, size: int) -> int:
        if offset == TPR:
            return self.tpr  # the fast path: guests read TPR around critical sections
        if size == 4 and not offset & 3:
            return self._read_dword(offset)
        # Narrower or wider than one dword: assemble the bytes from the dwords covering them.
        if size < 4:
            self.partial_accesses += 1
        value = 0
        for i in range(size):
            at = offset + i
            dword = self._read_dword(at & ~3 & (PAGE_SIZE - 1))
            value |= (dword >> (8 * (at & 3)) & 0xFF) << (8 * i)
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == TPR and size == 4:
            self.tpr = value & 0xFF  # the fast path: Linux raises and lowers TPR often
            return
        if size == 4 and not offset & 3:
            self._write_dword(offset, value & 0xFFFFFFFF)
            return
        if size == 8 and not offset & 7:
            # A 64-bit store: two dwords, the upper one in the slot's reserved bytes.
            self._write_dword(offset, value & 0xFFFFFFFF)
            self._write_dword(offset + 4, value >> 32 & 0xFFFFFFFF)
            return
        # A narrow store: merge it into the dword it falls in.
        self.partial_accesses += 1
        aligned = offset & ~3
        shift = 8 * (offset & 3)
        mask = ((1 << (8 * size)) - 1) << shift & 0xFFFFFFFF
        merged = self._read_dword(aligned) & ~mask | (value << shift) & mask
        self._write_dword(aligned, merged)

    def _read_dword(self, offset: int) -> int:
        if offset & 0xF:
            return 0  # bytes 4-15 of every slot
        if offset == TPR:
            return self.tpr
        if offset == PPR:
            # Drivers rarely read it; it is TPR or the class of the highest in-service vector.
            return self.ppr
        if offset == EOI:
            return 0  # write only
        if offset == ID:
            return self.id
        if offset == VERSION:
            # The APIC driver learns it is an integrated APIC with six LVT entries.
            return VERSION_VALUE
        if offset in (APR, RRD):
            return 0
        if offset == LDR:
            return self.ldr
        if offset == DFR:
            return self.dfr
        if offset == SVR:
            return self.svr
        if ISR_BASE <= offset < ISR_BASE + REGISTER_SPAN:
            return self.isr >> (2 * (offset - ISR_BASE)) & 0xFFFFFFFF
        if TMR_BASE <= offset < TMR_BASE + REGISTER_SPAN:
            return self.tmr >> (2 * (offset - TMR_BASE)) & 0xFFFFFFFF
        if IRR_BASE <= offset < IRR_BASE + REGISTER_SPAN:
            # Checking for stuck interrupts at setup: IRR bits left over from the BIOS.
            return self.irr >> (2 * (offset - IRR_BASE)) & 0xFFFFFFFF
        if offset == ESR:
            return self.esr
        if offset == ICR_LOW:
            return self.icr_low  # delivery status (bit 12) is always clear: sends are instant
        if offset == ICR_HIGH:
            return self.icr_high
        if offset in self.lvt:
            return self.lvt[offset]
        if offset == TIMER_INITIAL:
            return self.timer_initial
        if offset == TIMER_CURRENT:
            # Timer calibration and delays: how far has the count gone down?
            return self.current_count()
        if offset == TIMER_DIVIDE:
            return self.timer_divide
        self.reserved_accesses += 1
        self._error(ESR_ILLEGAL_REGISTER)
        return 0

    def _write_dword(self, offset: int, value: int) -> None:
        if offset & 0xF:
            return  # bytes 4-15 of every slot
        if offset == TPR:
            self.tpr = value & 0xFF
        elif offset == EOI:
            # The handler is done with the highest in-service vector.
            self._eoi()
        elif offset == ID:
            self.id = value & ID_MASK
        elif offset == LDR:
            # Logical destination setup (flat model: one bit per CPU).
            self.ldr = value & ID_MASK
        elif offset == DFR:
            self.dfr = value & DFR_MODEL_MASK | ~DFR_MODEL_MASK & 0xFFFFFFFF
        elif offset == SVR:
            # Software enable/disable and the spurious vector.
            self._write_svr(value)
        elif offset == ESR:
            # Back-to-back writes then a read: the errors since the last write.
            self.esr = self.esr_pending
            self.esr_pending = 0
        elif offset == ICR_HIGH:
            self.icr_high = value & ICR_HIGH_WRITABLE
        elif offset == ICR_LOW:
            # Sending an IPI: the write to the low half is the send.
            self.icr_low = value & ICR_LOW_WRITABLE
            self._send_ipi()
        elif offset in self.lvt:
            self._write_lvt(offset, value)
        elif offset == TIMER_INITIAL:
            # Arming (or, with 0, stopping) the timer.
            self.timer_initial = value
            self._start_timer()
        elif offset == TIMER_DIVIDE:
            self._write_divide(value)
        elif (
            offset in (VERSION, APR, PPR, RRD, TIMER_CURRENT)
            or ISR_BASE <= offset < IRR_BASE + REGISTER_SPAN
        ):
            self.readonly_writes += 1
        else:
            self.reserved_accesses += 1
            self._error(ESR_ILLEGAL_REGISTER)

    # --- Register behaviour. ---

    def _eoi(self) -> None:
        if not self.isr:
            self.spurious_eois += 1
            return
        vector = self.isr.bit_length() - 1
        bit = 1 << vector
        self.isr &= ~bit
        if self.tmr & bit and self.on_eoi is not None:
            # A level-triggered interrupt: the IOAPIC may clear Remote IRR and resend.
            self.on_eoi(vector)

    def _write_svr(self, value: int) -> None:
        self.svr = value & SVR_WRITABLE
        if not self.svr & SVR_ENABLE:
            # Software disable masks every LVT entry (SDM 10.4.7.2).
            for reg in self.lvt:
                self.lvt[reg] |= LVT_MASKED

    def _write_lvt(self, reg: int, value: int) -> None:
        kept = self.lvt[reg] & ~LVT_WRITABLE[reg]  # read-only bits (remote IRR)
        value = kept | value & LVT_WRITABLE[reg]
        if not self.svr & SVR_ENABLE:
            value |= LVT_MASKED  # cannot be unmasked while software disabled
        if reg == LVT_TIMER:
            old_mode = self.lvt[reg] & LVT_TIMER_MODE
            mode = value & LVT_TIMER_MODE
            if mode == TIMER_TSC_DEADLINE and old_mode != TIMER_TSC_DEADLINE:
                self.tsc_deadline_requests += 1
                self._timer_next = None  # changing to TSC-deadline mode disarms the timer
        self.lvt[reg] = value

    def _write_divide(self, value: int) -> None:
        remaining = self.current_count() if self._timer_next is not None else 0
        self.timer_divide = value & DIVIDE_WRITABLE
        code = (self.timer_divide & 3) | (self.timer_divide >> 1 & 4)
        self._tick_seconds = DIVIDERS[code] / self.bus_hz
        if self._timer_next is not None:
            # A running count carries on at the new rate from where it is.
            self._timer_next = self._clock() + remaining * self._tick_seconds

    def _start_timer(self) -> None:
        if self.timer_initial == 0 or self.lvt[LVT_TIMER] & LVT_TIMER_MODE == TIMER_TSC_DEADLINE:
            self._timer_next = None
            return
        self._timer_next = self._clock() + self._period()

    def _send_ipi(self) -> None:
        icr = self.icr_low
        mode = _delivery_mode(icr)
        shorthand = (icr & ICR_SHORTHAND) >> SHORTHAND_SHIFT
        kind = IPI_KINDS.get(mode, f"mode {mode}")
        if shorthand == SHORTHAND_OTHERS:
            self.ipis_ignored[kind] += 1  # there are no other processors
            return
        if shorthand == SHORTHAND_NONE:
            logical = bool(icr & ICR_LOGICAL)
            if not self.matches_destination(self.icr_high >> ID_SHIFT, logical):
                self.ipis_ignored[kind] += 1  # addressed to a processor that does not exist
                return
        if mode not in (DELIVERY_FIXED, DELIVERY_LOWEST):
            # INIT, SIPI, NMI and SMI to this processor: nothing here can serve them.
            self.ipis_ignored[kind] += 1
            return
        vector = icr & ICR_VECTOR
        if vector < FIRST_LEGAL_VECTOR:
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            self.accept(vector)  # refused on receipt as well
            return
        self.self_ipis += 1
        self.accept(vector, level=bool(icr & ICR_LEVEL))

    def _error(self, bit: int) -> None:
        """Record an APIC error and raise the LVT error interrupt if it is unmasked."""
        first = not self.esr_pending & bit
        self.esr_pending |= bit
        lvt = self.lvt[LVT_ERROR]
        if first and not lvt & LVT_MASKED and self.enabled and self.svr & SVR_ENABLE:
            vector = lvt & LVT_VECTOR
            if vector >= FIRST_LEGAL_VECTOR:
                self.accept(vector)


def _delivery_mode(value: int) -> int:
    return (value & LVT_DELIVERY_MODE) >> DELIVERY_SHIFT
