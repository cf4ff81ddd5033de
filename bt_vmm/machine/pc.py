"""The PC that bt_vmm builds: memory map, I/O port map, devices, IRQ routing,
firmware tables, boot state.

This is the one place the machine is wired together (as TinyEMU does it):
read it first to see the whole platform.

    guest-physical 0 .. mem_size        RAM (shared memory the host world can reach, mapped
                                        into unicorn by pointer: hosted/shared_memory.py)
      0xE0000 / 0xF0000                 ACPI and MP tables (written into RAM at boot)
    0xCFFFF000                          open bus: where shadows map guest-physical
                                        addresses with nothing behind them (MMIO:
                                        reads give all ones, writes vanish, both counted)
    0xD0000000 ..                       shadow page-table pool (unicorn-physical only)
    0xFEC00000                          IOAPIC (MMIO)
    0xFEE00000                          local APIC (MMIO)
    linear 0xFF800000 .. 4 GiB          the monitor region, until the guest wants that range
                                        (unicorn-physical 0xFF800000 always; see tcache/region.py)

    I/O 0x20-0x21, 0xA0-0xA1, 0x4D0-1   8259A PIC pair + ELCR          IRQ lines 0-15
    I/O 0x40-0x43, 0x61                 8254 PIT, port B                IRQ0 (IOAPIC pin 2)
    I/O 0x60, 0x64                      8042 keyboard controller       IRQ1, IRQ12
    I/O 0x70-0x71                       MC146818 RTC + CMOS            IRQ8
    I/O 0x92                            system control port A (A20, reset)
    I/O 0x1F0-0x1F7, 0x3F6              IDE primary (--disk 1 and 2)    IRQ14
    I/O 0x170-0x177, 0x376              IDE secondary (--disk 3 and 4)  IRQ15
    I/O 0x3F8-0x3FF                     16550A UART (COM1)              IRQ4
    I/O 0x600-0x60B                     ACPI PM1a (PIIX4 layout): S5 ends the run with status 0
    I/O 0xCF8, 0xCFC-0xCFF              PCI configuration (i440FX host bridge, PIIX3)
    I/O 0xF4-0xF7                       isa-debug-exit: status (V << 1) | 1

ISA interrupt lines reach both the PIC and the IOAPIC (IRQ0 on pin 2, as the MP
table and the MADT say); the local APIC passes the PIC through LINT0 in
virtual-wire mode until the guest programs it otherwise.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from bt_vmm.devices import (acpi_pm, debug_exit, i8042, ide, lapic as lapic_mod, ioapic as ioapic_mod,
                            pci as pci_mod, pic8259, pit8254, port92, rtc as rtc_mod, uart16550)
from bt_vmm.devices.acpi_pm import AcpiPm
from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.debug_exit import DebugExit
from bt_vmm.devices.i8042 import I8042
from bt_vmm.devices.ide import DiskBackend, IdeChannel
from bt_vmm.devices.ioapic import IoApic
from bt_vmm.devices.lapic import LocalApic
from bt_vmm.devices.pci import PciHost, build_i440fx
from bt_vmm.devices.pic8259 import Pic8259Pair
from bt_vmm.devices.pit8254 import Pit8254
from bt_vmm.devices.port92 import Port92
from bt_vmm.devices.rtc import Rtc
from bt_vmm.devices.uart16550 import Uart16550
from bt_vmm.errors import EXIT_RESET, GuestExit
from bt_vmm.hosted.alarm import Alarm
from bt_vmm.hosted.console import ConsoleInput, SerialSink
from bt_vmm.hosted.shared_memory import SharedMemory
from bt_vmm.loaders import BootImage
from bt_vmm.machine import firmware
from bt_vmm.machine.clock import GuestClock
from bt_vmm.machine.layout import MON_BASE, MON_SIZE, OPEN_BUS, PAGE_SIZE
from bt_vmm.machine.memory import GuestMemory
from bt_vmm.shadow_mmu.mmu import ShadowMMU
from bt_vmm.shadow_mmu.traces import PageTraces
from bt_vmm.tcache import region as R
from bt_vmm.vcpu import cpuid
from bt_vmm.vcpu.descriptors import FLAT_CODE, Descriptor
from bt_vmm.vcpu.regs import Regs
from bt_vmm.vcpu.state import (CR0_ET, CR0_MIRRORED, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_MIRRORED,
                               CR4_PAE, CR4_PSE, CR4_SMAP, VCpu)

COM1 = 0x3F8
ACPI_PM_BASE = 0x600
DEBUG_EXIT_PORT = 0xF4
MSR_APIC_BASE = 0x1B
MAX_DISKS = 4


@dataclass
class Devices:
    uart: Uart16550
    pic: Pic8259Pair
    pit: Pit8254
    rtc: Rtc
    kbd: I8042
    port92: Port92
    lapic: LocalApic
    ioapic: IoApic
    pci: PciHost
    ide: tuple[IdeChannel, IdeChannel]
    acpi: AcpiPm
    debug_exit: DebugExit


class Machine:
    def __init__(self, mem_size: int, sink: SerialSink, disks: Sequence[DiskBackend] = (),
                 clock: GuestClock | None = None, memory: SharedMemory | None = None) -> None:
        self.mem_size = mem_size
        self.sink = sink
        # Devices count guest time: host time minus the time the machine stood
        # still (debugger stops, snapshot to restore). See machine/clock.py.
        self.clock = clock if clock is not None else GuestClock()
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        # A model with SMAP: the monitor region's protection rests on it.
        uc.ctl_set_cpu_model(X.UC_CPU_X86_BROADWELL)
        # Guest RAM is host memory that unicorn maps by pointer: the monitor
        # reads and writes it directly, and write-protecting one page (a trace)
        # does not make unicorn copy the whole RAM block, as it does for
        # memory it allocated itself (about 1 ms instead of 90 ms for 64 MiB).
        # It is shared memory, so that the host world can reach it too.
        if memory is None:
            # A machine on its own: no host world to hand the descriptor to, and
            # the mappings are all it needs (a process making machine after
            # machine, as the self-check does, ran out of descriptors).
            memory = SharedMemory(mem_size)
            memory.close_fd()
        self.memory = memory
        self.ram = self.memory.ram
        self._ram_ptr = ctypes.addressof(ctypes.c_char.from_buffer(self.ram))
        uc.mem_map_ptr(0, mem_size, UC_PROT_ALL, self._ram_ptr)
        # The monitor region is host memory too: the alarm's thread raises the
        # TC's preemption flag with a plain store, no unicorn call.
        self.mon = mmap.mmap(-1, MON_SIZE)
        uc.mem_map_ptr(MON_BASE, MON_SIZE, UC_PROT_ALL,
                       ctypes.addressof(ctypes.c_char.from_buffer(self.mon)))
        self.uc = uc
        self.regs = Regs(uc)
        self.mem = GuestMemory(uc, self.ram)
        self.traces = PageTraces(uc, self.mem.write_raw)
        self.mmio_ranges = [(lapic_mod.BASE, 0x1000), (ioapic_mod.BASE, 0x1000)]
        self.unclaimed_memory: Counter[str] = Counter()     # open-bus reads and writes
        uc.mmio_map(OPEN_BUS, PAGE_SIZE, self._open_bus_read, None, self._open_bus_write, None)
        self.placement = R.Placement()      # where the monitor region is, linearly
        self.mmu = ShadowMMU(uc, self.ram, mem_size, self.traces, mmio=self.mmio_ranges,
                             open_bus=OPEN_BUS, placement=self.placement)
        self.mem.on_write = self.traces.notify
        self.mem.translate = lambda linear, write: self.mmu.translate(linear, write)
        self.vcpu = VCpu(uc, self.regs, self.mem)
        self.vcpu.paging_changed = self._paging_changed
        self.vcpu.invlpg = self.mmu.invlpg
        self.host_event = threading.Event()
        self.on_host_input = lambda: None        # the engine's wake-up for running emulation
        # The alarm the engine arms with the next timer deadline: a thread here,
        # or the host world's when it is its own process (hosted/alarm.py).
        self.make_alarm: Callable[[Callable[[], None]], Alarm] = Alarm
        self.world_switch = None    # the VMM world's crossings to the host world (switch.py), if any
        self.console_input: ConsoleInput | None = None
        self._build_devices(disks)

    # --- devices ------------------------------------------------------------------
    def _build_devices(self, disks: Sequence[DiskBackend]) -> None:
        clock = self.clock
        lapic = LocalApic(clock)
        ioapic = IoApic(lapic)
        pic = Pic8259Pair()
        self._pic, self._ioapic = pic, ioapic
        drives = list(disks) + [None] * (MAX_DISKS - len(disks))
        prim, sec = ide.PRIMARY, ide.SECONDARY
        self.devices = d = Devices(
            uart=Uart16550(COM1, sink=self.sink.write, irq=self._isa_line(4)),
            pic=pic,
            pit=Pit8254(clock, self._isa_line(0)),
            rtc=Rtc(clock, wallclock=clock.wall, irq8=self._isa_line(8)),
            kbd=I8042(irq1=self._isa_line(1), irq12=self._isa_line(12), on_reset=self._reset),
            port92=Port92(on_reset=self._reset),
            lapic=lapic,
            ioapic=ioapic,
            pci=PciHost(),
            ide=(IdeChannel(prim.base, prim.ctrl, self._isa_line(prim.irq), drives[0], drives[1]),
                 IdeChannel(sec.base, sec.ctrl, self._isa_line(sec.irq), drives[2], drives[3])),
            acpi=AcpiPm(ACPI_PM_BASE, clock=clock),
            debug_exit=DebugExit(DEBUG_EXIT_PORT),
        )
        build_i440fx(d.pci)
        d.rtc.set_memory_size(self.mem_size)
        self.bus = bus = PortBus()
        for module, dev in ((pic8259, pic), (pit8254, d.pit), (rtc_mod, d.rtc), (i8042, d.kbd),
                            (port92, d.port92), (pci_mod, d.pci)):
            for first, count in module.PORTS:
                bus.register(first, count, dev)
        for channel in d.ide:
            for first, count in channel.port_ranges:
                bus.register(first, count, channel)
        bus.register(COM1, uart16550.PORT_COUNT, d.uart)
        bus.register(ACPI_PM_BASE, acpi_pm.PORT_COUNT, d.acpi)
        bus.register(DEBUG_EXIT_PORT, debug_exit.PORT_COUNT, d.debug_exit)
        self.timers = [d.pit, d.rtc, lapic]
        for base, dev in ((lapic_mod.BASE, lapic), (ioapic_mod.BASE, ioapic)):
            self.uc.mmio_map(base, 0x1000, self._mmio_reader(dev), None, self._mmio_writer(dev), None)
        self.vcpu.msr_handlers[MSR_APIC_BASE] = (
            lambda: lapic.apic_base_msr, lambda v: setattr(lapic, "apic_base_msr", v))

    def _mmio_reader(self, dev):
        def read(uc, offset: int, size: int, _ud) -> int:
            return dev.mmio_read(offset, size)
        return read

    def _mmio_writer(self, dev):
        def write(uc, offset: int, size: int, value: int, _ud) -> None:
            dev.mmio_write(offset, size, value)
        return write

    def _open_bus_read(self, uc, offset: int, size: int, _ud) -> int:
        # A PC's bus returns all ones where no memory or device answers.
        self.unclaimed_memory["reads"] += 1
        return (1 << (8 * size)) - 1

    def _open_bus_write(self, uc, offset: int, size: int, value: int, _ud) -> None:
        self.unclaimed_memory["writes"] += 1

    def _isa_line(self, irq: int):
        gsi = 2 if irq == 0 else irq

        def line(level: bool) -> None:
            self._pic.set_irq(irq, level)
            self._ioapic.set_irq(gsi, level)
        return line

    def _reset(self) -> None:
        raise GuestExit(EXIT_RESET, "guest requested a reset")

    # --- time and interrupts, as the engines see them ---------------------------
    def next_deadline(self) -> float | None:
        """When the next timer needs the monitor (host monotonic clock)."""
        deadlines = [d for d in (t.next_deadline() for t in self.timers) if d is not None]
        return self.clock.host(min(deadlines)) if deadlines else None

    def tick(self, now: float) -> None:
        """Bring the timers up to host monotonic time `now`."""
        if self.console_input is not None:
            data = self.console_input.drain()
            if data:
                self.devices.uart.feed(data)
        guest_now = self.clock.guest(now)
        for t in self.timers:
            t.tick(guest_now)

    def interrupt_pending(self) -> bool:
        lapic = self.devices.lapic
        return lapic.has_interrupt() or (lapic.lint0_extint() and self._pic.has_interrupt())

    def acknowledge_interrupt(self) -> int:
        lapic = self.devices.lapic
        if lapic.has_interrupt():
            return lapic.acknowledge()
        return self._pic.acknowledge()

    def attach_console_input(self, fd: int) -> None:
        """Typed input (or a pipe) reaches the guest's COM1."""
        def arrived() -> None:
            self.host_event.set()
            self.on_host_input()
        self.console_input = ConsoleInput(fd, arrived)

    def wait_for_event(self) -> None:
        """Sleep while the guest halts, until the alarm or host input wakes it."""
        self.host_event.wait()
        self.host_event.clear()

    def close(self) -> None:
        if self.console_input is not None:
            self.console_input.close()
        for channel in self.devices.ide:
            for dev in channel.devices:
                if dev.disk is not None:
                    dev.disk.close()

    def _paging_changed(self) -> None:
        v = self.vcpu
        self.mmu.configure(paging=bool(v.cr0 & CR0_PG), cr3=v.cr3, wp=bool(v.cr0 & CR0_WP),
                           pse=bool(v.cr4 & CR4_PSE))

    def place_monitor_tables(self) -> None:
        """Point the monitor's GS descriptor and unicorn's GDTR at the region's
        current placement (at boot, and each time the region moves)."""
        base = self.placement.base
        self.uc.mem_write(R.phys(R.SHADOW_GDT) + 8 * R.MON_GS_INDEX,
                          Descriptor(base, MON_SIZE - 1, 0x93, 0x4).pack())
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, base + R.SHADOW_GDT, R.SHADOW_GDT_SIZE - 1, 0))

    # --- boot ---------------------------------------------------------------------
    def load(self, boot: BootImage) -> None:
        """Put the image and the firmware tables in RAM and the CPU in the state
        Multiboot promises (0.6.96 section 3.2) -- as the guest sees it;
        underneath, unicorn runs on the monitor's GDT, CS, GS and shadow page
        tables."""
        features = cpuid.EDX_FEATURES
        for addr, data in firmware.build_bios_tables(cpu_features=features,
                                                     cpu_signature=cpuid.SIGNATURE_TUPLE):
            self.ram[addr:addr + len(data)] = data
        for addr, data in boot.chunks:
            self.ram[addr:addr + len(data)] = data
        self._start_cpu(lambda: self.vcpu.reset_boot(boot.code_sel, boot.data_sel, boot.gdt))
        regs = self.regs
        regs.write(X.UC_X86_REG_EFLAGS, 0x2)
        regs.write(X.UC_X86_REG_EAX, boot.eax)
        regs.write(X.UC_X86_REG_EBX, boot.ebx)
        regs.write(X.UC_X86_REG_ESI, boot.esi)
        self.vcpu.set_vflags(0)

    def _start_cpu(self, guest_segments) -> None:
        """Unicorn's side of the CPU, under the guest state the vCPU holds: the
        monitor's GDT, CS and GS, the shadow page tables, and the guest's CR0/CR4
        bits that change how instructions behave. `guest_segments` loads the
        guest's segment registers."""
        uc, regs, v = self.uc, self.regs, self.vcpu
        # The monitor's descriptors at the top of the shadow GDT.
        uc.mem_write(R.phys(R.SHADOW_GDT) + 8 * R.MON_CS_INDEX, FLAT_CODE.pack())
        uc.mem_write(R.phys(R.MON_GS_SEL), R.MON_GS_SEL_VALUE.to_bytes(4, "little"))
        self.place_monitor_tables()
        # Segments are loaded before paging is turned on: unicorn reads the GDT
        # through the current translation when a segment register is written.
        regs.write(X.UC_X86_REG_CR0, CR0_PE | CR0_ET | CR0_NE)
        regs.write(X.UC_X86_REG_CS, R.MON_CS_SEL)
        regs.write(X.UC_X86_REG_GS, R.MON_GS_SEL_VALUE)
        guest_segments()
        self._paging_changed()                       # (at boot, the identity shadow)
        # The shadows are PAE tables (shadow_mmu), whatever the guest's format.
        regs.write(X.UC_X86_REG_CR4, CR4_PAE | CR4_SMAP | (v.cr4 & CR4_MIRRORED))
        # CR0.NE as the guest has it (clear at boot): with NE set, unicorn would
        # raise #MF for x87 errors the guest expects reported the legacy way
        # (found by selfcheck).
        regs.write(X.UC_X86_REG_CR0, CR0_PE | CR0_ET | CR0_WP | CR0_PG | (v.cr0 & CR0_MIRRORED))

    # --- snapshots ------------------------------------------------------------------
    def restore_cpu(self, vcpu_state: dict) -> None:
        """The vCPU's system state from a snapshot, and unicorn's CPU under it
        (the engine restores the registers and where the guest runs)."""
        self._start_cpu(lambda: self.vcpu.restore(vcpu_state))

    def devices_state(self) -> dict:
        """Every device's registers, by device (see each device's state())."""
        d = self.devices
        return {"uart": d.uart.state(), "pic": d.pic.state(), "pit": d.pit.state(),
                "rtc": d.rtc.state(), "kbd": d.kbd.state(), "port92": d.port92.state(),
                "lapic": d.lapic.state(), "ioapic": d.ioapic.state(), "pci": d.pci.state(),
                "ide": [channel.state() for channel in d.ide], "acpi": d.acpi.state()}

    def restore_devices(self, state: dict) -> None:
        d = self.devices
        for name in ("uart", "pic", "pit", "rtc", "kbd", "port92", "lapic", "ioapic", "pci", "acpi"):
            getattr(d, name).restore(state[name])
        for channel, saved in zip(d.ide, state["ide"]):
            channel.restore(saved)
