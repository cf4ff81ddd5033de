"""Translator: TUs in, CCFs out (IDENT bytes copied, the rest rewritten)."""

from bt_vmm.translator.translate import CCFCode, Callout, ExitSite, Translator

__all__ = ["CCFCode", "Callout", "ExitSite", "Translator"]
