"""Rewrite templates, assembled once with keystone and patched per use.

Keystone costs about 90 us per block, so no sequence is assembled per TU: each
template is assembled a single time with recognisable 32-bit placeholder
values, the placeholders' byte offsets are recorded, and every use copies the
bytes and patches the fields. IDENT instructions never come near this module.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import capstone

from keystone import KS_ARCH_X86, KS_MODE_32, Ks

from bt_vmm.tcache import region as R

STAC = b"\x0f\x01\xcb"   # EFLAGS.AC = 1: the TC may touch the monitor region
CLAC = b"\x0f\x01\xca"   # EFLAGS.AC = 0: back to guest instructions
INT3 = b"\xcc"           # callout: an exit into the monitor's INTR hook

_ks = Ks(KS_ARCH_X86, KS_MODE_32)
_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_MARK = 0x5A5A0000


def _field_offsets(code: bytes, marks: dict[str, int]) -> dict[str, int] | None:
    """Each field's byte offset, or None unless every mark occurs exactly once."""
    offsets = {}
    for f, m in marks.items():
        pos = code.find(struct.pack("<I", m))
        if pos < 0 or code.find(struct.pack("<I", m), pos + 1) >= 0:
            return None
        offsets[f] = pos
    return offsets


class Template:
    """An instruction sequence with named 32-bit fields."""

    def __init__(self, text: str, *fields: str) -> None:
        marks = {f: _MARK + 0x1111 * (i + 1) for i, f in enumerate(fields)}
        consts = {k: v for k, v in vars(R).items() if k.isupper() and isinstance(v, int)}
        source = text.format(**consts, **marks)
        # One CI run saw a field missing from keystone's output for a template
        # that assembles correctly everywhere else; a second engine is asked
        # before giving up, and the error shows what came back.
        for ks in (_ks, None):
            ks = ks or Ks(KS_ARCH_X86, KS_MODE_32)
            self.code = bytes(ks.asm(source, 0)[0] or b"")
            self.offsets = _field_offsets(self.code, marks)
            if self.offsets is not None:
                break
        else:
            raise ValueError(f"template {source!r}: fields {list(marks)} not found once each "
                             f"in keystone's output {self.code.hex()}")
        # Where its int3 callout is, if it has one: found by decoding, since a
        # field's value may contain the byte 0xCC (a guest PC in entry_check
        # did, and the callout was registered inside an immediate).
        self.int3 = next((i.address for i in _md.disasm(self.code, 0) if i.mnemonic == "int3"), None)

    def __len__(self) -> int:
        return len(self.code)

    def emit(self, **values: int) -> bytes:
        out = bytearray(self.code)
        for f, v in values.items():
            struct.pack_into("<I", out, self.offsets[f], v & 0xFFFFFFFF)
        return bytes(out)


def preempt_check(mon_base: int) -> bytes:
    """`bound eax, cs:[PREEMPT_BOUNDS]`: a preemption check that touches no
    register or flag and does not end unicorn's block. The bounds normally admit
    every value; the monitor's timer thread makes them admit none, and the
    next check raises #BR at a guest instruction boundary."""
    return b"\x2e\x62\x05" + struct.pack("<I", mon_base + R.PREEMPT_BOUNDS)


def rel32(src_next: int, target: int) -> bytes:
    return struct.pack("<i", ((target - src_next + 0x80000000) & 0xFFFFFFFF) - 0x80000000)


@lru_cache(maxsize=None)
def t(name: str) -> Template:
    """The template called `name` (assembled on first use)."""
    text, fields = _TEXTS[name]
    return Template(text, *fields)


