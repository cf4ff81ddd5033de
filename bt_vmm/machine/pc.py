"""The PC that bt_vmm builds: memory map, I/O port map, devices, boot state.

This is the one place the machine is wired together (as TinyEMU does it): read
it first to see the whole platform.

    guest-physical 0 .. mem_size        RAM (unicorn memory, also the DMA view)
    linear 0xFFC00000 .. 4 GiB          the monitor region (see tcache/region.py)

    I/O 0x3F8-0x3FF   16550A UART (COM1)        -> host world serial sink
    I/O 0x600-0x60B   ACPI PM1a (PIIX4 layout)  -> S5 ends the run with status 0
    I/O 0xF4-0xF7     isa-debug-exit            -> status (V << 1) | 1
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from bt_vmm.devices import acpi_pm, debug_exit, uart16550
from bt_vmm.devices.acpi_pm import AcpiPm
from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.debug_exit import DebugExit
from bt_vmm.devices.uart16550 import Uart16550
from bt_vmm.hosted.console import SerialSink
from bt_vmm.loaders import BootImage
from bt_vmm.machine.layout import MON_BASE, MON_SIZE
from bt_vmm.machine.memory import GuestMemory
from bt_vmm.shadow_mmu.mmu import ShadowMMU
from bt_vmm.shadow_mmu.traces import PageTraces
from bt_vmm.tcache import region as R
from bt_vmm.vcpu.descriptors import FLAT_CODE, Descriptor
from bt_vmm.vcpu.regs import Regs
from bt_vmm.vcpu.state import CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_PSE, CR4_SMAP, VCpu

COM1 = 0x3F8
ACPI_PM_BASE = 0x600
DEBUG_EXIT_PORT = 0xF4


@dataclass
class Devices:
    uart: Uart16550
    acpi: AcpiPm
    debug_exit: DebugExit


class Machine:
    def __init__(self, mem_size: int, sink: SerialSink) -> None:
        self.mem_size = mem_size
        self.sink = sink
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        # A model with SMAP: the monitor region's protection rests on it.
        uc.ctl_set_cpu_model(X.UC_CPU_X86_BROADWELL)
        # Guest RAM is host memory that unicorn maps by pointer: the monitor
        # reads and writes it directly, and write-protecting one page (a trace)
        # does not make unicorn copy the whole RAM block, as it does for
        # memory it allocated itself (about 1 ms instead of 90 ms for 64 MiB).
        self.ram = mmap.mmap(-1, mem_size)
        self._ram_ptr = ctypes.addressof(ctypes.c_char.from_buffer(self.ram))
        uc.mem_map_ptr(0, mem_size, UC_PROT_ALL, self._ram_ptr)
        uc.mem_map(MON_BASE, MON_SIZE)
        self.uc = uc
        self.regs = Regs(uc)
        self.mem = GuestMemory(uc, self.ram)
        self.traces = PageTraces(uc, self.mem.write_raw)
        self.mmu = ShadowMMU(uc, self.ram, mem_size, self.traces, mmio=[])
        self.mem.on_write = self.traces.notify
        self.mem.translate = lambda linear, write: self.mmu.translate(linear, write)
        self.vcpu = VCpu(uc, self.regs, self.mem)
        self.vcpu.paging_changed = self._paging_changed
        self.vcpu.invlpg = self.mmu.invlpg
        self.bus = PortBus()
        self.timers: list = []
        self.pic = None
        self.host_event = threading.Event()
        self.devices = Devices(
            uart=Uart16550(COM1, sink=sink.write),
            acpi=AcpiPm(ACPI_PM_BASE),
            debug_exit=DebugExit(DEBUG_EXIT_PORT),
        )
        self.bus.register(COM1, uart16550.PORT_COUNT, self.devices.uart)
        self.bus.register(ACPI_PM_BASE, acpi_pm.PORT_COUNT, self.devices.acpi)
        self.bus.register(DEBUG_EXIT_PORT, debug_exit.PORT_COUNT, self.devices.debug_exit)

    # --- time and interrupts, as the engines see them ---------------------------
    def next_deadline(self) -> float | None:
        """When the next timer needs the monitor (host monotonic clock)."""
        deadlines = [d for d in (t.next_deadline() for t in self.timers) if d is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> None:
        for t in self.timers:
            t.tick(now)

    def interrupt_pending(self) -> bool:
        return self.pic is not None and self.pic.has_interrupt()

    def acknowledge_interrupt(self) -> int:
        return self.pic.acknowledge()

    def wait_for_event(self, timeout: float | None) -> None:
        """Sleep while the guest halts, until `timeout` or host input arrives."""
        self.host_event.wait(timeout)
        self.host_event.clear()

    def _paging_changed(self) -> None:
        v = self.vcpu
        self.mmu.configure(paging=bool(v.cr0 & CR0_PG), cr3=v.cr3, wp=bool(v.cr0 & CR0_WP),
                           pse=bool(v.cr4 & CR4_PSE))

    def load(self, boot: BootImage) -> None:
        """Put the image in RAM and the CPU in the state Multiboot promises
        (0.6.96 section 3.2) -- as the guest sees it; underneath, unicorn runs on
        the monitor's GDT, CS, GS and shadow page tables."""
        for addr, data in boot.chunks:
            self.ram[addr:addr + len(data)] = data
        uc, regs = self.uc, self.regs
        # The monitor's descriptors at the top of the shadow GDT.
        gdt = R.lin(R.SHADOW_GDT)
        uc.mem_write(gdt + 8 * R.MON_CS_INDEX, FLAT_CODE.pack())
        uc.mem_write(gdt + 8 * R.MON_GS_INDEX, Descriptor(MON_BASE, MON_SIZE - 1, 0x93, 0x4).pack())
        uc.mem_write(R.lin(R.MON_GS_SEL), R.MON_GS_SEL_VALUE.to_bytes(4, "little"))
        uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt, R.SHADOW_GDT_SIZE - 1, 0))
        # Segments are loaded before paging is turned on: unicorn reads the GDT
        # through the current translation when a segment register is written.
        regs.write(X.UC_X86_REG_CR0, CR0_PE | CR0_ET | CR0_NE)
        regs.write(X.UC_X86_REG_CS, R.MON_CS_SEL)
        regs.write(X.UC_X86_REG_GS, R.MON_GS_SEL_VALUE)
        self.vcpu.reset_multiboot()
        self._paging_changed()                       # the identity shadow
        regs.write(X.UC_X86_REG_CR4, CR4_PSE | CR4_SMAP)
        regs.write(X.UC_X86_REG_CR0, CR0_PE | CR0_ET | CR0_NE | CR0_WP | CR0_PG)
        regs.write(X.UC_X86_REG_EFLAGS, 0x2)
        regs.write(X.UC_X86_REG_EAX, boot.eax)
        regs.write(X.UC_X86_REG_EBX, boot.ebx)
        self.vcpu.set_vflags(0)
