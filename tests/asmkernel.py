"""Tiny test kernels written in assembly inside the tests.

A kernel is a flat Multiboot image (a.out kludge, loaded at 1 MiB) assembled
with keystone, so each engine test states exactly the instructions it is about.
`run_kernel` boots one in-process and returns the result with the engine, whose
state (guest memory, counters) the test can then inspect.
"""

from __future__ import annotations

import struct

from keystone import KS_ARCH_X86, KS_MODE_32, Ks

from bt_vmm.engines.bt import BTEngine, EngineOptions, RunResult
from bt_vmm.hosted.console import SerialSink
from bt_vmm.loaders import load_multiboot
from bt_vmm.machine.pc import Machine

BASE = 0x100000
CODE = BASE + 0x40          # code starts after the multiboot header
DATA = 0x200000             # scratch data area tests use for results
STACK = 0x90000

POWEROFF = "mov dx, 0x604; mov ax, 0x2000; out dx, ax;"


def exit_with(v: int) -> str:
    return f"mov al, {v}; out 0xf4, al;"


# Keystone quirks: lgdt/lidt get a stray operand-size prefix and far jumps to
# labels do not assemble, so those are spelled out as bytes.
# A flat GDT (null, code 0x08, data 0x10) and an IDT whose 256 interrupt gates
# all point at `fault_handler`, which the test's asm must define.
PROLOGUE = f"""
    mov esp, {STACK}
    .byte 0x0f, 0x01, 0x15
    .long gdtr                    /* lgdt [gdtr] (keystone adds a 0x66 prefix) */
    .byte 0xea
    .long reload
    .word 0x08                    /* jmp 0x08:reload */
reload:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ecx, 0
fill_idt:
    mov eax, fault_handler
    mov word ptr [idt + ecx*8], ax
    mov word ptr [idt + ecx*8 + 2], 0x08
    mov word ptr [idt + ecx*8 + 4], 0x8E00
    shr eax, 16
    mov word ptr [idt + ecx*8 + 6], ax
    inc ecx
    cmp ecx, 256
    jne fill_idt
    .byte 0x0f, 0x01, 0x1d
    .long idtr                    /* lidt [idtr] */
"""

TABLES = """
    .align 8
gdt:
    .quad 0
    .quad 0x00CF9B000000FFFF
    .quad 0x00CF93000000FFFF
gdtr:
    .word 23
    .long gdt
    .align 8
idtr:
    .word 256*8-1
    .long idt
    .align 8
idt:
"""


class ListSink(SerialSink):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        super().write(data)
        self.data += data


def build_kernel(asm: str, with_tables: bool = True) -> bytes:
    """Assemble `asm` (Intel syntax) into a bootable Multiboot image."""
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    text = (PROLOGUE if with_tables else "") + asm + (TABLES if with_tables else "")
    code, _ = ks.asm(text, CODE)
    body = bytes(code)
    if with_tables:
        body += bytes(256 * 8)   # the IDT itself
    flags = 0x00010003
    magic = 0x1BADB002
    end = CODE + len(body)
    header = struct.pack("<IIIIIIII", magic, flags, (-(magic + flags)) & 0xFFFFFFFF,
                         BASE, BASE, end, end + 0x1000, CODE)
    return header.ljust(0x40, b"\0") + body


def run_kernel(asm: str, mem: int = 16 << 20, with_tables: bool = True,
               **options) -> tuple[RunResult, BTEngine, ListSink]:
    image = build_kernel(asm, with_tables)
    boot = load_multiboot("test.bin", image, mem)
    sink = ListSink()
    machine = Machine(mem, sink)
    machine.load(boot)
    engine = BTEngine(machine, EngineOptions(**options))
    return engine.run(boot.entry), engine, sink


def read_u32(engine: BTEngine, addr: int) -> int:
    return struct.unpack("<I", engine.m.uc.mem_read(addr, 4))[0]
