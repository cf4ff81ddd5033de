"""Decoder: translation units from guest memory, every instruction classified."""

from bt_vmm.decoder.classify import Kind
from bt_vmm.decoder.tu import Insn, TranslationUnit, decode_tu

__all__ = ["Kind", "Insn", "TranslationUnit", "decode_tu"]
