"""The PC platform as a guest driver sees it through the engine: the local
APIC's MMIO registers and timer interrupt, the PIT through the 8259 pair, PCI
configuration space, the CMOS memory size and the firmware tables."""

from __future__ import annotations

from asmkernel import DATA, POWEROFF, exit_with, read_u32, run_kernel
from bt_vmm.errors import EXIT_OK

LAPIC = 0xFEE00000


def test_local_apic_registers_and_timer_interrupt():
    # Read ID and version, enable the APIC, run its timer periodically on
    # vector 0x40 and count three interrupts while halting.
    asm = f"""
        mov eax, [{LAPIC + 0x30}]
        mov [{DATA}], eax                       /* version */
        mov dword ptr [{LAPIC + 0xF0}], 0x1FF   /* SVR: enable, spurious 0xFF */
        mov dword ptr [{LAPIC + 0x80}], 0x20    /* TPR */
        mov eax, [{LAPIC + 0x80}]
        mov [{DATA + 4}], eax
        mov dword ptr [{LAPIC + 0x80}], 0
        mov dword ptr [{LAPIC + 0x3E0}], 0x3    /* divide by 16 */
        mov dword ptr [{LAPIC + 0x320}], 0x20040  /* periodic, vector 0x40 */
        mov dword ptr [{LAPIC + 0x380}], 20000  /* 100 MHz / 16 / 20000: 3.2 ms */
        xor esi, esi
        sti
    wait:
        hlt
        cmp esi, 3
        jb wait
        cli
        mov [{DATA + 8}], esi
        {POWEROFF}
    fault_handler:
        inc esi
        mov dword ptr [{LAPIC + 0xB0}], 0       /* EOI */
        iretd
    """
    result, engine, _ = run_kernel(asm, timeout=10)
    assert result.status == EXIT_OK, result
    assert read_u32(engine, DATA) == 0x00050014
    assert read_u32(engine, DATA + 4) == 0x20
    # A host that stalls the run lets a tick catch up between the third
    # wake-up and the cli, so the count is at least three; every delivery
    # must have reached the handler.
    assert read_u32(engine, DATA + 8) >= 3
    assert engine.vectors[0x40] == read_u32(engine, DATA + 8)


def test_pit_interrupts_through_the_8259_pair():
    asm = f"""
        /* remap the master PIC to 0x20, unmask IRQ0 only */
        mov al, 0x11
        out 0x20, al
        mov al, 0x20
        out 0x21, al
        mov al, 0x04
        out 0x21, al
        mov al, 0x01
        out 0x21, al
        mov al, 0xFE
        out 0x21, al
        /* PIT channel 0, mode 2, 1 kHz */
        mov al, 0x34
        out 0x43, al
        mov ax, 1193
        out 0x40, al
        mov al, ah
        out 0x40, al
        xor esi, esi
        sti
    wait:
        cmp esi, 5                  /* a busy loop: the timer must preempt it */
        jb wait
        cli
        mov [{DATA}], esi
        {POWEROFF}
    fault_handler:
        inc esi
        mov al, 0x20
        out 0x20, al                /* EOI */
        iretd
    """
    result, engine, _ = run_kernel(asm, timeout=10)
    assert result.status == EXIT_OK, result
    assert read_u32(engine, DATA) == 5
    assert engine.vectors[0x20] == 5
    assert engine.exits["preempt"] >= 1


def test_pci_host_bridge_cmos_and_firmware_tables():
    asm = f"""
        mov dx, 0xCF8
        mov eax, 0x80000000           /* bus 0, device 0, function 0, register 0 */
        out dx, eax
        mov dx, 0xCFC
        in eax, dx
        mov [{DATA}], eax
        mov al, 0x30                  /* CMOS: extended memory in KiB, low byte */
        out 0x70, al
        in al, 0x71
        movzx eax, al
        mov [{DATA + 4}], eax
        mov eax, [0xF0000]            /* the MP floating pointer */
        mov [{DATA + 8}], eax
        {POWEROFF}
    fault_handler: {exit_with(9)}
    """
    result, engine, _ = run_kernel(asm, mem=16 << 20)
    assert result.status == EXIT_OK, result
    assert read_u32(engine, DATA) == 0x12378086              # i440FX
    assert read_u32(engine, DATA + 4) == ((15 << 10) & 0xFF)  # 15 MiB above 1 MiB, low byte
    assert engine.m.uc.mem_read(DATA + 8, 4) == b"_MP_"