_TEXTS: dict[str, tuple[str, tuple[str, ...]]] = {
    # Virtual IF (SDM 6.8.1 for what cli/sti mean; the real IF is never the guest's).
    "cli": ("stac; mov dword ptr gs:[{VIF}], 0; clac", ()),
    "sti": ("stac; mov dword ptr gs:[{VIF}], 0x200; clac", ()),
    # pushfd: the real image with the virtual IF/IOPL/AC merged in. The
    # arithmetic flags are saved with lahf/seto and restored with add/sahf.
    "pushf_fix": (
        "stac; mov gs:[{S_EAX}], eax; lahf; seto al; mov gs:[{S_FLAGS}], eax;"
        "and dword ptr [esp], 0xFFFBCDFF;"
        "mov eax, gs:[{VIF}]; or eax, gs:[{VIOPL}]; or eax, gs:[{VAC}]; or [esp], eax;"
        "mov eax, gs:[{S_FLAGS}]; add al, 0x7f; sahf; mov eax, gs:[{S_EAX}]; clac", ()),
    # popfd, part 1: borrow EAX; part 2 (after a guest-memory read with AC=0):
    # split the image into the virtual bits, then load the real flags.
    "save_eax": ("stac; mov gs:[{S_EAX}], eax; clac", ()),
    "popf_split": (
        "stac; mov gs:[{S_FLAGS}], eax;"
        "and eax, 0x200; mov gs:[{VIF}], eax;"
        "mov eax, gs:[{S_FLAGS}]; and eax, 0x3000; mov gs:[{VIOPL}], eax;"
        "mov eax, gs:[{S_FLAGS}]; and eax, 0x40000; mov gs:[{VAC}], eax;"
        "mov eax, gs:[{S_EAX}]; clac; popfd; clac", ()),
    "restore_eax": ("stac; mov eax, gs:[{S_EAX}]; clac", ()),
    # Pending-interrupt check after sti/popf: exits only when IF=1 and an
    # interrupt waits. jecxz keeps the guest's arithmetic flags untouched.
    "irq_check": (
        "stac; mov gs:[{S_ECX}], ecx; mov ecx, gs:[{VIF}]; jecxz quiet;"
        "mov ecx, gs:[{PENDING}]; jecxz quiet; mov ecx, gs:[{S_ECX}]; clac; int3; jmp done;"
        "quiet: mov ecx, gs:[{S_ECX}]; clac; done:", ()),
    # ret / indirect branches: the guest target goes into ECX, then to the lookup.
    "save_ecx": ("stac; mov gs:[{S_ECX}], ecx; clac", ()),
    "esp_adjust": ("lea esp, [esp + {imm}]", ("imm",)),
    # The shared lookup routine: hash the guest PC into the table and jump to
    # the CCF's indirect entry, which checks its own PC.
    "lookup": ("mov gs:[{S_TARGET}], ecx; movzx ecx, cx; jmp dword ptr gs:[{LTABLE} + ecx*4]", ()),
    "lookup_counted": (
        "mov gs:[{S_TARGET}], ecx; mov gs:[{S_EAX}], eax; lahf; seto al;"
        "add dword ptr gs:[{N_LOOKUPS}], 1; adc dword ptr gs:[{N_LOOKUPS} + 4], 0;"
        "add al, 0x7f; sahf; mov eax, gs:[{S_EAX}];"
        "movzx ecx, cx; jmp dword ptr gs:[{LTABLE} + ecx*4]", ()),
    # A CCF's indirect entry: AC=1, guest ECX in S_ECX, candidate PC in S_TARGET.
    "entry_check": (
        "mov ecx, gs:[{S_TARGET}]; lea ecx, [ecx + {negpc}]; jecxz hit; int3; hit:"
        "mov ecx, gs:[{S_ECX}]; clac", ("negpc",)),
    # Execution counter (and --max-insns budget) at the top of a CCF.
    "count": (
        "stac; mov gs:[{S_EAX}], eax; lahf; seto al;"
        "add dword ptr gs:[{slot}], 1; adc dword ptr gs:[{slot4}], 0;"
        "add al, 0x7f; sahf; mov eax, gs:[{S_EAX}]; clac", ("slot", "slot4")),
    "count_budget": (
        "stac; mov gs:[{S_EAX}], eax; lahf; seto al;"
        "add dword ptr gs:[{slot}], 1; adc dword ptr gs:[{slot4}], 0;"
        "sub dword ptr gs:[{BUDGET}], {n}; jns more;"
        "add al, 0x7f; sahf; mov eax, gs:[{S_EAX}]; clac; int3;"
        "more: add al, 0x7f; sahf; mov eax, gs:[{S_EAX}]; clac", ("slot", "slot4", "n")),
    # The lazy flags turned into plain EFLAGS and synced (clac ends unicorn's
    # block): see translate._needs_flags_sync.
    "flags_sync": (
        "stac; mov gs:[{S_EAX}], eax; lahf; seto al; add al, 0x7f; sahf; mov eax, gs:[{S_EAX}]; clac", ()),
    # GS swap around an instruction that uses the guest's GS.
    "gs_in": ("stac; mov gs, word ptr gs:[{VGS}]; clac", ()),
    "gs_out": ("stac; mov gs, word ptr cs:[{mon_gs}]; clac", ("mon_gs",)),
}


def seg_read(reg: str, off: int) -> bytes:
    """`mov reg, <virtual selector>` for a 32- or 16-bit register destination."""
    size = "dword" if reg.startswith("e") else "word"
    return _asm_cached(f"stac; mov {reg}, {size} ptr gs:[{off}]; clac")


def push_vsel(off: int) -> tuple[bytes, int]:
    """push of a virtual selector; returns the code and the offset of the push."""
    pre = _asm_cached(f"stac; mov gs:[{R.S_EAX}], eax; mov eax, gs:[{off}]; clac")
    return pre + b"\x50" + t("restore_eax").code, len(pre)


@lru_cache(maxsize=None)
def _asm_cached(text: str) -> bytes:
    enc, _ = _ks.asm(text, 0)
    return bytes(enc)
