"""Decoder classification and the translator's output, without running anything."""

from __future__ import annotations

import capstone
import pytest

from bt_vmm.decoder import Kind, decode_tu
from bt_vmm.decoder.classify import classify
from bt_vmm.translator import Translator
from bt_vmm.translator import templates

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_md.detail = True


@pytest.mark.parametrize("hexbytes, kind", [
    ("01d8", Kind.IDENT),                 # add eax, ebx
    ("8b4424 04".replace(" ", ""), Kind.IDENT),
    ("f3a5", Kind.IDENT),                 # rep movsd
    ("0fa2", Kind.CALLOUT),               # cpuid
    ("7405", Kind.JCC),
    ("e305", Kind.JRCXZ),
    ("e2fe", Kind.JRCXZ),                 # loop
    ("eb00", Kind.JMP),
    ("e800000000", Kind.CALL),
    ("c3", Kind.RET),
    ("c20800", Kind.RET),
    ("ffe0", Kind.JMP_IND),
    ("ff248500100000", Kind.JMP_IND),
    ("ffd1", Kind.CALL_IND),
    ("ff2d00200000", Kind.CALLOUT_END),   # jmp far [mem]
    ("ea001000000800", Kind.CALLOUT_END),  # ljmp
    ("cb", Kind.CALLOUT_END),             # retf
    ("cf", Kind.CALLOUT_END),             # iretd
    ("fa", Kind.CLI), ("fb", Kind.STI), ("9c", Kind.PUSHF), ("9d", Kind.POPF),
    ("669c", Kind.CALLOUT), ("669d", Kind.CALLOUT),   # 16-bit pushf/popf
    ("8cc8", Kind.SEG_READ),              # mov eax, cs
    ("0e", Kind.SEG_READ),                # push cs
    ("8cd8", Kind.IDENT),                 # mov eax, ds: the real DS is the guest's
    ("8ed8", Kind.CALLOUT),               # mov ds, eax
    ("1f", Kind.CALLOUT),                 # pop ds
    ("658b00", Kind.GS_ACCESS),           # mov eax, gs:[eax]
    ("65ff20", Kind.CALLOUT_END),         # jmp gs:[eax]: the monitor owns GS
    ("0f20c0", Kind.CALLOUT),             # mov eax, cr0
    ("0f22c0", Kind.CALLOUT_END),         # mov cr0, eax
    ("0f011500200000", Kind.CALLOUT),     # lgdt
    ("0f010500200000", Kind.CALLOUT),     # sgdt: sensitive, not privileged
    ("f4", Kind.CALLOUT_END), ("cd80", Kind.CALLOUT_END), ("cc", Kind.CALLOUT_END),
    ("ec", Kind.CALLOUT), ("e680", Kind.CALLOUT), ("f36e", Kind.CALLOUT),
    ("0f0b", Kind.UNDEFINED),
])
def test_classification(hexbytes, kind):
    insn = next(_md.disasm(bytes.fromhex(hexbytes), 0x1000))
    assert classify(insn) is kind


def _tu(code: bytes, pc: int = 0x1000):
    return decode_tu(pc, lambda a, n: code[a - pc:a - pc + n])


def test_tu_ends_at_control_transfer_and_page_boundary():
    assert _tu(bytes.fromhex("9090c3")).end_reason == "ret"
    tu = _tu(b"\x90" * 8, pc=0x1ffc)
    assert tu.end_reason == "page boundary" and len(tu.insns) == 4
    assert _tu(b"\x90" * 200).end_reason == "length cap"
    assert _tu(bytes.fromhex("90ffff")).insns[-1].kind is Kind.UNDEFINED


def test_ident_bytes_are_copied_verbatim():
    ident = bytes.fromhex("01d8" "8b442404" "f3a5" "0fafc3" "d9e8")   # add, mov, rep movsd, imul, fld1
    tu = _tu(ident + b"\xc3")
    code = Translator(0xFFD00000, count=False, budget=False).translate(
        tu, 0xFFD01000, 0, lambda pc: None)
    assert ident in code.code
    assert code.ident == 5
    kinds = [insn.kind for insn, _, _ in code.rewrites]
    assert kinds == [Kind.RET]


def test_direct_exits_point_at_stubs_or_existing_successors():
    tu = _tu(bytes.fromhex("7405" "90"), pc=0x1000)     # je +5 ; the TU ends at the jcc
    tr = Translator(0xFFD00000, count=False, budget=False)
    code = tr.translate(tu, 0xFFD01000, 0, lambda pc: 0xFFD02000 if pc == 0x1007 else None)
    taken, fall = code.exits
    assert (taken.target, fall.target) == (0x1007, 0x1002)
    rel = int.from_bytes(code.code[taken.field - code.base:taken.field - code.base + 4], "little", signed=True)
    assert taken.field + 4 + rel == 0xFFD02000           # pre-chained to the existing CCF
    rel = int.from_bytes(code.code[fall.field - code.base:fall.field - code.base + 4], "little", signed=True)
    assert fall.field + 4 + rel == fall.stub             # unchained: its int3 stub
    assert code.code[fall.stub - code.base] == 0xCC


def test_templates_are_assembled_once():
    templates.t.cache_clear()
    templates.t("cli")
    templates.t("cli")
    assert templates.t.cache_info().misses == 1


class _LossyKs:
    """A keystone engine whose output lacks the template's field (as CI saw once)."""

    def asm(self, text, addr):
        return [0x90] * 16, 1


def test_a_template_missing_its_field_asks_a_second_engine(monkeypatch):
    monkeypatch.setattr(templates, "_ks", _LossyKs())
    t = templates.Template("lea ecx, [ecx + {negpc}]", "negpc")
    assert t.emit(negpc=0x12345678) == bytes.fromhex("8d8978563412")


def test_a_template_missing_its_field_twice_says_what_keystone_returned(monkeypatch):
    monkeypatch.setattr(templates, "_ks", _LossyKs())
    monkeypatch.setattr(templates, "Ks", lambda *args: _LossyKs())
    with pytest.raises(ValueError, match="negpc.*90909090"):
        templates.Template("lea ecx, [ecx + {negpc}]", "negpc")
